"""The AI actor: imports a roster spreadsheet from S3 as write intents.

Source keys must sit under their tenant's prefix, ``tenants/<tenant_id>/``; anything else is
refused. The flow of one import (every intent id is derived from the import id, so a retried
job re-sends the same intents and the writer applies each once):

1. ``RosterStatus(parsing)`` to ``writes.fast``;
2. download (size-limited, to a temporary file that is always removed);
3. the whole-file checks (:func:`actors.roster.open_roster`): a file rejected here sends
   ``RosterStatus(failed)`` with the reason and no chunk;
4. ``RosterChunk`` intents to ``writes.bulk`` as rows are validated;
5. the error report, when some row was rejected or repeated, to ``<source key>.errors.xlsx``;
6. ``RosterStatus(writing)`` with the counts (``empty_slots``: numbered rows left empty), the
   number of chunks and the report's key; the job's progress record in Redis gets them too,
   and ``timings``, the seconds each step took (:class:`Timings`).

S3 and Redis faults raise :class:`~jobplatform.errors.TransientJobError`, which dramatiq's
Retries middleware retries with backoff (``ROSTER_MAX_RETRIES`` times, then the import is marked
failed); anything else is permanent: a failed status, no retry, and the worker goes on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dramatiq
import redis
from botocore.exceptions import BotoCoreError, ClientError
from dramatiq.middleware import CurrentMessage

from actors.invalid import read_ids
from actors.roster import Limits, RosterRejected, open_roster, write_report
from jobplatform.auth import ensure_message_auth
from jobplatform.backpressure import Backpressure
from jobplatform.broker import IMPORT_ROSTER, Queues, broker_identity
from jobplatform.emit import EmitTimings, IntentEmitter
from jobplatform.errors import JobError, TransientJobError
from jobplatform.logging import get_logger
from jobplatform.progress import ProgressStore
from jobplatform.s3 import s3_client
from jobplatform.settings import Settings
from jobplatform.workdir import job_folder, sweep
from schemas import (
    DecodeError,
    ImportRoster,
    RosterChunk,
    RosterStatus,
    StudentRow,
    decode_job,
    tenant_prefix,
)
from schemas.errors import FieldError
from schemas.intents import AnyIntent, RowError
from schemas.jobs import roster_job_id

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = get_logger(__name__)

SAMPLE_ERRORS = 100
#: Prefix of each import's temporary folder (see :mod:`jobplatform.workdir`).
WORK_PREFIX = "jp-roster-"
REPORT_SUFFIX = ".errors.xlsx"
_REPORT_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_DOWNLOAD_CHUNK = 1 << 20


def report_key(source_key: str) -> str:
    return source_key + REPORT_SUFFIX


def intent_id(import_id: uuid.UUID, what: str) -> uuid.UUID:
    """The id of an import's intent ``what``, the same on every attempt of the job."""
    return uuid.uuid5(import_id, what)


@dataclass
class RosterServices:
    """What an import talks to; built once per worker process."""

    settings: Settings
    s3: S3Client
    emit: Callable[[AnyIntent], None]
    progress: ProgressStore | None
    identity: dict[str, str] = field(default_factory=dict)
    """The worker's name and broker id, recorded with each job's progress."""
    emitter: IntentEmitter | None = None
    """The emitter behind ``emit``, when it is one: its per-thread timings split the time
    spent sending chunks into encoding and the Redis calls."""


@dataclass(slots=True)
class Timings:
    """Seconds one import spent in each step, in its progress record as ``timings``.

    ``parse`` is opening the file (pre-check, reading the sheet); ``validate`` the row
    checks, reading rows out of the parsed sheet included; ``chunks`` building the chunk
    intents; ``encode`` and ``send`` what emitting them cost (their wire form; dramatiq's
    envelope and the Redis call), or ``emit`` both when the emitter cannot tell them apart;
    ``report`` writing and uploading the error report.
    """

    download_s: float = 0.0
    parse_s: float = 0.0
    validate_s: float = 0.0
    chunks_s: float = 0.0
    encode_s: float = 0.0
    send_s: float = 0.0
    emit_s: float = 0.0
    report_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {name: round(value, 4) for name, value in asdict(self).items()}

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, step, getattr(self, step) + time.perf_counter() - started)


def import_roster(job: ImportRoster, services: RosterServices, *, final_attempt: bool) -> None:
    """Run one import job; see the module's docstring for the flow."""
    settings = services.settings
    limits = Limits.from_settings(settings.roster)
    reporter = (
        services.progress.reporter(job.job_id, settings.roster.progress_interval_s)
        if services.progress is not None else None
    )

    # A key outside the tenant's prefix is refused below; the intents never carry it (the
    # writer would refuse them: schemas.intents.tenant_key).
    own_source = job.source_key if _own_key(job) else None

    def status(name: str, **fields: Any) -> None:
        services.emit(RosterStatus(
            intent_id=intent_id(job.import_id, f"status:{name}"), tenant_id=job.tenant_id,
            occurred_at=datetime.now(UTC), import_id=job.import_id, lecture_id=job.lecture_id,
            status=name,
            source_key=own_source, **fields,
        ))

    def progress(**fields: Any) -> None:
        if reporter is not None:
            _redis_call(lambda: reporter.report(**fields))

    try:
        _redis_call(lambda: status("parsing"))
        progress(final=True, step="downloading", rows=0, total=None, **services.identity)
        if own_source is None:
            raise RosterRejected(
                f"source key {job.source_key!r} is not under {tenant_prefix(job.tenant_id)!r}"
            )
        with job_folder(None, WORK_PREFIX) as folder:
            source = folder / ("source" + _suffix(job))
            timings = Timings()
            with timings.timed("download_s"):
                _download(services.s3, settings.s3.bucket, job.source_key, source, limits)
            _run(job, services, limits, source, status, progress, timings)
    except RosterRejected as exc:
        rejected = str(exc)[:2000]
        log.info("roster rejected", reason=rejected)
        _redis_call(lambda: status("failed", error=rejected))
        progress(final=True, step="failed", error=rejected)
    except TransientJobError as exc:
        if not final_attempt:
            raise
        reason = f"gave up after repeated transient errors: {exc}"[:2000]
        _redis_call(lambda: status("failed", error=reason))
        raise


def _run(
    job: ImportRoster, services: RosterServices, limits: Limits, source: Path,
    status: Callable[..., None], progress: Callable[..., None], timings: Timings,
) -> None:
    chunk_index = 0
    emitter = services.emitter
    emitted = EmitTimings() if emitter is None else replace(emitter.timings())
    in_chunks = 0.0

    def on_chunk(rows: tuple[StudentRow, ...]) -> None:
        nonlocal chunk_index, in_chunks
        started = time.perf_counter()
        chunk = RosterChunk(
            intent_id=intent_id(job.import_id, f"chunk:{chunk_index}"), tenant_id=job.tenant_id,
            occurred_at=datetime.now(UTC), import_id=job.import_id, lecture_id=job.lecture_id,
            chunk_index=chunk_index, rows=rows,
        )
        built = time.perf_counter()
        _redis_call(lambda: services.emit(chunk))
        chunk_index += 1
        ended = time.perf_counter()
        timings.chunks_s += built - started
        timings.emit_s += ended - built
        in_chunks += ended - started

    with timings.timed("parse_s"):
        opened = open_roster(source, limits)
    with opened as roster:
        total = roster.data_rows
        progress(final=True, step="parsing", rows=0, total=total)
        with timings.timed("validate_s"):
            counts = roster.validate(
                on_chunk, lambda done, total: progress(step="parsing", rows=done, total=total)
            )
        timings.validate_s -= in_chunks
        if emitter is not None:
            now = emitter.timings()
            timings.encode_s = now.encode_s - emitted.encode_s
            timings.send_s = now.send_s - emitted.send_s
            timings.emit_s = 0.0
        key: str | None = None
        if counts.invalid or counts.duplicates:
            progress(final=True, step="report", rows=total, total=total)
            key = report_key(job.source_key)
            report = source.with_name("report.xlsx")
            with timings.timed("report_s"):
                write_report(roster, counts, report)
                _upload(services.s3, services.settings.s3.bucket, key, report)
    sample = tuple(
        RowError(row=p.row, column=p.column[:200], reason=p.reason[:500])
        for p in counts.problems[:SAMPLE_ERRORS]
    )
    log.info(
        "roster parsed", total=counts.total, valid=counts.valid, invalid=counts.invalid,
        duplicates=counts.duplicates, empty_slots=counts.empty_slots, chunks=counts.chunks,
        **timings.as_dict(),
    )
    # The progress record first: the writer's ``done``, which may follow the status intent
    # within milliseconds, is merged into it and must not be overwritten by ``writing``. The
    # report's key and the sample errors stay in the record, so a finished import's status
    # links its report without a database read.
    progress(
        final=True, step="writing", rows=total, total=total, chunks=counts.chunks,
        valid=counts.valid, invalid=counts.invalid, duplicates=counts.duplicates,
        empty_slots=counts.empty_slots, timings=timings.as_dict(),
        report_key=key, sample_errors=[e.model_dump(mode="json") for e in sample],
    )
    _redis_call(lambda: status(
        "writing", total=counts.total, valid=counts.valid, invalid=counts.invalid,
        duplicates=counts.duplicates, empty_slots=counts.empty_slots, chunks=counts.chunks,
        report_key=key, sample_errors=sample,
    ))


def _own_key(job: ImportRoster) -> bool:
    return job.source_key.startswith(tenant_prefix(job.tenant_id))


def _suffix(job: ImportRoster) -> str:
    name = (job.filename or job.source_key).lower()
    return next((s for s in (".xlsx", ".xls", ".ods") if name.endswith(s)), "")


def _redis_call(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except redis.RedisError as exc:
        raise TransientJobError(f"Redis: {exc}") from exc


_MISSING = ("404", "NoSuchKey", "NotFound")
_DENIED = ("403", "AccessDenied")


def _download(s3: S3Client, bucket: str, key: str, dest: Path, limits: Limits) -> None:
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] > limits.max_file_bytes:
            raise RosterRejected(
                f"the file is {head['ContentLength']} bytes, over the limit of"
                f" {limits.max_file_bytes} (ROSTER_MAX_FILE_BYTES)"
            )
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        size = 0
        with dest.open("wb") as out:
            for piece in body.iter_chunks(_DOWNLOAD_CHUNK):
                size += len(piece)
                if size > limits.max_file_bytes:
                    raise RosterRejected(
                        f"the file is over the limit of {limits.max_file_bytes} bytes"
                        " (ROSTER_MAX_FILE_BYTES)"
                    )
                out.write(piece)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            raise RosterRejected(f"the source file {key!r} is not in S3") from exc
        if code in _DENIED:
            raise RosterRejected(f"the source file {key!r} cannot be read (access denied)") from exc
        raise TransientJobError(f"S3 download of {key!r}: {exc}") from exc
    except BotoCoreError as exc:
        raise TransientJobError(f"S3 download of {key!r}: {exc}") from exc


def _upload(s3: S3Client, bucket: str, key: str, path: Path) -> None:
    try:
        s3.upload_file(str(path), bucket, key, ExtraArgs={"ContentType": _REPORT_TYPE})
    except (ClientError, BotoCoreError) as exc:
        raise TransientJobError(f"S3 upload of the report {key!r}: {exc}") from exc


def reject(payload: Any, error: DecodeError, services: RosterServices) -> bool:
    """Record an undecodable import job as failed, as far as its ids can be read: its
    progress record (with an ``import_id``) and a ``roster.status`` failed intent (with the
    tenant and lecture too). False when nothing could be recorded."""
    ids = read_ids(payload, "import_id")
    import_id = ids.entity_id
    if import_id is None:
        return False
    reason = f"rejected: {error}"[:2000]
    if ids.tenant_id is not None and ids.lecture_id is not None:
        _redis_call(lambda: services.emit(RosterStatus(
            intent_id=intent_id(import_id, "status:failed"), tenant_id=ids.tenant_id,
            occurred_at=datetime.now(UTC), import_id=import_id, lecture_id=ids.lecture_id,
            status="failed", error=reason,
        )))
    if services.progress is not None:
        store = services.progress
        _redis_call(lambda: store.update(roster_job_id(import_id), step="failed", error=reason))
    return True


def register(broker: dramatiq.Broker, settings: Settings) -> dramatiq.Actor[Any, None]:
    """Declare the ``import_roster`` actor on ``broker`` (queue ``settings.queue_ai``).

    The broker refuses jobs without a valid MAC (:func:`jobplatform.auth.ensure_message_auth`).
    """
    ensure_message_auth(broker, settings)
    services: RosterServices | None = None
    max_retries = settings.roster.max_retries
    removed = sweep(None, WORK_PREFIX)  # folders of dead workers on this machine
    if removed:
        log.info("roster: abandoned folders removed", count=len(removed))

    def get_services() -> RosterServices:
        nonlocal services
        if services is None:
            assert settings.redis_url is not None, "settings.redis_url must be filled"
            client = redis.Redis.from_url(settings.redis_url)
            emitter = IntentEmitter(
                broker, Queues.from_settings(settings),
                backpressure=Backpressure.from_settings(broker, settings.writer))
            services = RosterServices(
                settings=settings,
                s3=s3_client(settings),
                emit=emitter.emit,
                progress=ProgressStore(client, settings.broker_namespace),
                identity=broker_identity(broker),
                emitter=emitter,
            )
        return services

    def retry_when(retries: int, exc: BaseException) -> bool:
        return isinstance(exc, TransientJobError) and retries < max_retries

    def run(payload: dict[str, Any]) -> None:
        try:
            job = decode_job(payload)
            if not isinstance(job, ImportRoster):
                raise DecodeError("job", [FieldError(
                    "kind", f"expected roster.import, got {job.kind}")])
        except DecodeError as exc:
            log.error("roster job rejected", error=str(exc))
            # Recorded as failed when its ids can be read; else dramatiq dead-letters it.
            if reject(payload, exc, get_services()):
                return
            raise
        message = CurrentMessage.get_current_message()
        retries = int(message.options.get("retries", 0)) if message is not None else 0
        try:
            import_roster(job, get_services(), final_attempt=retries >= max_retries)
        except JobError:
            raise
        except Exception as exc:
            log.exception("roster import crashed")
            reason = f"internal error: {type(exc).__name__}"
            get_services().emit(RosterStatus(
                intent_id=intent_id(job.import_id, "status:failed"), tenant_id=job.tenant_id,
                occurred_at=datetime.now(UTC), import_id=job.import_id,
                lecture_id=job.lecture_id, status="failed",
                source_key=job.source_key if _own_key(job) else None, error=reason,
            ))
            raise

    run.__name__ = IMPORT_ROSTER
    declare = dramatiq.actor(
        actor_name=IMPORT_ROSTER, queue_name=settings.queue_ai, broker=broker,
        retry_when=retry_when, min_backoff=1_000, max_backoff=60_000,
        time_limit=30 * 60 * 1000,
    )
    actor: dramatiq.Actor[Any, None] = declare(run)
    return actor
