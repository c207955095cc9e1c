"""Fencing a hung writer, and the writer around lost sessions and outages.

- A standby takes over within 5 s of a SIGSTOP of the active writer, or of a frozen network
  path to it (a proxy that stops forwarding and closes nothing), and the old writer stands
  down when it wakes, applying nothing more.
- A writer that lost its lock while idle notices within a bound and stops calling itself
  active: only one writer is active at a time.
- An intent log that cannot write (a full disk) keeps the session and the lock: the batch is
  held and retried, and nothing is handed over.
- A writer started while PostgreSQL is down waits as a standby and starts when it is back.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import make_conninfo

from bench._servers import TcpProxy
from jobplatform.progress import writer_stats_key
from jobplatform.settings import Settings
from tests.writer.conftest import (
    WriterProcess,
    WriterThread,
    emit_all,
    proxied_url,
    query,
    scalar,
    wait_until,
)
from tests.writer.intent_factory import chunks, queued, ready, student
from tests.writer.private_pg import private_postgres
from writer import lock
from writer.db import ClientTimeout, connect, session_options
from writer.engine.session import writer_pool
from writer.intentlog import IntentLog
from writer.metrics import writer_readiness

#: The takeover target: a standby active within this of the active writer hanging.
TAKEOVER_S = 5.0


def _url(settings: Settings) -> str:
    assert settings.database_url is not None
    return settings.database_url


def _ledger(settings: Settings) -> int:
    return int(scalar(_url(settings), "SELECT count(*) FROM writer_ledger"))


def _drained(broker: Any, settings: Settings) -> bool:
    return all(broker.do_qsize(q) == 0
               for q in (settings.queue_writes_fast, settings.queue_writes_bulk))


def _holder(settings: Settings) -> int | None:
    with connect(_url(settings), autocommit=True, application_name="jobplatform-test") as conn:
        return lock.holder_pid(conn, settings.writer.lock_key)


def _roles(process: WriterProcess) -> list[str]:
    roles = []
    for line in process.output().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "writer role":
                roles.append(str(event["role"]))
    return roles


def _log_seqs(folder: Path) -> list[int]:
    """Batch numbers of the records in the intent log segments of ``folder``."""
    seqs = []
    for path in sorted(folder.glob("*")):
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                lines = stream.read().splitlines()
        elif path.is_file() and not path.name.endswith(".partial"):
            lines = path.read_bytes().splitlines()
        else:
            continue
        seqs += [int(json.loads(line)["seq"]) for line in lines if line.strip()]
    return seqs


def _committed(settings: Settings, seqs: list[int]) -> set[int]:
    """Those of the batches numbered ``seqs`` that committed (they have ledger rows)."""
    rows = query(_url(settings), "SELECT DISTINCT batch_seq FROM writer_ledger "
                 "WHERE batch_seq = ANY(%s)", [seqs])
    return {int(row[0]) for row in rows}


def _check_exactly_once(settings: Settings, import_id: uuid.UUID, rows: int, chunk_count: int,
                        videos: list[uuid.UUID]) -> None:
    url = _url(settings)
    assert scalar(url, "SELECT count(*) FROM students") == rows
    assert scalar(url, "SELECT chunks_applied FROM roster_imports WHERE id = %s",
                  [import_id]) == chunk_count, "a chunk applied twice (or lost)"
    assert scalar(url, "SELECT count(*) FROM videos WHERE id = ANY(%s) AND status = 'ready'",
                  [videos]) == len(videos)
    assert query(url, "SELECT reason FROM writer_dead_letters") == []


@pytest.mark.slow
def test_sigstop_of_the_active_writer_hands_over_within_5_s_and_it_stands_down_on_waking(
    settings: Settings, broker: Any, writer_process: Callable[..., WriterProcess],
    tmp_path: Path,
) -> None:
    # Given an active writer process and a standby process, in the middle of a stream
    active = writer_process("a")
    wait_until(lambda: "active" in _roles(active), message="writer a active")
    standby = writer_process("b")
    wait_until(lambda: "standby" in _roles(standby), message="writer b standing by")
    import_id = uuid.uuid4()
    roster = chunks(import_id, [student(n) for n in range(20_000)], 500)
    videos = [uuid.uuid4() for _ in range(300)]
    emit_all(broker, settings, [*roster, *map(queued, videos), *map(ready, videos)])
    wait_until(lambda: _ledger(settings) >= 1, message="writer a applying")

    # When the active writer is stopped (SIGSTOP: alive, its sockets open)
    os.kill(active.proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # Then the standby takes the lock within 5 s and finishes the stream
        wait_until(lambda: "active" in _roles(standby), timeout=TAKEOVER_S, interval=0.02,
                   message="writer b taking over")
        takeover_s = time.monotonic() - stopped
        log_a = tmp_path / "state-a" / "intent-log"
        logged = _log_seqs(log_a)
        # What it logged and had not committed when it was fenced must never commit.
        uncommitted = set(logged) - _committed(settings, logged)
        total = len(roster) + 2 * len(videos)
        wait_until(lambda: _ledger(settings) == total, timeout=60, message="every intent applied")
    finally:
        os.kill(active.proc.pid, signal.SIGCONT)

    # And the old writer, woken, stands down and applies (and logs) nothing more
    wait_until(lambda: _roles(active)[-1:] == ["standby"], timeout=10,
               message="writer a standing down after waking")
    assert "writer lost the lock" in active.output()
    wait_until(lambda: _drained(broker, settings), message="every message acked")
    # (a batch it had in hand may have reached its log: its COMMIT then failed)
    late = [*uncommitted, *_log_seqs(log_a)[len(logged):]]
    assert _committed(settings, late) == set(), "the woken writer committed a batch"
    assert _holder(settings) is not None
    _check_exactly_once(settings, import_id, 20_000, len(roster), videos)
    assert standby.terminate() == 0
    assert active.terminate() == 0
    print(f"takeover after SIGSTOP: {takeover_s:.2f} s")


class CountingLog:
    """An intent log that keeps the batch numbers it was given, in memory."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def append(self, batch_seq: int, intents: Any) -> None:
        self.batches.append(batch_seq)

    def close(self) -> None:
        pass


def test_a_frozen_path_to_the_active_writer_hands_over_within_5_s_and_it_stands_down(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread],
    pg_proxy: TcpProxy,
) -> None:
    # Given an active writer reaching PostgreSQL through a proxy, a standby reaching it
    # directly, and a stream under way
    old_log = CountingLog()
    old = start_writer(database_url=proxied_url(_url(settings), pg_proxy), log_writer=old_log)
    wait_until(lambda: old.writer.active, message="the proxied writer active")
    new = start_writer(log_writer=CountingLog())
    wait_until(lambda: new.writer.get_stats()["role"] == "standby", message="a standby")
    import_id = uuid.uuid4()
    roster = chunks(import_id, [student(n) for n in range(20_000)], 500)
    videos = [uuid.uuid4() for _ in range(300)]
    emit_all(broker, settings, [*roster, *map(queued, videos), *map(ready, videos)])
    wait_until(lambda: _ledger(settings) >= 1, message="the stream under way")

    # When the path freezes: nothing is forwarded, nothing is closed
    pg_proxy.freeze()
    frozen = time.monotonic()
    try:
        # Then the standby takes over within 5 s and finishes the stream
        wait_until(lambda: new.writer.active, timeout=TAKEOVER_S, interval=0.02,
                   message="the standby taking over")
        takeover_s = time.monotonic() - frozen
        # What it logged and had not committed when it was fenced must never commit.
        logged = list(old_log.batches)
        uncommitted = set(logged) - _committed(settings, logged)
        total = len(roster) + 2 * len(videos)
        wait_until(lambda: _ledger(settings) == total, timeout=60,
                   message="every intent applied")
    finally:
        pg_proxy.thaw()

    # And when the path thaws, the old writer stands down and applies nothing more
    wait_until(lambda: old.writer.get_stats()["role"] == "standby", timeout=10,
               message="the old writer standing down")
    wait_until(lambda: _drained(broker, settings), message="every message acked")
    time.sleep(1.0)  # reconnected, it stays a standby
    assert old.writer.get_stats()["role"] == "standby"
    assert not old.writer.active
    late = [*uncommitted, *old_log.batches[len(logged):]]
    assert _committed(settings, late) == set(), "the old writer committed after the freeze"
    assert _holder(settings) == new.writer.backend_pid
    _check_exactly_once(settings, import_id, 20_000, len(roster), videos)
    print(f"takeover after a frozen path: {takeover_s:.2f} s")


def test_a_writer_that_lost_its_lock_while_idle_stands_down_at_once(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread],
) -> None:
    # Given an idle active writer and a standby
    first = start_writer(stats_interval_s=0.2)
    wait_until(lambda: first.writer.active, message="the first writer active")
    second = start_writer(stats_interval_s=0.2)
    wait_until(lambda: second.writer.get_stats()["role"] == "standby", message="a standby")
    writers = (first, second)

    def active() -> list[WriterThread]:
        return [w for w in writers if w.writer.get_stats()["role"] == "active"]

    # When the active writer's session ends while it has nothing to do (as in a PostgreSQL
    # restart), and the standby polls for the lock meanwhile
    pid = first.writer.backend_pid
    assert pid is not None
    query(_url(settings), "SELECT pg_terminate_backend(%s, 5000)", [pid])
    ended = time.monotonic()
    wait_until(lambda: _holder(settings) not in (None, pid), timeout=5,
               message="a writer holding the lock again")

    # Then within a second exactly one writer calls itself active: the lock holder, which is
    # also the one whose stats are published
    time.sleep(max(0.0, ended + 1.0 - time.monotonic()))
    key = writer_stats_key(broker.namespace)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        now_active = active()
        assert len(now_active) == 1, [w.writer.get_stats()["role"] for w in writers]
        assert _holder(settings) == now_active[0].writer.backend_pid
        time.sleep(0.05)
    (leader,) = active()
    (other,) = [w for w in writers if w is not leader]
    wait_until(lambda: json.loads(broker.client.get(key) or b"{}").get("name")
               == leader.writer.name, timeout=2, message="the leader's stats published")
    # And the leader applies what comes, the other nothing
    emit_all(broker, settings, map(queued, [uuid.uuid4() for _ in range(50)]))
    wait_until(lambda: _ledger(settings) == 50, message="the intents applied")
    assert other.writer.get_stats()["intents"] == 0
    assert other.writer.get_stats()["role"] == "standby"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a log folder whose disk can be filled for real."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


def test_an_intent_log_that_cannot_write_keeps_the_session_and_the_lock(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread], small_disk: Path,
) -> None:
    # Given an active writer and a standby whose intent logs share one folder, on a small disk
    folder = small_disk / "intent-log"
    first = start_writer(log_writer=IntentLog(folder, writer_id="first"))
    wait_until(lambda: first.writer.active, message="the first writer active")
    second = start_writer(log_writer=IntentLog(folder, writer_id="second"))
    wait_until(lambda: second.writer.get_stats()["role"] == "standby", message="a standby")
    holder = first.writer.backend_pid
    assert _holder(settings) == holder

    # When the disk is full and intents arrive
    filler = _fill(small_disk)
    import_id = uuid.uuid4()
    roster = chunks(import_id, [student(n) for n in range(2_000)], 500)
    videos = [uuid.uuid4() for _ in range(200)]
    emit_all(broker, settings, [*roster, *map(queued, videos), *map(ready, videos)])

    # Then the writer keeps its session and its lock, holds its batches, says why, and the
    # standby stays a standby
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        assert _holder(settings) == holder, "the lock changed hands"
        assert second.writer.get_stats()["role"] == "standby"
        time.sleep(0.1)
    stats = first.writer.get_stats()
    assert stats["log_retries"] >= 3
    assert "No space left" in stats["intent_log_error"]
    assert stats["role"] == "active"
    assert stats["lost_lock"] == 0
    ready_now, reason = writer_readiness(first.writer)
    assert not ready_now
    assert "intent log" in reason
    assert _ledger(settings) == 0, "nothing commits that the log did not record"

    # When the disk has room again, everything is applied by the same writer
    filler.unlink()
    wait_until(lambda: _ledger(settings) == len(roster) + 2 * len(videos), timeout=30,
               message="the held batches applied")
    wait_until(lambda: _drained(broker, settings), message="every message acked")
    assert first.writer.get_stats()["intent_log_error"] == ""
    assert writer_readiness(first.writer) == (True, "active")
    assert second.writer.get_stats()["intents"] == 0
    assert _holder(settings) == holder
    assert first.writer.get_stats()["lost_lock"] == 0
    _check_exactly_once(settings, import_id, 2_000, len(roster), videos)


@pytest.mark.slow
def test_a_writer_started_while_postgres_is_down_waits_and_starts_when_it_is_back(
    settings: Settings, broker: Any, writer_process: Callable[..., WriterProcess],
) -> None:
    with private_postgres() as server:
        # Given PostgreSQL down, a writer process started
        server.stop()
        url = make_conninfo(server.url, options=session_options())
        writer = writer_process("a", DATABASE_URL=server.url)

        # Then it does not exit: it waits, says so, and retries
        wait_until(lambda: writer.output().count("database unavailable") >= 2, timeout=30,
                   message="the writer waiting for the database")
        assert writer.proc.poll() is None, writer.output()[-2000:]

        # When PostgreSQL starts, it migrates, becomes active and applies
        server.start()
        wait_until(lambda: "active" in _roles(writer), timeout=30, message="writer active")
        videos = [uuid.uuid4() for _ in range(20)]
        emit_all(broker, settings, map(queued, videos))
        wait_until(lambda: scalar(url, "SELECT count(*) FROM videos") == 20, timeout=30,
                   message="the intents applied")
        assert writer.terminate() == 0


@pytest.mark.slow
def test_a_writer_waiting_for_postgres_stops_on_sigterm(
    settings: Settings, writer_process: Callable[..., WriterProcess],
) -> None:
    with private_postgres() as server:
        server.stop()
        writer = writer_process("a", DATABASE_URL=server.url)
        wait_until(lambda: "database unavailable" in writer.output(), timeout=30,
                   message="the writer waiting for the database")
        assert writer.terminate(signal.SIGTERM, timeout=10) == 0



def test_a_writer_session_is_bounded_on_both_ends_and_gives_up_on_a_frozen_path(
    settings: Settings, pg_proxy: TcpProxy,
) -> None:
    # Given a writer session through a proxy, with a client-side deadline of 1 s
    writer_settings = settings.writer.model_copy(update={"client_timeout_ms": 1000})
    pool = writer_pool(proxied_url(_url(settings), pg_proxy), writer_settings, "test",
                       "jobplatform-test")
    pool.open()
    try:
        conn = pool.getconn()
        # Then the server bounds it too
        shown = {name: conn.execute(f"SHOW {name}").fetchone() for name in (
            "statement_timeout", "idle_in_transaction_session_timeout", "tcp_keepalives_idle",
            "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout",
            "client_connection_check_interval")}
        assert {name: row[0] for name, row in shown.items() if row is not None} == {
            "statement_timeout": "30s", "idle_in_transaction_session_timeout": "2s",
            "tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
            "tcp_keepalives_count": "3", "tcp_user_timeout": "15000",
            "client_connection_check_interval": "2s"}

        # When the path freezes, a statement gives up at the deadline instead of waiting for
        # ever, and the connection is closed
        pg_proxy.freeze()
        started = time.monotonic()
        with pytest.raises(ClientTimeout):
            conn.execute("SELECT 1")
        waited = time.monotonic() - started
        assert 0.9 <= waited < 3.0
        assert conn.closed
        pool.putconn(conn)
    finally:
        pg_proxy.thaw()
        pool.close()
