"""``jobplatform stack``: the local services, found or started embedded."""

from __future__ import annotations

import shlex

import click

from jobplatform.cli._common import echo_json, settings_from_env


@click.group()
def stack() -> None:
    """PostgreSQL, Redis and S3: configured, local, or embedded under the state folder."""


@stack.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--env", "as_env", is_flag=True,
              help='Print `export VAR=value` lines: eval "$(jobplatform stack up --env)".')
def up(as_json: bool, as_env: bool) -> None:
    """Find or start every service and print where they are (idempotent)."""
    from jobplatform.stack import claim_services, ensure_services

    settings = settings_from_env()
    services = ensure_services(settings)
    if services.embedded:
        claim_services(settings.jobplatform_state_dir)
    if as_env:
        for key, value in services.environ().items():
            click.echo(f"export {key}={shlex.quote(value)}")
        return
    if as_json:
        echo_json({"environ": services.environ(), "embedded": list(services.embedded),
                   "started": list(services.started),
                   "state_dir": str(settings.jobplatform_state_dir)})
        return
    urls = {"postgres": services.database_url, "redis": services.redis_url,
            "s3": services.s3_endpoint_url or f"AWS ({services.s3_region})"}
    for name, url in urls.items():
        if name in services.started:
            how = "embedded, started"
        elif name in services.embedded:
            how = "embedded, already running"
        else:
            how = "configured or local"
        click.echo(f"{name:<9} {url}  ({how})")
    if services.embedded:
        click.echo(f"state folder: {settings.jobplatform_state_dir}"
                   " (stop with `jobplatform stack down`)")


@stack.command()
@click.option("--purge", is_flag=True,
              help="Also delete the embedded servers' data (the embedded databases).")
def down(purge: bool) -> None:
    """Stop the embedded servers the stack started; never anything else."""
    from jobplatform.stack import stop_services

    settings = settings_from_env()
    stopped = stop_services(settings.jobplatform_state_dir, purge=purge)
    for server in stopped:
        click.echo(f"stopped {server.name} (pid {server.pid}, {server.url})")
    if not stopped:
        click.echo("no embedded server was running")
    if purge:
        click.echo("embedded data deleted")


@stack.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def status(as_json: bool) -> None:
    """Each service, where it comes from, its URL and whether it answers; starts nothing."""
    from dataclasses import asdict

    from jobplatform.stack import stack_status

    rows = stack_status(settings_from_env())
    if as_json:
        echo_json([asdict(row) for row in rows])
        return
    for row in rows:
        state = {True: "up", False: "down", None: "not checked"}[row.up]
        source = row.source if row.in_use else f"{row.source} (not in use)"
        pid = f"  pid {row.pid}" if row.pid else ""
        click.echo(f"{row.name:<9} {source:<24} {state:<12} {row.url or '-'}{pid}")
