"""``jobplatform bench metrics``: the writer's metrics endpoint scraped through a real run.

On an uncapped PostgreSQL of its own, a feeder queues status changes at a steady rate and
roster chunks in bursts while one writer applies them; its ``/metrics`` is scraped every
``--scrape-s`` and the figures (lag, backlog, intents applied per second, commit time) are
charted to ``docs/ops/metrics.png`` and saved as ``docs/ops/metrics.json``.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import click

from bench._harness import TEMPLATE
from bench._instance import EmulatedInstance, InstanceConfig
from bench._platform import broker_namespace
from bench._workload import TENANT_ID, prepare_template
from bench.ceiling import roster_chunks
from jobplatform.broker import Queues, build_broker
from jobplatform.emit import IntentEmitter
from jobplatform.settings import PROJECT_ROOT, Settings
from schemas.intents import VideoProcessing
from writer.engine import Writer
from writer.metrics import WriterMetrics

OUT = PROJECT_ROOT / "docs" / "ops"


def _scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return out


def _feed(emitter: IntentEmitter, seconds: float, rate: float, burst_rows: int,
          stop: threading.Event) -> None:
    start = time.monotonic()
    sent = 0
    next_burst = start + seconds / 4
    while not stop.is_set() and time.monotonic() - start < seconds:
        due = int((time.monotonic() - start) * rate)
        while sent < due:
            emitter.emit(VideoProcessing(tenant_id=TENANT_ID, video_id=uuid.uuid4(),
                                         occurred_at=datetime.now(UTC)))
            sent += 1
        if time.monotonic() >= next_burst:
            for intent in roster_chunks(burst_rows, 500, 1):
                emitter.emit(intent)
            next_burst += seconds / 4
        time.sleep(0.02)


def run(settings: Settings, redis_url: str, *, seconds: float, rate: float, burst_rows: int,
        scrape_s: float) -> list[dict[str, float]]:
    samples: list[dict[str, float]] = []
    with EmulatedInstance(InstanceConfig(cpu_quota=None, max_connections=100)) as instance:
        prepare_template(instance.create_database(TEMPLATE), 20)
        url = instance.create_database("bench_metrics", template=TEMPLATE)
        with broker_namespace(redis_url, "bench-metrics") as namespace, \
                tempfile.TemporaryDirectory(prefix="jobplatform-metrics-") as state:
            run_settings = settings.model_copy(update={
                "broker_namespace": namespace, "database_url": url,
                "jobplatform_state_dir": Path(state)})
            broker = build_broker(run_settings, redis_url, set_global=False)
            queues = Queues.from_settings(run_settings)
            metrics = WriterMetrics()
            writer = Writer(run_settings.writer, database_url=url, broker=broker,
                            queues=queues, hooks=[metrics])
            server = metrics.serve(writer, port=0, host="127.0.0.1")
            stop = threading.Event()
            feeder = threading.Thread(target=_feed, args=(
                IntentEmitter(broker, queues), seconds, rate, burst_rows, stop), daemon=True)
            loop = threading.Thread(target=writer.run, name="writer")
            try:
                with writer:
                    loop.start()
                    feeder.start()
                    start = time.monotonic()
                    while time.monotonic() - start < seconds + 5:
                        sample = _scrape(server.port)
                        sample["t"] = time.monotonic() - start
                        samples.append(sample)
                        time.sleep(scrape_s)
                    stop.set()
                    feeder.join()
                    writer.stop()
                    loop.join()
            finally:
                server.close()
                broker.close()
        instance.drop_database("bench_metrics")
    return samples


def plot(samples: list[dict[str, float]], out: Path = OUT) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    t = [s["t"] for s in samples]

    def series(name: str) -> list[float]:
        return [s.get(name, 0.0) for s in samples]

    applied = series("jobplatform_writer_intents_applied_total")
    rate = [0.0] + [(b - a) / max(t1 - t0, 1e-6)
                    for a, b, t0, t1 in zip(applied, applied[1:], t, t[1:], strict=False)]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(t, rate, color="#2471a3")
    axes[0].set_ylabel("intents applied/s")
    for queue in ("writes.fast", "writes.bulk"):
        axes[1].plot(t, [s.get(f"jobplatform_writer_backlog{{queue={queue},state=ready}}", 0)
                         + s.get(f"jobplatform_writer_backlog{{queue={queue},state=unacked}}", 0)
                         for s in samples], label=queue)
    axes[1].set_ylabel("backlog (messages)")
    axes[1].legend(loc="upper right")
    axes[2].plot(t, [v * 1000 for v in series("jobplatform_writer_lag_seconds")],
                 color="#c0392b")
    axes[2].set_ylabel("lag (ms)")
    axes[3].plot(t, [v * 1000 for v in series("jobplatform_writer_commit_p99_seconds")],
                 label="commit p99 (ms)")
    axes[3].plot(t, [v * 100 for v in series("jobplatform_writer_db_share")],
                 label="db share (%)")
    axes[3].legend(loc="upper right")
    axes[3].set_xlabel("seconds (scraped from /metrics)")
    fig.suptitle("The writer's /metrics through a run: steady status changes, roster bursts")
    fig.tight_layout()
    path = out / "metrics.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@click.command(name="metrics")
@click.option("--seconds", type=click.FloatRange(min=2), default=30.0, show_default=True)
@click.option("--rate", type=click.FloatRange(min=1), default=200.0, show_default=True,
              help="Status changes queued per second.")
@click.option("--burst-rows", type=click.IntRange(min=500), default=20_000, show_default=True,
              help="Roster rows queued at once, every quarter of the run.")
@click.option("--scrape-s", type=click.FloatRange(min=0.05), default=0.5, show_default=True)
def command(seconds: float, rate: float, burst_rows: int, scrape_s: float) -> None:
    """Scrape the writer's metrics through a run; chart them to docs/ops/metrics.png."""
    from jobplatform.cli._common import settings_from_env
    from jobplatform.logging import configure_logging
    from jobplatform.stack import ensure_services

    settings = settings_from_env()
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    services = ensure_services(settings)
    settings = services.apply(settings)
    samples = run(settings, services.redis_url, seconds=seconds, rate=rate,
                  burst_rows=burst_rows, scrape_s=scrape_s)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "metrics.json").write_text(json.dumps(samples) + "\n")
    click.echo(f"{len(samples)} scrapes; chart {plot(samples)}")
