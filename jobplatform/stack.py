"""Local services: find PostgreSQL, Redis and S3, or start embedded ones.

Order of preference for each service: the URL configured in the environment; the standard
local port if it answers; an embedded server started under the state folder. For S3, AWS
credentials in the environment (or production) mean AWS; otherwise an embedded moto server.

The state folder (``JOBPLATFORM_STATE_DIR``) holds one ``<service>.json`` record per embedded
server, their logs under ``logs/``, ``ports.json`` (the ports they had, reused on the next start)
and ``stack.lock``, which serialises every start and stop so that processes resolving the
services at once never start a server twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from jobplatform.embedded import (
    POSTGRES,
    REDIS,
    S3,
    S3_ACCESS_KEY_ID,
    S3_SECRET_ACCESS_KEY,
    SERVICE_NAMES,
    EmbeddedServer,
    answers,
    is_ours,
    pid_alive,
    port_open,
    purge_embedded,
    start_embedded_postgres,
    start_embedded_redis,
    start_embedded_s3,
    stop_embedded,
)
from jobplatform.errors import StackError
from jobplatform.settings import Settings, StackSettings

__all__ = [
    "LOCAL_DATABASE_URL",
    "LOCAL_REDIS_URL",
    "Choice",
    "ServiceStatus",
    "Services",
    "choose",
    "claim_services",
    "ensure_embedded",
    "ensure_services",
    "port_open",
    "session_services",
    "stack_status",
    "stop_services",
]

LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/jobplatform"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
_LOCAL = {POSTGRES: ("127.0.0.1", 5432, LOCAL_DATABASE_URL),
          REDIS: ("127.0.0.1", 6379, LOCAL_REDIS_URL)}
_VARIABLE = {POSTGRES: "DATABASE_URL", REDIS: "REDIS_URL", S3: "S3_ENDPOINT_URL"}
_AWS_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)

Source = Literal["configured", "local", "aws", "embedded"]
Probe = Callable[[str, int], bool]


@dataclass(frozen=True, slots=True)
class Services:
    """Where the platform's services are, and which of them this stack started."""

    database_url: str
    redis_url: str
    s3_endpoint_url: str | None
    s3_bucket: str
    s3_access_key_id: str | None
    s3_secret_access_key: str | None
    s3_region: str
    embedded: tuple[str, ...] = ()
    """Services that are embedded servers of the stack (started now or by an earlier call)."""
    started: tuple[str, ...] = ()
    """The embedded servers this very call started (the rest were found running)."""

    def apply(self, settings: Settings) -> Settings:
        """``settings`` pointing at these services, for code that takes only settings."""
        s3 = settings.s3.model_copy(
            update={
                "endpoint_url": self.s3_endpoint_url,
                "bucket": self.s3_bucket,
                "access_key_id": self.s3_access_key_id,
                "secret_access_key": self.s3_secret_access_key,
                "region": self.s3_region,
            }
        )
        return settings.model_copy(
            update={"database_url": self.database_url, "redis_url": self.redis_url, "s3": s3}
        )

    def environ(self) -> dict[str, str]:
        """The environment variables that point a child process at these services."""
        env = {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
               "S3_BUCKET": self.s3_bucket, "S3_REGION": self.s3_region}
        if self.s3_endpoint_url:
            env["S3_ENDPOINT_URL"] = self.s3_endpoint_url
        if self.s3_access_key_id:
            env["S3_ACCESS_KEY_ID"] = self.s3_access_key_id
        if self.s3_secret_access_key:
            env["S3_SECRET_ACCESS_KEY"] = self.s3_secret_access_key
        return env


@dataclass(frozen=True, slots=True)
class Choice:
    """Where one service comes from; ``url`` is None for an embedded one (known once started)
    and for AWS's S3."""

    name: str
    source: Source
    url: str | None


def choose(settings: Settings, probe: Probe = port_open) -> dict[str, Choice]:
    """Decide each service's source without starting anything; ``probe(host, port)`` tells
    whether a standard local port answers."""
    configured = {POSTGRES: settings.database_url, REDIS: settings.redis_url,
                  S3: settings.s3.endpoint_url}
    choices: dict[str, Choice] = {}
    for name in SERVICE_NAMES:
        url = configured[name]
        if url:
            choices[name] = Choice(name, "configured", url)
        elif name in _LOCAL and settings.stack.use_local and probe(*_LOCAL[name][:2]):
            choices[name] = Choice(name, "local", _LOCAL[name][2])
        elif name == S3 and (settings.production or _aws_credentials(settings)):
            choices[name] = Choice(name, "aws", None)
        else:
            choices[name] = Choice(name, "embedded", None)
    return choices


def _aws_credentials(settings: Settings) -> bool:
    return bool(settings.s3.access_key_id) or any(
        os.environ.get(variable) for variable in _AWS_CREDENTIAL_VARIABLES
    )


def ensure_services(settings: Settings, *, probe: Probe = port_open,
                    needs: Collection[str] = SERVICE_NAMES) -> Services:
    """Resolve every service, starting embedded ones where needed; idempotent.

    Configured and local services cost no subprocess and no lock; embedded ones are found
    running (by their records in the state folder) or started, under ``stack.lock``. Only the
    services in ``needs`` (names of :data:`~jobplatform.embedded.SERVICE_NAMES`) are started:
    a command that never reaches S3 leaves it alone, and its ``Services`` then names none.
    """
    unknown = set(needs) - set(SERVICE_NAMES)
    if unknown:
        raise ValueError(f"unknown services {sorted(unknown)}: not in {SERVICE_NAMES}")
    choices = choose(settings, probe)
    wanted = tuple(name for name, choice in choices.items()
                   if choice.source == "embedded" and name in needs)
    if wanted and settings.production:
        missing = ", ".join(_VARIABLE[name] for name in wanted)
        raise StackError(f"production never starts embedded services: set {missing}")
    servers, started = ensure_embedded(settings.jobplatform_state_dir, wanted, settings.stack)

    def url(name: str) -> str | None:
        return servers[name].url if name in servers else choices[name].url

    s3_embedded = S3 in servers
    services = Services(
        database_url=url(POSTGRES) or LOCAL_DATABASE_URL,
        redis_url=url(REDIS) or LOCAL_REDIS_URL,
        s3_endpoint_url=url(S3),
        s3_bucket=settings.s3.bucket,
        s3_access_key_id=S3_ACCESS_KEY_ID if s3_embedded else settings.s3.access_key_id,
        s3_secret_access_key=(
            S3_SECRET_ACCESS_KEY if s3_embedded else settings.s3.secret_access_key
        ),
        s3_region=settings.s3.region,
        embedded=tuple(name for name in SERVICE_NAMES if name in servers),
        started=started,
    )
    if s3_embedded:
        from jobplatform.s3 import ensure_bucket, s3_client

        ensure_bucket(s3_client(services.apply(settings)), services.s3_bucket)
    return services


def ensure_embedded(
    state_dir: Path, names: tuple[str, ...], stack: StackSettings | None = None,
) -> tuple[dict[str, EmbeddedServer], tuple[str, ...]]:
    """The embedded servers ``names``, found running or started; also the names started."""
    if not names:
        return {}, ()
    stack = stack or StackSettings()
    found: dict[str, EmbeddedServer] = {}
    started: list[str] = []
    with state_lock(state_dir, timeout=stack.start_timeout_s * len(names) + 30):
        for name in names:
            record = load_record(state_dir, name)
            if record is not None and is_ours(record):
                if not answers(record):
                    raise StackError(
                        f"embedded {name} (pid {record.pid}) runs but does not answer on"
                        f" 127.0.0.1:{record.port}; read {record.log}, or stop it with"
                        " `jobplatform stack down`"
                    )
                found[name] = record
                continue
            server = _start(name, state_dir, stack, record)
            save_record(state_dir, server)
            found[name] = server
            started.append(name)
    return found, tuple(started)


def _start(name: str, state_dir: Path, stack: StackSettings,
           previous: EmbeddedServer | None) -> EmbeddedServer:
    # A restarted server keeps its former port when it is free, so URLs stay the same.
    timeout = stack.start_timeout_s
    port = previous.port if previous else _last_ports(state_dir).get(name)
    if name == POSTGRES:
        return start_embedded_postgres(
            state_dir, preferred_port=port or stack.postgres_port, run_as=stack.run_as,
            timeout=timeout, binaries=stack.binaries)
    if name == REDIS:
        return start_embedded_redis(
            state_dir, preferred_port=port or stack.redis_port, timeout=timeout,
            binaries=stack.binaries)
    return start_embedded_s3(state_dir, preferred_port=port or stack.s3_port, timeout=timeout)


def _last_ports(state_dir: Path) -> dict[str, int]:
    try:
        raw = json.loads((state_dir / "ports.json").read_text())
        return {str(name): int(port) for name, port in raw.items()}
    except (OSError, ValueError, AttributeError):
        return {}


def stop_services(state_dir: Path, names: tuple[str, ...] = SERVICE_NAMES, *,
                  purge: bool = False) -> list[EmbeddedServer]:
    """Stop the embedded servers the stack started (never anything else); returns them.

    ``purge`` also deletes their data (the embedded PostgreSQL's databases).
    """
    if not state_dir.is_dir():
        return []
    with state_lock(state_dir, timeout=120):
        stopped = _stop_locked(state_dir, names)
        _write_sessions(state_dir, _Sessions())
        if purge:
            purge_embedded(state_dir)
    return stopped


def _stop_locked(state_dir: Path, names: tuple[str, ...]) -> list[EmbeddedServer]:
    stopped = []
    ports = _last_ports(state_dir)
    for name in names:
        record = load_record(state_dir, name)
        if record is None:
            continue
        if stop_embedded(record):
            stopped.append(record)
        ports[name] = record.port
        _record_path(state_dir, name).unlink(missing_ok=True)
    if stopped:
        _write_atomic(state_dir / "ports.json", json.dumps(ports))
    return stopped


@contextlib.contextmanager
def session_services(settings: Settings, *, probe: Probe = port_open) -> Iterator[Services]:
    """The services for a bounded session such as a test run.

    Embedded servers the session started are stopped when it ends, unless another session
    still runs (then the last one out stops them) or ``jobplatform stack up`` claimed them.
    Servers found running are left alone.
    """
    state_dir = settings.jobplatform_state_dir
    me = f"{os.getpid()}:{uuid.uuid4().hex[:8]}"
    leased = any(c.source == "embedded" for c in choose(settings, probe).values())
    if leased:  # before resolving, so that no other session stops what we are about to find
        _update_sessions(state_dir, lambda s: _Sessions((*s.leases, me), s.owned))
    try:
        services = ensure_services(settings, probe=probe)
        if leased or services.started:
            leased = True
            _update_sessions(state_dir, lambda s: _Sessions(
                tuple(dict.fromkeys((*s.leases, me))), (*s.owned, *services.started)))
        yield services
    finally:
        if leased:
            _leave_session(state_dir, me)


def _leave_session(state_dir: Path, me: str) -> None:
    with state_lock(state_dir, timeout=120):
        sessions = _read_sessions(state_dir)
        others = tuple(lease for lease in sessions.leases
                       if lease != me and pid_alive(int(lease.split(":")[0])))
        if others:
            _write_sessions(state_dir, _Sessions(others, sessions.owned))
        else:
            _stop_locked(state_dir, sessions.owned)
            _write_sessions(state_dir, _Sessions())


def claim_services(state_dir: Path) -> None:
    """Keep the running embedded servers past the end of the sessions that started them."""
    if state_dir.is_dir():
        _update_sessions(state_dir, lambda s: _Sessions(s.leases, ()))


@dataclass(frozen=True, slots=True)
class _Sessions:
    leases: tuple[str, ...] = ()
    """``<pid>:<token>`` of each session using the embedded servers."""
    owned: tuple[str, ...] = ()
    """Embedded servers a session started, stopped when the last session ends."""


def _read_sessions(state_dir: Path) -> _Sessions:
    try:
        raw = json.loads((state_dir / "sessions.json").read_text())
        return _Sessions(tuple(str(p) for p in raw["leases"]), tuple(str(n) for n in raw["owned"]))
    except (OSError, ValueError, KeyError, TypeError):
        return _Sessions()


def _write_sessions(state_dir: Path, sessions: _Sessions) -> None:
    path = state_dir / "sessions.json"
    if not sessions.leases and not sessions.owned:
        path.unlink(missing_ok=True)
        return
    _write_atomic(path, json.dumps({"leases": list(sessions.leases),
                                    "owned": sorted(set(sessions.owned))}))


def _update_sessions(state_dir: Path, change: Callable[[_Sessions], _Sessions]) -> None:
    with state_lock(state_dir, timeout=120):
        _write_sessions(state_dir, change(_read_sessions(state_dir)))


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    source: Source
    url: str | None
    up: bool | None
    """None when not checked (AWS's S3)."""
    pid: int | None = None
    in_use: bool = True
    """False for an embedded server still running while the configuration points elsewhere."""


def stack_status(settings: Settings, *, probe: Probe = port_open) -> list[ServiceStatus]:
    """What each service resolves to now, and whether it answers; starts nothing."""
    rows = []
    for name, choice in choose(settings, probe).items():
        record = load_record(settings.jobplatform_state_dir, name)
        running = record is not None and is_ours(record)
        if choice.source == "embedded":
            up = record is not None and running and answers(record)
            rows.append(ServiceStatus(name, "embedded", record.url if record else None, up,
                                      record.pid if record and running else None))
            continue
        rows.append(ServiceStatus(name, choice.source, choice.url, _url_answers(choice.url)))
        if record is not None and running and record.url != choice.url:
            rows.append(ServiceStatus(name, "embedded", record.url, answers(record), record.pid,
                                      in_use=False))
    return rows


def _url_answers(url: str | None) -> bool | None:
    if not url:
        return None
    default_ports = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "rediss": 6379,
                     "http": 80, "https": 443}
    try:
        parts = urlsplit(url)
        port = parts.port or default_ports.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None  # a socket path or a keyword conninfo: not probed
    return port_open(parts.hostname, port)


# ---- the state folder ----------------------------------------------------------------------

def _record_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.json"


def load_record(state_dir: Path, name: str) -> EmbeddedServer | None:
    path = _record_path(state_dir, name)
    try:
        return EmbeddedServer.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path} is not a stack record ({exc}); delete it if no server of"
                         " the stack runs") from exc


def save_record(state_dir: Path, server: EmbeddedServer) -> None:
    _write_atomic(_record_path(state_dir, server.name), server.to_json())


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    partial.replace(path)


@contextlib.contextmanager
def state_lock(state_dir: Path, timeout: float) -> Iterator[None]:
    """Hold ``<state dir>/stack.lock`` (an exclusive flock) for one start or stop."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "stack.lock"
    with path.open("a+b") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"another process has held {path} for {timeout:.0f} s"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
