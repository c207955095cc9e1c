"""``jobplatform bench backpressure``: Redis memory while PostgreSQL is down under load.

A private PostgreSQL and a private ``redis-server`` (``maxmemory`` set, ``noeviction``), one
writer, and producer threads sending roster chunks as fast as they can through
:class:`~jobplatform.emit.IntentEmitter` with the backlog bound (``--max-bytes``). PostgreSQL is
stopped for ``--duration`` seconds; Redis memory is sampled every second. Then PostgreSQL comes
back, the writer drains the backlog and the run checks that every intent sent was applied.
"""

from __future__ import annotations

import secrets
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import click
import psycopg
import redis
from pydantic import SecretStr

from bench._instance import EmulatedInstance, InstanceConfig
from bench._platform import WriterProcess
from bench._servers import PrivateRedis
from bench._workload import LECTURE_BASE, TENANT_ID, prepare_template, student
from jobplatform.backpressure import BacklogFull, Backpressure
from jobplatform.broker import Queues, build_broker
from jobplatform.emit import IntentEmitter
from jobplatform.settings import AuthSettings, Settings
from schemas import RosterChunk


def run(duration_s: float, *, max_bytes: int, redis_maxmemory_mb: int, producers: int,
        rows_per_chunk: int, drain_timeout_s: float = 600.0, echo: Any = print
        ) -> dict[str, Any]:
    keys = f"bp={secrets.token_hex(32)}"
    namespace = "backpressure"
    settings = Settings(broker_namespace=namespace, auth=AuthSettings(keys=SecretStr(keys)))
    with EmulatedInstance(InstanceConfig(cpu_quota=None)) as pg, \
            PrivateRedis(maxmemory=f"{redis_maxmemory_mb}mb") as server:
        prepare_template(pg.create_database("bp_template"), 1)
        url = pg.create_database("bp_live", template="bp_template")
        writer = WriterProcess(url, server.url, namespace, {
            "AUTH_KEYS": keys, "WRITER_BACKLOG_MAX_BYTES": str(max_bytes)})
        try:
            writer.start(pg.admin_url("bp_live"))
            broker = build_broker(settings, server.url, set_global=False)
            stop = threading.Event()
            bound = Backpressure(broker, max_intents=0, max_bytes=max_bytes, max_wait_s=5.0,
                                 check_s=0.5, sleep=stop.wait)
            emitter = IntentEmitter(broker, Queues.from_settings(settings), backpressure=bound)
            sent: list[uuid.UUID] = []
            errors: list[str] = []
            gave_up = [0]
            lock = threading.Lock()
            rows = tuple(student(n, source_row=n + 2) for n in range(rows_per_chunk))

            def produce() -> None:
                index = 0
                import_id = uuid.uuid4()
                while not stop.is_set():
                    chunk = RosterChunk(tenant_id=TENANT_ID, import_id=import_id,
                                        lecture_id=LECTURE_BASE, chunk_index=index, rows=rows,
                                        occurred_at=datetime.now(UTC))
                    index += 1
                    try:
                        emitter.emit(chunk)
                    except BacklogFull:
                        with lock:
                            gave_up[0] += 1  # an actor's job would be retried: send again
                        continue
                    except redis.RedisError as exc:
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}"[:200])
                        time.sleep(0.5)
                        continue
                    with lock:
                        sent.append(chunk.intent_id)

            echo(f"PostgreSQL down for {duration_s:.0f} s; Redis maxmemory "
                 f"{redis_maxmemory_mb} MiB; backlog bound {max_bytes >> 20} MiB")
            pg.kill(signal.SIGINT)
            threads = [threading.Thread(target=produce, daemon=True) for _ in range(producers)]
            for thread in threads:
                thread.start()
            peak = 0
            samples = []
            started = time.monotonic()
            while time.monotonic() - started < duration_s:
                used = server.used_memory()
                peak = max(peak, used)
                samples.append(used)
                time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join(duration_s + 60)
            in_redis = sum(int(broker.client.hlen(f"{namespace}:{q}.msgs"))
                           for q in Queues.from_settings(settings).writes)
            pg.launch()
            drained_at = time.monotonic()
            applied = 0
            with psycopg.connect(pg.admin_url("bp_live"), autocommit=True) as conn:
                while time.monotonic() - drained_at < drain_timeout_s:
                    row = conn.execute("SELECT count(*) FROM writer_ledger WHERE intent_id"
                                       " = ANY(%s)", (sent,)).fetchone()
                    applied = int(row[0]) if row else 0
                    if applied >= len(sent):
                        break
                    time.sleep(1.0)
            drain_s = time.monotonic() - drained_at
            broker.close()
        finally:
            writer.close()
    return {
        "duration_s": duration_s,
        "redis_maxmemory_bytes": redis_maxmemory_mb << 20,
        "backlog_max_bytes": max_bytes,
        "redis_used_memory_peak_bytes": peak,
        "redis_used_memory_first_bytes": samples[0] if samples else None,
        "redis_used_memory_last_bytes": samples[-1] if samples else None,
        "peak_under_maxmemory": peak < redis_maxmemory_mb << 20,
        "intents_sent": len(sent),
        "intents_in_redis_at_end": in_redis,
        "producer_waits": bound.waits,
        "backlog_full_retries": gave_up[0],
        "send_errors": len(errors),
        "first_errors": errors[:3],
        "applied_after_recovery": applied,
        "drain_s": round(drain_s, 1),
    }


@click.command(name="backpressure")
@click.option("--duration", "duration_s", type=click.FloatRange(min=1), default=300.0,
              show_default=True, help="Seconds PostgreSQL stays down under load.")
@click.option("--max-bytes", type=click.IntRange(min=1), default=32 << 20, show_default=True,
              help="WRITER_BACKLOG_MAX_BYTES of the producers.")
@click.option("--redis-maxmemory-mb", type=click.IntRange(min=8), default=128,
              show_default=True, help="The private Redis's maxmemory (noeviction).")
@click.option("--producers", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--rows-per-chunk", type=click.IntRange(1, 5000), default=500, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(duration_s: float, max_bytes: int, redis_maxmemory_mb: int, producers: int,
            rows_per_chunk: int, as_json: bool) -> None:
    """Redis memory stays under its bound while PostgreSQL is down under load."""
    from jobplatform.cli._common import settings_from_env
    from jobplatform.logging import configure_logging

    # the producers' "backlog over its bound" lines go to stderr, not into the JSON on stdout
    configure_logging(settings_from_env().model_copy(update={"log_level": "WARNING"}))
    result = run(duration_s, max_bytes=max_bytes, redis_maxmemory_mb=redis_maxmemory_mb,
                 producers=producers, rows_per_chunk=rows_per_chunk,
                 echo=lambda text: click.echo(text, err=as_json))
    if as_json:
        from jobplatform.cli._common import echo_json

        echo_json(result)
        return
    for key, value in result.items():
        click.echo(f"{key}: {value}")
