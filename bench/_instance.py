"""An emulated small database instance: a private PostgreSQL held to a fraction of one core.

The incident happened on a db.t4g.micro: 2 vCPUs whose sustained baseline, once burst credits are
spent, is 10% each (0.2 of one core), and about 25 connections. :class:`EmulatedInstance` starts
its own PostgreSQL (initdb into a temporary folder, a free port, ``max_connections``,
``pg_stat_statements``, ``track_commit_timestamp``) and puts the postmaster in a CPU-limited
group *before* it forks a single backend, so every server process inherits the cap:

- cgroup v1 (``/sys/fs/cgroup/cpu``): a new group with ``cpu.cfs_quota_us`` of
  ``cpu.cfs_period_us``; CPU is read from the group's ``cpuacct.usage``;
- cgroup v2: a new group with ``cpu.max``; CPU from its ``cpu.stat``;
- ``cpulimit`` on the postmaster and its children when no cgroup is writable;
- none (the run says so) when nothing else is available.

Workers connect as ``app``, a role without superuser rights, so they meet the same
"remaining connection slots are reserved" refusal an application meets; the benchmark's own
monitoring connects as ``postgres`` into the reserved slots. Teardown (server, group, folder)
always runs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench._common import postmaster_cpu_seconds, stop_process
from jobplatform.settings import WriterSettings

APP_ROLE = "app"
_PG_VERSIONS = ("17", "16", "15", "14")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PERIOD_US = 100_000


class InstanceError(RuntimeError):
    """The emulated instance could not be started."""


def find_pg_bin() -> Path:
    """The folder holding ``initdb`` and ``postgres``: the system's, else pgserver's wheel."""
    for version in _PG_VERSIONS:
        candidate = Path(f"/usr/lib/postgresql/{version}/bin")
        if (candidate / "postgres").exists() and (candidate / "initdb").exists():
            return candidate
    try:
        import pgserver
    except ImportError:
        pass
    else:
        candidate = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (candidate / "postgres").exists():
            return candidate
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    raise InstanceError("no PostgreSQL binaries found (system packages or the pgserver wheel)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class InstanceConfig:
    """How small the emulated instance is. ``cpu_quota`` None leaves the server uncapped."""

    cpu_quota: float | None = 0.2
    max_connections: int = 25
    shared_buffers: str = "128MB"
    extra: tuple[tuple[str, str], ...] = ()


class CpuCap:
    """A CPU limit applied to the server's process tree, with its own CPU accounting."""

    method = "none"

    def describe(self) -> str:
        return "uncapped"

    def enter_child(self) -> None:
        """Runs in the child before exec: join the group (cgroups) or nothing."""

    def attach(self, pid: int) -> None:
        """Runs in the parent once the postmaster exists (cpulimit) or nothing."""

    def cpu_seconds(self, postmaster_pid: int) -> float:
        return postmaster_cpu_seconds(postmaster_pid)

    def cpu_exact(self) -> bool:
        """Whether :meth:`cpu_seconds` includes backends that have exited."""
        return False

    def close(self) -> None:
        """Remove the group or stop the limiter."""


class CgroupV1Cap(CpuCap):
    method = "cgroup-v1"

    def __init__(self, quota: float | None, name: str) -> None:
        self.quota = quota
        self.cpu_dir = _CGROUP_ROOT / "cpu" / name
        self.cpu_dir.mkdir()
        self.acct_dir: Path | None = None
        try:
            (self.cpu_dir / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (self.cpu_dir / "cpu.cfs_quota_us").write_text(_quota_us(quota))
            if (self.cpu_dir / "cpuacct.usage").exists():  # cpu and cpuacct mounted together
                self.acct_dir = self.cpu_dir
            elif (_CGROUP_ROOT / "cpuacct" / "cpuacct.usage").exists():
                self.acct_dir = _CGROUP_ROOT / "cpuacct" / name
                self.acct_dir.mkdir()
        except OSError:
            self.close()
            raise

    def describe(self) -> str:
        if self.quota is None:
            return f"uncapped (cgroup v1 {self.cpu_dir} for CPU accounting only)"
        return (f"cgroup v1 {self.cpu_dir}: cfs_quota_us {_quota_us(self.quota)} of "
                f"cfs_period_us {_PERIOD_US} ({self.quota:g} of one core)")

    def enter_child(self) -> None:
        pid = str(os.getpid())
        (self.cpu_dir / "cgroup.procs").write_text(pid)
        if self.acct_dir is not None and self.acct_dir != self.cpu_dir:
            (self.acct_dir / "cgroup.procs").write_text(pid)

    def cpu_seconds(self, postmaster_pid: int) -> float:
        if self.acct_dir is None:
            return super().cpu_seconds(postmaster_pid)
        return int((self.acct_dir / "cpuacct.usage").read_text()) / 1e9

    def cpu_exact(self) -> bool:
        return self.acct_dir is not None

    def throttled_s(self) -> float:
        return _stat(self.cpu_dir / "cpu.stat", "throttled_time") / 1e9

    def close(self) -> None:
        for folder in {self.cpu_dir, self.acct_dir} - {None}:
            assert folder is not None
            _remove_group(folder)


class CgroupV2Cap(CpuCap):
    method = "cgroup-v2"

    def __init__(self, quota: float | None, name: str) -> None:
        self.quota = quota
        parent = _own_v2_group()
        controllers = (parent / "cgroup.subtree_control").read_text().split()
        if "cpu" not in controllers:
            (parent / "cgroup.subtree_control").write_text("+cpu")
        self.dir = parent / name
        self.dir.mkdir()
        try:
            limit = "max" if quota is None else _quota_us(quota)
            (self.dir / "cpu.max").write_text(f"{limit} {_PERIOD_US}")
        except OSError:
            self.close()
            raise

    def describe(self) -> str:
        if self.quota is None:
            return f"uncapped (cgroup v2 {self.dir} for CPU accounting only)"
        return f"cgroup v2 {self.dir}: cpu.max {_quota_us(self.quota)} {_PERIOD_US}"

    def enter_child(self) -> None:
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def cpu_seconds(self, postmaster_pid: int) -> float:
        return _stat(self.dir / "cpu.stat", "usage_usec") / 1e6

    def cpu_exact(self) -> bool:
        return True

    def throttled_s(self) -> float:
        return _stat(self.dir / "cpu.stat", "throttled_usec") / 1e6

    def close(self) -> None:
        _remove_group(self.dir)


class CpulimitCap(CpuCap):
    method = "cpulimit"

    def __init__(self, quota: float, binary: str) -> None:
        self.quota = quota
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def describe(self) -> str:
        percent = round(self.quota * 100)
        return f"cpulimit -l {percent} -i (stop/continue signals, coarse; postmaster and children)"

    def attach(self, pid: int) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-l", str(round(self.quota * 100)), "-i", "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _stat(path: Path, name: str) -> int:
    """One counter of a cgroup's ``cpu.stat`` (lines of ``name value``); 0 when absent."""
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return int(value)
    return 0


def _quota_us(quota: float | None) -> str:
    return "-1" if quota is None else str(round(quota * _PERIOD_US))


def _own_v2_group() -> Path:
    with open("/proc/self/cgroup", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("0::"):
                return _CGROUP_ROOT / line.strip()[3:].lstrip("/")
    raise OSError("not in a cgroup v2 hierarchy")


def _remove_group(folder: Path) -> None:
    deadline = time.monotonic() + 10
    while folder.exists():
        try:
            folder.rmdir()
        except OSError:
            # Processes may still be leaving; move stragglers out is not ours to do: wait.
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)


def make_cap(quota: float | None) -> tuple[CpuCap, list[str]]:
    """The best CPU cap available here, and why the better ones were not used.

    With ``quota`` None the server is not capped, but still put in a group where one is
    available, for exact CPU accounting.
    """
    name = f"jobplatform-bench-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    notes: list[str] = []
    if (_CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        try:
            return CgroupV1Cap(quota, name), notes
        except OSError as exc:
            notes.append(f"cgroup v1: {exc}")
    if (_CGROUP_ROOT / "cgroup.controllers").exists():
        try:
            return CgroupV2Cap(quota, name), notes
        except OSError as exc:
            notes.append(f"cgroup v2: {exc}")
    binary = shutil.which("cpulimit")
    if quota is None:
        return CpuCap(), notes
    if binary:
        return CpulimitCap(quota, binary), notes
    notes.append("cpulimit: not installed")
    return CpuCap(), notes


@dataclass(slots=True)
class EmulatedInstance:
    """A private PostgreSQL server; use as a context manager (teardown always runs)."""

    config: InstanceConfig = field(default_factory=InstanceConfig)
    port: int = 0
    folder: Path | None = None
    cap: CpuCap = field(default_factory=CpuCap)
    cap_notes: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    pg_bin: Path | None = None
    version: str = ""
    _args: list[str] = field(default_factory=list)
    _demote: Callable[[], None] = field(default=lambda: None)

    def __enter__(self) -> EmulatedInstance:
        _exit_on_sigterm()
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.pg_bin = find_pg_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="jobplatform-bench-pg-"))
        data = self.folder / "data"
        run_as = _unprivileged_user()
        if run_as is not None:
            os.chown(self.folder, run_as.pw_uid, run_as.pw_gid)
        self.folder.chmod(0o700)
        demote = _demote(run_as)
        subprocess.run(
            [str(self.pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, preexec_fn=demote,
        )
        self.port = free_port()
        self.cap, self.cap_notes = make_cap(self.config.cpu_quota)
        settings = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.folder),
            "max_connections": str(self.config.max_connections),
            "shared_buffers": self.config.shared_buffers,
            "track_commit_timestamp": "on",
            "logging_collector": "off",
            **dict(self.config.extra),
        }
        if (self._pkglibdir() / "pg_stat_statements.so").exists():
            settings["shared_preload_libraries"] = "pg_stat_statements"
        args = [str(self.pg_bin / "postgres"), "-D", str(data)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        self._args = args
        self._demote = demote
        self.launch()
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            self.version = str(row[0]) if row else ""
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(APP_ROLE)))

    def launch(self) -> None:
        """Start the postmaster on the initialised folder (again, after :meth:`kill`) and wait
        until it answers."""
        assert self.folder is not None
        cap, demote = self.cap, self._demote

        def enter_and_demote() -> None:
            cap.enter_child()  # as root, before exec: the postmaster starts inside the group
            demote()

        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - the server owns it
        with log:
            self.proc = subprocess.Popen(
                self._args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=enter_and_demote,
                start_new_session=True,
            )
        self.cap.attach(self.proc.pid)
        self._wait_ready(120.0)

    def kill(self, sig: signal.Signals) -> None:
        """Stop the server, keeping its folder for :meth:`launch`: SIGINT is a fast shutdown,
        SIGQUIT an immediate one (a crash: recovery replays the WAL at the next start)."""
        if self.proc is not None:
            stop_process(self.proc, sig)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT)  # fast shutdown
        self.proc = None
        self.cap.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _pkglibdir(self) -> Path:
        assert self.pg_bin is not None
        pg_config = self.pg_bin / "pg_config"
        if pg_config.exists():
            out = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True)
            if out.returncode == 0:
                return Path(out.stdout.strip())
        return self.pg_bin.parent / "lib"

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise InstanceError(f"postgres exited at start:\n{self.server_log()[-2000:]}")
            try:
                with psycopg.connect(self.admin_url(), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.1)
        raise InstanceError(f"postgres not ready after {timeout_s:.0f} s: {last}")

    def server_log(self) -> str:
        if self.folder is None:
            return ""
        try:
            return (self.folder / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    # --- use --------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres", *, user: str = APP_ROLE, **params: Any) -> str:
        # The writer's tables live in its own schema; the baselines' in public.
        params.setdefault("options", f"-c search_path={WriterSettings().db_schema},public")
        return make_conninfo(host="127.0.0.1", port=self.port, user=user, dbname=dbname, **params)

    def admin_url(self, dbname: str = "postgres") -> str:
        return self.url(dbname, user="postgres")

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """A database owned by the application role; returns the role's URL to it."""
        query = sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(APP_ROLE)
        )
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(query)
        if (self._pkglibdir() / "pg_stat_statements.so").exists():
            with psycopg.connect(self.admin_url(name), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """Server CPU used so far, every server process included."""
        return self.cap.cpu_seconds(self.pid)

    def throttled_s(self) -> float | None:
        getter: Callable[[], float] | None = getattr(self.cap, "throttled_s", None)
        return getter() if getter is not None else None

    def describe(self) -> dict[str, Any]:
        return {
            "postgres": self.version,
            "cpu_cap_method": self.cap.method if self.config.cpu_quota is not None else "none",
            "cpu_cap": self.cap.describe(),
            "cpu_quota": self.config.cpu_quota,
            "cpu_cap_notes": self.cap_notes,
            "server_cpu_source": "cgroup accounting" if self.cap.cpu_exact()
            else "/proc of live server processes",
            "max_connections": self.config.max_connections,
            "shared_buffers": self.config.shared_buffers,
            "fsync": "on (default)",
        }


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that teardown runs (only where nobody else handles it)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def leave(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, leave)


def _unprivileged_user() -> pwd.struct_passwd | None:
    """initdb and postgres refuse root: run them as ``postgres`` (or ``nobody``) when root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise InstanceError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL")


def _demote(user: pwd.struct_passwd | None) -> Callable[[], None]:
    def demote() -> None:
        if user is None:
            return
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return demote
