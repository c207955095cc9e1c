"""``jobplatform watch``: live progress of running jobs and the writer, from Redis."""

from __future__ import annotations

import time

import click

from jobplatform.cli._common import echo_json, settings_from_env


@click.command()
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: the snapshot as JSON.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=0.5, show_default=True,
              envvar="JOBPLATFORM_WATCH_INTERVAL", show_envvar=True,
              help="Seconds between refreshes.")
@click.option("--recent", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="Keep finished jobs on screen this many seconds after their last update.")
def watch(once: bool, as_json: bool, interval: float, recent: float) -> None:
    """Progress bars for running jobs (encodes: percent and speed; roster imports: rows
    parsed and written), queue depths, and the writer's batches/s, lag and commit times."""
    import redis
    from rich.console import Console
    from rich.live import Live

    from jobplatform.embedded import REDIS
    from jobplatform.stack import ensure_services
    from jobplatform.watch import render, take_snapshot

    settings = settings_from_env()
    if not settings.redis_url:
        settings = ensure_services(settings, needs=(REDIS,)).apply(settings)
    assert settings.redis_url is not None
    client = redis.Redis.from_url(settings.redis_url)
    if once:
        snapshot = take_snapshot(client, settings, recent_s=recent)
        if as_json:
            echo_json(snapshot.as_dict())
        else:
            Console().print(render(snapshot))
        return
    console = Console()
    try:
        if not console.is_terminal:
            while True:
                console.print(render(take_snapshot(client, settings, recent_s=recent)))
                time.sleep(interval)
        with Live(console=console, auto_refresh=False) as live:
            while True:
                live.update(render(take_snapshot(client, settings, recent_s=recent)),
                            refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
