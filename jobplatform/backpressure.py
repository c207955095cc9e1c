"""Backpressure: producers wait while the writer's backlog is over its bound.

When the writer cannot keep up (PostgreSQL down, a long outage of the writer itself), intents
pile up in Redis until it runs out of memory, and then every queue of the platform fails, the
jobs' own included. :class:`Backpressure` bounds that pile: before an intent is sent,
:meth:`Backpressure.wait` reads the backlog of the writer's lanes for the intent's shard (the
messages waiting and held, and on Redis the bytes of their bodies) and, while it is over
``WRITER_BACKLOG_MAX_INTENTS`` or ``WRITER_BACKLOG_MAX_BYTES``, waits, logging once that it
waits and once that it goes on. After ``WRITER_BACKLOG_MAX_WAIT_S`` it raises
:class:`BacklogFull`, a ``TransientJobError``: the actor's job fails as a passing fault
and is retried with backoff.

The reading is cached for ``WRITER_BACKLOG_CHECK_S`` (one Redis round trip per interval and
process, whatever the rate of intents), so a bound is enforced to within what producers send
in that interval. On Redis the bytes come from ``MEMORY USAGE ... SAMPLES 5`` of the lanes'
message hashes, an estimate from five bodies; on other brokers only the count is bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobplatform.errors import TransientJobError
from jobplatform.logging import get_logger
from jobplatform.settings import WriterSettings

__all__ = ["BacklogFull", "BacklogReading", "Backpressure"]

log = get_logger("jobplatform.backpressure")


class BacklogFull(TransientJobError):
    """The writer's backlog stayed over its bound for ``WRITER_BACKLOG_MAX_WAIT_S``."""


@dataclass(frozen=True, slots=True)
class BacklogReading:
    intents: int
    bytes: int | None
    """None where the broker cannot say cheaply (RabbitMQ)."""
    at: float


class Backpressure:
    """The bound of one producer process; thread-safe, one cached reading per shard."""

    def __init__(self, broker: Any, *, max_intents: int, max_bytes: int, max_wait_s: float,
                 check_s: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self.broker = broker
        self.max_intents = max_intents
        self.max_bytes = max_bytes
        self.max_wait_s = max_wait_s
        self.check_s = check_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._readings: dict[tuple[str, ...], BacklogReading] = {}
        self.waits = 0
        """Sends that had to wait (a counter for tests and stats)."""

    @classmethod
    def from_settings(cls, broker: Any, settings: WriterSettings) -> Backpressure | None:
        """The bound ``WRITER_BACKLOG_*`` describe; None when both bounds are 0 (off)."""
        if not settings.backlog_max_intents and not settings.backlog_max_bytes:
            return None
        return cls(broker, max_intents=settings.backlog_max_intents,
                   max_bytes=settings.backlog_max_bytes,
                   max_wait_s=settings.backlog_max_wait_s, check_s=settings.backlog_check_s)

    @property
    def enabled(self) -> bool:
        return bool(self.max_intents or self.max_bytes)

    def over(self, reading: BacklogReading) -> bool:
        if self.max_intents and reading.intents >= self.max_intents:
            return True
        return bool(self.max_bytes and reading.bytes is not None
                    and reading.bytes >= self.max_bytes)

    def reading(self, lanes: tuple[str, ...], *, fresh: bool = False) -> BacklogReading:
        """The backlog of ``lanes`` (the writer's queues of one shard), at most ``check_s``
        old unless ``fresh``."""
        with self._lock:
            found = self._readings.get(lanes)
            now = self._clock()
            if found is not None and not fresh and now - found.at < self.check_s:
                return found
            found = self._readings[lanes] = self._read(lanes, now)
            return found

    def _read(self, lanes: tuple[str, ...], now: float) -> BacklogReading:
        client = getattr(self.broker, "client", None)
        if client is None:
            return BacklogReading(sum(int(self.broker.do_qsize(q)) for q in lanes), None, now)
        namespace = self.broker.namespace
        with client.pipeline(transaction=False) as pipe:
            for queue in lanes:
                pipe.hlen(f"{namespace}:{queue}.msgs")
                if self.max_bytes:
                    pipe.execute_command("MEMORY", "USAGE", f"{namespace}:{queue}.msgs",
                                         "SAMPLES", "5")
            values = pipe.execute()
        step = 2 if self.max_bytes else 1
        intents = sum(int(v or 0) for v in values[::step])
        size = sum(int(v or 0) for v in values[1::2]) if self.max_bytes else None
        return BacklogReading(intents, size, now)

    def wait(self, lanes: tuple[str, ...]) -> None:
        """Return when the backlog of ``lanes`` is under its bound; raise :class:`BacklogFull`
        when it stays over it for ``max_wait_s``."""
        if not self.enabled:
            return
        reading = self.reading(lanes)
        if not self.over(reading):
            return
        self.waits += 1
        started = self._clock()
        log.warning("writer backlog over its bound: the producer waits before sending",
                    lanes=list(lanes), intents=reading.intents, bytes=reading.bytes,
                    max_intents=self.max_intents or None, max_bytes=self.max_bytes or None,
                    max_wait_s=self.max_wait_s)
        while True:
            waited = self._clock() - started
            if waited >= self.max_wait_s:
                raise BacklogFull(
                    f"the writer's backlog ({reading.intents} intents"
                    f"{'' if reading.bytes is None else f', {reading.bytes} bytes'}) stayed over"
                    f" WRITER_BACKLOG_MAX_INTENTS={self.max_intents} / WRITER_BACKLOG_MAX_BYTES"
                    f"={self.max_bytes} for {waited:.0f} s (WRITER_BACKLOG_MAX_WAIT_S): is the"
                    " writer running and PostgreSQL up?")
            self._sleep(min(self.check_s, max(0.0, self.max_wait_s - waited)) or 0.01)
            reading = self.reading(lanes, fresh=True)
            if not self.over(reading):
                log.info("writer backlog under its bound again: the producer goes on",
                         lanes=list(lanes), waited_s=round(self._clock() - started, 1),
                         intents=reading.intents, bytes=reading.bytes)
                return
