"""The writer fed through Redis: producer threads enqueue intents, a real Writer applies them.

Producers are threads of this process, each with its own broker (its own Redis connections, as
separate actor processes have), enqueueing with :class:`~jobplatform.emit.IntentEmitter` on a
fresh broker namespace. ONE :class:`~writer.engine.Writer` runs in a thread of this process,
composed as ``jobplatform writer`` composes it (the settings' writer limits and budget, the
write-intent log, here under a temporary folder).

The writer's commits are clocked in-process: :class:`CommitClock` (a writer hook) notes, when
each batch transaction's COMMIT has returned, its duration, its statements and the intents it
settled.
The shared server has ``track_commit_timestamp`` off (it cannot be restarted for a benchmark),
so the database cannot tell commit times; the moment COMMIT returns to the writer is when the
intents' effects became visible to every other session.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from uuid import UUID

from bench._platform import broker_namespace
from jobplatform.broker import Queues, build_broker
from jobplatform.emit import IntentEmitter
from jobplatform.settings import Settings
from schemas.intents import AnyIntent, VideoProcessing, VideoReady, VideoRendition
from writer.engine import Commit as EngineCommit
from writer.engine import Hooks, IntentLogWriter, Writer

#: Statements of a batch transaction besides the sink's: BEGIN, the lock and sequence, COMMIT.
BATCH_OVERHEAD_STATEMENTS = 3


@dataclass(frozen=True, slots=True)
class Commit:
    """One batch transaction of the writer."""

    intent_ids: tuple[UUID, ...]
    start: float
    """``time.perf_counter()`` before BEGIN."""
    end: float
    """``time.perf_counter()`` when COMMIT returned."""
    at: datetime
    """Wall clock when COMMIT returned."""
    statements: int

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000


class CommitLog:
    """The writer's commits in order, and a wait until given intents are committed."""

    def __init__(self) -> None:
        self.commits: list[Commit] = []
        self._by_intent: dict[UUID, Commit] = {}
        self._changed = threading.Condition()

    def record(self, commit: Commit) -> None:
        with self._changed:
            self.commits.append(commit)
            for intent_id in commit.intent_ids:
                self._by_intent.setdefault(intent_id, commit)
            self._changed.notify_all()

    def of(self, intent_id: UUID) -> Commit | None:
        """The commit that first settled ``intent_id`` (applied, or skipped as a duplicate)."""
        with self._changed:
            return self._by_intent.get(intent_id)

    def missing(self, intent_ids: Iterable[UUID]) -> set[UUID]:
        with self._changed:
            return set(intent_ids) - self._by_intent.keys()

    def wait(self, intent_ids: Iterable[UUID], timeout_s: float, poll_s: float = 0.5) -> set[UUID]:
        """Wait until every id is committed or ``timeout_s`` passed; the ids still missing."""
        wanted = set(intent_ids)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                wanted -= self._by_intent.keys()
                left = deadline - time.monotonic()
                if not wanted or left <= 0:
                    return wanted
                self._changed.wait(min(left, poll_s))


class CommitClock(Hooks):
    """Records each committed batch transaction of the writer in ``clock``."""

    def __init__(self, clock: CommitLog) -> None:
        self.clock = clock

    def after_commit(self, commit: EngineCommit) -> None:
        self.clock.record(Commit(
            intent_ids=tuple(i.intent.intent_id for i in commit.items if i.intent is not None),
            start=commit.started, end=commit.ended, at=datetime.now(UTC),
            statements=commit.result.statements + BATCH_OVERHEAD_STATEMENTS,
        ))


class WriterFailed(RuntimeError):
    """The writer thread died, or did not commit what was sent in time."""


class FedWriter:
    """A fresh broker namespace and one clocked :class:`~writer.engine.Writer` on ``database_url``.

    ``with FedWriter(...) as fed``: producers may enqueue on ``fed.settings`` before or after
    :meth:`start`; leaving stops the writer, closes it and deletes the namespace's keys.
    """

    def __init__(self, settings: Settings, database_url: str, *, intent_log: bool = True,
                 **writer_settings: Any) -> None:
        if not settings.redis_url:
            raise ValueError("settings.redis_url is not set (resolve the services first)")
        self.redis_url = settings.redis_url
        self._base = settings
        self._database_url = database_url
        self._intent_log = intent_log
        self._writer_settings = writer_settings
        self._stack = contextlib.ExitStack()
        self.clock = CommitLog()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.started = 0.0
        """``time.perf_counter()`` when the writer thread started."""

    def __enter__(self) -> FedWriter:
        stack = self._stack
        namespace = stack.enter_context(broker_namespace(self.redis_url, "bench-writer"))
        state = stack.enter_context(tempfile.TemporaryDirectory(prefix="jobplatform-bench-"))
        base = self._base
        self.settings = base.model_copy(update={
            "broker_namespace": namespace, "database_url": self._database_url,
            "jobplatform_state_dir": Path(state),
            "writer": base.writer.model_copy(update=self._writer_settings),
        })
        self.broker = build_broker(self.settings, self.redis_url, set_global=False)
        stack.callback(self.broker.close)
        log_writer: IntentLogWriter | None = None
        if self._intent_log:
            from writer.intentlog import IntentLog

            log_writer = IntentLog.from_settings(self.settings)
        self.writer = Writer(self.settings.writer, database_url=self._database_url,
                             broker=self.broker, queues=Queues.from_settings(self.settings),
                             log_writer=log_writer, hooks=[CommitClock(self.clock)])
        stack.callback(self._stop)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()

    def start(self, timeout_s: float = 30.0) -> int:
        """Start the writer; return its backend pid once it holds the lock and consumes."""
        self._thread = threading.Thread(target=self._run, name="bench-writer", daemon=True)
        self.started = time.perf_counter()
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid = self.writer.backend_pid
            if self.writer.active and pid is not None:
                return pid
            self._check()
            time.sleep(0.005)
        raise WriterFailed(f"the writer was not active after {timeout_s:.0f} s")

    def _run(self) -> None:
        try:
            self.writer.run()
        except BaseException as exc:
            self._error = exc
            raise

    def _check(self) -> None:
        if self._error is not None:
            raise WriterFailed(f"the writer thread failed: {self._error!r}") from self._error

    def wait(self, intent_ids: Iterable[UUID], timeout_s: float) -> None:
        """Wait until every intent is committed; :class:`WriterFailed` otherwise."""
        missing = set(intent_ids)
        deadline = time.monotonic() + timeout_s
        while missing and time.monotonic() < deadline:
            self._check()
            missing = self.clock.wait(missing, min(1.0, deadline - time.monotonic()))
        if missing:
            stats = self.writer.get_stats()
            raise WriterFailed(
                f"{len(missing)} intents not committed in {timeout_s:.0f} s (dead letters: "
                f"{stats['dead']}, database retries: {stats['db_retries']}, role: "
                f"{stats['role']})"
            )

    def _stop(self) -> None:
        self.writer.stop()
        if self._thread is not None:
            self._thread.join()
        self.writer.close()


class Producers:
    """``count`` producer threads, each with its own broker, enqueueing intents together."""

    def __init__(self, settings: Settings, count: int) -> None:
        assert settings.redis_url is not None
        queues = Queues.from_settings(settings)
        self.emitters = [
            IntentEmitter(build_broker(settings, settings.redis_url, set_global=False), queues)
            for _ in range(count)
        ]

    def __enter__(self) -> Producers:
        return self

    def __exit__(self, *exc: object) -> None:
        for emitter in self.emitters:
            emitter.broker.close()

    def emit(self, intents: Sequence[AnyIntent]) -> None:
        """Intent ``n`` goes out on producer ``n % count``; returns when all are enqueued."""
        count = len(self.emitters)
        errors: list[BaseException] = []

        def produce(k: int) -> None:
            try:
                for intent in intents[k::count]:
                    self.emitters[k].emit(intent)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(k,), name=f"bench-producer-{k}")
                   for k in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]


def video_status(n: int, tenant_id: int) -> AnyIntent:
    """The ``n``-th status change of a stream of videos: processing, then ready, per video."""
    video_id = UUID(int=n // 2 + 1, version=4)
    now = datetime.now(UTC)
    if n % 2 == 0:
        return VideoProcessing(tenant_id=tenant_id, video_id=video_id, occurred_at=now)
    hls = f"tenants/{tenant_id}/videos/{video_id}/hls/"
    return VideoReady(
        tenant_id=tenant_id, video_id=video_id, occurred_at=now, duration_s=60.0,
        hls_key=hls + "master.m3u8",
        renditions=(VideoRendition(name="720p", width=1280, height=720, bandwidth=2_800_000,
                                   playlist_key=hls + "720p.m3u8"),),
    )


class StatusSender:
    """A thread sending :func:`video_status` intents at ``rate_per_s``, each stamped with
    ``occurred_at`` as it is enqueued, until the context exits."""

    def __init__(self, settings: Settings, rate_per_s: float, tenant_id: int) -> None:
        assert settings.redis_url is not None
        self.rate_per_s = rate_per_s
        self.tenant_id = tenant_id
        self.sent: list[AnyIntent] = []
        self._emitter = IntentEmitter(build_broker(settings, settings.redis_url,
                                                   set_global=False),
                                      Queues.from_settings(settings))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-status-sender",
                                        daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> StatusSender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._emitter.broker.close()

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        try:
            while not self._stop.is_set():
                intent = video_status(n, self.tenant_id)
                self._emitter.emit(intent)
                self.sent.append(intent)
                n += 1
                self._stop.wait(max(0.0, start + n / self.rate_per_s - time.monotonic()))
        except Exception as exc:
            self.error = exc


class VideoNotices:
    """When each video status became visible to other sessions, told by the database itself.

    For a writer in another process, whose COMMIT this process cannot clock: a trigger on the
    videos table (added to the benchmark's database) notifies ``<video id> <status>`` for each
    row it writes, and PostgreSQL delivers a notification when, and only if, its transaction
    commits. A thread of this process listens and notes the wall clock of each.
    """

    CHANNEL = "jp_bench_video"

    def __init__(self, database_url: str, table: str = "videos") -> None:
        import psycopg
        from psycopg import sql

        self._conn = psycopg.connect(database_url, autocommit=True)
        self._conn.execute(sql.SQL("""
            CREATE OR REPLACE FUNCTION jp_bench_video_notice() RETURNS trigger
            LANGUAGE plpgsql AS $$ BEGIN
                PERFORM pg_notify({channel}, NEW.id::text || ' ' || NEW.status);
                RETURN NEW;
            END $$""").format(channel=sql.Literal(self.CHANNEL)))
        self._conn.execute(sql.SQL(
            "CREATE OR REPLACE TRIGGER jp_bench_video_notice AFTER INSERT OR UPDATE ON {}"
            " FOR EACH ROW EXECUTE FUNCTION jp_bench_video_notice()").format(
                sql.Identifier(table)))
        self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.CHANNEL)))
        self.seen: dict[tuple[UUID, str], datetime] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-video-notices",
                                        daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> VideoNotices:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for notice in self._conn.notifies(timeout=0.2):
                    at = datetime.now(UTC)
                    video_id, _, status = notice.payload.partition(" ")
                    self.seen.setdefault((UUID(video_id), status), at)
        except Exception as exc:
            self.error = exc

    def committed_at(self, intent: AnyIntent) -> datetime | None:
        """When ``intent``'s change (or a later status of its video, coalesced with it in one
        transaction) was first seen committed."""
        if not isinstance(intent, VideoProcessing | VideoReady):
            return None
        statuses = ("processing", "ready") if isinstance(intent, VideoProcessing) else ("ready",)
        found = [self.seen.get((intent.video_id, status)) for status in statuses]
        times = [t for t in found if t is not None]
        return min(times, default=None)

    def wait(self, intents: Sequence[AnyIntent], timeout_s: float) -> bool:
        """Wait until every one of ``intents`` was seen committed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.committed_at(i) is not None for i in intents):
                return True
            time.sleep(0.05)
        return False
