"""Metrics and health endpoints: one small HTTP server per process, Prometheus text format.

Every process kind serves, on ``METRICS_PORT`` (0: none):

- ``/metrics``: Prometheus exposition;
- ``/healthz``: liveness (200 while the process answers);
- ``/readyz``: readiness (200 or 503 with the reason), the process kind decides.

Actor workers are forked by dramatiq: :class:`ActorMetrics` counts in each worker process into
files under ``<state dir>/metrics/<port>`` (prometheus-client's multiprocess mode) and one fork,
:func:`serve_actor_metrics`, serves their sum. Queue depths are read from Redis by
:func:`queue_depths`, which ``jobplatform watch`` uses too.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware

from jobplatform.settings import Settings

__all__ = [
    "ActorMetrics",
    "MetricsServer",
    "QueueDepth",
    "metrics_dir",
    "oldest_ready_age_ms",
    "queue_depths",
    "serve_actor_metrics",
]

#: ``(ready, reason)``: what ``/readyz`` answers.
Readiness = Callable[[], tuple[bool, str]]


# --- queue depths, as dramatiq's Redis broker keeps them --------------------------------------


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Messages of one queue: waiting, held by consumers, delayed (``.DQ``), dead (``.XQ``)."""

    queue: str
    ready: int
    unacked: int
    """Prefetched or in progress: taken by a consumer, not yet acknowledged."""
    delayed: int
    """Waiting in the delay queue (retries with backoff, ``eta`` messages), held ones included."""
    dead: int
    """In dramatiq's dead-letter set (kept a week, without a reason)."""

    @property
    def waiting(self) -> int:
        """Everything not yet done: ready, held and delayed."""
        return self.ready + self.unacked + self.delayed


def _held(client: redis.Redis, namespace: str, queue: str) -> int:
    total = 0
    for key in client.scan_iter(match=f"{namespace}:__acks__.*.{queue}", count=500):
        total += int(client.scard(key))
    return total


def queue_depths(client: redis.Redis, namespace: str, queues: Iterable[str]) -> list[QueueDepth]:
    """The depth of each queue, read from the broker's keys (a few round trips per queue)."""
    out = []
    for queue in queues:
        pipe = client.pipeline(transaction=False)
        pipe.llen(f"{namespace}:{queue}")
        pipe.llen(f"{namespace}:{queue}.DQ")
        pipe.zcard(f"{namespace}:{queue}.XQ")
        ready, delayed, dead = (int(v) for v in pipe.execute())
        held = _held(client, namespace, queue)
        held_delayed = _held(client, namespace, f"{queue}.DQ")
        out.append(QueueDepth(queue, ready, held, delayed + held_delayed, dead))
    return out


def oldest_ready_age_ms(client: redis.Redis, namespace: str, queue: str,
                        now_ms: float | None = None) -> float:
    """Age of the message at the head of ``queue`` (the next one handed out); 0 when empty."""
    head = client.lindex(f"{namespace}:{queue}", 0)
    if head is None:
        return 0.0
    raw = client.hget(f"{namespace}:{queue}.msgs", head)
    if raw is None:
        return 0.0
    try:
        stamp = float(json.loads(raw)["message_timestamp"])
    except (ValueError, KeyError, TypeError):
        return 0.0
    now = time.time() * 1000 if now_ms is None else now_ms
    return max(0.0, now - stamp)


# --- the HTTP server ----------------------------------------------------------------------------


class _QuietServer(ThreadingHTTPServer):
    """A client that gave up before the answer (a probe's or a scrape's timeout) is no error."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a daemon thread.

    ``exposition`` returns the body of ``/metrics`` (Prometheus text); ``ready`` answers
    ``/readyz``. Port 0 picks a free port (see :attr:`port`).
    """

    def __init__(self, port: int, *, exposition: Callable[[], bytes], ready: Readiness,
                 host: str = "0.0.0.0") -> None:  # noqa: S104 - probes come from outside
        self._exposition = exposition
        self._ready = ready
        handler = self._handler()
        self._httpd = _QuietServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST

                    try:
                        body, status, kind = server._exposition(), 200, CONTENT_TYPE_LATEST
                    except Exception as exc:
                        body, status, kind = f"{exc}\n".encode(), 500, "text/plain"
                elif path == "/healthz":
                    body, status, kind = b"ok\n", 200, "text/plain"
                elif path == "/readyz":
                    try:
                        ready, reason = server._ready()
                    except Exception as exc:
                        ready, reason = False, str(exc)
                    body, status, kind = f"{reason}\n".encode(), 200 if ready else 503, \
                        "text/plain"
                else:
                    body, status, kind = b"not found: /metrics /healthz /readyz\n", 404, \
                        "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


# --- actor workers ------------------------------------------------------------------------------


def metrics_dir(settings: Settings) -> Path:
    """Where forked worker processes keep their counters (one folder per port)."""
    return settings.jobplatform_state_dir / "metrics" / str(settings.metrics_port)


def prepare_multiprocess(settings: Settings) -> Path:
    """Point prometheus-client at :func:`metrics_dir`; call before it is first imported."""
    path = metrics_dir(settings)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop_dead_files(path: Path) -> None:
    """Remove the files of processes that are gone (a previous run's counters)."""
    for file in path.glob("*.db"):
        pid = file.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            file.unlink(missing_ok=True)


class ActorMetrics(Middleware):
    """Job counts, failures, retries, durations and jobs in progress per queue and actor.

    Counts in each forked worker process (multiprocess mode); :func:`serve_actor_metrics`, one
    of the worker's forks, serves them on ``METRICS_PORT``.
    """

    def __init__(self, settings: Settings) -> None:
        prepare_multiprocess(settings)
        from prometheus_client import Counter, Gauge, Histogram

        labels = ("queue", "actor")
        self.jobs = Counter("jobplatform_actor_jobs", "Jobs processed (any outcome).", labels)
        self.failures = Counter("jobplatform_actor_failures",
                                "Jobs that raised (a retry may follow).", labels)
        self.retries = Counter("jobplatform_actor_retries", "Jobs sent back for a retry.", labels)
        self.dead = Counter("jobplatform_actor_dead_letters",
                            "Jobs sent to dramatiq's dead-letter set.", labels)
        self.in_progress = Gauge("jobplatform_actor_in_progress", "Jobs being processed.",
                                 labels, multiprocess_mode="livesum")
        self.duration = Histogram(
            "jobplatform_actor_duration_seconds", "Time a job took.", labels,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
        self._started: dict[str, float] = {}

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [serve_actor_metrics]

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._started[message.message_id] = time.monotonic()
        self.in_progress.labels(message.queue_name, message.actor_name).inc()

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        labels = (message.queue_name, message.actor_name)
        started = self._started.pop(message.message_id, None)
        if started is not None:
            self.in_progress.labels(*labels).dec()
            self.duration.labels(*labels).observe(time.monotonic() - started)
        self.jobs.labels(*labels).inc()
        if exception is not None:
            self.failures.labels(*labels).inc()

    after_skip_message = after_process_message

    def after_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self.dead.labels(message.queue_name, message.actor_name).inc()

    def before_delay_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self.retries.labels(message.queue_name, message.actor_name).inc()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def serve_actor_metrics() -> int:
    """The exposition fork of an actor worker: the sum of its processes' counters, the queue
    depths, ``/healthz`` and ``/readyz`` (ready while Redis answers)."""
    from jobplatform.embedded import REDIS
    from jobplatform.settings import get_settings
    from jobplatform.stack import ensure_services

    settings = get_settings()
    path = prepare_multiprocess(settings)
    _drop_dead_files(path)
    redis_url = settings.redis_url or ensure_services(settings, needs=(REDIS,)).redis_url
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueCollector(client, settings.broker_namespace,
                                     (settings.queue_video, settings.queue_ai)))

    def ready() -> tuple[bool, str]:
        try:
            client.ping()
        except redis.RedisError as exc:
            return False, f"redis: {exc}"
        return True, "ok"

    MetricsServer(settings.metrics_port, exposition=lambda: generate_latest(registry),
                  ready=ready).serve_forever()
    return 0


class QueueCollector:
    """``jobplatform_queue_messages{queue, state}`` read from Redis at each scrape."""

    def __init__(self, client: redis.Redis, namespace: str, queues: Iterable[str]) -> None:
        self.client = client
        self.namespace = namespace
        self.queues = tuple(queues)

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("jobplatform_queue_messages",
                                   "Messages per queue and state (ready, unacked, delayed, dead).",
                                   labels=("queue", "state"))
        for depth in queue_depths(self.client, self.namespace, self.queues):
            for state in ("ready", "unacked", "delayed", "dead"):
                family.add_metric((depth.queue, state), getattr(depth, state))
        yield family
