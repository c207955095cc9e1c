"""Kinds as plug-ins: registration, refusal of what nothing applies, and a user's own kind
(``examples/attendance``, outside the library's packages) published, applied, logged and
replayed against real PostgreSQL and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pytest

from jobplatform.auth import keyring_of
from jobplatform.broker import WRITE_INTENT, make_message
from jobplatform.kinds import Kind, Registry, RegistryError, UnknownKind, load_registry
from jobplatform.publish import InvalidJob, Publisher
from jobplatform.settings import Settings
from schemas import BaseIntent, BaseJob, DecodeError
from tests.writer.conftest import WriterThread, emit_all, query, scalar, wait_until
from tests.writer.intent_factory import queued
from writer.db import connect
from writer.engine import Commit, Hooks, apply_batch
from writer.errors import DataApplyError
from writer.intentlog import IntentLog, LogFilter, LogReader, replay_log
from writer.migrate import upgrade
from writer.pytest_plugin import scratch_database

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "attendance"


@pytest.fixture
def attendance(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example kind, importable as ``attendance`` (as an application's module would be)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import attendance as module

    return module


@pytest.fixture
def registry(attendance: ModuleType) -> Registry:
    return load_registry(("attendance",))


def mark(attendance: ModuleType, state: str, *, seconds: int = 0, mark: str = "present",
         note: str | None = None, phone: str = "010-1234-5678") -> BaseIntent:
    intent: BaseIntent = attendance.AttendanceMarked(
        tenant_id=7, occurred_at=datetime(2026, 3, 2, 9, tzinfo=UTC) + timedelta(seconds=seconds),
        lecture_id=42, phone=phone, day=date(2026, 3, 2), mark=mark, state=state, note=note)
    return intent


# --- registration --------------------------------------------------------------------------

def test_the_built_in_kinds_come_from_entry_points_like_any_plug_in() -> None:
    registry = load_registry()
    assert [k.name for k in registry.kinds] == ["video", "roster"]
    assert "entry point 'video'" in registry.origins["video"]
    assert {t.kind for t in registry.job_types} == {"video.encode", "roster.import"}
    # Producers get the declarations; the writer's code is only named, not imported
    assert [(k.apply, k.handler) for k in registry.kinds] == [
        (None, "writer.kinds.video"), (None, "writer.kinds.roster")]


def test_the_writer_imports_each_handler_and_fills_what_it_declares() -> None:
    from writer.engine.handlers import resolve
    from writer.kinds import roster, video

    resolved = resolve(load_registry())
    assert resolve(load_registry()) is resolved
    by_name = {k.name: k for k in resolved.kinds}
    assert (by_name["video"].apply, by_name["video"].plan) == (video.apply, video.plan)
    assert by_name["roster"].dead_lettered is roster.dead_lettered
    assert by_name["roster"].sql == roster.sql
    assert all(k.handler is None for k in resolved.kinds)
    assert resolved.job_types == load_registry().job_types


def test_a_handler_that_cannot_be_imported_is_named() -> None:
    from writer.engine.handlers import resolve

    broken = Registry([Kind(name="grading", intents=(Graded,), handler="no_such_handler")])
    assert broken.missing_handlers() == []
    with pytest.raises(RegistryError, match=r"kind 'grading'.*'no_such_handler'"):
        resolve(broken)


def test_a_kind_registers_through_the_setting(registry: Registry) -> None:
    assert registry.kind_for("attendance.marked") is not None
    assert registry.origins["attendance"] == "JOBPLATFORM_KINDS module 'attendance'"
    assert registry.job_type("attendance.record") is not None


def test_a_kind_registers_through_an_installed_packages_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a distribution on sys.path that declares the kind under the entry-point group
    dist = tmp_path / "academy_attendance-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: academy-attendance\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text('[jobplatform.kinds]\nattendance = attendance\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    # When the registry loads (nothing set, nothing edited in the library)
    registry = load_registry.__wrapped__()
    # Then the kind is there, and where it came from is known
    assert [k.name for k in registry.kinds] == ["video", "roster", "attendance"]
    assert registry.origins["attendance"] == "entry point 'attendance' = 'attendance'"


def test_loading_the_registry_imports_no_database_driver() -> None:
    # API services and actors load it too: they must not import psycopg or the writer
    code = ("import sys; from jobplatform.kinds import load_registry; load_registry(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'writer')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_a_module_that_fails_to_import_is_named() -> None:
    with pytest.raises(RegistryError, match=r"JOBPLATFORM_KINDS module 'no_such_kind'"):
        load_registry.__wrapped__(("no_such_kind",))


def test_two_kinds_declaring_one_intent_kind_are_refused(attendance: ModuleType) -> None:
    twin = Kind(name="register", intents=(attendance.AttendanceMarked,),
                apply=attendance.apply)
    with pytest.raises(RegistryError, match=r"'attendance.marked' is declared by two kinds"):
        Registry([attendance.kind, twin])


class Graded(BaseIntent):
    kind: Literal["grading.scored"] = "grading.scored"
    score: int


def test_the_writer_refuses_to_start_while_an_intent_kind_has_no_handler(
    settings: Settings, start_writer: Callable[..., WriterThread]
) -> None:
    registry = Registry([*load_registry().kinds, Kind(name="grading", intents=(Graded,))])
    runner = start_writer(registry=registry)
    runner.thread.join(10)
    assert isinstance(runner.error, RegistryError)
    assert "intent kind 'grading.scored' of kind 'grading'" in str(runner.error)
    assert "no apply handler" in str(runner.error)


def test_an_intent_without_a_handler_is_never_recorded_as_applied(database_url: str) -> None:
    # Given a registry where "grading" declares its intents but nothing to apply them
    registry = Registry([*load_registry().kinds, Kind(name="grading", intents=(Graded,))])
    intent = Graded(tenant_id=1, occurred_at=datetime.now(UTC), score=3)
    # When a batch holding one reaches the sink
    with connect(database_url) as conn:
        with (pytest.raises(DataApplyError, match="without an apply handler") as caught,
              conn.transaction()):
            apply_batch(conn, [queued(uuid.uuid4()), intent], batch_seq=1, registry=registry)
        # Then the batch fails as bad data, naming the intent, and the ledger holds nothing
        assert caught.value.intent_ids == (intent.intent_id,)
        assert conn.execute("SELECT count(*) FROM writer_ledger").fetchone() == (0,)


def test_an_unclaimed_kind_is_dead_lettered_naming_the_plug_in_it_needs(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    # Given an intent of a kind this writer's registry does not hold, and a valid one after it
    body = {"kind": "attendance.marked", "tenant_id": 7, "intent_id": str(uuid.uuid4()),
            "occurred_at": "2026-03-02T09:00:00+00:00"}
    broker.enqueue(keyring_of(broker).sign(
        make_message(settings.queue_writes_fast, WRITE_INTENT, body)))
    emit_all(broker, settings, [queued(uuid.uuid4())])
    runner = start_writer()
    url = str(settings.database_url)
    wait_until(lambda: scalar(url, "SELECT count(*) FROM writer_ledger") == 1
               and scalar(url, "SELECT count(*) FROM writer_dead_letters") == 1,
               message="one applied, one dead letter")
    runner.stop()
    [(kind, reason)] = query(url, "SELECT kind, reason FROM writer_dead_letters")
    assert kind == "attendance.marked"
    assert "no registered kind declares intents of kind 'attendance.marked'" in reason
    assert "JOBPLATFORM_KINDS" in reason
    assert "'attendance' kind" in reason


def test_intents_travel_as_json_text_and_decode_as_the_object_form_does(
    settings: Settings, broker: Any
) -> None:
    # Given an intent as the emitter sends it: the message's one argument is its JSON text
    registry = load_registry()
    intent = queued(uuid.uuid4())
    emit_all(broker, settings, [intent])
    [raw] = broker.client.hvals(f"{broker.namespace}:{settings.queue_writes_fast}.msgs")
    [payload] = json.loads(raw)["args"]
    assert isinstance(payload, str)
    # Then the text decodes to the intent, as the same intent as an object does
    assert registry.decode_intent(payload) == intent == registry.decode_intent(json.loads(payload))
    assert registry.decode_intent(payload.encode()) == intent
    # And a bad one is refused with the same words either way
    bad = [
        {**json.loads(payload), "schema_version": 2},
        {**json.loads(payload), "kind": "grading.scored"},
        {**json.loads(payload), "tenant_id": "seven"},
        {**json.loads(payload), "unexpected": 1},
    ]
    for body in bad:
        with pytest.raises(DecodeError) as as_object:
            registry.decode_intent(body)
        with pytest.raises(DecodeError) as as_text:
            registry.decode_intent(json.dumps(body))
        assert type(as_text.value) is type(as_object.value)
        assert str(as_text.value) == str(as_object.value)
    with pytest.raises(DecodeError, match="not JSON"):
        registry.decode_intent("{not json")


def test_the_emitter_refuses_an_intent_of_an_unregistered_kind(
    settings: Settings, broker: Any
) -> None:
    with pytest.raises(UnknownKind, match=r"'grading\.scored'"):
        emit_all(broker, settings, [Graded(tenant_id=1, occurred_at=datetime.now(UTC),
                                           score=3)])


class Unregistered(BaseJob):
    kind: Literal["grading.run"] = "grading.run"

    @property
    def job_id(self) -> str:
        return "grading:1"


def test_the_publisher_refuses_a_job_type_nobody_registered(bus_settings: Settings) -> None:
    with Publisher(bus_settings) as publisher, pytest.raises(
            InvalidJob, match=r"Unregistered is not a registered job type.*JOBPLATFORM_KINDS"):
        publisher.publish(Unregistered(tenant_id=1))


# --- hooks ---------------------------------------------------------------------------------

class Counting(Hooks):
    def __init__(self) -> None:
        self.commits: list[Commit] = []
        self.roles: list[tuple[str, str]] = []

    def after_commit(self, commit: Commit) -> None:
        self.commits.append(commit)

    def on_role_change(self, old: str, new: str) -> None:
        self.roles.append((old, new))


class Broken(Hooks):
    def before_collect(self) -> None:
        raise RuntimeError("a hook that fails")


def test_hooks_see_each_commit_and_a_failing_hook_stops_nothing(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    counting = Counting()
    intents = [queued(uuid.uuid4()) for _ in range(30)]
    emit_all(broker, settings, intents)
    runner = start_writer(hooks=[Broken(), counting])
    wait_until(lambda: runner.writer.get_stats()["acks"] == 30, message="30 acks")
    runner.stop()
    assert sum(len(c.intents) for c in counting.commits) == 30
    assert all(c.ms > 0 and c.result.applied for c in counting.commits)
    assert "active" in {new for _, new in counting.roles}
    assert counting.roles[-1][1] == "stopped"


# --- a user's kind, end to end -------------------------------------------------------------

def test_a_users_kind_is_published_applied_logged_and_replayed(
    attendance: ModuleType, registry: Registry, settings: Settings, broker: Any,
    start_writer: Callable[..., WriterThread], tmp_path: Path,
) -> None:
    url = str(settings.database_url)
    upgrade(url, registry=registry)  # the kind's own migration creates its table
    # Given a teacher's mark published by the API (its first status goes to the writer)...
    job = attendance.RecordAttendance(tenant_id=7, lecture_id=42, phone="010-1234-5678",
                                      day=date(2026, 3, 2), mark="late")
    with Publisher(settings, registry=registry) as publisher:
        receipt = publisher.publish(job, idempotency_key="mark-1")
        assert publisher.publish(job, idempotency_key="mark-1").duplicate
    assert (receipt.queue, receipt.actor) == ("attendance", "record_attendance")
    # ... then a reviewer's correction, the final state, and a stale "recorded" arriving last
    later = [
        mark(attendance, "reviewed", seconds=60, mark="present", note="bus was late"),
        mark(attendance, "final", seconds=120, mark="present"),
        mark(attendance, "recorded", seconds=180, mark="absent"),
        mark(attendance, "final", seconds=10, phone="010-9999-0000", mark="absent"),
    ]
    emit_all(broker, settings, later, registry)
    log_dir = tmp_path / "log"
    runner = start_writer(registry=registry,
                          log_writer=IntentLog(log_dir, writer_id="test:1"))
    wait_until(lambda: runner.writer.get_stats()["acks"] == 5, message="5 intents acked")
    runner.stop()

    # Then the row moved forward only, keeping the note the final state did not carry
    rows = query(url, "SELECT phone, mark, state, note FROM attendance_marks ORDER BY phone")
    assert rows == [("010-1234-5678", "present", "final", "bus was late"),
                    ("010-9999-0000", "absent", "final", None)]
    # And the log holds every intent, readable and filterable by the kind's own fields
    with LogReader([log_dir], registry=registry) as reader:
        logged = [i for r in reader.records() for i in r.intents]
        assert len(logged) == 5
        only = [i for r in reader.records(LogFilter(entity="010-9999-0000")) for i in r.intents]
        assert [i.kind for i in only] == ["attendance.marked"]
        assert "attendance.marked" in only[0].describe()
        # And a replay into an empty database gives the same table
        with scratch_database(url, prefix="jp_kind") as replica:
            upgrade(replica, registry=registry)
            summary = replay_log(replica, reader)
            assert summary.intents_applied == 5
            replayed = query(replica, "SELECT phone, mark, state, note, updated_at"
                                      " FROM attendance_marks ORDER BY phone")
    assert replayed == query(url, "SELECT phone, mark, state, note, updated_at"
                                  " FROM attendance_marks ORDER BY phone")
    assert json.loads(receipt.model_dump_json())["kind"] == "attendance.record"


def test_the_cli_lists_the_kinds_and_where_they_came_from() -> None:
    env = {**os.environ, "JOBPLATFORM_KINDS": "attendance",
           "PYTHONPATH": str(EXAMPLE)}
    out = subprocess.run([sys.executable, "-m", "jobplatform", "kinds", "--json"], env=env,
                         capture_output=True, text=True, check=True, cwd=ROOT)
    listed = {k["name"]: k for k in json.loads(out.stdout)["kinds"]}
    assert list(listed) == ["video", "roster", "attendance"]
    assert listed["roster"]["intents"][0] == {"kind": "roster.chunk", "lane": "bulk"}
    assert listed["attendance"]["jobs"] == [
        {"kind": "attendance.record", "actor": "record_attendance", "queue": "attendance"}]
