"""The AI actor: roster files from S3 (moto's server) to intents, progress in Redis, reports in S3,
and the rows in PostgreSQL once the writer's sink applies the intents."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
import redis
from botocore.config import Config
from openpyxl import load_workbook

from actors.ai import RosterServices, import_roster, intent_id, register, report_key
from jobplatform.errors import TransientJobError
from jobplatform.progress import ProgressStore
from jobplatform.publish import JobStatus
from jobplatform.s3 import ensure_bucket, s3_client
from jobplatform.settings import Settings
from schemas import DecodeError, ImportRoster, RosterChunk, RosterStatus
from schemas.intents import AnyIntent
from tests.actors import roster_corpus as corpus
from tests.actors.conftest import read_intents

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

TENANT = 7
LECTURE = 42


@pytest.fixture
def roster_settings(settings: Settings) -> Settings:
    roster = settings.roster.model_copy(update={"chunk_rows": 2, "max_retries": 1})
    return settings.model_copy(update={"roster": roster})


@pytest.fixture
def s3(roster_settings: Settings) -> S3Client:
    client = s3_client(roster_settings)
    ensure_bucket(client, roster_settings.s3.bucket)
    return client


@pytest.fixture
def progress(roster_settings: Settings) -> ProgressStore:
    assert roster_settings.redis_url is not None
    return ProgressStore(redis.Redis.from_url(roster_settings.redis_url), "jptest-roster")


def services_for(
    settings: Settings, s3: S3Client, progress: ProgressStore | None, sink: list[AnyIntent]
) -> RosterServices:
    return RosterServices(settings=settings, s3=s3, emit=sink.append, progress=progress)


def upload(s3: S3Client, settings: Settings, path: Path, tenant: int = TENANT) -> ImportRoster:
    key = f"tenants/{tenant}/rosters/{uuid.uuid4()}/{path.name}"
    s3.upload_file(str(path), settings.s3.bucket, key)
    return ImportRoster(
        tenant_id=tenant, import_id=uuid.uuid4(), lecture_id=LECTURE, source_key=key,
        filename=path.name,
    )


def statuses(intents: list[AnyIntent]) -> list[RosterStatus]:
    return [i for i in intents if isinstance(i, RosterStatus)]


def chunks(intents: list[AnyIntent]) -> list[RosterChunk]:
    return [i for i in intents if isinstance(i, RosterChunk)]


def test_import_emits_chunks_status_and_report(
    tmp_path: Path, roster_settings: Settings, s3: S3Client, progress: ProgressStore
) -> None:
    # Given the messy roster in S3
    job = upload(s3, roster_settings, corpus.write_messy_xlsx(tmp_path))
    sink: list[AnyIntent] = []
    # When it is imported
    import_roster(job, services_for(roster_settings, s3, progress, sink), final_attempt=False)
    # Then: parsing, chunks of at most 2 rows as they are read, writing with counts; row 11
    # repeats row 4's phone, so row 4 is never sent and row 11 is sent once
    assert [s.status for s in statuses(sink)] == ["parsing", "writing"]
    assert isinstance(sink[0], RosterStatus)
    emitted = chunks(sink)
    assert [c.chunk_index for c in emitted] == [0, 1]
    assert [[r.source_row for r in c.rows] for c in emitted] == [[5, 6], [8, 11]]
    assert [c.intent_id for c in emitted] == [
        intent_id(job.import_id, f"chunk:{i}") for i in range(2)
    ]
    assert all((c.tenant_id, c.lecture_id, c.import_id) == (TENANT, LECTURE, job.import_id)
               for c in emitted)
    done = statuses(sink)[-1]
    assert (done.total, done.valid, done.invalid, done.duplicates, done.chunks) == (7, 5, 2, 1, 2)
    assert done.report_key == report_key(job.source_key) == job.source_key + ".errors.xlsx"
    assert [(e.row, e.column) for e in done.sample_errors] == [
        (9, "학생 이름"), (10, "휴대폰 번호"), (10, "학년"), (10, "생일")
    ]
    # And the report is in S3 next to the source, with the reasons
    report = tmp_path / "report.xlsx"
    s3.download_file(roster_settings.s3.bucket, done.report_key, str(report))
    rows = list(load_workbook(report).active.iter_rows(values_only=True))
    assert [(r[0], r[-1]) for r in rows[1:] if r[-1]] == [
        (9, "학생 이름: name is missing"),
        (10, "휴대폰 번호: not a Korean mobile number, expected like 010-1234-5678 "
             "('02-123-4567'); 학년: no such grade ('고4'); 생일: birth date is in the future "
             "(2099-01-01)"),
        (11, "same phone as row 4; this row is kept"),
    ]
    # And the progress in Redis says where it ended, and where its time went: the sink here
    # is a list, so sending the chunks is timed whole (``emit_s``), not split by an emitter
    seen = progress.get(job.job_id)
    assert (seen["step"], seen["rows"], seen["total"], seen["chunks"]) == ("writing", 8, 8, 2)
    timings = seen["timings"]
    assert set(timings) == {"download_s", "parse_s", "validate_s", "chunks_s", "encode_s",
                            "send_s", "emit_s", "report_s"}
    assert all(value >= 0 for value in timings.values())
    assert min(timings["download_s"], timings["parse_s"], timings["report_s"]) > 0
    assert timings["encode_s"] == timings["send_s"] == 0


def test_clean_import_has_no_report(
    tmp_path: Path, roster_settings: Settings, s3: S3Client
) -> None:
    job = upload(s3, roster_settings, corpus.write_clean_ods(tmp_path))
    sink: list[AnyIntent] = []
    import_roster(job, services_for(roster_settings, s3, None, sink), final_attempt=False)
    done = statuses(sink)[-1]
    assert (done.status, done.total, done.valid, done.chunks, done.report_key) == (
        "writing", 4, 4, 2, None
    )
    assert sum(len(c.rows) for c in chunks(sink)) == 4


@pytest.mark.parametrize(("write", "reason"), [
    (corpus.write_billion_laughs_xlsx, "declares XML entities"),
    (corpus.write_password_xlsx, "password-protected"),
    (corpus.write_missing_column_xlsx, "required column 전화번호/phone is missing"),
    (corpus.write_far_cell_xlsx, "past the limit"),
])
def test_rejected_file_fails_and_emits_no_chunk(
    tmp_path: Path, roster_settings: Settings, s3: S3Client, progress: ProgressStore,
    write: Any, reason: str,
) -> None:
    job = upload(s3, roster_settings, write(tmp_path))
    sink: list[AnyIntent] = []
    import_roster(job, services_for(roster_settings, s3, progress, sink), final_attempt=False)
    assert chunks(sink) == []
    assert [s.status for s in statuses(sink)] == ["parsing", "failed"]
    failed = statuses(sink)[-1]
    assert failed.error is not None
    assert reason in failed.error
    assert failed.intent_id == intent_id(job.import_id, "status:failed")
    assert progress.get(job.job_id)["step"] == "failed"


def test_key_outside_the_tenant_prefix_is_refused(
    tmp_path: Path, roster_settings: Settings, s3: S3Client
) -> None:
    job = upload(s3, roster_settings, corpus.write_clean_xlsx(tmp_path), tenant=8)
    job = job.model_copy(update={"tenant_id": TENANT})
    sink: list[AnyIntent] = []
    import_roster(job, services_for(roster_settings, s3, None, sink), final_attempt=False)
    assert statuses(sink)[-1].error == (
        f"source key {job.source_key!r} is not under 'tenants/{TENANT}/'"
    )
    assert chunks(sink) == []


def test_missing_source_is_a_permanent_failure(roster_settings: Settings, s3: S3Client) -> None:
    job = ImportRoster(
        tenant_id=TENANT, import_id=uuid.uuid4(), lecture_id=LECTURE,
        source_key=f"tenants/{TENANT}/rosters/nothing.xlsx",
    )
    sink: list[AnyIntent] = []
    import_roster(job, services_for(roster_settings, s3, None, sink), final_attempt=False)
    assert statuses(sink)[-1].error == f"the source file {job.source_key!r} is not in S3"


def test_unreachable_s3_is_transient_then_fails_on_the_last_attempt(
    roster_settings: Settings,
) -> None:
    import boto3

    dead = boto3.client(
        "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    job = ImportRoster(
        tenant_id=TENANT, import_id=uuid.uuid4(), lecture_id=LECTURE,
        source_key=f"tenants/{TENANT}/rosters/a.xlsx",
    )
    sink: list[AnyIntent] = []
    with pytest.raises(TransientJobError, match="S3 download"):
        import_roster(job, services_for(roster_settings, dead, None, sink), final_attempt=False)
    assert [s.status for s in statuses(sink)] == ["parsing"]
    with pytest.raises(TransientJobError):
        import_roster(job, services_for(roster_settings, dead, None, sink), final_attempt=True)
    assert statuses(sink)[-1].status == "failed"
    assert "gave up after repeated transient errors" in (statuses(sink)[-1].error or "")


def test_registered_actor_keeps_serving_after_a_bad_file(
    tmp_path: Path, broker: dramatiq.Broker, roster_settings: Settings, s3: S3Client
) -> None:
    # Given the actor registered on the test's broker, and a bad file queued before a good one
    actor = register(broker, roster_settings)
    assert actor.queue_name == roster_settings.queue_ai
    bad = upload(s3, roster_settings, corpus.write_lying_bomb_xlsx(tmp_path))
    good = upload(s3, roster_settings, corpus.write_clean_xlsx(tmp_path))
    # When the actor runs them one after the other (as a worker thread would)
    actor(bad.model_dump(mode="json"))
    with pytest.raises(DecodeError):  # no ids to record it by: dramatiq dead-letters it
        actor({"kind": "roster.import", "tenant_id": "not a number"})
    actor(good.model_dump(mode="json"))
    # Then the bad file failed, the undecodable job was refused, the good one was imported
    def both_finished(found: list[AnyIntent]) -> bool:
        return len([s for s in statuses(found) if s.status in ("failed", "writing")]) >= 2

    fast = statuses(
        read_intents(broker, roster_settings.queue_writes_fast, until=both_finished)
    )
    by_import = {(s.import_id, s.status): s for s in fast}
    assert "zip bomb" in (by_import[(bad.import_id, "failed")].error or "")
    assert by_import[(good.import_id, "writing")].valid == 4
    bulk = chunks(read_intents(
        broker, roster_settings.queue_writes_bulk,
        until=lambda found: sum(len(c.rows) for c in chunks(found)) >= 4,
    ))
    assert {c.import_id for c in bulk} == {good.import_id}
    assert sum(len(c.rows) for c in bulk) == 4
    # And the worker's emitter split the time its chunks took: encoding, then the Redis sends
    assert roster_settings.redis_url is not None
    store = ProgressStore(redis.Redis.from_url(roster_settings.redis_url),
                          roster_settings.broker_namespace)
    timings = store.get(good.job_id)["timings"]
    assert min(timings["encode_s"], timings["send_s"]) > 0
    assert timings["emit_s"] == 0


def test_rows_land_in_postgresql_through_the_writer_sink(
    tmp_path: Path, roster_settings: Settings, s3: S3Client
) -> None:
    sink_module = pytest.importorskip("writer.engine")
    from writer.db import connect

    # Given the messy roster imported twice (a retried job re-sends the same intent ids)
    job = upload(s3, roster_settings, corpus.write_messy_xlsx(tmp_path))
    sink: list[AnyIntent] = []
    services = services_for(roster_settings, s3, None, sink)
    import_roster(job, services, final_attempt=False)
    import_roster(job, services, final_attempt=False)
    assert roster_settings.database_url is not None
    # When the writer's sink applies the intents, in two batches
    with connect(roster_settings.database_url) as conn:
        half = len(sink) // 2
        for seq, batch in enumerate((sink[:half], sink[half:]), start=1):
            with conn.transaction():
                sink_module.apply_batch(conn, batch, batch_seq=seq)
        students = conn.execute(
            "SELECT phone, name, parent_phone, school, grade, birth_date::text FROM students"
            " WHERE tenant_id = %s ORDER BY phone", (TENANT,),
        ).fetchall()
        enrolled = conn.execute(
            "SELECT count(*) FROM enrollments WHERE lecture_id = %s", (LECTURE,)
        ).fetchone()
        imported = conn.execute(
            "SELECT status, total, valid, invalid, duplicates, chunks_expected, report_key"
            " FROM roster_imports WHERE id = %s", (job.import_id,),
        ).fetchone()
    # Then each student is there once, with the later of two rows sharing a phone
    assert students == [
        ("010-1234-5678", "김철수", None, "한국고등학교", 12, "2007-03-15"),
        ("010-2345-6789", "이영희", "010-1111-2222", "서울중학교", 8, "2010-07-01"),
        ("010-3456-7890", "박민수", None, None, 11, "2008-05-01"),
        ("010-4567-8901", "최지우", None, None, 7, "2012-01-09"),
    ]
    assert enrolled == (4,)
    assert imported is not None
    assert imported[1:] == (7, 5, 2, 1, 2, report_key(job.source_key))
    assert imported[0] in ("writing", "done")


def _import_with_writer(broker: dramatiq.Broker, settings: Settings, s3: S3Client,
                        job: ImportRoster) -> JobStatus:
    """Publish ``job``, run the actor on it and a real writer on what it emits; the status
    once the writer has marked the import done."""
    from jobplatform.broker import Queues, build_broker
    from jobplatform.publish import Publisher
    from tests.writer.conftest import WriterThread
    from writer.engine import Writer

    actor = register(broker, settings)
    assert settings.redis_url is not None
    assert settings.database_url is not None
    writer_broker = build_broker(settings, settings.redis_url, set_global=False)
    writer = WriterThread(Writer(
        settings.writer, database_url=settings.database_url, broker=writer_broker,
        queues=Queues.from_settings(settings), standby_poll_s=0.2, heartbeat_s=1.0,
    )).start()
    publisher = Publisher(settings, broker=broker, s3=s3)
    try:
        publisher.publish(job)
        actor(job.model_dump(mode="json"))
        deadline = time.monotonic() + 30
        while (status := publisher.status(job)).state != "done":
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
    finally:
        writer.stop()
        writer_broker.close()
    return status


def test_finished_import_status_links_the_report_and_sample_errors(
    tmp_path: Path, broker: dramatiq.Broker, roster_settings: Settings, s3: S3Client
) -> None:
    # Given the actor on the test's broker and a writer applying what it emits
    job = upload(s3, roster_settings, corpus.write_messy_xlsx(tmp_path))
    # When the import is published and run
    status = _import_with_writer(broker, roster_settings, s3, job)
    # Then the finished import's status links its report and carries the sample errors,
    # beside the writer's counts
    assert status.report_key == report_key(job.source_key)
    assert [(e.row, e.column) for e in status.sample_errors] == [
        (9, "학생 이름"), (10, "휴대폰 번호"), (10, "학년"), (10, "생일")
    ]
    assert (status.progress["created"], status.progress["invalid"]) == (4, 2)


def test_an_invalid_job_with_readable_ids_is_recorded_as_failed(
    broker: dramatiq.Broker, roster_settings: Settings, s3: S3Client
) -> None:
    from jobplatform.publish import Publisher

    actor = register(broker, roster_settings)
    job = ImportRoster(tenant_id=TENANT, import_id=uuid.uuid4(), lecture_id=LECTURE,
                       source_key=f"tenants/{TENANT}/x.xlsx")
    # When a job with a bad field (an unsafe key) reaches the actor
    actor(job.model_dump(mode="json") | {"source_key": "tenants/7/../../etc/passwd"})
    # Then it is failed in its status and for the writer, with the decode error as the reason
    [failed] = statuses(read_intents(broker, roster_settings.queue_writes_fast))
    assert (failed.status, failed.import_id, failed.lecture_id) == (
        "failed", job.import_id, LECTURE)
    assert "source_key" in (failed.error or "")
    status = Publisher(roster_settings, broker=broker, s3=s3).status(job)
    assert status.state == "failed"
    assert "source_key" in (status.error or "")


def test_libreoffice_ods_with_empty_slots_imports(
    tmp_path: Path, roster_settings: Settings, s3: S3Client, progress: ProgressStore
) -> None:
    # Given an Excel roster saved as .ods by LibreOffice: 18 students, 12 empty numbered slots
    job = upload(s3, roster_settings, corpus.fixture("excel-saved-as.ods"))
    sink: list[AnyIntent] = []
    import_roster(job, services_for(roster_settings, s3, progress, sink), final_attempt=False)
    # Then the students are sent, the slots are no errors but counted, and no report is written
    done = statuses(sink)[-1]
    assert (done.status, done.total, done.valid, done.invalid, done.report_key) == (
        "writing", 18, 18, 0, None
    )
    assert done.empty_slots == 12
    assert sum(len(c.rows) for c in chunks(sink)) == 18
    # And the progress record counts the slots
    seen = progress.get(job.job_id)
    assert (seen["step"], seen["rows"], seen["empty_slots"]) == ("writing", 30, 12)


def test_empty_slots_reach_the_writer_and_the_finished_status(
    broker: dramatiq.Broker, roster_settings: Settings, s3: S3Client
) -> None:
    # Given a roster of 18 students and 12 empty numbered slots, imported through a real writer
    job = upload(s3, roster_settings, corpus.fixture("excel-saved-as.ods"))
    status = _import_with_writer(broker, roster_settings, s3, job)
    # Then the writer took the status that carries the slots (nothing dead-lettered), and the
    # finished import reports them beside the writer's counts
    from writer.db import connect

    url = roster_settings.database_url
    assert url is not None
    with connect(url, autocommit=True) as conn:
        dead = conn.execute("SELECT count(*) FROM writer_dead_letters").fetchone()
        row = conn.execute("SELECT status, total, valid, empty_slots FROM roster_imports"
                           " WHERE id = %s", (job.import_id,)).fetchone()
    assert dead == (0,)
    assert row == ("done", 18, 18, 12)
    assert (status.progress["empty_slots"], status.progress["created"]) == (12, 18)


def test_a_file_the_reader_cannot_read_fails_with_what_to_do(
    tmp_path: Path, roster_settings: Settings, s3: S3Client
) -> None:
    job = upload(s3, roster_settings, corpus.fixture("koffice-form.ods"))
    sink: list[AnyIntent] = []
    import_roster(job, services_for(roster_settings, s3, None, sink), final_attempt=False)
    assert chunks(sink) == []
    failed = statuses(sink)[-1]
    assert failed.status == "failed"
    assert failed.error is not None
    assert "written by KOffice/2.3.3" in failed.error
    assert "open it in Excel or LibreOffice and save it as .xlsx" in failed.error
    assert "Expecting" not in failed.error
