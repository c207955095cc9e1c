"""What goes into one batch: limits by intents, rows and bytes, and the bulk lane's share."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

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

    def scaled(self, share: float) -> Limits:
        return Limits(*(max(1, math.floor(v * share)) for v in (self.intents, self.rows,
                                                                self.bytes)))


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
