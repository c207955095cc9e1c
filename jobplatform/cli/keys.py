"""``jobplatform keys``: make a message key, and show which keys a process would use."""

from __future__ import annotations

import click

from jobplatform.cli._common import echo_json, settings_from_env


@click.group()
def keys() -> None:
    """The keys that sign jobs and write intents (AUTH_KEYS, AUTH_KEYS_FILE)."""


@keys.command()
@click.option("--id", "key_id", default=None, help="The key's id (default: k<YYYYMMDD>).")
def new(key_id: str | None) -> None:
    """Print a new key as id=secret, for AUTH_KEYS or a line of AUTH_KEYS_FILE."""
    from datetime import UTC, datetime

    from jobplatform.auth import Keyring, generate_secret

    key_id = key_id or datetime.now(UTC).strftime("k%Y%m%d")
    secret = generate_secret()
    Keyring({key_id: secret})  # the id and the secret are ones every process accepts
    click.echo(f"{key_id}={secret}")


@keys.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def show(as_json: bool) -> None:
    """The key ids this process accepts, the one it signs with and where they come from
    (never the secrets). In development without AUTH_KEYS this makes the state folder's key."""
    from jobplatform.auth import keyring_for

    keyring = keyring_for(settings_from_env())
    found = {"accepted": list(keyring.key_ids), "signing": keyring.signing_key_id,
             "origin": keyring.origin}
    if as_json:
        echo_json(found)
        return
    click.echo(f"signing with {found['signing']}; accepting {', '.join(found['accepted'])}"
               f" (from {found['origin']})")
