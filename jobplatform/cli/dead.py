"""``jobplatform dead``: intents the writer could not apply, with the reason."""

from __future__ import annotations

from typing import Any

import click

from jobplatform.cli._common import echo_json, settings_from_env
from jobplatform.settings import Settings


def _services() -> tuple[Settings, str]:
    from jobplatform.embedded import POSTGRES, REDIS
    from jobplatform.stack import ensure_services

    settings = settings_from_env()
    settings = ensure_services(settings, needs=(POSTGRES, REDIS)).apply(settings)
    assert settings.database_url is not None
    return settings, settings.database_url


def _row(letter: Any, *, body: bool = False) -> dict[str, Any]:
    out = {
        "id": letter.id, "kind": letter.kind, "tenant_id": letter.tenant_id,
        "intent_id": letter.intent_id, "queue": letter.queue, "reason": letter.reason,
        "failed_at": letter.failed_at, "retried_at": letter.retried_at,
    }
    if body:
        out["body"] = letter.body
    return out


@click.group()
def dead() -> None:
    """List, show, re-drive and drop dead intents."""


@dead.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--offset", default=0, type=click.IntRange(0))
@click.option("--kind", default=None, help="Only intents of this kind (e.g. roster.chunk).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(limit: int, offset: int, kind: str | None, as_json: bool) -> None:
    """Dead intents, newest first."""
    from writer import dead as letters
    from writer.db import connect

    _, url = _services()
    with connect(url, autocommit=True, application_name="jobplatform-cli") as conn:
        rows = letters.list(conn, limit=limit, offset=offset, kind=kind)
    if as_json:
        echo_json([_row(r) for r in rows])
        return
    if not rows:
        click.echo("no dead intents")
    for r in rows:
        retried = f"  retried {r.retried_at:%Y-%m-%d %H:%M:%S}" if r.retried_at else ""
        reason = r.reason if len(r.reason) <= 100 else r.reason[:97] + "..."
        click.echo(f"{r.id:>6}  {r.failed_at:%Y-%m-%d %H:%M:%S}  {r.kind or '?':<16} "
                   f"{r.queue:<12} {reason}{retried}")


@dead.command()
@click.argument("id", type=int)
def show(id: int) -> None:
    """One dead intent with its body, as JSON."""
    from writer import dead as letters
    from writer.db import connect

    _, url = _services()
    with connect(url, autocommit=True, application_name="jobplatform-cli") as conn:
        letter = letters.get(conn, id)
    if letter is None:
        raise click.ClickException(f"no dead intent with id {id}")
    echo_json(_row(letter, body=True))


@dead.command()
@click.argument("id", type=int, required=False)
@click.option("--all", "all_", is_flag=True, help="Every dead intent not yet retried.")
def retry(id: int | None, all_: bool) -> None:
    """Send a dead intent's body back to its queue, unchanged, and mark it retried.

    The body is signed again with this process's key. A letter refused as unauthenticated
    (unsigned, or a MAC that did not match) is never re-sent: nothing vouches for its body.
    """
    from jobplatform.auth import REFUSED, keyring_of
    from jobplatform.broker import WRITE_INTENT, build_broker, make_message
    from jobplatform.kinds import AfterCommit, registry_for
    from jobplatform.progress import ProgressStore
    from writer import dead as letters
    from writer.db import connect

    if (id is None) == (not all_):
        raise click.UsageError("give an ID or --all (not both)")
    settings, url = _services()
    assert settings.redis_url is not None
    broker = build_broker(settings, settings.redis_url, set_global=False)
    registry = registry_for(settings)
    keyring = keyring_of(broker)
    sent = 0
    refused = 0
    try:
        with connect(url, autocommit=True, application_name="jobplatform-cli") as conn:
            if id is not None:
                letter = letters.get(conn, id)
                if letter is None:
                    raise click.ClickException(f"no dead intent with id {id}")
                if letter.reason.startswith(REFUSED):
                    raise click.ClickException(
                        f"dead intent {id} was refused as an {letter.reason}: it is not re-sent"
                        " (a producer holding the key must send it again)")
                todo = [letter]
            else:
                todo = [r for r in letters.list(conn, limit=1_000_000) if r.retried_at is None]
                refused = sum(1 for r in todo if r.reason.startswith(REFUSED))
                todo = [r for r in todo if not r.reason.startswith(REFUSED)]
            # Their kinds take the jobs back first (the roster's import leaves `failed`), then
            # the bodies are sent: an intent applied before that could not finish its job.
            with conn.transaction():
                outcomes = letters.redrive(conn, todo, registry)
        progress = ProgressStore(broker.client, settings.broker_namespace)
        for kind, outcome in outcomes:
            if kind.after_commit is not None:
                kind.after_commit(AfterCommit(progress), outcome)
        for letter in todo:
            options = {"intent_id": str(letter.intent_id)} if letter.intent_id else {}
            broker.enqueue(keyring.sign(make_message(letter.queue, WRITE_INTENT,
                                                     _payload(letter.body), **options)))
            sent += 1
    finally:
        broker.close()
    skipped = f"; {refused} unauthenticated one(s) left alone" if refused else ""
    click.echo(f"re-sent {sent} dead intent(s){skipped}")


def _payload(body: str) -> Any:
    """The body as the intent travelled: a JSON object when it parses, else the raw text."""
    import json

    try:
        return json.loads(body)
    except ValueError:
        return body


@dead.command()
@click.argument("id", type=int)
def drop(id: int) -> None:
    """Delete a dead intent for good."""
    from writer import dead as letters
    from writer.db import connect

    _, url = _services()
    with connect(url, autocommit=True, application_name="jobplatform-cli") as conn:
        if not letters.drop(conn, id):
            raise click.ClickException(f"no dead intent with id {id}")
    click.echo(f"dropped dead intent {id}")
