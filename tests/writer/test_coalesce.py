"""Coalescing a batch into each kind's plan (the built-in kinds'): pure, no services."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jobplatform.kinds import load_registry
from schemas import BaseIntent
from schemas.intents import AnyIntent
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
from writer.engine import prepare
from writer.kinds.roster import RosterPlan
from writer.kinds.video import VideoChange


@dataclass
class Plans:
    """A batch prepared as the writer prepares it, seen kind by kind."""

    intents: tuple[BaseIntent, ...]
    duplicates: int
    videos: list[VideoChange]
    roster: RosterPlan

    @property
    def coalesced(self) -> int:
        return sum(len(v.intent_ids) - 1 for v in self.videos) + self.roster.coalesced

    def __getattr__(self, name: str) -> Any:
        return getattr(self.roster, name)


def plan(intents: Sequence[BaseIntent]) -> Plans:
    prepared = prepare(intents, load_registry())
    work = {share.kind.name: share.plan for share in prepared.work}
    return Plans(prepared.intents, prepared.duplicates, work.get("video", []),
                 work.get("roster", RosterPlan()))


def test_repeated_intent_ids_count_once() -> None:
    video = uuid.uuid4()
    first = queued(video)
    result = plan([first, processing(video), first, first])
    assert result.duplicates == 2
    assert result.intents[0].intent_id == first.intent_id
    assert len(result.intents) == 2


def test_video_intents_coalesce_to_the_highest_and_keep_every_id() -> None:
    # Given a video's whole life, out of order, in one batch
    video = uuid.uuid4()
    intents: list[AnyIntent] = [ready(video, 30), queued(video, 0), processing(video, 10)]
    result = plan(intents)
    # Then one change, at the highest state, carrying what the lower ones knew
    [change] = result.videos
    assert (change.status, change.attempt, change.status_rank) == ("ready", 1, 2)
    assert change.source_key == f"tenants/{TENANT}/uploads/{video}.mp4"
    assert (change.queued_at, change.started_at, change.finished_at) == (at(0), at(10), at(30))
    assert change.updated_at == at(30)
    assert json.loads(change.renditions or "")[0]["name"] == "720p"
    assert set(change.intent_ids) == {i.intent_id for i in intents}
    assert result.coalesced == 2


def test_a_later_attempt_outranks_a_final_state_and_drops_its_results() -> None:
    video = uuid.uuid4()
    result = plan([failed(video, 20), processing(video, 30, attempt=2)])
    [change] = result.videos
    assert (change.status, change.attempt) == ("processing", 2)
    assert change.started_at == at(30)
    assert (change.finished_at, change.error, change.hls_key) == (None, None, None)


def test_equal_rank_later_arrival_wins() -> None:
    video = uuid.uuid4()
    [change] = plan([failed(video, 20), ready(video, 10)]).videos
    assert change.status == "ready"
    [change] = plan([ready(video, 10), failed(video, 20)]).videos
    assert (change.status, change.error) == ("failed", "ffmpeg exited with status 1")


def test_roster_statuses_merge_values_of_lower_ranks() -> None:
    imp = uuid.uuid4()
    result = plan([
        roster_status(imp, "writing", seconds=9, total=10, valid=9, chunks=2),
        roster_status(imp, "queued", seconds=1, source_key=f"tenants/{TENANT}/rosters/a.xlsx"),
        roster_status(imp, "parsing", seconds=2),
    ])
    [change] = result.roster.statuses
    assert (change.status, change.chunks_expected, change.source_key) == (
        "writing", 2, f"tenants/{TENANT}/rosters/a.xlsx"
    )
    assert (change.started_at, change.updated_at) == (at(1), at(9))
    assert len(change.intent_ids) == 3


def test_rows_of_many_chunks_flatten_with_duplicates_resolved() -> None:
    # Given two chunks of one import; student 3 appears in both, student 1 twice in chunk 0
    imp = uuid.uuid4()
    first = chunk(imp, 0, [student(1, source_row=2), student(2), student(3),
                           student(1, source_row=9, name="Kim Later")])
    second = chunk(imp, 1, [student(3, source_row=12, school="Moved School"), student(4)])
    # When they arrive in the reverse order
    result = plan([second, first])
    # Then one staged row per student, the later row of the file winning either way
    by_phone = {r.phone: r for r in result.stage}
    assert len(result.stage) == 4
    assert by_phone[student(1).phone].name == "Kim Later"
    assert by_phone[student(3).phone].school == "Moved School"
    assert all(r.student_at is not None for r in result.stage)
    assert (result.rows, result.row_duplicates) == (6, 2)
    tally = result.imports[imp]
    assert (tally.chunks, tally.rows, tally.students, tally.duplicates) == (2, 6, 4, 2)
    assert result.lectures == ((LECTURE, TENANT, at(1)),)


def test_a_student_in_two_lectures_is_staged_once_as_a_student() -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    result = plan([
        chunk(one, 0, [student(1)], lecture=10, seconds=1),
        chunk(two, 0, [student(1, name="Renamed")], lecture=20, seconds=2),
    ])
    assert sorted(r.lecture_id for r in result.stage) == [10, 20]
    assert [r.name for r in result.stage] == ["Renamed", "Renamed"]
    assert sum(r.student_at is not None for r in result.stage) == 1
    # The later import won the student row, so it is attributed there
    assert result.student_import == {(TENANT, student(1).phone): two}
    assert (result.imports[one].students, result.imports[two].students) == (0, 1)


def test_a_lecture_claimed_by_two_tenants_is_reported() -> None:
    imp = uuid.uuid4()
    mine = chunk(imp, 0, [student(1)], tenant=1)
    theirs = chunk(imp, 1, [student(2)], tenant=2)
    result = plan([mine, theirs])
    assert result.lecture_conflicts == ((LECTURE, (mine.intent_id, theirs.intent_id)),)
