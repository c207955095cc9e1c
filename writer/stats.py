"""The writer's counters and its transaction-time histogram."""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

#: Counters reset by :meth:`WriterStats.pop`; every other field is a gauge.
COUNTERS = (
    "batches",          # batch transactions committed (bisection halves included)
    "intents",          # valid intents taken from the queues
    "applied",          # intents newly applied (not in the ledger before)
    "rows",             # rows the intents carried: their weights (a roster chunk its rows)
    "coalesced",        # intents merged into another intent's row change
    "skipped_duplicate",  # intents already in the ledger (redelivered or sent twice)
    "skipped_unchanged",  # rows already present and identical: no write
    "dead",             # intents and messages sent to writer_dead_letters
    "rejected",         # of which malformed messages (never reached the sink)
    "bisections",       # batch splits while isolating a poison intent
    "db_retries",       # transactions retried after a database outage
    "redis_retries",    # Redis calls retried after a connection error
    "lost_lock",        # times another writer held the lock when a batch began
    "acks",             # messages acknowledged
    "ledger_pruned",    # ledger ids deleted past WRITER_LEDGER_RETENTION_DAYS
    "log_retries",      # batch attempts the intent log could not record (held and retried)
)

#: The loop's stages whose wall time ``time_s`` sums (seconds; reset by :meth:`WriterStats.pop`).
STAGES = (
    "fetch",            # Redis fetches that brought messages (and the first one's envelope)
    "idle",             # polls of empty lanes (their wait included)
    "decode",           # the other messages' envelopes; inspecting and validating each intent
    "plan",             # the kinds' plans (coalescing), before the transaction
    "log_encode",       # the intent log's record encoded, before the transaction
    "begin",            # BEGIN, the lock, the batch number
    "ledger",           # the ledger claim
    "copy",             # the kinds' COPY statements (rows encoded and sent)
    "statements",       # the kinds' other statements (the roster's upsert among them)
    "kinds",            # the kinds' own Python inside the transaction, statements excluded
    "log",              # the intent log append and its fsync (after the other connection's
                        # COMMIT, when the fast lane's and the bulk work's meet there)
    "commit",           # COMMIT
    "ack",              # acknowledging the batch's messages
    "pace",             # waiting for the database time budget (bulk work held back by it)
)


class Histogram:
    """The last ``size`` samples; percentiles by nearest rank."""

    def __init__(self, size: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._samples.append(value)

    def __len__(self) -> int:
        return len(self._samples)

    def percentile(self, p: float) -> float:
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]

    def max(self) -> float:
        return max(self._samples, default=0.0)

    def mean(self) -> float:
        return sum(self._samples) / len(self._samples) if self._samples else 0.0

    def clear(self) -> None:
        self._samples.clear()


@dataclass
class WriterStats:
    """Counters since the last :meth:`pop` and the gauges of the latest state."""

    batches: int = 0
    intents: int = 0
    applied: int = 0
    rows: int = 0
    coalesced: int = 0
    skipped_duplicate: int = 0
    skipped_unchanged: int = 0
    dead: int = 0
    rejected: int = 0
    bisections: int = 0
    db_retries: int = 0
    redis_retries: int = 0
    lost_lock: int = 0
    acks: int = 0
    ledger_pruned: int = 0
    log_retries: int = 0
    # gauges
    role: str = "starting"
    lag_ms: float = 0.0
    """Age of the oldest message of the last committed batch when it committed."""
    lag_max_ms: float = 0.0
    db_share: float = 0.0
    """Measured share of wall time spent in database transactions (sliding window)."""
    db_budget: float = 1.0
    backlog_fast: int = -1
    backlog_bulk: int = -1
    batch_rows_cap: int = 0
    """Row cap of the next batch, sized for ``WRITER_TARGET_TXN_MS``."""
    ms_per_row: float = 0.0
    """Transaction milliseconds per row the batch sizer learned (0 before the first commit)."""
    intent_log_error: str = ""
    """Why the intent log cannot record the batch in hand (held, retried); empty when fine."""
    commit_ms: Histogram = field(default_factory=Histogram)
    """Duration of each batch transaction, BEGIN to COMMIT."""
    time_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    """Wall seconds spent in each of :data:`STAGES` (a counter of each, reset by pop)."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Held by :meth:`count`, :meth:`gauge`, :meth:`snapshot` and :meth:`pop`: the loop and
    the heartbeat thread update the stats while another thread reads them."""

    def count(self, **deltas: int) -> None:
        """Add to counters: ``stats.count(acks=3)``."""
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def spend(self, seconds: dict[str, float]) -> None:
        """Add to the time of stages: ``stats.spend({"ack": 0.002})``."""
        with self.lock:
            spent = self.time_s
            for name, value in seconds.items():
                spent[name] = spent.get(name, 0.0) + value

    def gauge(self, **values: Any) -> None:
        """Set gauges: ``stats.gauge(role="active")``."""
        with self.lock:
            for name, value in values.items():
                setattr(self, name, value)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self)
            if f.name not in ("commit_ms", "lock", "time_s")
        }
        out["time_s"] = {name: round(value, 4) for name, value in self.time_s.items()}
        out["commit_ms_count"] = len(self.commit_ms)
        out["commit_ms_mean"] = round(self.commit_ms.mean(), 2)
        out["commit_ms_p50"] = round(self.commit_ms.percentile(50), 2)
        out["commit_ms_p99"] = round(self.commit_ms.percentile(99), 2)
        out["commit_ms_max"] = round(self.commit_ms.max(), 2)
        out["lag_ms"] = round(self.lag_ms, 1)
        out["lag_max_ms"] = round(self.lag_max_ms, 1)
        out["db_share"] = round(self.db_share, 3)
        out["ms_per_row"] = round(self.ms_per_row, 4)
        return out

    def pop(self) -> dict[str, Any]:
        """The snapshot, then counters, the histogram and ``lag_max_ms`` reset."""
        with self.lock:
            out = self._snapshot()
            for name in COUNTERS:
                setattr(self, name, 0)
            self.commit_ms.clear()
            self.time_s = dict.fromkeys(STAGES, 0.0)
            self.lag_max_ms = 0.0
        return out
