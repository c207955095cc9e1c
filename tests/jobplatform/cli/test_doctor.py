"""``jobplatform doctor`` against the real local services."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from jobplatform.broker import heartbeats_key
from jobplatform.cli import cli
from jobplatform.doctor import check_clocks, check_s3
from jobplatform.settings import Settings
from tests.writer.conftest import scalar
from writer.doctor import check_database


def _by_check(findings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["check"]: f for f in findings}


def test_doctor_reports_each_check_from_the_services(settings: Settings) -> None:
    assert settings.database_url is not None
    assert settings.redis_url is not None
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "BROKER_NAMESPACE": settings.broker_namespace,
           "S3_BUCKET": os.environ["S3_BUCKET"],
           "JOBPLATFORM_STATE_DIR": str(settings.jobplatform_state_dir)}
    # Given the bucket exists
    from jobplatform.s3 import s3_client

    s3_client(settings).create_bucket(Bucket=settings.s3.bucket)
    # When the doctor runs
    result = CliRunner().invoke(cli, ["doctor", "--json"], env=env)
    findings = _by_check(json.loads(result.output))
    # Then every check is there, with what the services say
    assert {"connections", "pooler", "redis persistence", "redis maxmemory-policy",
            "clock: this host vs redis", "clock: postgresql vs redis", "clock: consumers",
            "s3 permissions"} <= set(findings)
    max_connections = int(scalar(settings.database_url, "SHOW max_connections"))
    assert f"max_connections {max_connections} " in findings["connections"]["detail"]
    assert findings["pooler"]["status"] == "ok"  # a direct connection
    assert findings["s3 permissions"]["status"] == "ok"
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    appendonly = client.config_get("appendonly")["appendonly"]
    policy = client.config_get("maxmemory-policy")["maxmemory-policy"]
    client.close()
    assert findings["redis persistence"]["status"] == ("ok" if appendonly == "yes" else "warn")
    assert (findings["redis maxmemory-policy"]["status"] == "ok") == (policy == "noeviction")
    for finding in findings.values():
        assert finding["status"] == "ok" or finding["fix"], finding
    failed = any(f["status"] == "fail" for f in findings.values())
    assert result.exit_code == (1 if failed else 0), result.output


def test_a_formation_over_the_connection_limit_fails_with_its_fix(settings: Settings) -> None:
    assert settings.database_url is not None
    max_connections = int(scalar(settings.database_url, "SHOW max_connections"))
    [connections, _] = check_database(settings.database_url, writers=2,
                                      others=max_connections)
    assert connections.status == "fail"
    assert f"{max_connections} others" in connections.detail
    assert "Only the writer connects" in connections.fix
    [fits, _] = check_database(settings.database_url, writers=2, others=0)
    # two writers (one connection each), the active one's fast lane, the CLI
    assert "needs 4 (2 writers, 1 fast lane, 0 others, 1 CLI)" in fits.detail
    [one_lane, _] = check_database(settings.database_url, writers=2, others=0,
                                   fast_connection=False)
    assert "needs 3 (2 writers, 0 others, 1 CLI)" in one_lane.detail
    in_use = int(scalar(settings.database_url, "SELECT count(*) FROM pg_stat_activity "
                                               "WHERE backend_type = 'client backend'"))
    assert fits.status == ("ok" if in_use + 3 < 0.8 * max_connections else "fail")


def test_a_host_whose_clock_is_ahead_is_named(bus_settings: Settings) -> None:
    assert bus_settings.redis_url is not None
    client = redis.Redis.from_url(bus_settings.redis_url)
    ns = bus_settings.broker_namespace
    client.zadd(heartbeats_key(ns), {"fast-host": (time.time() + 30) * 1000,
                                     "good-host": time.time() * 1000})
    findings = {f.check: f for f in check_clocks(client, ns)}
    client.close()
    assert findings["clock: consumers"].status == "warn"
    assert "fast-host +30" in findings["clock: consumers"].detail
    assert "good-host" not in findings["clock: consumers"].detail
    assert findings["clock: this host vs redis"].status == "ok"  # one machine here


def test_a_missing_bucket_fails_naming_the_call(bus_settings: Settings) -> None:
    settings = bus_settings.model_copy(update={"s3": bus_settings.s3.model_copy(
        update={"bucket": "jp-doctor-none"})})
    [finding] = check_s3(settings)
    assert finding.status == "fail"
    assert "HeadBucket on s3://jp-doctor-none" in finding.detail
    assert "s3:HeadBucket" in finding.fix


@pytest.mark.parametrize("url", ["postgresql://u@db.proxy-abc.us-east-1.rds.amazonaws.com/x"])
def test_host_port_reads_urls(url: str) -> None:
    from writer.doctor import _host_port

    assert _host_port(url) == ("db.proxy-abc.us-east-1.rds.amazonaws.com", 5432)
