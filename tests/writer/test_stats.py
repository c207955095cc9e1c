from __future__ import annotations

from writer.stats import Histogram, WriterStats


def test_histogram_percentiles_by_nearest_rank() -> None:
    histogram = Histogram(size=1000)
    for value in range(1, 101):
        histogram.add(float(value))
    assert histogram.percentile(50) == 50
    assert histogram.percentile(99) == 99
    assert histogram.max() == 100
    assert histogram.mean() == 50.5
    assert Histogram().percentile(99) == 0
    assert Histogram().mean() == 0


def test_pop_resets_counters_and_keeps_gauges() -> None:
    stats = WriterStats(batches=3, applied=10, role="active", lag_ms=12.0, lag_max_ms=40.0)
    stats.commit_ms.add(5.0)
    stats.commit_ms.add(15.0)
    popped = stats.pop()
    assert popped["commit_ms_mean"] == 10.0
    assert popped["batches"] == 3
    assert popped["commit_ms_max"] == 15.0
    after = stats.snapshot()
    assert after["batches"] == 0
    assert after["applied"] == 0
    assert after["commit_ms_count"] == 0
    assert after["lag_max_ms"] == 0
    assert after["role"] == "active"
    assert after["lag_ms"] == 12.0
