"""The on-disk form of the write-intent log: segment names and records.

A segment is a file of JSON Lines, one line per batch the writer applied::

    {"seq": 42, "writer": "host-a:1234", "at": "2024-05-01T09:00:00.123456Z", "n": 2,
     "id": "5f0c...e1", "intents": [{...}, {...}]}

``seq`` is the batch's number from PostgreSQL's ``writer_batch_seq`` (taken inside the batch's
transaction), ``writer`` the host and process that wrote it, ``at`` when it was appended, and
``intents`` the intents the batch applied, in apply order, as :func:`schemas.encode_intent`
makes them. ``id`` is unique to the record (a random UUID): ``seq`` alone is not, because
PostgreSQL may hand a number out again after a crash (``nextval`` is WAL-logged 32 values
ahead, and that WAL record is lost with a transaction that never committed), so a batch that
was logged and not committed can share its number with the committed batch after it. Records
written before ``id`` existed are identified by their writer, number and time.

A writer of shard K of N > 1 adds ``"shard": K`` (absent means shard 0): a batch is numbered
``(shard, seq)``, and the shards' logs merge by ``seq`` (every shard of one
database numbers its batches from the same sequence; see :mod:`writer.intentlog.reader`).

One line per batch (rather than one per intent) makes a batch the unit that is either wholly in
the log or, after a crash mid-write, a torn last line that readers drop.

A segment is named after the first batch it holds, so names sort in log order::

    00000000000000000042-host-a-1234.jsonl      being written
    00000000000000000042-host-a-1234.jsonl.gz   closed (compressed)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from jobplatform.errors import JobPlatformError
from jobplatform.kinds import Registry, default_registry
from schemas import BaseIntent, DecodeError
from schemas.intents import intent_json

OPEN_SUFFIX = ".jsonl"
CLOSED_SUFFIX = ".jsonl.gz"
_NAME = re.compile(r"^(?P<seq>\d{20})-(?P<writer>[A-Za-z0-9_.-]+)\.jsonl(?:\.gz)?$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class LogFormatError(JobPlatformError, ValueError):
    """A line of the log that is not a record (outside a torn tail)."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One batch of the log, with where it was read from."""

    seq: int
    writer: str
    at: datetime
    intents: tuple[BaseIntent, ...]
    source: str = ""
    line: int = 0
    shard: int = 0
    """The writer shard that applied the batch (0 when unsharded)."""
    batch_id: str = ""
    """The record's own id (``id``); empty in records written before it existed."""

    @property
    def key(self) -> tuple[int, int]:
        """``(seq, shard)``: the batch's number, which a crash of PostgreSQL may reuse."""
        return (self.seq, self.shard)

    @property
    def uid(self) -> str:
        """What identifies this record: its ``batch_id``, else its writer, number and time
        (the same record read from two copies of a segment has the same uid)."""
        if self.batch_id:
            return self.batch_id
        return f"{self.writer}/{self.shard}/{self.seq}/{self.at.isoformat()}"

    @property
    def order(self) -> tuple[int, int, datetime, str]:
        """The order the log merges in: by number, and records sharing a number (a number
        reused after a crash of PostgreSQL) by when they were appended, the last one last."""
        return (self.seq, self.shard, self.at, self.uid)


def segment_name(first_seq: int, writer_id: str, *, closed: bool = False) -> str:
    safe = _UNSAFE.sub("-", writer_id).strip("-") or "writer"
    return f"{first_seq:020d}-{safe}" + (CLOSED_SUFFIX if closed else OPEN_SUFFIX)


def parse_segment_name(name: str) -> int | None:
    """The first batch number a segment's name carries, or None for another name."""
    match = _NAME.match(name)
    return int(match["seq"]) if match else None


def segment_stem(name: str) -> str:
    """The name without its suffix: an open segment and its compressed form share it."""
    for suffix in (CLOSED_SUFFIX, OPEN_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_segment(name: str) -> bool:
    return name.endswith((OPEN_SUFFIX, CLOSED_SUFFIX))


def encode_record(seq: int, writer_id: str, at: datetime, intents: Sequence[BaseIntent], *,
                  encoded: Mapping[UUID, bytes] | None = None, shard: int = 0,
                  batch_id: str = "") -> bytes:
    """One record as a complete line, newline included.

    ``encoded`` holds intents already encoded by :func:`schemas.intents.intent_json` (made
    ahead of time); the others are encoded here. The line is the same either way.
    """
    fields: dict[str, Any] = {
        "seq": seq,
        "writer": writer_id,
        "at": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "n": len(intents),
    }
    if shard:
        fields["shard"] = shard
    if batch_id:
        fields["id"] = batch_id
    head = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    known = encoded or {}
    texts = [known.get(intent.intent_id) or intent_json(intent) for intent in intents]
    return b"".join((head[:-1], b',"intents":[', b",".join(texts), b"]}\n"))


def decode_record(line: bytes, *, source: str = "", line_no: int = 0,
                  registry: Registry | None = None) -> LogRecord:
    """Parse one whole line; :class:`LogFormatError` names the source, line and field.

    Intents decode through ``registry`` (the process's kinds by default): a log that holds
    intents of a plug-in kind needs that kind registered to be read.
    """
    decode = (registry or default_registry()).decode_intent
    where = f"{source}:{line_no}" if source else f"line {line_no}"
    try:
        body: Any = json.loads(line)
    except ValueError as exc:
        raise LogFormatError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise LogFormatError(f"{where}: a record must be a JSON object")
    seq, writer, at, raw = body.get("seq"), body.get("writer"), body.get("at"), body.get("intents")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise LogFormatError(f"{where}: 'seq' must be a non-negative integer, got {seq!r}")
    if not isinstance(writer, str):
        raise LogFormatError(f"{where}: 'writer' must be a string")
    if not isinstance(raw, list):
        raise LogFormatError(f"{where}: 'intents' must be a list")
    shard = body.get("shard", 0)
    if not isinstance(shard, int) or isinstance(shard, bool) or shard < 0:
        raise LogFormatError(f"{where}: 'shard' must be a non-negative integer, got {shard!r}")
    batch_id = body.get("id", "")
    if not isinstance(batch_id, str):
        raise LogFormatError(f"{where}: 'id' must be a string, got {batch_id!r}")
    try:
        when = datetime.fromisoformat(str(at))
    except ValueError as exc:
        raise LogFormatError(f"{where}: 'at' is not an ISO time: {at!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    intents = []
    for index, item in enumerate(raw):
        try:
            intents.append(decode(item))
        except DecodeError as exc:
            raise LogFormatError(f"{where}: intents[{index}]: {exc}") from exc
    return LogRecord(seq, writer, when, tuple(intents), source, line_no, shard, batch_id)
