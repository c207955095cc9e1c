"""pytest fixtures for services built on the platform (registered as the ``jobplatform`` plugin).

- ``jobplatform_settings``: the platform's settings for one test: the configured or local
  services, a broker namespace and state folder of its own. Override it to point elsewhere.
- ``jobplatform_intent_capture``: an in-memory broker with the platform's middleware and
  queues. Register actors on it (``capture.register(actors.video.register)``), send jobs, then
  ``capture.run()`` processes them and returns the write intents they emitted, decoded.
- ``jobplatform_replay_into_database``: call it with a log (files, folders, ``s3://`` keys) or
  a list of intents (or the capture itself); it builds a fresh migrated database, replays into
  it through the writer's own sink, and returns it for the test to query. Dropped afterwards.
  For the application's own tables (``WRITER_TABLES``), the new database first gets the
  application's schema from ``migrate(url)`` (your migrate step: Django's ``migrate`` command,
  Alembic, a SQL file), passed to the call or by overriding the ``jobplatform_migrate``
  fixture; ``tables=`` replays with another table map than the configured one, and
  ``database_url=`` replays into an existing database (Django's test database, say), kept.

Example::

    from actors.video import register
    from schemas import EncodeVideo

    def test_encode_marks_the_video_ready(jobplatform_intent_capture,
                                          jobplatform_replay_into_database):
        capture = jobplatform_intent_capture
        capture.register(register)
        capture.send("encode_video", EncodeVideo(...))
        db = jobplatform_replay_into_database(capture.run())
        assert db.scalar("SELECT status FROM videos") == "ready"
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import dramatiq
    from dramatiq.brokers.stub import StubBroker
    from psycopg import Connection

    from jobplatform.kinds import Registry
    from jobplatform.settings import Settings
    from jobplatform.tables import TableMap
    from schemas import BaseIntent
    from writer.intentlog.replay import ReplaySummary

Registrar = Callable[["dramatiq.Broker", "Settings"], object]
LogSource = str | Path


class IntentCapture:
    """Actors run in-process against a stub broker; the intents they emit, collected."""

    def __init__(self, settings: Settings) -> None:
        from jobplatform.broker import Queues, build_stub_broker
        from jobplatform.kinds import registry_for

        self.settings = settings
        self.registry: Registry = registry_for(settings)
        self.queues = Queues.from_settings(settings)
        self.broker: StubBroker = build_stub_broker(settings)
        self.intents: list[BaseIntent] = []
        self._worker: dramatiq.Worker | None = None

    def register(self, *registrars: Registrar) -> None:
        """Declare actors on the capture's broker: each is called with (broker, settings)."""
        for registrar in registrars:
            registrar(self.broker, self.settings)

    def send(self, actor_name: str, job: Any, **options: Any) -> None:
        """Enqueue a job (a pydantic model or a dict) for a registered actor, signed with the
        capture's key as the publish client signs it."""
        from jobplatform.auth import keyring_of

        payload = job.model_dump(mode="json") if hasattr(job, "model_dump") else dict(job)
        message = self.broker.get_actor(actor_name).message_with_options(
            args=(payload,), **options)
        self.broker.enqueue(keyring_of(self.broker).sign(message))

    def run(self, timeout_s: float = 120.0) -> list[BaseIntent]:
        """Process every job sent so far; return all intents emitted so far, in send order.

        An actor that raised fails the call with its error (after its retries).
        """
        import dramatiq

        queues = self.job_queues()
        if self._worker is None:
            self._worker = dramatiq.Worker(
                self.broker, queues=queues, worker_threads=2, worker_timeout=50,
            )
            self._worker.start()
        for queue in sorted(queues):
            self.broker.join(queue, timeout=int(timeout_s * 1000), fail_fast=True)
        self._worker.join()
        self.intents.extend(self._drain())
        return list(self.intents)

    def job_queues(self) -> set[str]:
        """The queues of the registered job types that have an actor on the capture's broker."""
        names = set(self.broker.get_declared_actors())
        return {t.queue_name(self.settings) for t in self.registry.job_types
                if t.actor in names} or {self.queues.video, self.queues.ai}

    def of_kind(self, kind: str) -> list[BaseIntent]:
        return [i for i in self.intents if i.kind == kind or i.kind.split(".", 1)[0] == kind]

    def _drain(self) -> list[BaseIntent]:
        """Take the messages off both write queues, merged by enqueue time."""
        import queue as queue_module

        import dramatiq

        from jobplatform.auth import MessageRefused, keyring_of

        keyring = keyring_of(self.broker)
        lanes: list[list[tuple[int, int, BaseIntent]]] = []
        for lane, name in enumerate(self.queues.writes):
            found = []
            pending = self.broker.queues[name]
            while True:
                try:
                    data = pending.get_nowait()
                except queue_module.Empty:
                    break
                pending.task_done()
                message = dramatiq.Message.decode(data)
                refused = keyring.verify(message)
                if refused is not None:  # the writer would dead-letter it
                    raise MessageRefused(f"{name}: {refused}")
                found.append((message.message_timestamp, lane,
                              self.registry.decode_intent(message.args[0])))
            lanes.append(found)
        return [intent for _, _, intent in heapq.merge(*lanes, key=lambda t: (t[0], t[1]))]

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        self.broker.close()


@dataclass(slots=True)
class ReplayedDatabase:
    """A fresh database a log (or captured intents) was replayed into."""

    url: str
    conn: Connection[tuple[Any, ...]]
    summary: ReplaySummary

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.conn.execute(query.encode(), params or None).fetchall()

    def scalar(self, query: str, *params: Any) -> Any:
        row = self.conn.execute(query.encode(), params or None).fetchone()
        return None if row is None else row[0]


Migrate = Callable[[str], object]


@contextmanager
def scratch_database(server_url: str, prefix: str = "jp_replay", *,
                     migrate: Migrate | None = None,
                     tables: TableMap | None = None) -> Iterator[str]:
    """A new database on the server ``server_url`` names: the application's schema from
    ``migrate(url)`` when given, then the writer's; dropped on exit."""
    from writer.db import drop_database, ensure_database, with_database
    from writer.migrate import upgrade

    url = with_database(server_url, f"{prefix}_{uuid.uuid4().hex[:12]}")
    try:
        ensure_database(url)
        if migrate is not None:
            migrate(url)
        upgrade(url, tables=tables)
        yield url
    finally:
        drop_database(url)


@contextmanager
def _tables_active(tables: TableMap | None) -> Iterator[None]:
    """The built-in kinds write ``tables`` meanwhile (the configured map when None)."""
    if tables is None:
        yield
        return
    from writer.kinds.tables import activate, active

    before = active()
    activate(tables)
    try:
        yield
    finally:
        activate(before)


def replay_into(
    url: str,
    source: LogSource | Sequence[LogSource] | Sequence[BaseIntent] | IntentCapture,
    settings: Settings,
) -> ReplaySummary:
    """Replay a log (paths, ``s3://`` keys) or intents (list or capture) into ``url``."""
    from jobplatform.kinds import registry_for
    from writer.db import connect
    from writer.intentlog.reader import LogReader
    from writer.intentlog.replay import ReplaySummary, batches_of, replay_log, replay_records
    from writer.intentlog.segment import LogRecord

    if isinstance(source, IntentCapture):
        source = source.intents
    if isinstance(source, str | Path):
        source = [source]
    paths = [i for i in source if isinstance(i, str | Path)]
    if paths:
        if len(paths) != len(source):
            raise TypeError("replay either a log (paths, s3:// keys) or intents, not both")
        with LogReader(paths, settings=settings) as reader:
            return replay_log(url, reader)
    items = [i for i in source if not isinstance(i, str | Path)]
    limits = settings.writer
    batches = batches_of(items, max_intents=limits.batch_max_intents,
                         max_rows=limits.batch_max_rows)
    records = (
        LogRecord(seq, "captured", batch[0].occurred_at, tuple(batch))
        for seq, batch in enumerate(batches, start=1)
    )
    with connect(url, autocommit=True, application_name="jobplatform-replay") as conn:
        return replay_records(conn, records, summary=ReplaySummary(),
                              registry=registry_for(settings))


@pytest.fixture
def jobplatform_settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings for one test: the configured (or local) services, an own namespace and folder.

    A service neither configured nor local is an embedded server in the test's folder,
    stopped when the test ends.
    """
    from jobplatform.settings import load_settings
    from jobplatform.stack import session_services

    base = load_settings(
        broker_namespace=f"jptest-{uuid.uuid4().hex[:8]}",
        jobplatform_state_dir=tmp_path / "jobplatform",
    )
    with session_services(base) as services:
        yield services.apply(base)


@pytest.fixture
def jobplatform_intent_capture(jobplatform_settings: Settings) -> Iterator[IntentCapture]:
    """Actors run in-process on a stub broker; the intents they emit (:class:`IntentCapture`)."""
    capture = IntentCapture(jobplatform_settings)
    yield capture
    capture.close()


@pytest.fixture
def jobplatform_migrate() -> Migrate | None:
    """The application's migrate step, ``migrate(database_url)``, run on each database the
    replay fixture creates before the writer's migrations. Override it when the built-in kinds
    write the application's own tables (``WRITER_TABLES``); None: no schema of the
    application's."""
    return None


@pytest.fixture
def jobplatform_replay_into_database(
    jobplatform_settings: Settings, jobplatform_migrate: Migrate | None,
) -> Iterator[Callable[..., ReplayedDatabase]]:
    """``replay(source, *, migrate=, tables=, database_url=)`` -> a database holding what
    ``source`` applies: a fresh one (the application's migrate step, then the writer's),
    dropped afterwards, or ``database_url``, kept."""
    from contextlib import ExitStack

    from writer.db import connect
    from writer.migrate import upgrade

    settings = jobplatform_settings
    server = settings.database_url
    assert server is not None, "jobplatform_settings must name a database server"

    with ExitStack() as stack:

        def replay(
            source: LogSource | Sequence[LogSource] | Sequence[BaseIntent] | IntentCapture,
            *, migrate: Migrate | None = None, tables: TableMap | None = None,
            database_url: str | None = None,
        ) -> ReplayedDatabase:
            if database_url is None:
                url = stack.enter_context(scratch_database(
                    server, migrate=migrate or jobplatform_migrate, tables=tables))
            else:
                url = database_url
                upgrade(url, tables=tables)
            with _tables_active(tables):
                summary = replay_into(url, source, settings)
            conn = stack.enter_context(connect(url, autocommit=True))
            return ReplayedDatabase(url, conn, summary)

        yield replay
