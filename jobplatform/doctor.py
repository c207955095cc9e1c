"""``jobplatform doctor``: a deployment checked against the incident's arithmetic and known traps.

Each check returns :class:`Finding` objects: ``ok``, ``warn`` or ``fail``, what was seen and,
for anything but ``ok``, the fix. This module checks Redis, S3 and the clocks; the database's
checks live in :mod:`writer.doctor` (only ``writer/`` connects to PostgreSQL).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import redis

from jobplatform.broker import heartbeats_key
from jobplatform.settings import Settings

__all__ = ["Finding", "check_clocks", "check_redis", "check_s3"]

Status = Literal["ok", "warn", "fail"]
#: Clock differences above this between hosts break heartbeat timeouts and ordering by time.
MAX_SKEW_S = 1.0


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail,
                "fix": self.fix}


def check_redis(client: redis.Redis) -> list[Finding]:
    """AOF persistence (a broker that loses its queues on restart loses jobs) and a
    ``maxmemory-policy`` that never evicts broker keys."""
    out: list[Finding] = []
    try:
        config: dict[str, Any] = {}
        for name in ("appendonly", "maxmemory-policy", "maxmemory"):
            config.update({_s(k): _s(v) for k, v in client.config_get(name).items()})
    except redis.ResponseError as exc:  # managed Redis may refuse CONFIG
        return [Finding("redis config", "warn", f"CONFIG GET refused ({exc})",
                        "Check in the provider's console: AOF (appendonly yes) on and "
                        "maxmemory-policy noeviction.")]
    if config.get("appendonly") == "yes":
        out.append(Finding("redis persistence", "ok", "appendonly yes"))
    else:
        out.append(Finding(
            "redis persistence", "warn",
            f"appendonly {config.get('appendonly', '?')}: a restart loses queued jobs and "
            "intents since the last snapshot",
            "CONFIG SET appendonly yes (and appendfsync everysec) in redis.conf or the "
            "provider's parameter group."))
    policy = config.get("maxmemory-policy", "?")
    if policy == "noeviction":
        out.append(Finding("redis maxmemory-policy", "ok", "noeviction"))
    else:
        out.append(Finding(
            "redis maxmemory-policy", "fail",
            f"{policy}: under memory pressure Redis deletes keys, messages and acks included",
            "Set maxmemory-policy noeviction (a full Redis then refuses writes, which the "
            "publishers see, instead of dropping jobs)."))
    return out


def check_clocks(client: redis.Redis, namespace: str, *, database_now: float | None = None,
                 local_now: float | None = None) -> list[Finding]:
    """This host's clock against Redis' and PostgreSQL's, and every broker consumer's last
    heartbeat (stamped with its own host's clock) against Redis' clock."""
    stamp: Any = client.time()
    redis_now = float(stamp[0]) + float(stamp[1]) / 1e6
    local = time.time() if local_now is None else local_now
    out: list[Finding] = []
    fix = "Run chrony or systemd-timesyncd on every host (on EC2: the Amazon Time Sync Service)."
    skews = {"this host vs redis": local - redis_now}
    if database_now is not None:
        skews["postgresql vs redis"] = database_now - redis_now
    for name, skew in skews.items():
        status: Status = "ok" if abs(skew) <= MAX_SKEW_S else "warn"
        out.append(Finding(f"clock: {name}", status, f"{skew:+.3f} s",
                           "" if status == "ok" else fix))
    ahead = []
    beats: Any = client.zrange(heartbeats_key(namespace), 0, -1, withscores=True)
    for raw, score in beats:
        skew = float(score) / 1000 - redis_now
        if skew > MAX_SKEW_S:
            ahead.append(f"{_s(raw)} {skew:+.1f} s")
    if ahead:
        out.append(Finding("clock: consumers", "warn",
                           "heartbeats from the future (their host's clock is ahead): "
                           + ", ".join(ahead[:5]), fix))
    else:
        out.append(Finding("clock: consumers", "ok", "no heartbeat ahead of Redis' clock"))
    return out


def check_s3(settings: Settings) -> list[Finding]:
    """The bucket exists and this process may put, read and delete an object in it."""
    import botocore.exceptions

    from jobplatform.s3 import s3_client

    client = s3_client(settings)
    bucket = settings.s3.bucket
    key = f"jobplatform-doctor/{uuid.uuid4()}"
    step = "HeadBucket"
    try:
        client.head_bucket(Bucket=bucket)
        step = "PutObject"
        client.put_object(Bucket=bucket, Key=key, Body=b"doctor")
        step = "GetObject"
        client.get_object(Bucket=bucket, Key=key)["Body"].read()
        step = "DeleteObject"
        client.delete_object(Bucket=bucket, Key=key)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        return [Finding("s3 permissions", "fail", f"{step} on s3://{bucket}: {exc}",
                        f"Create the bucket or grant s3:{step} on arn:aws:s3:::{bucket}/* "
                        "(ListBucket on the bucket itself) to the workers' role.")]
    finally:
        client.close()
    return [Finding("s3 permissions", "ok", f"head, put, get, delete on s3://{bucket}")]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
