"""Tenant ownership and bounded versions in the writer's transaction: each crossing a forged
intent could try, refused with a reason naming it, the honest intents of the batch applied;
and the operator's reset of a wedged entity. Real PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from click.testing import CliRunner

from jobplatform.cli import cli
from jobplatform.settings import Settings
from schemas import BaseIntent, RosterStatus, VideoFailed
from tests.writer.conftest import WriterThread, emit_all, query, scalar, wait_until
from tests.writer.intent_factory import (
    LECTURE,
    TENANT,
    at,
    chunk,
    failed,
    processing,
    queued,
    ready,
    roster_status,
    student,
)
from writer.db import connect
from writer.engine import apply_batch
from writer.errors import DataApplyError
from writer.reset import reset_video

OTHER = TENANT + 1


def apply(url: str, intents: Sequence[BaseIntent]) -> Any:
    with connect(url) as conn, conn.transaction():
        return apply_batch(conn, intents, batch_seq=1)


def refused(url: str, intents: Sequence[BaseIntent]) -> DataApplyError:
    with pytest.raises(DataApplyError) as caught:
        apply(url, intents)
    return caught.value


def test_a_status_for_another_tenants_video_is_refused(database_url: str) -> None:
    video = uuid.uuid4()
    apply(database_url, [queued(video)])
    forged = ready(video).model_copy(update={"tenant_id": OTHER})
    error = refused(database_url, [forged])
    assert "belongs to another tenant" in str(error)
    assert list(error.intent_ids) == [forged.intent_id]
    assert query(database_url, "SELECT tenant_id, status FROM videos") == [(TENANT, "queued")]


def test_a_status_for_another_tenants_import_is_refused(database_url: str) -> None:
    imp = uuid.uuid4()
    apply(database_url, [roster_status(imp, "queued")])
    forged = roster_status(imp, "failed", seconds=1, error="forged").model_copy(
        update={"tenant_id": OTHER})
    error = refused(database_url, [forged])
    assert f"roster_imports {imp} belongs to tenant {TENANT}, not to tenant {OTHER}" in str(error)
    assert scalar(database_url, "SELECT status FROM roster_imports") == "queued"


def test_a_chunk_for_another_tenants_import_is_refused(database_url: str) -> None:
    imp = uuid.uuid4()
    apply(database_url, [roster_status(imp, "queued")])
    forged = chunk(imp, 0, [student(1)], tenant=OTHER)
    error = refused(database_url, [forged])
    assert list(error.intent_ids) == [forged.intent_id]
    assert scalar(database_url, "SELECT count(*) FROM students") == 0


def test_a_chunk_into_another_tenants_lecture_is_refused(database_url: str) -> None:
    apply(database_url, [chunk(uuid.uuid4(), 0, [student(1)])])  # the lecture is TENANT's
    forged = chunk(uuid.uuid4(), 0, [student(2)], tenant=OTHER)
    error = refused(database_url, [forged])
    assert f"lecture {LECTURE} belongs to tenant {TENANT}" in str(error)


def test_students_of_one_phone_stay_apart_by_tenant(database_url: str) -> None:
    apply(database_url, [chunk(uuid.uuid4(), 0, [student(1, name="Kim")])])
    apply(database_url, [chunk(uuid.uuid4(), 0, [student(1, name="Park")], tenant=OTHER,
                               lecture=LECTURE + 1)])
    assert query(database_url, "SELECT tenant_id, name FROM students ORDER BY 1") == [
        (TENANT, "Kim"), (OTHER, "Park")]


def test_a_forged_attempt_far_ahead_is_refused_and_honest_work_goes_on(
        database_url: str) -> None:
    video = uuid.uuid4()
    apply(database_url, [queued(video)])
    forged = failed(video, attempt=1000)
    error = refused(database_url, [forged])
    assert "attempt 1000 jumps ahead of the last attempt seen (1)" in str(error)
    apply(database_url, [processing(video), ready(video)])
    assert scalar(database_url, "SELECT status FROM videos") == "ready"
    # A new video takes attempt 1 (or 2, one past none); attempt 3 is refused.
    assert "last attempt seen (none)" in str(refused(database_url, [queued(uuid.uuid4(),
                                                                             attempt=3)]))


def test_a_run_of_attempts_in_one_batch_counts_as_seen(database_url: str) -> None:
    video = uuid.uuid4()
    apply(database_url, [queued(video)])
    # Attempts 2 and 3 arrive together (a quick re-encode twice): 3 follows 2, 2 follows 1.
    apply(database_url, [queued(video, attempt=2), queued(video, attempt=3),
                         ready(video, attempt=3)])
    assert query(database_url, "SELECT attempt, status FROM videos") == [(3, "ready")]


def test_a_late_lower_ranked_roster_status_fills_what_the_row_lacks(database_url: str) -> None:
    imp = uuid.uuid4()
    apply(database_url, [roster_status(imp, "parsing", seconds=1)])
    source = f"tenants/{TENANT}/uploads/r.xlsx"
    apply(database_url, [roster_status(imp, "queued", source_key=source)])
    assert query(database_url, "SELECT status, source_key FROM roster_imports") == [
        ("parsing", source)]


def test_one_forged_intent_among_honest_ones_is_dead_lettered_alone(
        settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]) -> None:
    url = settings.database_url or ""
    video, imp = uuid.uuid4(), uuid.uuid4()
    apply(url, [queued(video)])
    writer = start_writer()
    forged = VideoFailed(tenant_id=TENANT, occurred_at=at(5), video_id=video, attempt=1000,
                         reason="forged")
    honest: list[BaseIntent] = [processing(video), ready(video), roster_status(imp, "queued")]
    emit_all(broker, settings, [honest[0], forged, *honest[1:]])
    wait_until(lambda: query(url, "SELECT count(*) FROM writer_dead_letters") == [(1,)],
               message="the forged intent dead-lettered")
    wait_until(lambda: query(url, "SELECT status FROM videos") == [("ready",)],
               message="the honest intents applied")
    writer.stop()
    [(intent_id, reason)] = query(url, "SELECT intent_id, reason FROM writer_dead_letters")
    assert intent_id == forged.intent_id
    assert "attempt 1000 jumps ahead" in reason


def test_reset_brings_a_wedged_video_back_for_honest_work(database_url: str,
                                                          settings: Settings) -> None:
    video = uuid.uuid4()
    apply(database_url, [queued(video)])
    # Wedged by a forged failure written before attempts were bounded.
    with connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE videos SET attempt = 1000, status = 'failed', status_rank = 2")
    apply(database_url, [queued(video, attempt=2), ready(video, attempt=2)])
    assert query(database_url, "SELECT attempt, status FROM videos") == [(1000, "failed")]
    with connect(database_url, autocommit=True) as conn:
        assert not reset_video(conn, video, OTHER, 2)  # another tenant's reset does nothing
        assert reset_video(conn, video, TENANT, 2)
    apply(database_url, [queued(video, attempt=2), ready(video, attempt=2)])
    assert query(database_url, "SELECT attempt, status FROM videos") == [(2, "ready")]


def test_reset_of_an_import_through_the_cli(database_url: str, settings: Settings) -> None:
    imp = uuid.uuid4()
    apply(database_url, [roster_status(imp, "failed", error="forged")])
    env = {"DATABASE_URL": database_url, "REDIS_URL": settings.redis_url or ""}
    result = CliRunner().invoke(cli, ["writer", "reset", "import", str(imp), "--tenant",
                                      str(TENANT)], env=env)
    assert result.exit_code == 0, result.output
    apply(database_url, [RosterStatus(tenant_id=TENANT, occurred_at=at(3), import_id=imp,
                                      lecture_id=LECTURE, status="parsing")])
    assert query(database_url, "SELECT status, error FROM roster_imports") == [("parsing", None)]
    result = CliRunner().invoke(cli, ["writer", "reset", "import", str(uuid.uuid4()),
                                      "--tenant", str(TENANT)], env=env)
    assert result.exit_code == 1
    assert "no unfinished import" in result.output
