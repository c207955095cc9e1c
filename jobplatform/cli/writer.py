"""``jobplatform writer``: the one process that applies write intents to PostgreSQL."""

from __future__ import annotations

import json
import signal
import sys
from types import FrameType
from typing import Any

import click

from jobplatform.cli._common import echo_json, settings_from_env


@click.group(invoke_without_command=True)
@click.option("--intent-log/--no-intent-log", envvar="WRITER_INTENT_LOG", show_envvar=True,
              default=True, show_default=True,
              help="Record applied intents in the write-intent log (WRITER_LOG_DIR).")
@click.option("--shard", "shard", envvar="WRITER_SHARD", show_envvar=True, default=None,
              metavar="K/N", help="Apply shard K of N: its lanes (writes.fast.K, writes.bulk.K)"
              " under its own lock; producers route tenants to N shards (WRITER_SHARDS).")
@click.pass_context
def writer(ctx: click.Context, intent_log: bool, shard: str | None) -> None:
    """Run the writer until SIGTERM/SIGINT (a second one started waits as a hot standby).

    Checks the write-intent log's folder (in production it must be set: WRITER_LOG_DIR or
    JOBPLATFORM_STATE_DIR), resolves the services, upgrades the schema (waiting as a standby,
    retrying, while PostgreSQL is down), then consumes writes.fast and writes.bulk.
    One SIGTERM stops it gracefully: the batch in hand is committed and acked (or put back on
    its queue when the database is down), the lock is released, the exit code is 0.
    """
    if ctx.invoked_subcommand is not None:
        return
    from jobplatform.auth import keyring_for
    from jobplatform.broker import build_broker
    from jobplatform.embedded import POSTGRES, REDIS, S3
    from jobplatform.logging import get_logger
    from jobplatform.settings import check_intent_log_dir
    from jobplatform.stack import ensure_services
    from writer.engine import IntentLogWriter, Writer
    from writer.engine.writer import shard_of_settings
    from writer.migrate import upgrade_when_up

    settings = settings_from_env()
    if shard is not None:
        settings = settings.model_copy(
            update={"writer": settings.writer.model_copy(update={"shard": shard})})
    spec = shard_of_settings(settings)  # a bad K/N stops here, before any connection
    # Before any connection: a production writer needs its message keys ...
    keyring_for(settings)
    if intent_log:
        # ... and must not log inside the package.
        check_intent_log_dir(settings)
    # S3 only to ship the log's segments (WRITER_LOG_S3_PREFIX).
    needs = (POSTGRES, REDIS, S3) if intent_log and settings.writer.log_s3_prefix \
        else (POSTGRES, REDIS)
    settings = ensure_services(settings, needs=needs).apply(settings)
    assert settings.database_url is not None
    assert settings.redis_url is not None
    broker = build_broker(settings, settings.redis_url, set_global=False)
    log_writer: IntentLogWriter | None = None
    if intent_log:
        from writer.intentlog import IntentLog

        log_writer = IntentLog.from_settings(settings, shard=spec)
    hooks = []
    if settings.metrics_port:
        from writer.metrics import WriterMetrics

        hooks.append(WriterMetrics())
    instance = Writer.from_settings(settings, broker, log_writer=log_writer, hooks=hooks,
                                    shard=spec)
    server = hooks[0].serve(instance, port=settings.metrics_port) if hooks else None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        get_logger("writer").info("stop requested", signal=signal.Signals(signum).name)
        instance.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        instance.set_role("standby")
        if upgrade_when_up(settings.database_url, stopping=lambda: instance.stopping,
                           wait=instance.wait):
            with instance:
                instance.run()
    finally:
        if server is not None:
            server.close()
        broker.close()


@writer.command()
@click.option("--shard", "shard", type=int, default=None, metavar="K",
              help="The active writer of shard K (when WRITER_SHARDS is above 1).")
def stats(shard: int | None) -> None:
    """Print the active writer's latest stats (published to Redis every interval)."""
    import redis

    from jobplatform.embedded import REDIS
    from jobplatform.progress import writer_stats_key
    from jobplatform.stack import ensure_services

    settings = settings_from_env()
    services = ensure_services(settings, needs=(REDIS,))
    client = redis.Redis.from_url(services.redis_url)
    try:
        raw = client.get(writer_stats_key(settings.broker_namespace, shard))
    finally:
        client.close()
    if raw is None:
        click.echo("no writer has published stats (none active, or older than 3 intervals)",
                   err=True)
        sys.exit(1)
    echo_json(json.loads(raw))


@writer.command()
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="Give up (exit 1) after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the lanes' backlog as JSON.")
def drain(timeout_s: float, as_json: bool) -> None:
    """Wait until every shard's lanes (WRITER_SHARDS) are empty: step 2 of resharding.

    Run it after the producers stopped sending and while the writers still run; exit 0 once
    no lane holds a message, 1 at the timeout. Then stop the writers, run it once more (a
    stopped writer's held messages go back to its lanes), change WRITER_SHARDS, and start the
    new shards' writers.
    """
    import time

    from jobplatform.broker import Queues, build_broker, lane_backlog
    from jobplatform.embedded import REDIS
    from jobplatform.stack import ensure_services

    settings = settings_from_env()
    settings = ensure_services(settings, needs=(REDIS,)).apply(settings)
    assert settings.redis_url is not None
    broker = build_broker(settings, settings.redis_url, set_global=False)
    queues = Queues.from_settings(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            backlog = lane_backlog(broker, queues)
            left = sum(backlog.values())
            if left == 0 or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
    finally:
        broker.close()
    if as_json:
        echo_json({"drained": left == 0, "shards": queues.shards.count, "lanes": backlog})
    else:
        for queue, count in backlog.items():
            click.echo(f"{queue}: {count}")
        click.echo("drained" if left == 0 else f"not drained: {left} messages left",
                   err=left != 0)
    if left:
        sys.exit(1)

@writer.group()
def reset() -> None:
    """Put a wedged entity back so that the next honest intent applies (after a forged
    status, say). Each checks the tenant and changes one row."""


def _reset_connection() -> Any:
    from jobplatform.embedded import POSTGRES
    from jobplatform.stack import ensure_services
    from writer.db import connect
    from writer.kinds.tables import activate
    from writer.migrate import configured_tables

    settings = settings_from_env()
    activate(configured_tables())
    services = ensure_services(settings, needs=(POSTGRES,))
    return connect(services.database_url, autocommit=True, application_name="jobplatform-cli")


@reset.command("video")
@click.argument("video_id", type=click.UUID)
@click.option("--tenant", "tenant_id", type=int, required=True, help="The video's tenant.")
@click.option("--attempt", type=click.IntRange(1), required=True,
              help="The attempt the next honest intents carry (the API's attempt counter).")
def reset_video(video_id: Any, tenant_id: int, attempt: int) -> None:
    """Reset VIDEO_ID to attempt N with nothing seen yet."""
    from writer.reset import reset_video as run

    with _reset_connection() as conn:
        if not run(conn, video_id, tenant_id, attempt):
            click.echo(f"no video {video_id} of tenant {tenant_id}", err=True)
            sys.exit(1)
    click.echo(f"video {video_id} reset to attempt {attempt}")


@reset.command("import")
@click.argument("import_id", type=click.UUID)
@click.option("--tenant", "tenant_id", type=int, required=True, help="The import's tenant.")
def reset_import(import_id: Any, tenant_id: int) -> None:
    """Reset IMPORT_ID's status below queued (a done import is left alone)."""
    from writer.reset import reset_import as run

    with _reset_connection() as conn:
        if not run(conn, import_id, tenant_id):
            click.echo(f"no unfinished import {import_id} of tenant {tenant_id}", err=True)
            sys.exit(1)
    click.echo(f"import {import_id} reset")
