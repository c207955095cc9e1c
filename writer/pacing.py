"""Pacing: the database time budget and backoff with jitter."""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable


class DbBudget:
    """Keeps the share of wall time spent in database transactions under ``share``.

    A leaky bucket: credit accrues at ``share`` seconds of database time per wall second, up
    to ``burst_s``; each transaction spends its duration. When the credit is negative, the
    next transaction waits :meth:`delay` seconds. Over any interval ``T`` the database time
    stays under ``share * T + burst_s``. :meth:`used` is the measured share over the last
    ``window_s`` seconds.
    """

    def __init__(self, share: float, *, burst_s: float = 0.5, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share = share
        self.burst_s = burst_s
        self.window_s = window_s
        self._clock = clock
        self._credit = burst_s
        self._last = clock()
        self._started = self._last
        self._spans: deque[tuple[float, float]] = deque()

    def _refill(self, now: float) -> None:
        self._credit = min(self.burst_s, self._credit + (now - self._last) * self.share)
        self._last = now

    def delay(self) -> float:
        """Seconds to wait before the next transaction; 0 when within the budget."""
        if self.share >= 1:
            return 0.0
        self._refill(self._clock())
        return 0.0 if self._credit >= 0 else -self._credit / self.share

    def spent(self, start: float, end: float) -> None:
        """Record a transaction that ran from ``start`` to ``end`` (this budget's clock)."""
        self._refill(max(start, self._last))
        self._credit -= (end - max(start, self._last)) * (1 - self.share)
        self._last = max(end, self._last)
        self._spans.append((start, end))
        self._trim(end)

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        while self._spans and self._spans[0][1] <= horizon:
            self._spans.popleft()

    def used(self) -> float:
        """Share of the last ``window_s`` seconds (or of the time since start) spent busy."""
        now = self._clock()
        self._trim(now)
        horizon = now - self.window_s
        busy = sum(end - max(start, horizon) for start, end in self._spans)
        elapsed = min(self.window_s, now - self._started)
        return 0.0 if elapsed <= 0 else min(1.0, busy / elapsed)


class Backoff:
    """Exponential backoff with full jitter between ``base_s`` and ``cap_s``."""

    def __init__(self, base_s: float = 0.1, cap_s: float = 5.0) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempts = 0

    def next(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2**self.attempts)
        self.attempts = min(self.attempts + 1, 32)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0
