"""``jobplatform bench chaos``: faults under mixed load, then an oracle of what was published.

Everything runs on private servers (never the shared ones): a PostgreSQL of its own
(:class:`~bench._instance.EmulatedInstance`, uncapped), a ``redis-server`` with an append-only
file (:class:`~bench._servers.PrivateRedis`), and two ``jobplatform writer`` processes (one
active, one standby), each reaching PostgreSQL through a TCP proxy of its own that can freeze,
and each logging to a small tmpfs of its own that can be filled. Producers (threads with
:class:`~jobplatform.emit.IntentEmitter`) publish video status intents of several states per
video, a share of them out of order, roster import chunks and a few malformed messages.

Faults, drawn from the seed over the load's duration (``--faults`` picks them):

==========================  ================================================================
``kill``                    SIGKILL of the active writer at a random time
``kill_after_append``       the writer kills itself with a batch in the log, not committed
``kill_after_commit``       ... committed, not acknowledged
``kill_mid_copy``           ... half-way through a COPY
``kill_after_dead_letter``  ... with a dead letter recorded, not acknowledged
``pg_stop``                 PostgreSQL fast shutdown, then started again
``pg_crash``                PostgreSQL immediate shutdown (a crash: WAL recovery)
``pg_crash_after_append``   the writer stops itself after a log append; PostgreSQL crashes;
                            the writer continues
``redis_restart``           redis-server SIGKILL and start (its AOF keeps what it acked)
``freeze``                  the active writer's path to PostgreSQL stops forwarding
``disk_full``               the active writer's log disk is filled to the last byte
==========================  ================================================================

``--kills N`` writer kills (the ``kill*`` faults in turn), every other fault once (``--repeat``
times); a killed writer is started again a second later, as a supervisor would. Afterwards the
writers drain the queues and the oracle checks the database against what the producers
published (:data:`INVARIANTS`), and a replay of both writers' logs into an empty database
against the live one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import psycopg
import redis
from pydantic import SecretStr

from bench._common import markdown_table, percentile
from bench._instance import EmulatedInstance, InstanceConfig
from bench._servers import PrivateRedis, SmallDisk, TcpProxy
from bench._workload import LECTURE_BASE, TENANT_ID, prepare_template, student
from jobplatform.auth import MAC_OPTION, canonical_body
from jobplatform.broker import WRITE_INTENT, Queues, build_broker, make_message
from jobplatform.emit import IntentEmitter
from jobplatform.settings import AuthSettings, Settings, WriterSettings
from schemas import BaseIntent, RosterChunk
from schemas.intents import (
    RosterStatus,
    VideoFailed,
    VideoProcessing,
    VideoQueued,
    VideoReady,
    VideoRendition,
)

KILLS = ("kill", "kill_after_append", "kill_after_commit", "kill_mid_copy",
         "kill_after_dead_letter")
OTHERS = ("pg_stop", "pg_crash", "pg_crash_after_append", "redis_restart", "freeze", "disk_full")
FAULTS = KILLS + OTHERS

#: The writers' advisory lock key, set in their environment: the harness finds its holder.
LOCK_KEY: int = WriterSettings.model_fields["lock_key"].default

#: name -> (what it checks, the issue 19 item whose fix it needs on main, or None).
INVARIANTS: dict[str, tuple[str, str | None]] = {
    "nothing lost": ("every published intent is in the ledger or a dead letter; every "
                     "malformed message is a dead letter", None),
    "nothing applied twice": ("each import's chunks applied = chunks sent; students and "
                              "enrollments = the distinct ones published", None),
    "dead letters once": ("each malformed message is recorded once (dead letters keyed by "
                          "message id)", "issue 19 item 8"),
    "no field dropped": ("every field a published intent carries is in its row "
                         "(source_key/queued_at, started_at, hls_key, error ...)",
                         "issue 19 item 1"),
    "no state backwards": ("each video's status is its highest-ranked published intent's", None),
    "replay equal": ("a replay of both writers' logs into an empty database equals the live "
                     "one", "issue 19 item 2"),
    "takeover under 5 s": ("after each kill or frozen path of the active writer, a writer "
                           "holds the lock again within 5 s", "issue 19 item 3 (freeze)"),
    "every job ends": ("every video ready or failed with a reason; every import done or "
                       "failed with a reason", None),
}


#: A malformed message's tag in a dead letter's body (the payload, JSON-quoted or not).
_CHAOS_TAG = re.compile(r'chaos\\*"\s*:\s*\\*"([^"\\]+)')


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    seed: int
    duration_s: float = 60.0
    """Seconds over which the producers publish and the faults are injected."""
    kills: int = 5
    faults: tuple[str, ...] = FAULTS
    repeat: int = 1
    videos: int = 150
    reorder: float = 0.3
    """Share of the videos whose intents are published out of order."""
    imports: int = 6
    rows_per_import: int = 600
    chunk_rows: int = 100
    malformed: int = 4
    down_s: float = 3.0
    """How long PostgreSQL stays down, a path frozen, a disk full."""
    drain_timeout_s: float = 180.0


# --- what was published ----------------------------------------------------------------------


@dataclass
class Published:
    intents: dict[uuid.UUID, BaseIntent] = field(default_factory=dict)
    malformed: list[str] = field(default_factory=list)
    emit_retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Producers:
    """Threads publishing the load, spread over ``duration_s``; an emit that fails (Redis
    down) is retried with the same intent until it succeeds, as an actor's retry would."""

    def __init__(self, config: ChaosConfig, settings: Settings, redis_url: str) -> None:
        self.config = config
        self.settings = settings
        self.broker = build_broker(settings, redis_url, set_global=False)
        self.queues = Queues.from_settings(settings)
        self.emitter = IntentEmitter(self.broker, self.queues)
        self.out = Published()
        self.rng = random.Random(config.seed)
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._nudges = 0

    def start(self) -> None:
        plan = self._plan()
        per_thread: list[list[tuple[float, Callable[[], None]]]] = [[] for _ in range(4)]
        for n, (at, send, group) in enumerate(sorted(plan, key=lambda p: p[0])):
            # an import's intents go out in order, from one thread, each at its own time
            per_thread[(n if group is None else group) % 4].append((at, send))
        for n, items in enumerate(per_thread):
            thread = threading.Thread(target=self._run, args=(items,), name=f"producer-{n}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        """No send after this returns (a send under way ends first)."""
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def close(self) -> None:
        self._stop.set()
        self.broker.close()

    def _run(self, items: list[tuple[float, Callable[[], None]]]) -> None:
        t0 = time.monotonic()
        for at, send in items:
            delay = t0 + at - time.monotonic()
            if self._stop.wait(max(0.0, delay)):
                return
            send()

    def emit(self, intent: BaseIntent) -> None:
        while not self._stop.is_set():
            try:
                self.emitter.emit(intent)
            except redis.RedisError:
                with self.out.lock:
                    self.out.emit_retries += 1
                time.sleep(0.2)
                continue
            with self.out.lock:
                self.out.intents[intent.intent_id] = intent
            return

    def emit_malformed(self, tag: str) -> None:
        """A signed message whose intent does not decode: a dead letter, with no intent id."""
        payload = json.dumps({"kind": "video.queued", "tenant_id": TENANT_ID, "chaos": tag})
        mac = self.emitter.keyring.mac(WRITE_INTENT, canonical_body((payload,)))
        fast, _ = self.queues.lanes_for(TENANT_ID)
        message = make_message(fast, WRITE_INTENT, payload, **{MAC_OPTION: mac})
        while not self._stop.is_set():
            try:
                self.broker.enqueue(message)
            except redis.RedisError:
                time.sleep(0.2)
                continue
            with self.out.lock:
                self.out.malformed.append(payload)
            return

    def emit_video(self) -> None:
        """One more video, queued to ready in order (a batch for a fault point to meet)."""
        video = uuid.uuid4()
        t = datetime(2024, 3, 2, tzinfo=UTC)
        prefix = f"tenants/{TENANT_ID}/videos/{video}/"
        self.emit(VideoQueued(tenant_id=TENANT_ID, video_id=video, occurred_at=t,
                              source_key=prefix + "source.mp4"))
        self.emit(VideoProcessing(tenant_id=TENANT_ID, video_id=video,
                                  occurred_at=t + timedelta(seconds=1)))
        self.emit(VideoFailed(tenant_id=TENANT_ID, video_id=video,
                              occurred_at=t + timedelta(seconds=2), reason="chaos nudge"))

    def emit_import(self) -> None:
        """One more small import, in order (a COPY for the mid-COPY fault point to meet)."""
        with self.out.lock:
            self._nudges += 1
            n = self.config.imports + self._nudges
        import_id = uuid.uuid4()
        common = {"tenant_id": TENANT_ID, "import_id": import_id, "lecture_id": LECTURE_BASE + n}
        rows = tuple(student(1_000_000 + n * 1000 + i, source_row=i + 2) for i in range(50))
        t = datetime(2024, 3, 3, tzinfo=UTC)
        self.emit(RosterStatus(**common, status="parsing", occurred_at=t,
                               source_key=f"tenants/{TENANT_ID}/rosters/{import_id}.xlsx"))
        self.emit(RosterChunk(**common, chunk_index=0, rows=rows,
                              occurred_at=t + timedelta(seconds=1)))
        self.emit(RosterStatus(**common, status="writing", occurred_at=t + timedelta(minutes=1),
                               total=len(rows), valid=len(rows), invalid=0, duplicates=0,
                               chunks=1))

    def _plan(self) -> list[tuple[float, Callable[[], None], int | None]]:
        """``(at, send, group)``: sends of one group are made in order by one thread."""
        config, rng = self.config, self.rng
        window = config.duration_s * 0.9
        plan: list[tuple[float, Callable[[], None], int | None]] = []
        base = datetime(2024, 3, 1, tzinfo=UTC)
        for n in range(config.videos):
            video = uuid.UUID(int=rng.getrandbits(128), version=4)
            t = base + timedelta(seconds=n)
            prefix = f"tenants/{TENANT_ID}/videos/{video}/"
            last: BaseIntent
            if rng.random() < 0.1:
                last = VideoFailed(tenant_id=TENANT_ID, video_id=video,
                                   occurred_at=t + timedelta(seconds=3), reason="ffmpeg: exit 1")
            else:
                last = VideoReady(
                    tenant_id=TENANT_ID, video_id=video, occurred_at=t + timedelta(seconds=3),
                    hls_key=prefix + "hls/master.m3u8", duration_s=10.0,
                    renditions=(VideoRendition(name="720p", width=1280, height=720,
                                               bandwidth=2_800_000,
                                               playlist_key=prefix + "hls/720p.m3u8"),))
            intents: list[BaseIntent] = [
                VideoQueued(tenant_id=TENANT_ID, video_id=video, occurred_at=t,
                            source_key=prefix + "source.mp4"),
                VideoProcessing(tenant_id=TENANT_ID, video_id=video,
                                occurred_at=t + timedelta(seconds=1)),
                last,
            ]
            if rng.random() < config.reorder:
                rng.shuffle(intents)
            start = rng.uniform(0, window * 0.9)
            for k, intent in enumerate(intents):
                plan.append((start + k * rng.uniform(0.05, 0.5),
                             lambda i=intent: self.emit(i), None))  # type: ignore[misc]
        for n in range(config.imports):
            import_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            lecture = LECTURE_BASE + n
            rows = tuple(student(n * config.rows_per_import // 2 + i, source_row=i + 2)
                         for i in range(config.rows_per_import))
            chunks = [rows[i:i + config.chunk_rows]
                      for i in range(0, len(rows), config.chunk_rows)]
            common = {"tenant_id": TENANT_ID, "import_id": import_id, "lecture_id": lecture}
            t = base + timedelta(hours=1, minutes=n)
            sequence: list[BaseIntent] = [RosterStatus(
                **common, status="parsing", occurred_at=t,
                source_key=f"tenants/{TENANT_ID}/rosters/{import_id}.xlsx")]
            sequence += [RosterChunk(**common, chunk_index=k, rows=chunk,
                                     occurred_at=t + timedelta(seconds=k + 1))
                         for k, chunk in enumerate(chunks)]
            sequence.append(RosterStatus(
                **common, status="writing", occurred_at=t + timedelta(minutes=1),
                total=len(rows), valid=len(rows), invalid=0, duplicates=0, chunks=len(chunks)))
            start = rng.uniform(0, window * 0.7)
            step = window * 0.25 / len(sequence)
            # One import's intents in order from one thread: the actor emits them in order.
            plan += [(start + k * step, lambda i=intent: self.emit(i), n)  # type: ignore[misc]
                     for k, intent in enumerate(sequence)]
        for n in range(config.malformed):
            plan.append((rng.uniform(0, window),
                         lambda n=n: self.emit_malformed(f"load-{n}"), None))  # type: ignore[misc]
        return plan


# --- the writers -------------------------------------------------------------------------------


class ChaosWriter:
    """One ``jobplatform writer`` process through its own proxy, logging to its own disk; it
    can be killed and started again (its output appends to one log file)."""

    def __init__(self, index: int, env: dict[str, str], proxy: TcpProxy, disk: SmallDisk,
                 folder: Path) -> None:
        self.index = index
        self.proxy = proxy
        self.disk = disk
        self.log_dir = disk.path / "intent-log"
        self.fault_file = folder / f"fault-{index}"
        self.output = folder / f"writer-{index}.log"
        self.env = {**env, "WRITER_LOG_DIR": str(self.log_dir),
                    "JOBPLATFORM_STATE_DIR": str(folder / f"state-{index}"),
                    "JOBPLATFORM_FAULT_FILE": str(self.fault_file)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: list[int] = []
        #: When a supervisor starts the exited process again (None: not due).
        self.restart_at: float | None = None
        self._output_from = 0

    def start(self) -> None:
        with open(self.output, "ab") as out:
            self._output_from = out.tell()
            self.proc = subprocess.Popen([sys.executable, "-m", "jobplatform", "writer"],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reap(self) -> int | None:
        """The exit code when the process ended since the last look (it is then forgotten)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        self.exits.append(code)
        self.proc = None
        return code

    def role(self) -> str | None:
        """The role the running process last logged (``standby``, ``active``...); None while
        it starts (before its first try for the lock) and when it is not running."""
        if not self.alive:
            return None
        try:
            with open(self.output, "rb") as out:
                out.seek(self._output_from)
                lines = out.read().splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            if b'"writer role"' not in line:
                continue
            with contextlib.suppress(ValueError):
                role = json.loads(line).get("role")
                if isinstance(role, str):
                    return role
        return None

    def stopped(self) -> bool:
        """Whether the process is stopped (SIGSTOP): state ``T`` in /proc."""
        if self.proc is None:
            return False
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rpartition(")")[2].split()[0] in ("T", "t")

    def signal(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, returning once the process is gone (its exit is left to :meth:`reap`)."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def arm(self, point: str, action: str = "kill") -> None:
        self.fault_file.write_text(f"{point} {action}")

    def disarm(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fault_file.unlink()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@dataclass
class FaultRecord:
    name: str
    at_s: float
    outcome: str
    takeover_s: float | None = None
    stall_s: float | None = None


class Chaos:
    """One run: servers, writers, producers, faults, then the oracle."""

    def __init__(self, config: ChaosConfig, echo: Callable[[str], None]) -> None:
        self.config = config
        self.echo = echo
        self.rng = random.Random(config.seed ^ 0x5EED)
        self.records: list[FaultRecord] = []
        self.t0 = time.monotonic()

    # --- set-up ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        config = self.config
        with contextlib.ExitStack() as stack:
            self.pg = stack.enter_context(EmulatedInstance(InstanceConfig(
                cpu_quota=None, max_connections=40,
                extra=(("wal_writer_delay", "10s"), ("wal_writer_flush_after", "0")))))
            self.redis = stack.enter_context(PrivateRedis())
            folder = Path(stack.enter_context(_tempdir()))
            prepare_template(self.pg.create_database("chaos_template"), config.imports)
            self.live_url = self.pg.create_database("chaos_live", template="chaos_template")
            self.admin_url = self.pg.admin_url("chaos_live")
            namespace = f"chaos-{config.seed}"
            keys = f"chaos={secrets.token_hex(32)}"
            settings = Settings(broker_namespace=namespace,
                                auth=AuthSettings(keys=SecretStr(keys)))
            env = {**os.environ, "REDIS_URL": self.redis.url, "BROKER_NAMESPACE": namespace,
                   "AUTH_KEYS": keys, "LOG_FORMAT": "json", "WRITER_LOCK_KEY": str(LOCK_KEY),
                   "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
                   "WRITER_STATS_INTERVAL_S": "1", "WRITER_LOG_SEGMENT_BYTES": str(1 << 20)}
            self.writers: list[ChaosWriter] = []
            for index in range(2):
                proxy = TcpProxy(("127.0.0.1", self.pg.port))
                stack.callback(proxy.close)
                disk = SmallDisk("256m")
                stack.callback(disk.close)
                writer = ChaosWriter(index, env, proxy, disk, folder)
                writer.env["DATABASE_URL"] = _via(self.live_url, proxy.port)
                stack.callback(writer.stop)
                self.writers.append(writer)
            for writer in self.writers:
                writer.start()
            self.wait_active(60)
            self.echo(f"chaos: seed {config.seed}, PostgreSQL {self.pg.version} on port "
                      f"{self.pg.port}, Redis on port {self.redis.port}, 2 writers; "
                      f"{config.duration_s:.0f} s of load")
            self.producers = Producers(config, settings, self.redis.url)
            stack.callback(self.producers.close)
            self.t0 = time.monotonic()
            self.producers.start()
            self.inject()
            finished = self.producers.join(self.t0 + config.duration_s + 120 - time.monotonic())
            if not finished:
                self.echo("  the producers did not finish within 120 s of the load's end:"
                          " stopped; what they had not sent is not counted")
            # nothing is published after this point, so the oracle sees what the drain saw
            self.producers.stop()
            published = self.producers.out
            drained = self.drain(published)
            for writer in self.writers:
                writer.stop()
            replay = self.replay(folder)
            invariants = self.check(published, replay)
            exits = [code for w in self.writers for code in w.exits]
            return {
                "seed": config.seed,
                "config": {k: v for k, v in asdict(config).items() if k != "seed"},
                "producers_finished": finished,
                "published": {"intents": len(published.intents),
                              "malformed": len(published.malformed),
                              "emit_retries": published.emit_retries},
                "drained": drained,
                "faults": [asdict(r) for r in self.records],
                "writer_starts": sum(w.starts for w in self.writers),
                "writer_exits": dict(Counter(str(c) for c in exits)),
                "takeover_s": _summary([r.takeover_s for r in self.records
                                        if r.takeover_s is not None]),
                "invariants": invariants,
                "replay": replay.get("summary"),
            }

    # --- who is active -----------------------------------------------------------------------

    def holder_port(self) -> int | None:
        """``client_port`` of the session holding the writer's advisory lock, or None.

        The writer's key only: a writer that starts holds the migrations' advisory lock for a
        moment, and a frozen path can make that moment last.
        """
        try:
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as conn:
                row = conn.execute(
                    "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a"
                    " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                    " AND l.classid = (%(key)s >> 32)::oid"
                    " AND l.objid = (%(key)s & 4294967295)::oid AND l.objsubid = 1"
                    " AND l.database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())", {"key": LOCK_KEY}).fetchone()
        except psycopg.Error:
            return None
        return int(row[0]) if row and row[0] is not None else None

    def active(self) -> ChaosWriter | None:
        port = self.holder_port()
        if port is None:
            return None
        for writer in self.writers:
            # a dead process's session may hold the lock a moment longer: not an active writer
            if port in writer.proxy.local_ports() and writer.alive:
                return writer
        return None

    def wait_active(self, timeout_s: float, *, not_: ChaosWriter | None = None
                    ) -> ChaosWriter | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.supervise()
            found = self.active()
            if found is not None and found is not not_:
                return found
            time.sleep(0.1)
        return None

    def ready_victim(self, victim: ChaosWriter, timeout_s: float = 30.0) -> ChaosWriter:
        """The active writer once another writer stands by (past its start and its
        migrations, trying for the lock), waiting up to ``timeout_s`` for that: a takeover
        then measures the standby, not the start of a process a supervisor has just
        restarted."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.supervise()
            if any(w is not victim and w.role() == "standby" for w in self.writers):
                break
            time.sleep(0.1)
        return self.wait_active(timeout_s) or victim

    def supervise(self) -> None:
        """Start again any writer that exited (a supervisor's restart), a second later; never
        waits itself, so the time to a takeover is the writers' own."""
        now = time.monotonic()
        for writer in self.writers:
            code = writer.reap()
            if code is not None:
                if code != -signal.SIGKILL:
                    self.echo(f"  writer {writer.index} exited with {code}")
                writer.restart_at = now + 1.0
            if writer.restart_at is not None and now >= writer.restart_at and not writer.alive:
                writer.restart_at = None
                writer.start()

    # --- faults ------------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str]]:
        config = self.config
        kills = [k for k in KILLS if k in config.faults]
        events = [kills[n % len(kills)] for n in range(config.kills)] if kills else []
        events += [f for f in OTHERS if f in config.faults for _ in range(config.repeat)]
        self.rng.shuffle(events)
        span = config.duration_s * 0.85
        times = sorted(self.rng.uniform(span * 0.05, span) for _ in events)
        return list(zip(times, events, strict=True))

    def inject(self) -> None:
        for at, name in self.schedule():
            while time.monotonic() - self.t0 < at:
                self.supervise()
                time.sleep(0.1)
            started = time.monotonic() - self.t0
            try:
                record = getattr(self, f"fault_{name}")()
            except Exception as exc:  # a fault that could not be injected is reported
                record = FaultRecord(name, 0.0, f"not injected: {type(exc).__name__}: {exc}")
            record.at_s = round(started, 1)
            self.records.append(record)
            self.echo(f"  {record.at_s:6.1f} s  {name}: {record.outcome}")

    def _takeover(self, old: ChaosWriter, since: float, timeout_s: float = 60.0) -> float | None:
        found = self.wait_active(timeout_s, not_=None)
        return round(time.monotonic() - since, 2) if found is not None else None

    def fault_kill(self) -> FaultRecord:
        victim = self.wait_active(30)
        if victim is None:
            return FaultRecord("kill", 0, "no active writer to kill")
        victim = self.ready_victim(victim)
        killed = time.monotonic()
        victim.kill()
        takeover = self._takeover(victim, killed)
        return FaultRecord("kill", 0, "killed the active writer", takeover_s=takeover)

    def _point_kill(self, name: str, point: str, nudge: Callable[[], None] | None = None
                    ) -> FaultRecord:
        victim = self.wait_active(30)
        if victim is None:
            return FaultRecord(name, 0, "no active writer")
        victim = self.ready_victim(victim)
        victim.arm(point)
        deadline = time.monotonic() + 30
        next_nudge = 0.0
        while victim.alive and time.monotonic() < deadline:
            # Work for the point to meet, again every few seconds: the first may be taken
            # by a batch already past the point. The armed writer is the active one: when the
            # lock has moved meanwhile, the point moves with it.
            if time.monotonic() >= next_nudge:
                holder = self.active()
                if holder is not None and holder is not victim and holder.alive:
                    victim.disarm()
                    victim = holder
                    victim.arm(point)
                if nudge is not None:
                    nudge()
                next_nudge = time.monotonic() + 3.0
            time.sleep(0.02)
        if victim.alive:
            victim.disarm()
            return FaultRecord(name, 0, f"point {point} not reached in 30 s")
        died = time.monotonic()
        return FaultRecord(name, 0, f"killed itself at {point}",
                           takeover_s=self._takeover(victim, died))

    def fault_kill_after_append(self) -> FaultRecord:
        return self._point_kill("kill_after_append", "after_append", self.producers.emit_video)

    def fault_kill_after_commit(self) -> FaultRecord:
        return self._point_kill("kill_after_commit", "after_commit", self.producers.emit_video)

    def fault_kill_mid_copy(self) -> FaultRecord:
        return self._point_kill("kill_mid_copy", "mid_copy", self.producers.emit_import)

    def fault_kill_after_dead_letter(self) -> FaultRecord:
        tag = f"fault-{len(self.records)}"
        return self._point_kill("kill_after_dead_letter", "after_dead_letter",
                                lambda: self.producers.emit_malformed(tag))

    def _pg_down(self, name: str, sig: signal.Signals) -> FaultRecord:
        self.pg.kill(sig)
        time.sleep(self.config.down_s)
        self.pg.launch()
        back = time.monotonic()
        return FaultRecord(name, 0, f"down {self.config.down_s:g} s",
                           takeover_s=self._takeover(self.writers[0], back))

    def fault_pg_stop(self) -> FaultRecord:
        return self._pg_down("pg_stop", signal.SIGINT)

    def fault_pg_crash(self) -> FaultRecord:
        return self._pg_down("pg_crash", signal.SIGQUIT)

    def fault_pg_crash_after_append(self) -> FaultRecord:
        victim = self.wait_active(30)
        if victim is None:
            return FaultRecord("pg_crash_after_append", 0, "no active writer")
        # After a checkpoint the next nextval() writes its WAL record, which no COMMIT flushes
        # before the crash (the WAL writer is slowed to 10 s): the number can come again.
        with psycopg.connect(self.pg.admin_url(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        victim.arm("after_append", "stop")
        deadline = time.monotonic() + 30
        next_nudge = 0.0
        while not victim.stopped() and time.monotonic() < deadline:
            if time.monotonic() >= next_nudge:
                self.producers.emit_video()
                next_nudge = time.monotonic() + 3.0
            time.sleep(0.02)
        if not victim.stopped():
            victim.disarm()
            return FaultRecord("pg_crash_after_append", 0, "point after_append not reached")
        self.pg.kill(signal.SIGQUIT)
        self.pg.launch()
        victim.signal(signal.SIGCONT)
        back = time.monotonic()
        return FaultRecord("pg_crash_after_append", 0,
                           "crashed PostgreSQL with a logged batch uncommitted",
                           takeover_s=self._takeover(victim, back))

    def fault_redis_restart(self) -> FaultRecord:
        self.redis.restart()
        return FaultRecord("redis_restart", 0, "SIGKILL and start (AOF)")

    def _progress(self) -> int:
        try:
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as conn:
                row = conn.execute("SELECT count(*) FROM writer_ledger").fetchone()
        except psycopg.Error:
            return -1
        return int(row[0]) if row else 0

    def fault_freeze(self) -> FaultRecord:
        victim = self.wait_active(30)
        if victim is None:
            return FaultRecord("freeze", 0, "no active writer")
        victim = self.ready_victim(victim)
        before = self._progress()
        victim.proxy.freeze()
        frozen = time.monotonic()
        takeover = None
        while time.monotonic() - frozen < self.config.down_s * 2:
            holder = self.active()
            if takeover is None and holder is not None and holder is not victim:
                takeover = round(time.monotonic() - frozen, 2)
            time.sleep(0.2)
        after = self._progress()
        holder = self.active()
        victim.proxy.thaw()
        moved = after - before
        other = holder is not None and holder is not victim
        outcome = (f"path frozen {self.config.down_s * 2:g} s: {moved} intents applied "
                   f"meanwhile, {'standby took over' if other else 'no takeover'}")
        stall = None if moved > 0 else round(time.monotonic() - frozen, 1)
        return FaultRecord("freeze", 0, outcome, takeover_s=takeover, stall_s=stall)

    def fault_disk_full(self) -> FaultRecord:
        victim = self.wait_active(30)
        if victim is None:
            return FaultRecord("disk_full", 0, "no active writer")
        filled = victim.disk.fill()
        time.sleep(self.config.down_s)
        holder = self.active()
        victim.disk.free()
        swapped = holder is not None and holder is not victim
        return FaultRecord("disk_full", 0, f"log disk full {self.config.down_s:g} s "
                           f"({filled >> 20} MiB filler); "
                           f"{'the lock moved to the standby' if swapped else 'lock kept'}")

    # --- afterwards ----------------------------------------------------------------------------

    def drain(self, published: Published) -> bool:
        """Wait until the ledger and the dead letters account for everything published."""
        expected = len(published.intents)
        deadline = time.monotonic() + self.config.drain_timeout_s
        while time.monotonic() < deadline:
            self.supervise()
            try:
                with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as c:
                    row = c.execute(
                        "SELECT (SELECT count(*) FROM writer_ledger WHERE intent_id = ANY(%s)),"
                        " (SELECT count(*) FROM writer_dead_letters WHERE intent_id IS NULL)",
                        (list(published.intents),)).fetchone()
            except psycopg.Error:
                row = None
            if row is not None and row[0] >= expected and row[1] >= len(published.malformed):
                time.sleep(2.0)  # the last acks, a last dead letter
                return True
            time.sleep(0.5)
        return False

    def replay(self, folder: Path) -> dict[str, Any]:
        url = self.pg.create_database("chaos_replay", template="chaos_template")
        logs = [str(w.log_dir) for w in self.writers if w.log_dir.exists()]
        env = {**os.environ, "DATABASE_URL": url}
        out = subprocess.run([sys.executable, "-m", "jobplatform", "replay", *logs,
                              "--database-url", url, "--json"],
                             env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            return {"error": out.stderr[-2000:], "url": url}
        return {"summary": json.loads(out.stdout), "url": url}

    def check(self, published: Published, replay: dict[str, Any]) -> dict[str, dict[str, Any]]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            results = Oracle(conn, published).check()
        if "error" in replay:
            results["replay equal"] = {"checked": 0, "violations": 1,
                                       "detail": "replay failed: " + replay["error"]}
        else:
            results["replay equal"] = compare(self.pg.admin_url("chaos_live"),
                                              self.pg.admin_url("chaos_replay"))
        results["takeover under 5 s"] = self.takeovers()
        ordered = {name: results[name] for name in INVARIANTS}
        for name, result in ordered.items():
            result["passed"] = result["violations"] == 0
            result["needs"] = INVARIANTS[name][1]
        return ordered


    def takeovers(self) -> dict[str, Any]:
        timed = [r for r in self.records if r.name.startswith("kill") or r.name == "freeze"]
        timed = [r for r in timed if "not reached" not in r.outcome
                 and not r.outcome.startswith(("not injected", "no active"))]
        slow = [r for r in timed if r.takeover_s is None or r.takeover_s > 5.0]
        return {"checked": len(timed), "violations": len(slow),
                "detail": ", ".join(f"{r.name} at {r.at_s} s: "
                                    f"{'none' if r.takeover_s is None else r.takeover_s}"
                                    for r in slow)}


class Oracle:
    """The database against what was published."""

    def __init__(self, conn: psycopg.Connection[Any], published: Published) -> None:
        self.conn = conn
        self.published = published

    def check(self) -> dict[str, dict[str, Any]]:
        return {
            "nothing lost": self.lost(),
            "nothing applied twice": self.twice(),
            "dead letters once": self.dead_once(),
            "no field dropped": self.fields(),
            "no state backwards": self.states(),
            "every job ends": self.ends(),
        }

    def lost(self) -> dict[str, Any]:
        ids = list(self.published.intents)
        found = {r[0] for r in self.conn.execute(
            "SELECT intent_id FROM writer_ledger WHERE intent_id = ANY(%s) UNION"
            " SELECT intent_id FROM writer_dead_letters WHERE intent_id = ANY(%s)", (ids, ids))}
        bodies = self._dead_bodies()
        missing = [i for i in ids if i not in found]
        unrecorded = [b for b in self.published.malformed if not bodies[b]]
        return {"checked": len(ids) + len(self.published.malformed),
                "violations": len(missing) + len(unrecorded),
                "detail": f"{len(missing)} intents, {len(unrecorded)} malformed messages"
                          " missing" if missing or unrecorded else ""}

    def _dead_bodies(self) -> Counter[str]:
        bodies: Counter[str] = Counter()
        for (body,) in self.conn.execute(
                "SELECT body::text FROM writer_dead_letters WHERE intent_id IS NULL"):
            # the tag itself, not a substring ("fault-3" is in "fault-31" too)
            tags = set(_CHAOS_TAG.findall(str(body)))
            for payload in self.published.malformed:
                if json.loads(payload)["chaos"] in tags:
                    bodies[payload] += 1
        return bodies

    def dead_once(self) -> dict[str, Any]:
        bodies = self._dead_bodies()
        twice = {b: n for b, n in bodies.items() if n > 1}
        return {"checked": len(self.published.malformed), "violations": len(twice),
                "detail": f"{len(twice)} malformed messages recorded "
                          f"{sorted(set(twice.values()))} times" if twice else ""}

    def twice(self) -> dict[str, Any]:
        chunks: Counter[uuid.UUID] = Counter()
        phones: set[str] = set()
        enrol: set[tuple[int, str]] = set()
        for intent in self.published.intents.values():
            if isinstance(intent, RosterChunk):
                chunks[intent.import_id] += 1
                for student_row in intent.rows:
                    phones.add(student_row.phone)
                    enrol.add((intent.lecture_id, student_row.phone))
        bad = [str(i) for i, applied in self.conn.execute(
            "SELECT id, chunks_applied FROM roster_imports WHERE id = ANY(%s)", (list(chunks),))
            if applied != chunks[i]]
        row = self.conn.execute(
            "SELECT (SELECT count(*) FROM students), (SELECT count(*) FROM enrollments)"
        ).fetchone()
        assert row is not None
        violations = len(bad) + (row[0] != len(phones)) + (row[1] != len(enrol))
        detail = []
        if bad:
            detail.append(f"{len(bad)} imports with chunks_applied != chunks sent")
        if row[0] != len(phones):
            detail.append(f"students {row[0]}, published {len(phones)}")
        if row[1] != len(enrol):
            detail.append(f"enrollments {row[1]}, published {len(enrol)}")
        return {"checked": len(chunks) + 2, "violations": violations, "detail": "; ".join(detail)}

    def _videos(self) -> dict[uuid.UUID, list[BaseIntent]]:
        by_video: dict[uuid.UUID, list[BaseIntent]] = {}
        for intent in self.published.intents.values():
            video = getattr(intent, "video_id", None)
            if video is not None:
                by_video.setdefault(video, []).append(intent)
        return by_video

    def _rows(self) -> dict[uuid.UUID, dict[str, Any]]:
        cur = self.conn.cursor(row_factory=psycopg.rows.dict_row)
        return {r["id"]: r for r in cur.execute("SELECT * FROM videos")}

    def fields(self) -> dict[str, Any]:
        rows = self._rows()
        checked = dropped = 0
        counts: Counter[str] = Counter()
        for video, intents in self._videos().items():
            row = rows.get(video, {})
            for intent in intents:
                for column, value in _fields_of(intent).items():
                    checked += 1
                    if row.get(column) != value:
                        dropped += 1
                        counts[f"{intent.kind}.{column}"] += 1
        detail = ", ".join(f"{k} x{n}" for k, n in counts.most_common())
        return {"checked": checked, "violations": dropped, "detail": detail}

    def states(self) -> dict[str, Any]:
        rows = self._rows()
        backwards = 0
        for video, intents in self._videos().items():
            best = max(intents, key=lambda i: i.rank())
            want = best.kind.removeprefix("video.")
            if rows.get(video, {}).get("status") != want:
                backwards += 1
        return {"checked": len(self._videos()), "violations": backwards,
                "detail": f"{backwards} videos not at their highest published state"
                if backwards else ""}

    def ends(self) -> dict[str, Any]:
        rows = self._rows()
        videos = self._videos()
        open_videos = sum(1 for v in videos if rows.get(v, {}).get("status") not in
                          ("ready", "failed")
                          or (rows[v]["status"] == "failed" and not rows[v]["error"]))
        imports = {i.import_id for i in self.published.intents.values()
                   if isinstance(i, RosterStatus)}
        open_imports = sum(1 for status, error in self.conn.execute(
            "SELECT status, error FROM roster_imports WHERE id = ANY(%s)", (list(imports),))
            if not (status == "done" or (status == "failed" and error)))
        open_imports += len(imports) - int(self.conn.execute(
            "SELECT count(*) FROM roster_imports WHERE id = ANY(%s)",
            (list(imports),)).fetchone()[0])  # type: ignore[index]
        violations = open_videos + open_imports
        return {"checked": len(videos) + len(imports), "violations": violations,
                "detail": f"{open_videos} videos, {open_imports} imports unfinished"
                if violations else ""}


def _fields_of(intent: BaseIntent) -> dict[str, Any]:
    """The columns a video intent's fields land in, with their values."""
    if isinstance(intent, VideoQueued):
        return {"source_key": intent.source_key, "queued_at": intent.occurred_at}
    if isinstance(intent, VideoProcessing):
        return {"started_at": intent.occurred_at}
    if isinstance(intent, VideoReady):
        return {"hls_key": intent.hls_key, "duration_s": intent.duration_s,
                "finished_at": intent.occurred_at}
    if isinstance(intent, VideoFailed):
        return {"error": intent.reason, "finished_at": intent.occurred_at}
    return {}


#: Natural keys and values of the tables replay must reproduce (surrogate ids left out).
_COMPARE = {
    "videos": "SELECT id, tenant_id, status, attempt, status_rank, source_key, hls_key,"
              " duration_s, renditions::text, error, queued_at, started_at, finished_at,"
              " updated_at FROM videos",
    "roster_imports": "SELECT id, status, total, valid, chunks_expected, chunks_applied,"
                      " error, finished_at FROM roster_imports",
    "students": "SELECT tenant_id, phone, name, parent_phone, school, grade, birth_date"
                " FROM students",
    "enrollments": "SELECT e.lecture_id, s.phone, e.import_id FROM enrollments e"
                   " JOIN students s ON s.id = e.student_id",
}


def compare(live_url: str, replay_url: str) -> dict[str, Any]:
    """Rows of the live database missing from the replayed one, and the other way round."""
    checked = differ = 0
    notes = []
    with psycopg.connect(live_url) as live, psycopg.connect(replay_url) as again:
        for table, query in _COMPARE.items():
            a = Counter(tuple(r) for r in live.execute(query))
            b = Counter(tuple(r) for r in again.execute(query))
            checked += sum(a.values())
            diff = sum(((a - b) + (b - a)).values())
            if diff:
                differ += diff
                notes.append(f"{table}: {sum((a - b).values())} live rows not replayed, "
                             f"{sum((b - a).values())} replayed rows not live")
    return {"checked": checked, "violations": differ, "detail": "; ".join(notes)}


def _via(url: str, port: int) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    params["port"] = str(port)
    return make_conninfo(**params)  # type: ignore[arg-type]


@contextlib.contextmanager
def _tempdir() -> Iterator[str]:
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="jobplatform-chaos-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    return {"count": len(values), "median": percentile(values, 50), "max": max(values)}


# --- the report ----------------------------------------------------------------------------


def faults_table(result: dict[str, Any]) -> str:
    rows = [[f["at_s"], f["name"], f["outcome"],
             "" if f["takeover_s"] is None else f["takeover_s"]] for f in result["faults"]]
    return markdown_table(["at s", "fault", "what happened", "lock held again after s"], rows)


def invariants_table(result: dict[str, Any]) -> str:
    rows = [[name, "pass" if r["passed"] else "FAIL", r["checked"], r["violations"],
             r["needs"] or "", r["detail"]] for name, r in result["invariants"].items()]
    return markdown_table(["invariant", "result", "checked", "violations", "fix it needs",
                           "detail"], rows)


def run(config: ChaosConfig, echo: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """One chaos run; the result :func:`faults_table` and :func:`invariants_table` print."""
    return Chaos(config, echo).run()


@click.command(name="chaos")
@click.option("--seed", type=int, default=None, help="The run's seed (printed; default random).")
@click.option("--faults", "faults", default=",".join(FAULTS), show_default=True,
              help="Comma-separated faults to inject.")
@click.option("--kills", type=click.IntRange(min=0), default=5, show_default=True,
              help="Writer kills (the kill* faults among --faults, in turn).")
@click.option("--repeat", type=click.IntRange(min=0), default=1, show_default=True,
              help="Times each non-kill fault is injected.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=5), default=60.0,
              show_default=True, help="Seconds of load, over which the faults are spread.")
@click.option("--videos", type=click.IntRange(min=1), default=150, show_default=True)
@click.option("--imports", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--rows-per-import", type=click.IntRange(min=1), default=600, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(seed: int | None, faults: str, kills: int, repeat: int, duration_s: float,
            videos: int, imports: int, rows_per_import: int, as_json: bool) -> None:
    """Faults under mixed load on private servers, then the invariants (exit 1 on a failure)."""
    chosen = tuple(f.strip() for f in faults.split(",") if f.strip())
    unknown = sorted(set(chosen) - set(FAULTS))
    if unknown:
        raise click.BadParameter(f"unknown faults {unknown}; known: {', '.join(FAULTS)}",
                                 param_hint="--faults")
    if seed is None:
        seed = random.randrange(1, 2**31)
    config = ChaosConfig(seed=seed, duration_s=duration_s, kills=kills, faults=chosen,
                         repeat=repeat, videos=videos, imports=imports,
                         rows_per_import=rows_per_import)

    def echo(text: str) -> None:
        click.echo(text, err=as_json)

    echo(f"seed {seed} (again: jobplatform bench chaos --seed {seed} ...)")
    result = run(config, echo)
    failed = [n for n, r in result["invariants"].items() if not r["passed"]]
    if as_json:
        from jobplatform.cli._common import echo_json

        echo_json(result)
    else:
        click.echo("")
        click.echo(faults_table(result))
        click.echo("")
        click.echo(invariants_table(result))
        click.echo("")
        click.echo(f"seed {seed}; published {result['published']['intents']} intents and "
                   f"{result['published']['malformed']} malformed messages; drained: "
                   f"{result['drained']}; writer starts {result['writer_starts']}; takeover "
                   f"{result['takeover_s']}")
    if failed or not result["drained"]:
        sys.exit(1)
