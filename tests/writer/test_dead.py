"""The dead-letter table's functions against a real PostgreSQL."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from typing import Any

from jobplatform.settings import Settings
from tests.writer.conftest import WriterProcess, WriterThread, scalar, wait_until
from writer import dead
from writer.db import connect


def test_record_list_get_retry_drop(database_url: str) -> None:
    intent_id = uuid.uuid4()
    with connect(database_url, autocommit=True) as conn:
        first = dead.record(conn, "writes.fast", '{"kind":"video.ready"}', "bad tenant",
                            intent_id=intent_id, kind="video.ready", tenant_id=7)
        second = dead.record(conn, "writes.bulk", "not json", "undecodable")
        assert [d.id for d in dead.list(conn)] == [second, first]
        assert [d.id for d in dead.list(conn, kind="video.ready")] == [first]
        assert [d.id for d in dead.list(conn, limit=1, offset=1)] == [first]
        found = dead.get(conn, first)
        assert found is not None
        assert (found.intent_id, found.queue, found.reason, found.tenant_id, found.retried_at) == (
            intent_id, "writes.fast", "bad tenant", 7, None
        )
        assert dead.mark_retried(conn, first)
        retried = dead.get(conn, first)
        assert retried is not None
        assert retried.retried_at is not None
        assert dead.drop(conn, second)
        assert not dead.drop(conn, second)
        assert dead.get(conn, second) is None
        assert not dead.mark_retried(conn, second)


def test_a_malformed_message_recorded_then_redelivered_after_a_kill_keeps_one_letter(
    settings: Settings, broker: Any, writer_process: Callable[..., WriterProcess],
    start_writer: Callable[..., WriterThread],
) -> None:
    from click.testing import CliRunner

    from jobplatform.auth import keyring_of
    from jobplatform.broker import WRITE_INTENT, make_message
    from jobplatform.cli import cli
    from schemas.intents import encode_intent
    from tests.jobplatform.cli.test_dead import _env
    from tests.writer.intent_factory import queued

    url = settings.database_url
    assert url is not None
    fast = settings.queue_writes_fast
    # Given a malformed intent (no tenant) and a message that is not even an envelope
    body = {k: v for k, v in encode_intent(queued(uuid.uuid4())).items() if k != "tenant_id"}
    broker.enqueue(keyring_of(broker).sign(make_message(fast, WRITE_INTENT, body)))
    broker.do_enqueue(fast, str(uuid.uuid4()), b"\xff\xfe garbage")

    # When the writer is killed after recording them and before acking them
    faulty = writer_process("faulty", ("-m", "tests.writer.faulty_writer"),
                            FAULT_AT="dead_letter")
    assert faulty.proc.wait(60) == -signal.SIGKILL, faulty.output()[-3000:]
    assert scalar(url, "SELECT count(*) FROM writer_dead_letters") == 2
    # and the writer after it gets both again
    runner = start_writer()
    wait_until(lambda: broker.do_qsize(fast) == 0, message="the redelivered messages settled")
    runner.stop()

    # Then each kept its one letter
    assert scalar(url, "SELECT count(*) FROM writer_dead_letters") == 2
    # and re-driving every letter sends the intent once (the garbage is re-sent as text)
    result = CliRunner().invoke(cli, ["dead", "retry", "--all"], env=_env(settings))
    assert result.exit_code == 0, result.output
    assert "re-sent 2 dead intent(s)" in result.output
    assert broker.do_qsize(fast) == 2
