"""Pacing: the database time budget and backoff with jitter."""

from __future__ import annotations

import random
import threading
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
        # The writer's loop and its fast lane's thread both spend and read it.
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._credit = min(self.burst_s, self._credit + (now - self._last) * self.share)
        self._last = now

    def delay(self) -> float:
        """Seconds to wait before the next transaction; 0 when within the budget."""
        if self.share >= 1:
            return 0.0
        with self._lock:
            self._refill(self._clock())
            return 0.0 if self._credit >= 0 else -self._credit / self.share

    def spent(self, start: float, end: float) -> None:
        """Record a transaction that ran from ``start`` to ``end`` (this budget's clock).

        The busy time is wall time with at least one of the writer's transactions open:
        where a transaction overlaps others already recorded (the fast lane's beside the
        bulk work's, on the writer's two connections), only the time they did not cover is
        spent."""
        with self._lock:
            if start >= self._last:
                self._refill(start)
                fresh = end - start
            else:
                fresh = (end - start) - _covered(start, end, self._spans)
            self._credit -= fresh * (1 - self.share)
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
        with self._lock:
            self._trim(now)
            horizon = now - self.window_s
            busy = _union_length([(max(s, horizon), e) for s, e in self._spans])
        elapsed = min(self.window_s, now - self._started)
        return 0.0 if elapsed <= 0 else min(1.0, busy / elapsed)


def _union_length(spans: list[tuple[float, float]]) -> float:
    """The time covered by at least one of ``spans``."""
    total = 0.0
    reach = float("-inf")
    for start, end in sorted(spans):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def _covered(start: float, end: float, spans: deque[tuple[float, float]]) -> float:
    """How much of ``[start, end]`` the recorded ``spans`` cover (they are recorded as they
    end, so the scan stops at the first that ended before ``start``)."""
    parts: list[tuple[float, float]] = []
    for s, e in reversed(spans):
        if e <= start:
            break
        if s < end:
            parts.append((max(s, start), min(e, end)))
    return _union_length(parts)


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
