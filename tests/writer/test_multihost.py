"""A multi-host run on one machine (network namespaces): a writer host is partitioned away.

Hosts: ``actor`` (the producer), ``w0`` and ``w1`` (the active writers of shards 0 and 1 of 2),
``ws`` (a standby host running a standby of each shard); the broker, Redis and PostgreSQL are
the services host, reached over the bridge. ``w0`` loses its network mid-stream: shard 0 fails
over to its standby on ``ws`` while shard 1 goes on, nothing is lost or applied twice, the
healed ``w0`` applies nothing more, and the hosts' logs replay into the same tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobplatform.broker import Queues
from jobplatform.settings import Settings
from tests.conftest import RABBITMQ_URL
from tests.writer import netns
from tests.writer.conftest import query, wait_until
from tests.writer.test_shards import drained, ledger, replay_matches, sharded, work
from writer.intentlog import LogReader

pytestmark = [pytest.mark.brokers, pytest.mark.slow, pytest.mark.netns]

ROOT = Path(__file__).parents[2]
HOSTS = ["actor", "w0", "w1", "ws"]

PRODUCE = """
import sys
from jobplatform.broker import Queues, build_broker
from jobplatform.emit import IntentEmitter
from jobplatform.settings import load_settings
from tests.writer.test_shards import work
settings = load_settings()
broker = build_broker(settings, settings.redis_url, set_global=False)
emitter = IntentEmitter(broker, Queues.from_settings(settings))
for intent in work(int(sys.argv[1])):
    emitter.emit(intent)
broker.close()
"""


@pytest.fixture
def network() -> Iterator[netns.Network]:
    why = netns.available()
    if why is not None:
        pytest.skip(why)
    with netns.Network(HOSTS) as made:
        yield made


def _moved(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}{host}:{port}"))


class Host:
    """Processes started on one host, their output in ``tmp_path``."""

    def __init__(self, network: netns.Network, name: str, env: dict[str, str],
                 tmp_path: Path) -> None:
        self.network = network
        self.name = name
        self.env = env
        self.tmp_path = tmp_path
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, label: str, argv: list[str], **env: str) -> tuple[subprocess.Popen[bytes],
                                                                      Path]:
        out = self.tmp_path / f"{self.name}-{label}.log"
        with out.open("wb") as sink:
            proc = subprocess.Popen(self.network.command(self.name, argv),
                                    env={**self.env, **env}, stdout=sink,
                                    stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append((proc, out))
        return proc, out

    def writer(self, shard: str, label: str) -> Path:
        _, out = self.start(label, [sys.executable, "-m", "jobplatform", "writer", "--shard",
                                    shard],
                            WRITER_LOG_DIR=str(self.tmp_path / f"log-{self.name}-{label}"))
        return out

    def run(self, argv: list[str]) -> None:
        proc, out = self.start(f"run{len(self.procs)}", argv)
        assert proc.wait(120) == 0, out.read_text(errors="replace")

    def close(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def events(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def roles(log: Path) -> list[str]:
    return [e["role"] for e in events(log) if e.get("event") == "writer role"]


def test_a_partitioned_writer_host_fails_over_to_its_standby_and_nothing_is_lost(
    settings: Settings, broker: Any, network: netns.Network, tmp_path: Path,
) -> None:
    two = sharded(settings, 2)
    db = conninfo_to_dict(str(settings.database_url))
    redis_target = urlsplit(str(settings.redis_url))
    targets = [(str(db.get("host") or "127.0.0.1"), int(db.get("port") or 5432)),
               (redis_target.hostname or "127.0.0.1", redis_target.port or 6379)]
    if settings.broker_url:
        amqp = urlsplit(settings.broker_url or RABBITMQ_URL)
        targets.append((amqp.hostname or "127.0.0.1", amqp.port or 5672))
    with netns.forwarders(*targets) as fwd:
        # Given the services reachable from every host over the bridge
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("WRITER_", "QUEUE_", "BROKER_", "DATABASE_", "REDIS_"))}
        env.update({
            "DATABASE_URL": make_conninfo(str(settings.database_url), host=netns.SERVICES_IP,
                                          port=fwd[0].port),
            "REDIS_URL": _moved(str(settings.redis_url), netns.SERVICES_IP, fwd[1].port),
            "BROKER_NAMESPACE": two.broker_namespace,
            "WRITER_SHARDS": "2", "WRITER_STATS_INTERVAL_S": "1",
            "QUEUE_WRITES_FAST": two.queue_writes_fast, "QUEUE_WRITES_BULK": two.queue_writes_bulk,
            "QUEUE_VIDEO": two.queue_video, "QUEUE_AI": two.queue_ai,
            "JOBPLATFORM_STATE_DIR": str(tmp_path / "state"), "LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
        })
        if settings.broker_url:
            env["BROKER_URL"] = _moved(settings.broker_url, netns.SERVICES_IP, fwd[2].port)
        hosts = {name: Host(network, name, env, tmp_path) for name in HOSTS}
        try:
            # ... an active writer of each shard on its own host
            w0 = hosts["w0"].writer("0/2", "shard0")
            w1 = hosts["w1"].writer("1/2", "shard1")
            wait_until(lambda: "active" in roles(w0) and "active" in roles(w1), timeout=60,
                       message="both shards active")
            # ... and a standby host with a standby of each
            s0 = hosts["ws"].writer("0/2", "standby0")
            s1 = hosts["ws"].writer("1/2", "standby1")
            wait_until(lambda: "standby" in roles(s0) and "standby" in roles(s1), timeout=60,
                       message="the standbys waiting")

            # When the actor host sends a stream, and w0 loses its network midway
            first, second = work(1), work(2)
            hosts["actor"].run([sys.executable, "-c", PRODUCE, "1"])
            wait_until(lambda: ledger(settings) >= len(first) // 3, timeout=60,
                       message="both shards applying")
            network.partition("w0")
            cut_at = datetime.now(UTC)
            hosts["actor"].run([sys.executable, "-c", PRODUCE, "2"])

            # Then shard 0 fails over to its standby, shard 1 never stops
            total = len(first) + len(second)
            wait_until(lambda: "active" in roles(s0), timeout=60,
                       message="shard 0's standby active")
            took_over = next(e["timestamp"] for e in events(s0)
                             if e.get("event") == "writer role" and e["role"] == "active")
            # (for a reader of the run: how long the failover took)
            (tmp_path / "timeline.json").write_text(json.dumps(
                {"partitioned": cut_at.isoformat(), "standby_active": took_over}))
            wait_until(lambda: ledger(settings) == total and drained(broker, two), timeout=90,
                       message="every intent applied and acked")
            assert "active" not in roles(s1)
            assert roles(w1)[-1] == "active"

            # And when w0 comes back and more intents arrive, it applies none of them: its
            # session (and lock) are gone, and shard 0 stays with the standby
            network.heal("w0")
            third = work(3)
            hosts["actor"].run([sys.executable, "-c", PRODUCE, "3"])
            total += len(third)
            wait_until(lambda: ledger(settings) == total and drained(broker, two), timeout=90,
                       message="the intents sent after the heal applied")
            assert roles(s0)[-1] == "active"
        finally:
            for host in hosts.values():
                host.close()

    # Nothing lost, nothing applied twice, and every host's log replays into the same tables
    url = str(settings.database_url)
    assert query(url, "SELECT count(*) FROM writer_dead_letters") == [(0,)]
    queues = Queues.from_settings(two)
    assert not any(broker.do_qsize(q) for q in queues.all_writes)
    folders = sorted(tmp_path.glob("log-*"))
    assert len(folders) >= 3
    with LogReader([tmp_path / "log-w0-shard0"]) as reader:
        late = [r.seq for r in reader.records() if r.at > cut_at + timedelta(seconds=1)]
    assert late == [], "the partitioned writer committed nothing after it was cut off"
    assert replay_matches(settings, folders) == total
