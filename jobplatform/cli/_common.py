"""What every subcommand shares: settings, logging and the one exit path."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import click

from jobplatform.errors import JobPlatformError
from jobplatform.extras import MissingExtra, missing_extra
from jobplatform.logging import configure_logging
from jobplatform.settings import Settings, load_settings


def settings_from_env() -> Settings:
    """Settings for a subcommand, with logging configured; a bad value exits with code 2."""
    settings = load_settings()
    configure_logging(settings)
    return settings


def run_cli(group: click.Group, argv: list[str] | None) -> int:
    """Run the CLI; a platform error prints its chain of causes and exits 1 (2 for config)."""
    from jobplatform.errors import ConfigError

    try:
        # Without standalone mode, click returns the code of a `click.exceptions.Exit` raised
        # by a command instead of raising it.
        code = group.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except (JobPlatformError, OSError) as exc:
        click.echo(f"error: {describe_chain(exc)}", err=True)
        return 2 if isinstance(exc, ConfigError) else 1
    except Exception as exc:
        # An optional dependency of the subcommand (psycopg for the writer ...): name its extra.
        words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
        what = f"`jobplatform {words[0]}`" if words else "this command"
        known = exc if isinstance(exc, MissingExtra) else (
            missing_extra(exc, what) if isinstance(exc, ImportError) else None)
        if known is not None:
            click.echo(f"error: {known}", err=True)
            return 1
        # A driver's error (PostgreSQL unreachable...) or a bug: the chain of causes, and the
        # traceback when debugging.
        if os.environ.get("LOG_LEVEL", "").upper() == "DEBUG":
            traceback.print_exc()
        click.echo(f"error: {type(exc).__name__}: {describe_chain(exc)}", err=True)
        click.echo("(set LOG_LEVEL=DEBUG for the traceback)", err=True)
        return 1
    return code if isinstance(code, int) else 0


def describe_chain(exc: BaseException) -> str:
    parts = [str(exc) or type(exc).__name__]
    seen: set[int] = {id(exc)}
    cause: Any = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        parts.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    return "\n  caused by: ".join(parts)


def echo_json(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")
