"""What goes into one batch: limits by intents, rows and bytes, the bulk lane's share, and the
row cap that keeps a batch's transaction near ``WRITER_TARGET_TXN_MS``."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

from jobplatform.settings import WriterSettings
from writer.lanes import Item


@dataclass(frozen=True, slots=True)
class Limits:
    intents: int
    rows: int
    bytes: int

    @classmethod
    def from_settings(cls, settings: WriterSettings) -> Limits:
        return cls(settings.batch_max_intents, settings.batch_max_rows, settings.batch_max_bytes)

    def with_rows(self, rows: int) -> Limits:
        return replace(self, rows=rows)

    def scaled(self, share: float) -> Limits:
        return Limits(*(max(1, math.floor(v * share)) for v in (self.intents, self.rows,
                                                                self.bytes)))


class BatchSizer:
    """Caps the rows of the next batch so that its transaction stays under ``target_ms``.

    Pure: fed the rows and the transaction time of each committed batch (a status intent
    counts as one row, as in the batch limits). The time per row is the ratio of two moving
    averages, of milliseconds and of rows, so a batch weighs by its size: a lone status change
    barely moves it. A fixed cost per transaction is amortised: with ``ms = fixed + per_row *
    rows`` the cap settles at ``(target_ms - fixed) / per_row``.

    The cap is sized on an upper estimate, not the mean: a moving average of how far batches
    ran over the mean's prediction (relative, upward only, at most 100%, weighed by batch
    size) is added ``spread`` times, so the slow batches - not the typical one - land near the
    target. A database that never varies has no excess and the cap settles as above.

    The cap starts at ``min_rows`` (a writer that starts on a backlog does not begin with its
    longest transaction) and stays within ``[min_rows, max_rows]``.
    """

    def __init__(self, target_ms: float, min_rows: int, max_rows: int, *,
                 weight: float = 0.25, spread: float = 3.0) -> None:
        if target_ms <= 0 or max_rows < 1 or not 0 < weight <= 1 or spread < 0:
            raise ValueError(f"invalid sizer: target_ms={target_ms}, max_rows={max_rows}, "
                             f"weight={weight}, spread={spread}")
        self.target_ms = target_ms
        self.max_rows = max_rows
        self.min_rows = max(1, min(min_rows, max_rows))
        self.weight = weight
        self.spread = spread
        self.rows = self.min_rows
        """The row cap of the next batch."""
        self._ms = 0.0
        self._rows = 0.0
        self._excess = 0.0

    @property
    def ms_per_row(self) -> float | None:
        """Transaction milliseconds per row, as learned (the mean); None before a batch."""
        return self._ms / self._rows if self._rows else None

    @property
    def excess(self) -> float:
        """How far batches ran over the mean's prediction, as a moving average (0.5: 50%)."""
        return self._excess

    def observe(self, rows: int, ms: float) -> int:
        """Learn from a committed batch of ``rows`` rows that took ``ms``; the new cap."""
        rows = max(1, rows)
        ms = max(0.0, ms)
        if not self._rows:
            self._ms, self._rows = ms, float(rows)
        else:
            predicted = self._ms / self._rows * rows
            over = min(1.0, max(0.0, ms / predicted - 1)) if predicted > 0 else 0.0
            share = self.weight * min(1.0, rows / self._rows)
            self._excess += share * (over - self._excess)
            self._ms += self.weight * (ms - self._ms)
            self._rows += self.weight * (rows - self._rows)
        per_row = self._ms / self._rows * (1 + self.spread * self._excess)
        fits = self.target_ms / per_row if per_row > 0 else float(self.max_rows)
        self.rows = int(min(self.max_rows, max(self.min_rows, fits)))
        return self.rows


@dataclass(slots=True)
class _Load:
    intents: int = 0
    rows: int = 0
    bytes: int = 0

    def fits(self, item: Item, limits: Limits) -> bool:
        rows = item.rows if item.intent is not None else 0
        return (self.intents + 1 <= limits.intents and self.rows + rows <= limits.rows
                and self.bytes + item.size <= limits.bytes)

    def add(self, item: Item) -> None:
        self.intents += 1
        self.rows += item.rows if item.intent is not None else 0
        self.bytes += item.size


@dataclass(slots=True)
class Batch:
    """Items in the order taken; an empty batch accepts any one item, however large."""

    items: list[Item] = field(default_factory=list)
    started: float = 0.0
    total: _Load = field(default_factory=_Load)
    bulk: _Load = field(default_factory=_Load)
    fast_count: int = 0

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Item, limits: Limits, *, bulk_limits: Limits | None = None) -> bool:
        """Add ``item`` if it fits (``bulk_limits`` set: it comes from the bulk lane)."""
        if self.items:
            if not self.total.fits(item, limits):
                return False
            if bulk_limits is not None and not self.bulk.fits(item, bulk_limits):
                return False
        else:
            self.started = time.monotonic()
        self.items.append(item)
        self.total.add(item)
        if bulk_limits is not None:
            self.bulk.add(item)
        else:
            self.fast_count += 1
        return True

    def add_all(self, items: list[Item], limits: Limits, *,
                bulk_limits: Limits | None = None) -> list[Item]:
        """Add items in order until one does not fit; return those left out."""
        for i, item in enumerate(items):
            if not self.add(item, limits, bulk_limits=bulk_limits):
                return items[i:]
        return []

    def full(self, limits: Limits) -> bool:
        return (self.total.intents >= limits.intents or self.total.rows >= limits.rows
                or self.total.bytes >= limits.bytes)

    def age_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000 if self.items else 0.0

    @property
    def valid(self) -> list[Item]:
        return [item for item in self.items if item.intent is not None]

    @property
    def rejected(self) -> list[Item]:
        return [item for item in self.items if item.intent is None]

    def oldest_ms(self) -> int:
        return min((item.timestamp_ms for item in self.items), default=0)
