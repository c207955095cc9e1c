"""Appending to the write-intent log: :class:`IntentLog`.

The writer calls :meth:`IntentLog.append` once per batch, after ``apply_batch`` succeeded and
before ``COMMIT``; when it returns, the record is on disk (written, then ``fdatasync``). Segments
rotate by size and age; a closed segment is compressed (gzip) and, when a prefix is configured,
uploaded to S3, both on a background thread so the writer's transaction never waits on them.

A process that dies leaves its open segment behind, locked no more (``flock`` dies with its
holder); the next :class:`IntentLog` on that folder compresses and ships it. A segment is never
appended to by a second process: each process starts a new one, so a torn last line (a crash
mid-write) stays the last line of its segment, where readers expect it.

Several writers may share a folder (an active one and its standby). A segment is locked by
whoever works on it for its whole life, so nobody else touches it:

- it is created under a hidden name, locked, and only then linked under its segment name, so
  no segment name is ever unlocked while its writer lives;
- rotation keeps the lock until the segment is compressed (and shipped);
- recovery takes the lock of an orphan, checks that the name still holds the file it locked,
  and keeps the lock while compressing it;
- each compression writes a ``.gz.partial-<unique>`` file of its own, locked while written;
  one left by a dead process (unlocked) is removed by the next recovery.

A failed compression or upload (a full disk, S3 unreachable) is retried with backoff while the
log lives (``retry_s`` first, doubling, at most a minute), and the segment is shipped once it
is compressed. A segment still failing at :meth:`IntentLog.close` stays open on disk, for the
next log on the folder to recover.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import heapq
import os
import queue
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from uuid import UUID, uuid4

from jobplatform.logging import get_logger
from schemas import BaseIntent
from schemas.intents import intent_json
from writer.intentlog.segment import OPEN_SUFFIX, encode_record, segment_name

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from jobplatform.settings import Settings
    from jobplatform.shards import ShardSpec

log = get_logger(__name__)


class SegmentShipper(Protocol):
    """Copies a closed segment somewhere else; returns where it went."""

    def ship(self, path: Path) -> str: ...


class S3Shipper:
    """Uploads closed segments to ``s3://bucket/prefix/<segment name>``."""

    def __init__(self, client: S3Client, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def ship(self, path: Path) -> str:
        key = self.key(path.name)
        self.client.upload_file(str(path), self.bucket, key)
        return f"s3://{self.bucket}/{key}"


@dataclass(slots=True)
class LogStats:
    """Counters since the log was opened."""

    batches: int = 0
    intents: int = 0
    bytes: int = 0
    segments_opened: int = 0
    segments_closed: int = 0
    segments_shipped: int = 0
    ship_failures: int = 0
    recovered: int = 0
    finalize_failures: int = 0
    sync_ms_max: float = 0.0
    sync_ms_total: float = 0.0
    closed_paths: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "batches": self.batches,
            "intents": self.intents,
            "bytes": self.bytes,
            "segments_opened": self.segments_opened,
            "segments_closed": self.segments_closed,
            "segments_shipped": self.segments_shipped,
            "ship_failures": self.ship_failures,
            "recovered": self.recovered,
            "finalize_failures": self.finalize_failures,
            "sync_ms_max": round(self.sync_ms_max, 3),
            "sync_ms_avg": round(self.sync_ms_total / self.batches, 3) if self.batches else 0.0,
        }


@dataclass(slots=True)
class _Segment:
    path: Path
    fd: int
    opened_at: float
    size: int = 0
    last_seq: int = -1


@dataclass(slots=True)
class _Closing:
    """A closed segment on its way to compression and shipping; ``fd`` holds its lock until
    it is compressed."""

    path: Path
    fd: int | None
    compressed: bool = False
    attempts: int = 0


def default_writer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class IntentLog:
    """The write-intent log of one writer process, in ``folder``.

    ``append`` is called from one thread (the writer's); rotation by age also happens on a
    background thread while the writer is idle, under the same lock.
    """

    def __init__(
        self,
        folder: Path,
        *,
        segment_bytes: int = 64 * 1024 * 1024,
        segment_age_s: float = 3600.0,
        writer_id: str | None = None,
        shipper: SegmentShipper | None = None,
        clock: Callable[[], float] = time.monotonic,
        shard: int = 0,
        retry_s: float = 1.0,
    ) -> None:
        if segment_bytes <= 0 or segment_age_s <= 0:
            raise ValueError("segment_bytes and segment_age_s must be positive")
        self.folder = Path(folder)
        self.segment_bytes = segment_bytes
        self.segment_age_s = segment_age_s
        self.writer_id = writer_id or default_writer_id()
        self.shard = shard
        """The writer shard whose batches this log records (each record says it)."""
        self.shipper = shipper
        self.retry_s = retry_s
        """The first wait before a failed compression or upload is tried again."""
        self._clock = clock
        self._lock = threading.Lock()
        self._current: _Segment | None = None
        # Per thread: the writer's loop and its fast lane each prepare and append their own.
        self._prepared = threading.local()
        self._closed = False
        self._pending: queue.Queue[_Closing | None] = queue.Queue()
        self._retries: list[tuple[float, int, _Closing]] = []  # the finalizer's own
        self._stats = LogStats()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._thread = threading.Thread(
            target=self._background, name="intent-log-finalizer", daemon=True
        )
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings, *, writer_id: str | None = None,
                      shard: ShardSpec | None = None) -> IntentLog:
        """The log the settings describe: ``WRITER_LOG_DIR``, ``WRITER_LOG_SEGMENT_*`` and,
        when ``WRITER_LOG_S3_PREFIX`` is set, shipping to the settings' S3 bucket; of
        ``shard`` (its records and segment names say which)."""
        shipper: SegmentShipper | None = None
        prefix = settings.writer.log_s3_prefix
        if prefix is not None:
            from jobplatform.s3 import s3_client

            shipper = S3Shipper(s3_client(settings), settings.s3.bucket, prefix)
        return cls(
            settings.writer_log_dir,
            segment_bytes=settings.writer.log_segment_bytes,
            segment_age_s=float(settings.writer.log_segment_age_s),
            shipper=shipper,
            writer_id=writer_id,
            shard=shard.index if shard is not None else 0,
        )

    # --- the writer's side ---------------------------------------------------------------

    def prepare(self, intents: Sequence[BaseIntent]) -> None:
        """Encode the intents of the next :meth:`append` ahead of time (before the batch's
        transaction begins), so that the append itself mostly writes and syncs. Intents the
        append names that were not prepared are encoded then; the rest are dropped. Each
        thread's preparation is its own: it serves that thread's next append."""
        self._prepared.encoded = {intent.intent_id: intent_json(intent) for intent in intents}

    def append(self, batch_seq: int, intents: Sequence[BaseIntent]) -> None:
        """Write one batch's record and make it durable before returning."""
        prepared: dict[UUID, bytes] = getattr(self._prepared, "encoded", {})
        self._prepared.encoded = {}
        line = encode_record(batch_seq, self.writer_id, datetime.now(UTC), intents,
                             encoded=prepared, shard=self.shard, batch_id=uuid4().hex)
        with self._lock:
            if self._closed:
                raise RuntimeError("the intent log is closed")
            segment = self._current
            if segment is not None and (
                segment.size >= self.segment_bytes
                or self._clock() - segment.opened_at >= self.segment_age_s
                or batch_seq <= segment.last_seq
            ):
                self._rotate_locked()
                segment = None
            if segment is None:
                segment = self._open_locked(batch_seq)
            started = time.perf_counter()
            try:
                _write_all(segment.fd, line)
                os.fdatasync(segment.fd)
            except OSError:
                self._undo_locked(segment)
                raise
            elapsed_ms = (time.perf_counter() - started) * 1000
            segment.size += len(line)
            segment.last_seq = batch_seq
            stats = self._stats
            stats.batches += 1
            stats.intents += len(intents)
            stats.bytes += len(line)
            stats.sync_ms_total += elapsed_ms
            stats.sync_ms_max = max(stats.sync_ms_max, elapsed_ms)

    def rotate(self) -> None:
        """Close the current segment now (it is compressed and shipped in the background)."""
        with self._lock:
            if self._current is not None:
                self._rotate_locked()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every closed segment is compressed (and shipped), retries included."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending.unfinished_tasks or self._retries:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("closed log segments are still being compressed")
            time.sleep(0.01)

    def close(self) -> None:
        """Close the current segment and wait for compression and shipping to finish."""
        with self._lock:
            if self._closed:
                return
            if self._current is not None:
                self._rotate_locked()
            self._closed = True
        self._pending.put(None)
        self._thread.join()

    def get_stats(self) -> dict[str, float | int]:
        with self._lock:
            return self._stats.as_dict()

    @property
    def closed_segments(self) -> list[Path]:
        """Compressed segments this log produced (including recovered ones), oldest first."""
        with self._lock:
            return list(self._stats.closed_paths)

    def __enter__(self) -> IntentLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- segments ------------------------------------------------------------------------

    def _open_locked(self, first_seq: int) -> _Segment:
        label = f"{self.writer_id}-shard{self.shard}" if self.shard else self.writer_id
        # Locked before it has its name: recovery never sees it unlocked.
        hidden = self.folder / f".{uuid4().hex}.creating"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = self.folder / segment_name(first_seq, label)
            for attempt in range(1, 100):
                try:
                    if path.with_name(path.name + ".gz").exists():
                        raise FileExistsError(path)
                    os.link(hidden, path)
                    break
                except FileExistsError:  # a batch number reused (a crash, a restored backup)
                    path = self.folder / segment_name(first_seq, f"{label}-{attempt}")
            else:
                raise FileExistsError(
                    f"no free segment name for batch {first_seq} in {self.folder}")
            hidden.unlink()
            _fsync_dir(self.folder)
        except OSError:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                hidden.unlink()
            raise
        self._current = _Segment(path, fd, self._clock())
        self._stats.segments_opened += 1
        return self._current

    def _undo_locked(self, segment: _Segment) -> None:
        """After a failed write: cut the partial line, or retire the segment if that fails."""
        try:
            os.ftruncate(segment.fd, segment.size)
            os.fsync(segment.fd)
        except OSError:
            self._rotate_locked()

    def _rotate_locked(self) -> None:
        segment = self._current
        assert segment is not None
        self._current = None
        # Every record was synced by append; the lock stays until the segment is compressed.
        self._pending.put(_Closing(segment.path, segment.fd))

    def _recover(self) -> None:
        """Queue open segments whose process is gone (their flock is free) for closing, and
        remove what dead processes left half compressed."""
        stale = [*self.folder.glob(".*.creating"),
                 *self.folder.glob("*" + OPEN_SUFFIX + ".gz.partial*")]
        for path in sorted(stale):
            fd = _lock_or_none(path)
            if fd is not None:  # its compressor is gone
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                os.close(fd)
        for path in sorted(self.folder.glob("*" + OPEN_SUFFIX)):
            fd = _lock_or_none(path)
            if fd is None:
                continue  # another live process holds it (writing or compressing it)
            log.info("intent_log.recovered_segment", path=str(path))
            self._stats.recovered += 1
            self._pending.put(_Closing(path, fd))

    def _background(self) -> None:
        interval = max(0.05, min(self.segment_age_s / 4, 30.0))
        while True:
            wait = interval
            if self._retries:
                wait = min(wait, max(0.0, self._retries[0][0] - time.monotonic()))
            try:
                job = self._pending.get(timeout=wait)
            except queue.Empty:
                self._due_retries()
                self.rotate_if_old()
                continue
            try:
                if job is None:
                    self._last_tries()
                    return
                self._finalize(job)
            finally:
                self._pending.task_done()

    def _due_retries(self) -> None:
        now = time.monotonic()
        while self._retries and self._retries[0][0] <= now:
            job = self._retries[0][2]
            self._pending.put(job)  # before leaving the list: flush() sees it throughout
            heapq.heappop(self._retries)

    def _later(self, job: _Closing) -> None:
        job.attempts += 1
        delay = min(60.0, self.retry_s * 2 ** (job.attempts - 1)) * random.uniform(0.8, 1.2)
        heapq.heappush(self._retries, (time.monotonic() + delay, id(job), job))

    def _last_tries(self) -> None:
        """On close: one more try for each segment still failing; those that fail again are
        left open on disk (unlocked) for the next log on the folder."""
        retries, self._retries = self._retries, []
        for _, _, job in retries:
            job.attempts = -1  # no further retry
            self._finalize(job)

    def _finalize(self, job: _Closing) -> None:
        try:
            if not job.compressed:
                closed = compress_segment(job.path)
                self._unlock(job)
                if closed is None:
                    return
                job.path, job.compressed = closed, True
                with self._lock:
                    self._stats.segments_closed += 1
                    self._stats.closed_paths.append(closed)
        except Exception as exc:
            with self._lock:
                self._stats.finalize_failures += 1
            log.error("intent_log.finalize_failed", path=str(job.path), error=str(exc),
                      attempt=job.attempts + 1)
            self._retry_or_drop(job)
            return
        if self.shipper is None:
            return
        try:
            where = self.shipper.ship(job.path)
        except Exception as exc:
            with self._lock:
                self._stats.ship_failures += 1
            log.error("intent_log.ship_failed", path=str(job.path), error=str(exc),
                      attempt=job.attempts + 1)
            self._retry_or_drop(job)
            return
        with self._lock:
            self._stats.segments_shipped += 1
        log.info("intent_log.shipped", path=str(job.path), to=where)

    def _retry_or_drop(self, job: _Closing) -> None:
        if job.attempts >= 0:
            self._later(job)
        else:
            self._unlock(job)

    @staticmethod
    def _unlock(job: _Closing) -> None:
        if job.fd is not None:
            os.close(job.fd)
            job.fd = None

    def rotate_if_old(self) -> None:
        """Close the current segment if it reached its age (the idle check calls this too)."""
        with self._lock:
            segment = self._current
            if segment is not None and self._clock() - segment.opened_at >= self.segment_age_s:
                self._rotate_locked()


def compress_segment(path: Path) -> Path | None:
    """Replace an open segment by its gzip form, durably; None when it is already gone.

    The caller holds the segment's lock. The gzip form is written to a ``.gz.partial-*`` file
    of this call's own (locked while written), removed again when anything fails.
    """
    target = path.with_name(path.name + ".gz")
    partial = path.with_name(f"{path.name}.gz.partial-{uuid4().hex[:12]}")
    try:
        source = path.open("rb")
    except FileNotFoundError:
        return None
    try:
        with source, partial.open("xb") as raw:
            fcntl.flock(raw.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, mtime=0) as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    _fsync_dir(path.parent)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    _fsync_dir(path.parent)
    return target


def _lock_or_none(path: Path) -> int | None:
    """An fd holding ``path``'s lock, or None when another process holds it or the name no
    longer leads to the file that was locked (it was compressed and removed meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
