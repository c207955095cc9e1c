"""End to end: the real writer process, killed with -9 at several points, then its log replayed.

The writers run as ``python -m jobplatform writer`` with the intent log on (each in a folder of
its own, as on separate machines; a restarted one reuses its folder). After the stream is fully
applied, the folders are replayed into an empty database: the tables must be equal by natural
keys and values, and every intent in the ledger must be in the log.

Kill points: the active writer after its first batches; the standby that took over, mid-stream;
a restarted writer after one batch; and one killed exactly between a log append and its COMMIT
(a batch in the log the database never committed, applied again after redelivery).
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobplatform.settings import Settings
from schemas.intents import AnyIntent
from tests.writer.conftest import WriterProcess, emit_all, held_messages, scalar, wait_until
from tests.writer.log_live import snapshot
from tests.writer.log_samples import roster_import, student, video_lifecycle
from writer.intentlog import LogReader, replay_log
from writer.pytest_plugin import scratch_database

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

#: Loaded at interpreter start-up by a writer process given this folder on PYTHONPATH: after
#: the N-th intent log append returns (the record is durable), the process kills itself with
#: SIGKILL, before the batch's COMMIT.
KILL_AFTER_APPEND = """
import os
import signal

_after = int(os.environ.get("KILL_AFTER_APPENDS", "0"))
if _after:
    from writer.intentlog.log import IntentLog

    _append = IntentLog.append
    _count = [0]

    def append(self, batch_seq, intents):
        _append(self, batch_seq, intents)
        _count[0] += 1
        if _count[0] >= _after:
            os.kill(os.getpid(), signal.SIGKILL)

    IntentLog.append = append
"""


def stream(tenant: int, part: int) -> list[AnyIntent]:
    """Imports that overlap (renames, re-imports) interleaved with video lifecycles."""
    lecture = 100 * tenant + part
    base = 4000 * part
    imports = [
        roster_import(tenant, lecture, [student(base + n) for n in range(6000)], 0,
                      chunk_rows=200),
        roster_import(tenant, lecture, [student(base + n, name=f"새이름{n}")
                                        for n in range(3000, 9000)], 50, chunk_rows=200),
    ]
    videos = [video_lifecycle(tenant, 10 * v, fail=v % 7 == 0) for v in range(120)]
    out: list[AnyIntent] = []
    rng = random.Random(part)
    queues: list[list[AnyIntent]] = [*imports, *videos]
    while queues:  # interleave, keeping each entity's own order
        source = rng.choice(queues)
        out.append(source.pop(0))
        if not source:
            queues.remove(source)
    return out


def ledger(settings: Settings) -> int:
    return int(scalar(str(settings.database_url), "SELECT count(*) FROM writer_ledger"))


def all_done(settings: Settings, broker: Any, total: int) -> bool:
    lanes = (settings.queue_writes_fast, settings.queue_writes_bulk)
    return ledger(settings) == total and all(
        broker.do_qsize(q) == 0 and held_messages(broker, q) == 0 for q in lanes)


@pytest.fixture
def e2e_settings(settings: Settings) -> Settings:
    """The test's settings on a Redis database of its own: a long run must not lose its queues
    to another test session flushing the shared test database."""
    assert settings.redis_url is not None
    return settings.model_copy(update={"redis_url": settings.redis_url.rsplit("/", 1)[0] + "/12"})


@pytest.fixture
def e2e_broker(e2e_settings: Settings) -> Iterator[Any]:
    from jobplatform.broker import build_broker

    assert e2e_settings.redis_url is not None
    broker = build_broker(e2e_settings, e2e_settings.redis_url, set_global=False)
    yield broker
    for key in broker.client.scan_iter(match=f"{e2e_settings.broker_namespace}*"):
        broker.client.delete(key)
    broker.close()


@pytest.fixture
def e2e_writer(e2e_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., WriterProcess]]:
    started: list[WriterProcess] = []

    def start(name: str, **env: str) -> WriterProcess:
        started.append(WriterProcess(e2e_settings, tmp_path, name, env))
        return started[-1]

    yield start
    for process in started:
        process.close()


def test_kill_9_at_several_points_then_replay_yields_the_same_tables(
    e2e_settings: Settings, e2e_broker: Any, e2e_writer: Callable[..., WriterProcess],
    tmp_path: Path,
) -> None:
    settings, broker, writer_process = e2e_settings, e2e_broker, e2e_writer
    folders = {name: tmp_path / f"log-{name}" for name in ("a", "b")}
    # Paced, smaller batches: more commits, so the kills land between them
    env = {"WRITER_BATCH_MAX_ROWS": "600",
           "WRITER_LOG_SEGMENT_BYTES": str(256 * 1024)}
    first, second = stream(7, 1), stream(8, 2)
    total = len(first) + len(second)
    emit_all(broker, settings, first)

    # Given an active writer "a" and a standby "b", each logging to its own folder
    a = writer_process("a", WRITER_LOG_DIR=str(folders["a"]), **env)
    wait_until(lambda: a.has_logged('"writer active"'), message="writer a active")
    b = writer_process("b", WRITER_LOG_DIR=str(folders["b"]), **env)

    # When "a" is killed right after its first batches...
    wait_until(lambda: ledger(settings) >= 50, message="writer a applying")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    # ... "b" takes over, more intents arrive, and "b" is killed mid-stream
    emit_all(broker, settings, second)
    already = ledger(settings)
    wait_until(lambda: ledger(settings) >= already + total // 4, timeout=60,
               message="writer b applying")
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    # ... "a" restarts on its folder and is killed again, then restarts and finishes
    a2 = writer_process("a2", WRITER_LOG_DIR=str(folders["a"]), **env)
    already = ledger(settings)
    wait_until(lambda: ledger(settings) > already, timeout=60, message="writer a2 applying")
    a2.proc.send_signal(signal.SIGKILL)
    a2.proc.wait(10)
    # ... "a3" kills itself (-9) exactly after a log append, before its COMMIT ...
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(KILL_AFTER_APPEND)
    a3 = writer_process("a3", WRITER_LOG_DIR=str(folders["a"]), KILL_AFTER_APPENDS="2",
                        PYTHONPATH=os.pathsep.join([str(inject), str(ROOT)]), **env)
    assert a3.proc.wait(60) == -signal.SIGKILL
    # ... and "a4" finishes the stream, then stops on SIGTERM
    a4 = writer_process("a4", WRITER_LOG_DIR=str(folders["a"]), **env)
    wait_until(lambda: all_done(settings, broker, total), timeout=120,
               message="every intent applied and acked")
    assert a4.terminate() == 0

    # Then every intent the database reflects is in the log
    with LogReader(list(folders.values())) as reader:
        logged = {i.intent_id for r in reader.records() for i in r.intents}
        applied = {row[0] for row in snapshot(str(settings.database_url))["ledger"]}
        assert applied <= logged
        assert len(applied) == total
        writers = {r.writer.split(":")[1] for r in reader.records()}
        assert len(writers) >= 3  # a, b, a2 or a3 each logged batches

        # And replayed into an empty database, the log yields the same tables
        with scratch_database(str(settings.database_url), prefix="jp_e2e") as replica:
            summary = replay_log(replica, reader)
            assert snapshot(replica) == snapshot(str(settings.database_url))
            again = replay_log(replica, reader)
            assert again.intents_applied == 0
            assert snapshot(replica) == snapshot(str(settings.database_url))
    assert summary.intents_applied == total
    # The batch "a3" logged but never committed was redelivered, applied and logged by "a4"
    assert summary.intents_superseded > 0
    assert not any("error" in n for n in summary.notes)
