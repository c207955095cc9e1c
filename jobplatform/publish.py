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

Idempotency before bytes: with an idempotency key, :meth:`Publisher.upload` and
:meth:`Publisher.presign_upload` first reserve the key (:meth:`Publisher.reserve_upload`), so a
retried request gets the first attempt's source key back and uploads nothing once those bytes
are in S3 (or once the job is published); then :meth:`Publisher.publish` with the same key
enqueues nothing twice.
"""

from __future__ import annotations

import math
import mimetypes
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

from jobplatform.auth import Keyring, keyring_for, keyring_of
from jobplatform.broker import Queues, build_broker, heartbeats_key, make_message, state_client
from jobplatform.content import sniff_file
from jobplatform.emit import IntentEmitter
from jobplatform.errors import ConfigError, PublishError
from jobplatform.kinds import ENTRY_POINT_GROUP, KINDS_SETTING, JobType, Registry, registry_for
from jobplatform.progress import ProgressStore
from jobplatform.s3 import s3_client
from jobplatform.settings import Settings, load_settings
from schemas import BaseJob, SourceJob, tenant_prefix
from schemas.intents import RowError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "IDEMPOTENCY_TTL_S",
    "MAX_PRESIGN_EXPIRES_S",
    "InvalidJob",
    "JobState",
    "JobStatus",
    "PublishReceipt",
    "Publisher",
    "UploadKind",
    "UploadReservation",
    "UploadTicket",
    "job_state",
    "safe_filename",
    "status_from_record",
    "tenant_prefix",
    "upload_key",
]

#: How long a retried request with the same idempotency key returns the first receipt.
IDEMPOTENCY_TTL_S = 24 * 3600
MAX_IDEMPOTENCY_KEY = 255
MAX_FILENAME = 120
#: The longest a presigned upload may stay valid (S3's limit for SigV4 signatures).
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600

JobState = Literal["unknown", "queued", "running", "interrupted", "writing", "done", "failed"]
UploadKind = Literal["video", "roster"]
#: The job kind each upload kind feeds.
UPLOAD_JOB_KIND: Mapping[str, str] = {"video": "video.encode", "roster": "roster.import"}

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
    source_key: str | None = None
    """The S3 key of the job's source (the upload), so a retried request can find its bytes."""
    duplicate: bool = False
    """True when this is the receipt of an earlier publish with the same idempotency key."""


class UploadReservation(BaseModel):
    """Where a request's upload goes; with an idempotency key, the first attempt's answer."""

    model_config = ConfigDict(frozen=True)

    source_key: str
    kind: UploadKind
    idempotency_key: str | None = None
    reserved_at: datetime
    uploaded: bool = False
    """The object is already in S3 (an earlier attempt stored it): upload nothing."""
    receipt: PublishReceipt | None = None
    """The job already published with this key (``duplicate=True``): nothing is left to do."""

    @property
    def needs_upload(self) -> bool:
        return not self.uploaded and self.receipt is None


class UploadTicket(BaseModel):
    """A presigned upload for a client that sends the bytes to S3 itself.

    ``PUT``: send the file as the body of ``PUT url`` with ``headers``. ``POST``: send a
    multipart form to ``url`` with ``fields`` followed by the file as the field ``file``; S3
    refuses a file larger than ``max_bytes``. ``url`` is None when there is nothing to upload
    (``uploaded`` or ``receipt``, as in :class:`UploadReservation`).
    """

    model_config = ConfigDict(frozen=True)

    source_key: str
    method: Literal["PUT", "POST"]
    url: str | None
    headers: dict[str, str] = {}
    fields: dict[str, str] = {}
    expires_at: datetime
    max_bytes: int
    uploaded: bool = False
    receipt: PublishReceipt | None = None


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


def _content_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def upload_key(tenant_id: int, filename: str, upload_id: uuid.UUID | None = None) -> str:
    """``tenants/<tenant_id>/uploads/<uuid>/<safe filename>``."""
    if not isinstance(tenant_id, int) or isinstance(tenant_id, bool) or tenant_id <= 0:
        raise InvalidJob(f"tenant_id: must be a positive integer (got {tenant_id!r})")
    folder = upload_id or uuid.uuid4()
    return f"{tenant_prefix(tenant_id)}uploads/{folder}/{safe_filename(filename)}"


def _keyring(broker: dramatiq.Broker, settings: Settings) -> Keyring:
    """The broker's keys; for a broker built elsewhere, those of ``settings``."""
    try:
        return keyring_of(broker)
    except ConfigError:
        return keyring_for(settings)


class Publisher:
    """Publishes jobs to the platform's queues; one per process, safe to share between threads.

    ``Publisher(settings)`` needs ``settings.redis_url`` (and ``BROKER_URL`` for RabbitMQ);
    :meth:`from_env` resolves the services like the CLI does (the configured ones, else the
    local or embedded stack). A ``broker`` passed in may be any dramatiq broker (a plain
    ``RabbitmqBroker`` too): progress and idempotency keys then go to ``settings.redis_url``.
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
        self.redis: redis.Redis = state_client(broker, settings)
        self.progress = ProgressStore(self.redis, settings.broker_namespace)
        self.registry = registry if registry is not None else registry_for(settings)
        self.keyring = _keyring(broker, settings)
        self.emitter = IntentEmitter(broker, self.queues, self.registry, self.keyring)
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
        self, source: str | Path | IO[bytes], tenant_id: int, kind: UploadKind, filename: str,
        *, idempotency_key: str | None = None,
    ) -> str:
        """Store a job's source file in S3 and return its key, ready for ``source_key``.

        With ``idempotency_key`` (the same one the request then publishes with) the key is
        reserved first: a retry returns the first attempt's key and reads nothing of
        ``source`` when those bytes are already stored or the job already published.
        """
        reservation = self.reserve_upload(tenant_id, kind, filename,
                                          idempotency_key=idempotency_key)
        if not reservation.needs_upload:
            return reservation.source_key
        key = reservation.source_key
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

    def reserve_upload(
        self, tenant_id: int, kind: UploadKind, filename: str, *,
        idempotency_key: str | None = None,
    ) -> UploadReservation:
        """The S3 key a request's upload goes to, reserved for ``idempotency_key`` for
        :data:`IDEMPOTENCY_TTL_S`.

        The first attempt gets a new key; a retry (or a concurrent twin) gets the same key
        back, with ``uploaded`` when the object is in S3 and ``receipt`` when the job was
        published with this key. A retry that names another filename still gets the first key.
        """
        if kind not in UPLOAD_JOB_KIND:
            raise InvalidJob(f"kind: must be 'video' or 'roster' (got {kind!r})")
        key = upload_key(tenant_id, filename)
        now = datetime.now(UTC)
        if idempotency_key is None:
            return UploadReservation(source_key=key, kind=kind, reserved_at=now)
        idem = self._idem_key(tenant_id, idempotency_key)
        published = self.redis.get(idem)
        first = UploadReservation(source_key=key, kind=kind, idempotency_key=idempotency_key,
                                  reserved_at=now)
        held = self._reserve(self._upload_idem_key(idem), first)
        if held.kind != kind:
            raise InvalidJob(
                f"idempotency_key: {idempotency_key!r} was used for a {held.kind} upload"
                f" ({held.source_key}), not a {kind} upload")
        if published is not None:
            receipt = PublishReceipt.model_validate_json(published)
            if receipt.kind != UPLOAD_JOB_KIND[kind]:
                raise InvalidJob(
                    f"idempotency_key: {idempotency_key!r} was used for a {receipt.kind} job"
                    f" ({receipt.job_id}), not a {UPLOAD_JOB_KIND[kind]} job")
            return held.model_copy(update={
                "receipt": receipt.model_copy(update={"duplicate": True}),
                "source_key": receipt.source_key or held.source_key})
        return held.model_copy(update={"uploaded": self._stored(held.source_key)})

    def presign_upload(
        self, tenant_id: int, kind: UploadKind, filename: str, *,
        idempotency_key: str | None = None, method: Literal["PUT", "POST"] = "PUT",
        expires_in_s: int = 3600, max_bytes: int | None = None,
    ) -> UploadTicket:
        """A presigned ``PUT`` or ``POST`` for the client to upload its file straight to S3,
        so the API process proxies no bytes; then publish with ``ticket.source_key``.

        ``max_bytes`` (default: ``VIDEO_MAX_SOURCE_BYTES`` or ``ROSTER_MAX_FILE_BYTES``) is
        enforced by S3 for ``POST`` only; the actors check the size again either way. With
        ``idempotency_key``, a retry gets the same key (see :meth:`reserve_upload`).
        """
        if method not in ("PUT", "POST"):
            raise InvalidJob(f"method: must be 'PUT' or 'POST' (got {method!r})")
        if not 1 <= expires_in_s <= MAX_PRESIGN_EXPIRES_S:
            raise InvalidJob(
                f"expires_in_s: must be 1 to {MAX_PRESIGN_EXPIRES_S} (got {expires_in_s!r})")
        reservation = self.reserve_upload(tenant_id, kind, filename,
                                          idempotency_key=idempotency_key)
        limit = max_bytes if max_bytes is not None else (
            self.settings.video.max_source_bytes if kind == "video"
            else self.settings.roster.max_file_bytes)
        if limit <= 0:
            raise InvalidJob(f"max_bytes: must be positive (got {limit!r})")
        ticket = UploadTicket(
            source_key=reservation.source_key, method=method, url=None,
            expires_at=datetime.fromtimestamp(time.time() + expires_in_s, UTC), max_bytes=limit,
            uploaded=reservation.uploaded, receipt=reservation.receipt,
        )
        if not reservation.needs_upload:
            return ticket
        bucket, key = self.settings.s3.bucket, reservation.source_key
        content_type = _content_type(filename)
        headers = {"Content-Type": content_type, "x-amz-meta-kind": kind}
        if method == "PUT":
            url = self.s3.generate_presigned_url(
                "put_object", ExpiresIn=expires_in_s,
                Params={"Bucket": bucket, "Key": key, "ContentType": content_type,
                        "Metadata": {"kind": kind}},
            )
            return ticket.model_copy(update={"url": url, "headers": headers})
        post = self.s3.generate_presigned_post(
            bucket, key, Fields=headers, ExpiresIn=expires_in_s,
            Conditions=[{"Content-Type": content_type}, {"x-amz-meta-kind": kind},
                        ["content-length-range", 1, limit]],
        )
        return ticket.model_copy(update={"url": post["url"], "fields": dict(post["fields"])})

    def _stored(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_object(Bucket=self.settings.s3.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

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
        message = self.keyring.sign(
            make_message(queue, actor, job.model_dump(mode="json"), job_id=job.job_id))
        receipt = PublishReceipt(
            job_id=job.job_id,
            kind=job.kind,
            message_id=message.message_id,
            queue=queue,
            actor=actor,
            published_at=datetime.now(UTC),
            idempotency_key=idempotency_key,
            source_key=job.source_key if isinstance(job, SourceJob) else None,
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

    @staticmethod
    def _upload_idem_key(idem: str) -> str:
        return idem.replace(":idem:", ":idem-upload:", 1)

    def _reserve(self, key: str, first: UploadReservation) -> UploadReservation:
        """Take ``key`` for ``first``, or return the reservation that holds it."""
        payload = first.model_dump_json(include={"source_key", "kind", "idempotency_key",
                                                 "reserved_at"})
        for _ in range(3):
            if self.redis.set(key, payload, nx=True, ex=IDEMPOTENCY_TTL_S):
                return first
            raw = self.redis.get(key)
            if raw is not None:
                return UploadReservation.model_validate_json(raw)
        raise PublishError(f"could not reserve the idempotency key {key!r}")

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
