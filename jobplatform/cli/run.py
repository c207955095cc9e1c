"""``jobplatform run``: the Procfile's processes in one terminal, for development."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from jobplatform.cli._common import settings_from_env

if TYPE_CHECKING:
    from jobplatform.runner import OnUnhealthy


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
@click.option("--probes/--no-probes", default=True, show_default=True,
              envvar="JOBPLATFORM_PROBES", show_envvar=True,
              help="Give each process a METRICS_PORT and watch its /healthz and /readyz.")
@click.option("--metrics-port-base", type=click.IntRange(0, 65535), default=0,
              envvar="JOBPLATFORM_METRICS_PORT_BASE", show_envvar=True,
              help="METRICS_PORT of the first process, the next ones counting up. "
                   "Default: free ports.")
@click.option("--on-unhealthy", type=click.Choice(["restart", "stop", "report"]),
              default="restart", show_default=True, envvar="JOBPLATFORM_ON_UNHEALTHY",
              show_envvar=True,
              help="What to do with a process whose /healthz fails 3 times in a row.")
@click.option("--ready-timeout", type=click.FloatRange(min=0), default=None,
              envvar="JOBPLATFORM_READY_TIMEOUT", show_envvar=True,
              help="Stop and exit 1 unless every process is ready within this many seconds.")
def run(names: tuple[str, ...], procfile: Path | None, scale: str | None,
        stop_timeout: float | None, migrate: bool, probes: bool, metrics_port_base: int,
        on_unhealthy: OnUnhealthy, ready_timeout: float | None) -> None:
    """Run the Procfile's processes (or only NAMES), prefixing and colouring their output.

    Services come from the environment, else the local or embedded stack (stopped again at
    the end if this run started it); their URLs are passed to every process. Ctrl-C or
    SIGTERM sends each process one SIGTERM and waits for it to drain; a second Ctrl-C kills at
    once. A process exiting on its own stops the others and the command exits non-zero.

    With probes (the default) each process gets its own METRICS_PORT; the runner says when
    each becomes ready (and why it is not) and when the whole formation is, and restarts a
    process whose /healthz stops answering (--on-unhealthy). In production run the same
    Procfile under your supervisor (systemd, a Heroku-like platform, one Kubernetes
    Deployment per line, whose probes use the same /healthz and /readyz).
    """
    from jobplatform.runner import (
        Formation,
        FormationError,
        Probes,
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
        watch = Probes(port_base=metrics_port_base, on_unhealthy=on_unhealthy) if probes \
            else None
        if ready_timeout is not None and watch is None:
            raise click.UsageError("--ready-timeout needs the probes (drop --no-probes)")
        formation = Formation(types, scale=counts, env=services.environ(),
                              cwd=procfile.resolve().parent if procfile else None,
                              stop_timeout_s=stop_timeout, probes=watch)
        code = formation.run(ready_timeout_s=ready_timeout)
    raise click.exceptions.Exit(code)
