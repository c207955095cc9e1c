from __future__ import annotations

import redis

from jobplatform.progress import ProgressStore


def test_progress_round_trip_and_throttle(redis_url: str, redis_namespace: str) -> None:
    store = ProgressStore(redis.Redis.from_url(redis_url), redis_namespace)
    reporter = store.reporter("video:1", interval_s=60)

    assert reporter.report(percent=10.0, step="encode")
    # Within the interval a second update is dropped, unless it is final.
    assert not reporter.report(percent=20.0, step="encode")
    assert store.get("video:1")["percent"] == 10.0
    assert reporter.report(final=True, percent=100.0, step="done")

    record = store.get("video:1")
    assert record["percent"] == 100.0
    assert record["step"] == "done"
    assert store.client.ttl(store.key("video:1")) > 0
