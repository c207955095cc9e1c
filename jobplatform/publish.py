"""The publish client for API services: upload a source, publish a job, ask for its status.

It needs Redis and S3 only: jobs travel by actor name (no actor code is imported) and the job's
first status row reaches PostgreSQL as a write intent, applied by the writer.

Job states, as :meth:`Publisher.status` reports them, from the job's progress record in Redis::

    unknown --publish--> queued --actor starts--> running --+--> done
                                                   |        +--> failed
                                                   +--(roster)--> writing --writer--> done

``unknown``: nothing in Redis for the job (never published, or its record expired after
:data:`~jobplatform.progress.PROGRESS_TTL_S`). ``queued``: the publish record, written before the
message is enqueued. ``running``: the actor's progress record names a working step
(``download``, ``encode``, ``parsing`` ...). ``done`` and ``failed``: a final record (its
``step``), which carries the outcome the actor also sent to the writer as an intent (the HLS
key; the failure reason), so a finished job's status needs no database. ``writing``: a roster
import whose rows are all parsed and handed to the writer (the record has the row and chunk
counts); the database marks the import ``done`` once the writer has applied every chunk, and
the status follows when the writer records that in the job's progress record.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import dramatiq
import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from jobplatform.broker import Queues, build_broker, heartbeats_key, make_message
from jobplatform.content import sniff_file
from jobplatform.emit import IntentEmitter
from jobplatform.errors import ConfigError, PublishError
from jobplatform.kinds import ENTRY_POINT_GROUP, KINDS_SETTING, JobType, Registry, registry_for
from jobplatform.progress import ProgressStore
from jobplatform.s3 import s3_client
from jobplatform.settings import Settings, load_settings
from schemas import BaseJob, SourceJob
from schemas.intents import RowError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: How long a retried request with the same idempotency key returns the first receipt.
IDEMPOTENCY_TTL_S = 24 * 3600
MAX_IDEMPOTENCY_KEY = 255
MAX_FILENAME = 120

JobState = Literal["unknown", "queued", "running", "interrupted", "writing", "done", "failed"]
UploadKind = Literal["video", "roster"]

#: ``step`` values of a progress record that stand for a state other than ``running``.
STEP_STATES: Mapping[str, JobState] = {"done": "done", "failed": "failed", "writing": "writing"}
QUEUED_STEP = "queued"

_IDEM_KEY = re.compile(rf"^[^\x00-\x20\x7f]{{1,{MAX_IDEMPOTENCY_KEY}}}$")
_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)
# Delete the key only while it still holds this publish's receipt.
_RELEASE = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['message_id'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class InvalidJob(PublishError, ValueError):
    """A job or an argument of the publish client is not acceptable; the message names it."""


class PublishReceipt(BaseModel):
    """What :meth:`Publisher.publish` did; a retried request gets the first one back."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    kind: str
    message_id: str
    queue: str
    actor: str
    published_at: datetime
    idempotency_key: str | None = None
    duplicate: bool = False
    """True when this is the receipt of an earlier publish with the same idempotency key."""


class JobStatus(BaseModel):
    """A job's state and progress, read from Redis."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    state: JobState
    step: str | None = None
    percent: float | None = None
    error: str | None = None
    progress: dict[str, Any] = {}
    """The whole progress record: live counters while running, the outcome when finished."""
    updated_at: datetime | None = None
    report_key: str | None = None
    """A roster import's error report (S3 key), once its rows are parsed."""
    sample_errors: tuple[RowError, ...] = ()
    """A roster import's first rejected rows (row, column, reason), once its rows are parsed."""

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


def job_state(record: Mapping[str, Any]) -> JobState:
    """The state a progress record stands for (see the module's state machine)."""
    if not record:
        return "unknown"
    step = record.get("step")
    if not isinstance(step, str) or step == QUEUED_STEP:
        return "queued" if step == QUEUED_STEP else "running"
    return STEP_STATES.get(step, "running")


def worker_silence(
    client: redis.Redis, namespace: str, records: Mapping[str, Mapping[str, Any]]
) -> dict[str, float]:
    """Seconds since the last broker heartbeat of the worker running each job of ``records``
    (job id -> progress record) that is running and names its worker's ``broker_id``;
    ``inf`` when the broker no longer lists that worker. One Redis round trip."""
    running = {job_id: record["broker_id"] for job_id, record in records.items()
               if job_state(record) == "running" and isinstance(record.get("broker_id"), str)}
    if not running:
        return {}
    pipe = client.pipeline(transaction=False)
    for broker_id in running.values():
        pipe.zscore(heartbeats_key(namespace), broker_id)
    now = time.time()
    return {
        job_id: math.inf if score is None else max(0.0, now - float(score) / 1000)
        for job_id, score in zip(running, pipe.execute(), strict=True)
    }


def status_from_record(
    job_id: str,
    record: Mapping[str, Any],
    *,
    worker_silent_s: float | None = None,
    heartbeat_timeout_s: float = 10.0,
) -> JobStatus:
    """The status a progress record stands for. ``worker_silent_s`` (see
    :func:`worker_silence`) past ``heartbeat_timeout_s`` turns ``running`` into
    ``interrupted``: its worker died, and its progress is no longer moving."""
    state = job_state(record)
    percent = record.get("percent")
    if state == "done" and percent is None:
        percent = 100.0
    error = record.get("error") or record.get("reason")
    if state == "running" and worker_silent_s is not None and (
            worker_silent_s > heartbeat_timeout_s):
        state = "interrupted"
        ago = "" if math.isinf(worker_silent_s) else f" {worker_silent_s:.0f} s ago"
        error = (
            f"the worker running it ({record.get('worker', 'unknown')}) stopped{ago} during "
            f"{record.get('step')}; the broker hands the job to another worker once that "
            "worker has been silent for 60 s"
        )
    updated = record.get("updated_at")
    return JobStatus(
        job_id=job_id,
        state=state,
        step=record.get("step") if isinstance(record.get("step"), str) else None,
        percent=float(percent) if isinstance(percent, int | float) else None,
        error=str(error) if error and state in ("failed", "interrupted") else None,
        progress=dict(record),
        updated_at=datetime.fromtimestamp(updated, UTC) if isinstance(updated, int | float)
        else None,
        report_key=report if isinstance(report := record.get("report_key"), str) else None,
        sample_errors=_row_errors(record.get("sample_errors")),
    )


def _row_errors(raw: Any) -> tuple[RowError, ...]:
    if not isinstance(raw, list):
        return ()
    found = []
    for item in raw:
        try:
            found.append(RowError.model_validate(item))
        except ValidationError:
            continue
    return tuple(found)


def safe_filename(filename: str) -> str:
    """The last path segment of ``filename`` reduced to letters, digits, ``.``, ``-``, ``_``.

    The extension (up to 16 characters after the last dot) is kept, even when nothing is left
    before it: ``.mp4`` becomes ``upload.mp4``.
    """
    name = unicodedata.normalize("NFC", filename).replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    ext = _UNSAFE.sub("_", ext).strip("_")
    if not dot or len(ext) > 16:
        stem, ext = name, ""
    stem = _UNSAFE.sub("_", stem).lstrip("._").rstrip(".")
    room = MAX_FILENAME - (len(ext) + 1 if ext else 0)
    if len(stem) > room:
        stem = stem[:room].rstrip("._")
    stem = stem or "upload"
    return f"{stem}.{ext}" if ext else stem


def tenant_prefix(tenant_id: int) -> str:
    return f"tenants/{tenant_id}/"


def upload_key(tenant_id: int, filename: str, upload_id: uuid.UUID | None = None) -> str:
    """``tenants/<tenant_id>/uploads/<uuid>/<safe filename>``."""
    if not isinstance(tenant_id, int) or isinstance(tenant_id, bool) or tenant_id <= 0:
        raise InvalidJob(f"tenant_id: must be a positive integer (got {tenant_id!r})")
    folder = upload_id or uuid.uuid4()
    return f"{tenant_prefix(tenant_id)}uploads/{folder}/{safe_filename(filename)}"


class Publisher:
    """Publishes jobs to the platform's queues; one per process, safe to share between threads.

    ``Publisher(settings)`` needs ``settings.redis_url``; :meth:`from_env` resolves the services
    like the CLI does (the configured ones, else the local or embedded stack).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        broker: dramatiq.Broker | None = None,
        s3: S3Client | None = None,
        registry: Registry | None = None,
    ) -> None:
        if broker is None:
            if not settings.redis_url:
                raise ConfigError("REDIS_URL: the publish client needs the broker's Redis")
            broker = build_broker(settings, settings.redis_url, set_global=False)
        self.settings = settings
        self.broker = broker
        self.queues = Queues.from_settings(settings)
        self.redis: redis.Redis = broker.client  # type: ignore[attr-defined]
        self.progress = ProgressStore(self.redis, settings.broker_namespace)
        self.registry = registry if registry is not None else registry_for(settings)
        self.emitter = IntentEmitter(broker, self.queues, self.registry)
        self._s3 = s3

    @classmethod
    def from_env(cls) -> Publisher:
        from jobplatform.stack import ensure_services

        settings = load_settings()
        if not settings.redis_url:
            settings = ensure_services(settings).apply(settings)
        return cls(settings)

    @property
    def s3(self) -> S3Client:
        if self._s3 is None:
            self._s3 = s3_client(self.settings)
        return self._s3

    def close(self) -> None:
        self.broker.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- upload ----------------------------------------------------------------------------

    def upload(
        self, source: str | Path | IO[bytes], tenant_id: int, kind: UploadKind, filename: str
    ) -> str:
        """Store a job's source file in S3 and return its key, ready for ``source_key``."""
        if kind not in ("video", "roster"):
            raise InvalidJob(f"kind: must be 'video' or 'roster' (got {kind!r})")
        key = upload_key(tenant_id, filename)
        # The type the content has, never the one its name suggests (jobplatform.content).
        if isinstance(source, str | Path):
            with open(source, "rb") as head:
                content_type, _ = sniff_file(head)
        else:
            content_type, source = sniff_file(source)
        extra = {"ContentType": content_type, "Metadata": {"kind": kind}}
        bucket = self.settings.s3.bucket
        if isinstance(source, str | Path):
            self.s3.upload_file(str(source), bucket, key, ExtraArgs=extra)
        else:
            self.s3.upload_fileobj(source, bucket, key, ExtraArgs=extra)
        return key

    # --- publish ---------------------------------------------------------------------------

    def publish(self, job: BaseJob, *, idempotency_key: str | None = None) -> PublishReceipt:
        """Enqueue ``job`` for its actor and its first status for the writer.

        ``job`` is of a job type a registered kind declares (:class:`jobplatform.kinds.JobType`):
        the built-in ``EncodeVideo`` and ``ImportRoster``, or a plug-in's.

        With ``idempotency_key`` (e.g. an HTTP request's Idempotency-Key), a repeat within
        :data:`IDEMPOTENCY_TTL_S` enqueues nothing and returns the first receipt with
        ``duplicate=True``: its ``job_id`` is the first job's, whatever the repeat carried.
        Keys are scoped by tenant.
        """
        job_type = self.validate(job)
        queue, actor = job_type.queue_name(self.settings), job_type.actor
        message = make_message(queue, actor, job.model_dump(mode="json"), job_id=job.job_id)
        receipt = PublishReceipt(
            job_id=job.job_id,
            kind=job.kind,
            message_id=message.message_id,
            queue=queue,
            actor=actor,
            published_at=datetime.now(UTC),
            idempotency_key=idempotency_key,
        )
        idem = None
        if idempotency_key is not None:
            idem = self._idem_key(job.tenant_id, idempotency_key)
            try:
                first = self._claim(idem, receipt)
            except (redis.RedisError, ValidationError) as exc:
                raise PublishError(
                    f"could not publish {job.job_id}: idempotency key: {exc}") from exc
            if first is not None:
                if first.kind != job.kind:
                    raise InvalidJob(
                        f"idempotency_key: {idempotency_key!r} was used for a {first.kind} job "
                        f"({first.job_id}), not a {job.kind} job"
                    )
                return first.model_copy(update={"duplicate": True})
        try:
            self.progress.update(
                job.job_id, step=QUEUED_STEP, kind=job.kind, tenant_id=job.tenant_id,
                message_id=message.message_id, queued_at=receipt.published_at.timestamp(),
            )
            if job_type.queued is not None:
                first_status = job_type.queued(job, receipt.published_at)
                if first_status is not None:
                    self.emitter.emit(first_status)
            self.broker.enqueue(message)
        except (redis.RedisError, OSError, dramatiq.errors.DramatiqError) as exc:
            self._undo(job.job_id, idem, receipt.message_id)
            raise PublishError(f"could not publish {job.job_id}: {exc}") from exc
        return receipt

    def validate(self, job: BaseJob) -> JobType:
        """Checks the models cannot make alone: a registered job type, and a source file under
        its tenant's prefix. Returns the job's type."""
        job_type = self.registry.job_type(job.kind) if isinstance(job, BaseJob) else None
        if job_type is None or not isinstance(job, job_type.model):
            known = ", ".join(sorted(t.model.__name__ for t in self.registry.job_types))
            raise InvalidJob(
                f"job: {type(job).__name__} is not a registered job type (registered: {known});"
                f" declare it in a kind's `jobs` and register the kind in {KINDS_SETTING} or"
                f" the {ENTRY_POINT_GROUP!r} entry points (decode JSON with"
                " Publisher.registry.decode_job first)"
            )
        if isinstance(job, SourceJob):
            prefix = tenant_prefix(job.tenant_id)
            if not job.source_key.startswith(prefix):
                raise InvalidJob(
                    f"source_key: {job.source_key!r} is not under the tenant's prefix {prefix!r}"
                )
        return job_type

    # --- idempotency -----------------------------------------------------------------------

    def _idem_key(self, tenant_id: int, key: str) -> str:
        if not isinstance(key, str) or not _IDEM_KEY.match(key):
            raise InvalidJob(
                "idempotency_key: must be 1 to 255 characters without spaces or control"
                f" characters (got {key!r:.80})"
            )
        return f"{self.settings.broker_namespace}:idem:{tenant_id}:{key}"

    def _claim(self, idem: str, receipt: PublishReceipt) -> PublishReceipt | None:
        """Take ``idem`` for ``receipt``; None when taken, else the receipt that holds it."""
        payload = receipt.model_dump_json()
        for _ in range(3):
            if self.redis.set(idem, payload, nx=True, ex=IDEMPOTENCY_TTL_S):
                return None
            raw = self.redis.get(idem)
            if raw is not None:
                return PublishReceipt.model_validate_json(raw)
            # It expired between SET and GET: try to take it again.
        raise PublishError(f"could not take the idempotency key {idem!r}")

    def _undo(self, job_id: str, idem: str | None, message_id: str) -> None:
        """After a failed publish: drop its queued record and free the idempotency key it
        took, so the client's retry publishes for real. Best effort: Redis may be the fault."""
        try:
            self.redis.delete(self.progress.key(job_id))
            if idem is not None:
                self.redis.eval(_RELEASE, 1, idem, message_id)
        except redis.RedisError:
            pass

    # --- status ----------------------------------------------------------------------------

    def status(self, job: BaseJob | str) -> JobStatus:
        """The job's state and progress (see the module's state machine); no database read."""
        job_id = job if isinstance(job, str) else job.job_id
        record = self.progress.get(job_id)
        silent = worker_silence(self.redis, self.settings.broker_namespace, {job_id: record})
        return status_from_record(
            job_id, record, worker_silent_s=silent.get(job_id),
            heartbeat_timeout_s=self.settings.worker_heartbeat_timeout_s)
