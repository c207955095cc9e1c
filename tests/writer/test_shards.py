"""Tenant shards end to end, on each broker: routing, a standby per shard, resharding, replay."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobplatform.broker import Queues, build_broker, lane_backlog
from jobplatform.settings import Settings
from jobplatform.shards import ShardMap, ShardSpec
from schemas.intents import AnyIntent
from tests.writer.conftest import WriterThread, emit_all, scalar, wait_until
from tests.writer.log_live import snapshot
from tests.writer.log_samples import roster_import, student, video_lifecycle
from writer.engine import Writer
from writer.intentlog import IntentLog, LogReader, replay_log
from writer.pytest_plugin import scratch_database

pytestmark = pytest.mark.brokers

TENANTS = range(1, 9)


def sharded(settings: Settings, count: int, table: str = "") -> Settings:
    return settings.model_copy(update={"writer": settings.writer.model_copy(
        update={"shards": count, "shard_map": table, "stats_interval_s": 1.0})})


def work(part: int, tenants: range = TENANTS) -> list[AnyIntent]:
    """For each tenant: an import of 300 rows (part 2 renames half of them) and 5 videos."""
    out: list[AnyIntent] = []
    for tenant in tenants:
        rows = [student(n, name=f"p{part}-{n}" if part > 1 and n % 2 else None)
                for n in range(300)]
        out += roster_import(tenant, 1000 * tenant, rows, 10.0 * part, chunk_rows=100)
        for v in range(5):
            out += video_lifecycle(tenant, 100.0 * part + v)
    return out


class Shards:
    """Writers of shards in threads of this process, each with its broker and log folder."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings = settings
        self.tmp_path = tmp_path
        self.started: list[tuple[WriterThread, Any, IntentLog]] = []

    def start(self, settings: Settings, spec: ShardSpec, name: str) -> WriterThread:
        assert settings.redis_url is not None
        broker = build_broker(settings, settings.redis_url, set_global=False)
        log = IntentLog(self.tmp_path / f"log-{name}", shard=spec.index)
        writer = Writer.from_settings(settings, broker, shard=spec, log_writer=log,
                                      standby_poll_s=0.2, heartbeat_s=1.0, name=name)
        runner = WriterThread(writer).start()
        self.started.append((runner, broker, log))
        return runner

    def folders(self) -> list[Path]:
        return sorted(self.tmp_path.glob("log-*"))

    def close(self) -> None:
        for runner, broker, _ in self.started:
            if runner.thread.is_alive():
                runner.stop()
            broker.close()


@pytest.fixture
def shards(settings: Settings, tmp_path: Path) -> Iterator[Shards]:
    found = Shards(settings, tmp_path)
    yield found
    found.close()


def ledger(settings: Settings) -> int:
    return int(scalar(str(settings.database_url), "SELECT count(*) FROM writer_ledger"))


def drained(broker: Any, settings: Settings) -> bool:
    return sum(lane_backlog(broker, Queues.from_settings(settings)).values()) == 0


def replay_matches(settings: Settings, folders: list[Path]) -> int:
    """Replay every folder's log, merged, into an empty database: the same tables."""
    url = str(settings.database_url)
    with LogReader(folders) as reader, scratch_database(url, prefix="jp_shards") as replica:
        summary = replay_log(replica, reader)
        assert snapshot(replica) == snapshot(url)
    return summary.intents_applied


def test_two_shards_apply_their_own_tenants_a_standby_takes_over_and_replay_is_exact(
    settings: Settings, broker: Any, shards: Shards,
) -> None:
    # Given producers routing to 2 shards, tenant 3 pinned to shard 1 by the table
    two = sharded(settings, 2, "3=1")
    routing = ShardMap(2, {3: 1})
    assert routing.shard_of(3) == 1
    intents = work(1)
    emit_all(broker, two, intents)
    lanes = Queues.from_settings(two)
    assert set(lanes.all_writes) == {f"{q}.{k}" for k in (0, 1) for q in lanes.writes}

    # When shard 0 runs one writer, and shard 1 an active writer and a standby
    s0 = shards.start(two, ShardSpec(0, 2), "s0")
    s1 = shards.start(two, ShardSpec(1, 2), "s1a")
    wait_until(lambda: s1.writer.active, message="shard 1 active")
    standby = shards.start(two, ShardSpec(1, 2), "s1b")
    wait_until(lambda: s0.writer.get_stats()["applied"] > 0, message="shard 0 applying")
    # ... and shard 1's active writer stops midway: its standby takes over
    s1.stop()
    wait_until(lambda: standby.writer.active, message="shard 1's standby active")
    wait_until(lambda: ledger(settings) == len(intents) and drained(broker, two),
               timeout=60, message="every intent applied and acked")

    # Then each shard applied exactly its own tenants' intents, under its own lock
    assert s0.writer.settings.lock_key + 1 == standby.writer.settings.lock_key
    with LogReader(shards.folders()) as reader:
        records = list(reader.records())
    assert {r.shard for r in records} == {0, 1}
    for record in records:
        assert {routing.shard_of(i.tenant_id) for i in record.intents} == {record.shard}
    # And no batch is in the log twice, nor missing: replay yields the same tables
    assert len({r.key for r in records}) == len(records)
    assert replay_matches(settings, shards.folders()) == len(intents)


def test_resharding_from_one_to_two_shards_drains_then_resumes_and_replay_is_exact(
    settings: Settings, broker: Any, shards: Shards, tmp_path: Path,
) -> None:
    # Given one writer (one shard) applying part 1
    one = sharded(settings, 1)
    first = work(1)
    emit_all(broker, one, first)
    single = shards.start(one, ShardSpec(), "one")

    # When the producers stop, and `jobplatform writer drain` says the lanes are empty
    wait_until(lambda: ledger(settings) == len(first), timeout=60, message="part 1 applied")
    assert _drain(one, tmp_path)["drained"]
    single.stop()
    assert _drain(one, tmp_path)["drained"]  # nothing came back from the stopped writer

    # ... WRITER_SHARDS becomes 2, two shard writers start and the producers resume
    two = sharded(settings, 2)
    second = work(2)
    emit_all(broker, two, second)
    assert _drain(two, tmp_path, timeout=0)["drained"] is False  # part 2 waits in 2 shards
    shards.start(two, ShardSpec(0, 2), "s0")
    shards.start(two, ShardSpec(1, 2), "s1")
    total = len(first) + len(second)
    wait_until(lambda: ledger(settings) == total and drained(broker, two), timeout=60,
               message="part 2 applied")

    # Then part 2's renames won where they came last, and the three logs replay exactly
    url = str(settings.database_url)
    renamed = scalar(url, "SELECT count(*) FROM students WHERE name LIKE %s", ["p2-%"])
    assert renamed == 150 * len(TENANTS)
    assert replay_matches(settings, shards.folders()) == total


def _drain(settings: Settings, tmp_path: Path, timeout: float = 30) -> dict[str, Any]:
    """``jobplatform writer drain --json`` for ``settings``, in a subprocess."""
    env = {
        "REDIS_URL": str(settings.redis_url),
        "BROKER_NAMESPACE": settings.broker_namespace,
        "WRITER_SHARDS": str(settings.writer.shards),
        "QUEUE_WRITES_FAST": settings.queue_writes_fast,
        "QUEUE_WRITES_BULK": settings.queue_writes_bulk,
        "QUEUE_VIDEO": settings.queue_video,
        "QUEUE_AI": settings.queue_ai,
        "JOBPLATFORM_STATE_DIR": str(tmp_path / "state-cli"),
        "STACK_USE_LOCAL": "true",
        "PATH": "/usr/bin:/bin",
        **({"BROKER_URL": settings.broker_url} if settings.broker_url else {}),
        # the session's S3, so that the command starts no embedded one that would outlive it
        **({"S3_ENDPOINT_URL": settings.s3.endpoint_url,
            "S3_ACCESS_KEY_ID": settings.s3.access_key_id or "",
            "S3_SECRET_ACCESS_KEY": settings.s3.secret_access_key or ""}
           if settings.s3.endpoint_url else {}),
    }
    done = subprocess.run([sys.executable, "-m", "jobplatform", "writer", "drain", "--json",
                           "--timeout", str(timeout)], env=env, capture_output=True,
                          text=True, timeout=120, check=False,
                          cwd=Path(__file__).parents[2])
    assert done.returncode in (0, 1), done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["shards"] == settings.writer.shards
    assert (done.returncode == 0) == result["drained"]
    return result
