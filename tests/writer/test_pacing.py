from __future__ import annotations

import pytest

from writer.pacing import Backoff, DbBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_waits_so_the_busy_share_stays_under_the_budget() -> None:
    clock = Clock()
    budget = DbBudget(0.25, burst_s=0.0, window_s=100.0, clock=clock)
    busy = 0.0
    start = clock.now
    # A writer that would be busy all the time: 0.1 s transactions back to back
    for _ in range(200):
        clock.now += budget.delay()
        begin = clock.now
        clock.now += 0.1
        busy += 0.1
        budget.spent(begin, clock.now)
    elapsed = clock.now - start
    # At most the budget, plus the one transaction that starts on an empty account
    assert busy <= 0.25 * elapsed + 0.1
    assert busy / elapsed == pytest.approx(0.25, abs=0.005)
    assert budget.used() == pytest.approx(0.25, abs=0.01)


def test_budget_lets_a_burst_through_then_paces() -> None:
    clock = Clock()
    budget = DbBudget(0.5, burst_s=0.3, clock=clock)
    assert budget.delay() == 0
    budget.spent(clock.now, clock.now + 0.2)
    clock.now += 0.2
    assert budget.delay() == 0
    budget.spent(clock.now, clock.now + 0.4)
    clock.now += 0.4
    # 0.6 s busy in 0.6 s: the 0.3 s burst and the 0.3 s earned are used up
    assert budget.delay() == pytest.approx(0)
    budget.spent(clock.now, clock.now + 0.2)
    clock.now += 0.2
    # 0.1 s earned during that one, 0.2 s spent: 0.1 s owed, 0.2 s of wall time to earn it
    assert budget.delay() == pytest.approx(0.2)


def test_a_full_budget_never_waits() -> None:
    clock = Clock()
    budget = DbBudget(1.0, clock=clock)
    budget.spent(clock.now, clock.now + 50)
    assert budget.delay() == 0


def test_budget_rejects_a_share_out_of_range() -> None:
    with pytest.raises(ValueError, match="share"):
        DbBudget(0)


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(0.1, 5.0)
    delays = [backoff.next() for _ in range(12)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(d <= 5.0 for d in delays)
    assert delays[-1] >= 2.5
    backoff.reset()
    assert backoff.next() <= 0.1


def test_transactions_that_overlap_spend_the_wall_time_they_cover_once() -> None:
    # Given two budgets with the same history of busy wall time: one with a bulk transaction
    # alone, one where fast-lane transactions ran beside it on the second connection (one
    # inside it, one reaching past its end)
    clock = Clock()
    alone = DbBudget(0.5, burst_s=0.0, window_s=100.0, clock=clock)
    beside = DbBudget(0.5, burst_s=0.0, window_s=100.0, clock=clock)
    t = clock.now
    beside.spent(t + 0.02, t + 0.03)   # the fast one commits first, inside the bulk one
    beside.spent(t, t + 0.10)          # then the bulk transaction
    beside.spent(t + 0.09, t + 0.12)   # one more fast one, past the bulk one's end
    alone.spent(t, t + 0.12)
    clock.now = t + 0.12
    # Then both spent the same credit and report the same busy share: 0.12 s of 0.12 s
    assert beside.delay() == pytest.approx(alone.delay())
    assert beside.used() == pytest.approx(alone.used()) == pytest.approx(1.0)
    # And time after them that nothing covers is spent as usual
    clock.now += 0.5
    beside.spent(clock.now, clock.now + 0.1)
    alone.spent(clock.now, clock.now + 0.1)
    assert beside.delay() == pytest.approx(alone.delay())
