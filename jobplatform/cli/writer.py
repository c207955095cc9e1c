"""``jobplatform writer``: the one process that applies write intents to PostgreSQL."""

from __future__ import annotations

import json
import signal
import sys
from types import FrameType

import click

from jobplatform.cli._common import echo_json, settings_from_env


@click.group(invoke_without_command=True)
@click.option("--intent-log/--no-intent-log", envvar="WRITER_INTENT_LOG", show_envvar=True,
              default=True, show_default=True,
              help="Record applied intents in the write-intent log (WRITER_LOG_DIR).")
@click.pass_context
def writer(ctx: click.Context, intent_log: bool) -> None:
    """Run the writer until SIGTERM/SIGINT (a second one started waits as a hot standby).

    Checks the write-intent log's folder (in production it must be set: WRITER_LOG_DIR or
    JOBPLATFORM_STATE_DIR), resolves the services, upgrades the schema, then consumes
    writes.fast and writes.bulk.
    One SIGTERM stops it gracefully: the batch in hand is committed and acked (or put back on
    its queue when the database is down), the lock is released, the exit code is 0.
    """
    if ctx.invoked_subcommand is not None:
        return
    from jobplatform.auth import keyring_for
    from jobplatform.broker import build_broker
    from jobplatform.logging import get_logger
    from jobplatform.settings import check_intent_log_dir
    from jobplatform.stack import ensure_services
    from writer.engine import IntentLogWriter, Writer
    from writer.migrate import upgrade

    settings = settings_from_env()
    # Before any connection: a production writer needs its message keys ...
    keyring_for(settings)
    if intent_log:
        # ... and must not log inside the package.
        check_intent_log_dir(settings)
    settings = ensure_services(settings).apply(settings)
    assert settings.database_url is not None
    assert settings.redis_url is not None
    upgrade(settings.database_url)
    broker = build_broker(settings, settings.redis_url, set_global=False)
    log_writer: IntentLogWriter | None = None
    if intent_log:
        from writer.intentlog import IntentLog

        log_writer = IntentLog.from_settings(settings)
    hooks = []
    if settings.metrics_port:
        from writer.metrics import WriterMetrics

        hooks.append(WriterMetrics())
    instance = Writer.from_settings(settings, broker, log_writer=log_writer, hooks=hooks)
    server = hooks[0].serve(instance, port=settings.metrics_port) if hooks else None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        get_logger("writer").info("stop requested", signal=signal.Signals(signum).name)
        instance.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with instance:
            instance.run()
    finally:
        if server is not None:
            server.close()
        broker.close()


@writer.command()
def stats() -> None:
    """Print the active writer's latest stats (published to Redis every interval)."""
    import redis

    from jobplatform.progress import writer_stats_key
    from jobplatform.stack import ensure_services

    settings = settings_from_env()
    services = ensure_services(settings)
    client = redis.Redis.from_url(services.redis_url)
    try:
        raw = client.get(writer_stats_key(settings.broker_namespace))
    finally:
        client.close()
    if raw is None:
        click.echo("no writer has published stats (none active, or older than 3 intervals)",
                   err=True)
        sys.exit(1)
    echo_json(json.loads(raw))
