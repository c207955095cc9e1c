from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from jobplatform.auth import Keyring, parse_keys
from jobplatform.cli import cli


def test_keys_new_makes_a_key_every_process_accepts() -> None:
    made = CliRunner().invoke(cli, ["keys", "new", "--id", "k2"])
    assert made.exit_code == 0, made.output
    keys = parse_keys(made.output, "output")
    assert list(keys) == ["k2"]
    assert Keyring(keys).signing_key_id == "k2"


def test_keys_show_names_ids_never_secrets(tmp_path: Path) -> None:
    secret = "s" * 40
    env = {"AUTH_KEYS": f"new=n{secret},old=o{secret}", "AUTH_SIGNING_KEY": "new",
           "JOBPLATFORM_STATE_DIR": str(tmp_path)}
    shown = CliRunner().invoke(cli, ["keys", "show"], env=env)
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == "signing with new; accepting new, old (from AUTH_KEYS)"
    assert secret not in shown.output


def test_production_without_a_key_is_a_clear_error(tmp_path: Path) -> None:
    # Given production settings without AUTH_KEYS, for the key tool and for the writer
    env = {**os.environ, "JOBPLATFORM_ENV": "production", "JOBPLATFORM_STATE_DIR": str(tmp_path),
           "REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": "postgresql://127.0.0.1:1/x"}
    env.pop("AUTH_KEYS", None)
    env.pop("AUTH_KEYS_FILE", None)
    for command in (["keys", "show"], ["writer"]):
        done = subprocess.run([sys.executable, "-m", "jobplatform", *command], env=env,
                              capture_output=True, text=True, timeout=60)
        # Then each stops at once, naming the setting, and no key is made
        assert done.returncode == 2, (command, done.stderr)
        assert "production: jobs and write intents are signed and no key is configured: " \
               "set AUTH_KEYS" in done.stderr
    assert not (tmp_path / "auth").exists()
