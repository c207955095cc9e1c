"""``jobplatform run``: the Procfile's processes in one terminal, for development."""

from __future__ import annotations

from pathlib import Path

import click

from jobplatform.cli._common import settings_from_env


@click.command()
@click.argument("names", nargs=-1)
@click.option("-f", "--procfile", type=click.Path(dir_okay=False, path_type=Path),
              envvar="JOBPLATFORM_PROCFILE", show_envvar=True,
              help="The Procfile; processes run in its folder. Default: ./Procfile when there"
                   " is one, else the built-in formation (writer, video, ai).")
@click.option("-s", "--scale", envvar="JOBPLATFORM_SCALE", show_envvar=True,
              help="Processes per line, e.g. video=2,ai=2,writer=2 (default: 1 each).")
@click.option("--stop-timeout", type=click.FloatRange(min=0), default=None,
              envvar="JOBPLATFORM_STOP_TIMEOUT", show_envvar=True,
              help="Seconds a process may take to drain after its SIGTERM; then SIGKILL. "
                   "Default: 30, or VIDEO_STOP_GRACE_S + 10 when that is longer.")
@click.option("--migrate/--no-migrate", default=True, show_default=True,
              help="Apply pending database migrations before starting.")
def run(names: tuple[str, ...], procfile: Path | None, scale: str | None,
        stop_timeout: float | None, migrate: bool) -> None:
    """Run the Procfile's processes (or only NAMES), prefixing and colouring their output.

    Services come from the environment, else the local or embedded stack (stopped again at
    the end if this run started it); their URLs are passed to every process. Ctrl-C or
    SIGTERM sends each process one SIGTERM and waits for it to drain; a second Ctrl-C kills at
    once. A process exiting on its own stops the others and the command exits non-zero. In
    production run the same Procfile under your supervisor (systemd, a Heroku-like platform,
    one Kubernetes Deployment per line).
    """
    from jobplatform.runner import (
        Formation,
        FormationError,
        builtin_formation,
        parse_scale,
        read_procfile,
        stop_timeout_for,
    )
    from jobplatform.stack import session_services

    settings = settings_from_env()
    needed = stop_timeout_for(settings.video.stop_grace_s)
    if stop_timeout is None:
        stop_timeout = needed
    elif stop_timeout < needed:
        click.echo(f"warning: --stop-timeout {stop_timeout:g} s is shorter than "
                   f"VIDEO_STOP_GRACE_S + 10 s ({needed:g} s): an encode in hand may be killed "
                   "and redelivered only after the broker's 60 s heartbeat timeout", err=True)
    if procfile is None and Path("Procfile").is_file():
        procfile = Path("Procfile")
    types = read_procfile(procfile) if procfile is not None else builtin_formation()
    source = str(procfile) if procfile is not None else "the built-in formation"
    if names:
        unknown = sorted(set(names) - {t.name for t in types})
        if unknown:
            raise FormationError(f"no process {', '.join(unknown)} in {source}")
        types = [t for t in types if t.name in names]
    counts = parse_scale(scale, types)
    # Embedded servers started for this run stop with it (unless `jobplatform stack up` holds
    # them); servers found running are left alone.
    with session_services(settings) as services:
        if migrate:
            from writer.migrate import upgrade

            upgrade(services.database_url)
        formation = Formation(types, scale=counts, env=services.environ(),
                              cwd=procfile.resolve().parent if procfile else None,
                              stop_timeout_s=stop_timeout)
        code = formation.run()
    raise click.exceptions.Exit(code)
