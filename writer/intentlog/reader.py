"""Reading the write-intent log: segments from files, folders and S3, merged by batch number.

Several sources (an active writer's folder, a standby's, every shard's, the copies shipped to
S3) merge into one stream in ``(seq, shard)`` order; a record read twice (the same segment in
two places) is yielded once: a record is identified by its id (:attr:`LogRecord.uid`).

Records sharing a number are all kept, the one appended last last. PostgreSQL can hand a number
out again after it crashed (``nextval`` is WAL-logged 32 values ahead, and that WAL is lost
with a transaction that never committed): the batch logged before the crash never committed,
and the committed batch after it has the same number. Replay applies each intent at its last
occurrence (:mod:`writer.intentlog.replay`), so the committed batch decides.

Why that order replays exactly: within a shard, one writer is active at a time and takes
``seq`` inside each transaction, so ``seq`` order is its commit order; shards apply disjoint
tenants, so how two shards' batches interleave changes nothing; and a tenant moves to another
shard only by resharding, after the old shard drained (its batches all have lower numbers).

A torn tail (the last line of a segment without its newline, or one that does not parse: a
crash while appending) ends that segment; it is reported in :attr:`LogReader.notes`, never
decoded. Such a batch was never committed: the writer commits only after the append returned.
"""

from __future__ import annotations

import dataclasses
import gzip
import heapq
import io
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from jobplatform.kinds import Registry
from schemas import BaseIntent
from writer.intentlog.segment import (
    CLOSED_SUFFIX,
    LogFormatError,
    LogRecord,
    decode_record,
    is_segment,
    parse_segment_name,
    segment_stem,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from jobplatform.settings import Settings


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which batches and intents to keep. Every field unset keeps everything.

    ``kinds`` match an intent's kind exactly or by its family (``video`` matches
    ``video.ready``). ``entity`` is matched by each intent's own
    :meth:`~schemas.BaseIntent.matches`: a video id, an import id, or a phone number for the
    built-ins (for a phone, a roster chunk keeps only the rows of that student).
    """

    until: int | None = None
    since: int | None = None
    tenant: int | None = None
    kinds: frozenset[str] = frozenset()
    entity: str | None = None

    @property
    def narrows_intents(self) -> bool:
        return self.tenant is not None or bool(self.kinds) or self.entity is not None

    def keep_seq(self, seq: int) -> bool:
        after_since = self.since is None or seq >= self.since
        return after_since and (self.until is None or seq <= self.until)

    def apply(self, intents: Iterable[BaseIntent]) -> list[BaseIntent]:
        kept = []
        for intent in intents:
            if self.tenant is not None and intent.tenant_id != self.tenant:
                continue
            if self.kinds and not (
                intent.kind in self.kinds or intent.kind.split(".", 1)[0] in self.kinds
            ):
                continue
            if self.entity is not None:
                narrowed = intent.matches(self.entity.strip())
                if narrowed is None:
                    continue
                intent = narrowed
            kept.append(intent)
        return kept


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    first_seq: int
    label: str

    @property
    def compressed(self) -> bool:
        return self.path.name.endswith(CLOSED_SUFFIX)


@dataclass(slots=True)
class LogReader:
    """The log held by ``sources``: segment files, folders of segments, ``s3://bucket/prefix``.

    Use it as a context manager when a source is in S3 (its segments are downloaded to a
    temporary folder, removed on exit). :meth:`records` may be called more than once.
    """

    sources: Sequence[str | Path]
    settings: Settings | None = None
    s3: S3Client | None = None
    registry: Registry | None = None
    """The kinds its intents decode with; by default those of ``settings`` (or the process)."""
    notes: list[str] = field(default_factory=list)
    _segments: list[Segment] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _noted: set[str] = field(default_factory=set)

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def note(self, text: str) -> None:
        if text not in self._noted:
            self._noted.add(text)
            self.notes.append(text)

    def segments(self) -> list[Segment]:
        """Every segment, once each (a closed copy preferred), ordered by first batch."""
        if self._segments is None:
            found: dict[str, Segment] = {}
            for index, source in enumerate(self.sources):
                for segment in self._resolve(source, index):
                    stem = segment_stem(segment.path.name)
                    kept = found.get(stem)
                    if kept is None or (segment.compressed and not kept.compressed):
                        found[stem] = segment
            self._segments = sorted(found.values(), key=lambda s: (s.first_seq, s.path.name))
        return self._segments

    def records(self, log_filter: LogFilter | None = None) -> Iterator[LogRecord]:
        """Batches in ``seq`` order across all segments, filtered; a record read twice once."""
        flt = log_filter or LogFilter()
        last_key: tuple[int, int] | None = None
        seen: set[str] = set()
        for record in self._merged():
            if record.key != last_key:
                last_key, seen = record.key, set()
            if record.uid in seen:
                continue
            seen.add(record.uid)
            if flt.until is not None and record.seq > flt.until:
                return
            if not flt.keep_seq(record.seq):
                continue
            if flt.narrows_intents:
                intents = flt.apply(record.intents)
                if not intents:
                    continue
                record = dataclasses.replace(record, intents=tuple(intents))
            yield record

    def _merged(self) -> Iterator[LogRecord]:
        """A k-way merge that opens a segment only once its first batch can come next."""
        pending = self.segments()
        heap: list[tuple[tuple[int, int, datetime, str], int, LogRecord,
                         Iterator[LogRecord]]] = []
        opened = 0
        while True:
            while opened < len(pending) and (
                    not heap or pending[opened].first_seq <= heap[0][0][0]):
                records = self._read_segment(pending[opened])
                first = next(records, None)
                if first is not None:
                    heapq.heappush(heap, (first.order, opened, first, records))
                opened += 1
            if not heap:
                return
            _, order, record, records = heap[0]
            yield record
            following = next(records, None)
            if following is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (following.order, order, following, records))

    def _read_segment(self, segment: Segment) -> Iterator[LogRecord]:
        with _open(segment.path) as stream:
            previous = -1
            line_no = 0
            try:
                for raw in stream:
                    line_no += 1
                    if not raw.endswith(b"\n"):
                        self._torn(segment, line_no, "the line has no end")
                        return
                    try:
                        record = decode_record(raw, source=segment.label, line_no=line_no,
                                               registry=self._registry())
                    except LogFormatError as exc:
                        if stream.read(1):
                            raise
                        self._torn(segment, line_no, str(exc))
                        return
                    if record.seq <= previous:
                        raise LogFormatError(
                            f"{segment.label}:{line_no}: batch {record.seq} follows {previous}; "
                            "a segment's batches must increase"
                        )
                    previous = record.seq
                    yield record
            except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                self._torn(segment, line_no + 1, f"compressed data ends early ({exc})")

    def _registry(self) -> Registry:
        if self.registry is None:
            from jobplatform.kinds import default_registry, registry_for

            self.registry = (registry_for(self.settings) if self.settings is not None
                             else default_registry())
        return self.registry

    def _torn(self, segment: Segment, line_no: int, why: str) -> None:
        self.note(
            f"{segment.label}: truncated at line {line_no} ({why}); read up to the last whole "
            "record before it. A torn batch was never committed."
        )

    # --- sources -------------------------------------------------------------------------

    def _resolve(self, source: str | Path, index: int) -> list[Segment]:
        text = str(source)
        if text.startswith("s3://"):
            return self._download(text, index)
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and is_segment(p.name))
            if not files:
                self.note(f"{path}: no log segments in this folder")
            return [self._segment(p, str(p)) for p in files]
        if not path.exists():
            raise FileNotFoundError(f"no such log file or folder: {path}")
        return [self._segment(path, str(path))]

    def _segment(self, path: Path, label: str) -> Segment:
        first = parse_segment_name(path.name)
        if first is None:
            first = _peek_first_seq(path, label)
        return Segment(path, first, label)

    def _download(self, url: str, index: int) -> list[Segment]:
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"{url}: an S3 source is s3://bucket/prefix")
        client = self._client()
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="intent-log-")
        folder = Path(self._tmp.name) / str(index)
        folder.mkdir()
        segments = []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                name = key.rsplit("/", 1)[-1]
                if not is_segment(name):
                    continue
                target = folder / name
                client.download_file(bucket, key, str(target))
                segments.append(self._segment(target, f"s3://{bucket}/{key}"))
        if not segments:
            self.note(f"{url}: no log segments under this prefix")
        return segments

    def _client(self) -> S3Client:
        if self.s3 is None:
            if self.settings is None:
                raise ValueError("reading a log from S3 needs settings or an S3 client")
            from jobplatform.s3 import s3_client

            self.s3 = s3_client(self.settings)
        return self.s3


def _open(path: Path) -> io.BufferedIOBase:
    if path.name.endswith(".gz"):
        return gzip.GzipFile(path, "rb")
    return path.open("rb")


def _peek_first_seq(path: Path, label: str) -> int:
    with _open(path) as stream:
        first = stream.readline()
    if not first.endswith(b"\n"):
        return 0  # empty or torn: nothing whole to order it by
    return decode_record(first, source=label, line_no=1).seq
