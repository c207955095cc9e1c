"""Live progress of running jobs, kept in Redis only (never in PostgreSQL).

A job's progress is one Redis hash, ``<namespace>:progress:<job_id>``, expiring a week after its
last update. Writers are throttled so a tight loop costs a few Redis calls a second.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

PROGRESS_TTL_S = 7 * 24 * 3600


def writer_stats_key(namespace: str, shard: int | None = None) -> str:
    """Where the active writer (of ``shard``, when sharded) publishes its stats (JSON); it
    expires when the writer stops."""
    base = f"{namespace}:writer:stats"
    return base if shard is None else f"{base}:{shard}"


class ProgressStore:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def key(self, job_id: str) -> str:
        return f"{self.namespace}:progress:{job_id}"

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields of the job's record (values JSON-encoded), plus ``updated_at``."""
        mapping: dict[FieldT, EncodableT] = {
            k: json.dumps(v) for k, v in fields.items()
        }
        mapping["updated_at"] = json.dumps(time.time())
        key = self.key(job_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, PROGRESS_TTL_S)
        pipe.execute()

    def get(self, job_id: str) -> dict[str, Any]:
        raw = self.client.hgetall(self.key(job_id))
        return {_text(k): json.loads(v) for k, v in raw.items()}

    def reporter(self, job_id: str, interval_s: float) -> ProgressReporter:
        return ProgressReporter(self, job_id, interval_s)


class ProgressReporter:
    """Writes one job's progress at most once per ``interval_s``; ``final`` always writes."""

    def __init__(self, store: ProgressStore, job_id: str, interval_s: float) -> None:
        self.store = store
        self.job_id = job_id
        self.interval_s = interval_s
        self._last = float("-inf")

    def report(self, *, final: bool = False, **fields: Any) -> bool:
        now = time.monotonic()
        if not final and now - self._last < self.interval_s:
            return False
        self._last = now
        self.store.update(self.job_id, **fields)
        return True


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
