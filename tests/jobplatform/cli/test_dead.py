from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from click.testing import CliRunner

from jobplatform.auth import REFUSED
from jobplatform.cli import cli
from jobplatform.settings import Settings
from schemas.intents import intent_json
from tests.writer.conftest import WriterThread, scalar, wait_until
from tests.writer.intent_factory import queued
from writer import dead
from writer.db import connect


def _env(settings: Settings) -> dict[str, str]:
    assert settings.database_url is not None
    assert settings.redis_url is not None
    return {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
            "BROKER_NAMESPACE": settings.broker_namespace,
            # the test's development key: what the CLI re-sends, the writer authenticates
            "JOBPLATFORM_STATE_DIR": str(settings.jobplatform_state_dir)}


def test_dead_list_show_retry_and_drop(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    # Given two intents dead-lettered earlier for a reason since fixed, and one malformed body
    url = settings.database_url
    assert url is not None
    fast = settings.queue_writes_fast
    intents = [queued(uuid.uuid4()), queued(uuid.uuid4())]
    with connect(url, autocommit=True) as conn:
        ids = [dead.record(conn, fast, intent_json(i).decode(), "lock timeout (since fixed)",
                           i.intent_id, i.kind, i.tenant_id) for i in intents]
        junk = dead.record(conn, fast, "{not json", "invalid intent: <payload>: not JSON")
    env = _env(settings)
    runner = CliRunner()

    # When they are listed and shown
    listed = runner.invoke(cli, ["dead", "list", "--json"], env=env)
    shown = runner.invoke(cli, ["dead", "show", str(ids[0])], env=env)
    text = runner.invoke(cli, ["dead", "list"], env=env)

    # Then each is there with its reason, and show includes the body
    assert listed.exit_code == 0, listed.output
    assert [row["id"] for row in json.loads(listed.stdout)] == [junk, ids[1], ids[0]]
    assert shown.exit_code == 0, shown.output
    assert json.loads(json.loads(shown.stdout)["body"])["intent_id"] == str(intents[0].intent_id)
    assert "lock timeout (since fixed)" in text.output

    # When one is re-driven, then the rest with --all, and a writer runs
    first = runner.invoke(cli, ["dead", "retry", str(ids[0])], env=env)
    rest = runner.invoke(cli, ["dead", "retry", "--all"], env=env)
    assert first.exit_code == 0, first.output
    assert "re-sent 1" in first.output
    assert "re-sent 2" in rest.output, rest.output
    writer = start_writer()
    wait_until(lambda: scalar(url, "SELECT count(*) FROM writer_ledger") == 2,
               message="re-driven intents applied")
    wait_until(lambda: scalar(url, "SELECT count(*) FROM writer_dead_letters") == 4,
               message="the malformed body dead again")
    writer.stop()

    # Then the intents are applied, the letters marked retried, the junk dead once more
    assert scalar(url, "SELECT count(*) FROM writer_dead_letters WHERE retried_at IS NOT NULL") \
        == 3
    assert scalar(url, "SELECT count(*) FROM videos") == 2

    # And drop deletes one; a missing id is a clear error
    dropped = runner.invoke(cli, ["dead", "drop", str(junk)], env=env)
    missing = runner.invoke(cli, ["dead", "show", "999999"], env=env)
    assert dropped.exit_code == 0, dropped.output
    assert scalar(url, "SELECT count(*) FROM writer_dead_letters WHERE id = %s", [junk]) == 0
    assert missing.exit_code != 0
    assert "no dead intent with id 999999" in missing.output


def test_an_unauthenticated_dead_letter_is_never_re_signed(settings: Settings) -> None:
    # Given a forged intent the writer refused, and one that failed for another reason
    url = settings.database_url
    assert url is not None
    fast = settings.queue_writes_fast
    forged, honest = queued(uuid.uuid4()), queued(uuid.uuid4())
    with connect(url, autocommit=True) as conn:
        refused = dead.record(conn, fast, intent_json(forged).decode(),
                              f"{REFUSED}: it carries no MAC (option 'mac')", forged.intent_id)
        dead.record(conn, fast, intent_json(honest).decode(), "lock timeout", honest.intent_id)
    env = _env(settings)
    runner = CliRunner()
    # When an operator re-drives them
    one = runner.invoke(cli, ["dead", "retry", str(refused)], env=env)
    every = runner.invoke(cli, ["dead", "retry", "--all"], env=env)
    # Then the forged one is refused by name and left out of --all; the other is re-sent
    assert one.exit_code != 0
    assert f"dead intent {refused} was refused as an {REFUSED}" in one.output
    assert every.exit_code == 0, every.output
    assert "re-sent 1 dead intent(s); 1 unauthenticated one(s) left alone" in every.output
    assert scalar(url, "SELECT count(*) FROM writer_dead_letters WHERE retried_at IS NOT NULL") \
        == 1
