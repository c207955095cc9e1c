"""Fixtures for the writer's consumer tests: a TCP proxy that cuts PostgreSQL, writer runners."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.redis import RedisBroker
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench._servers import TcpProxy
from jobplatform.auth import Keyring, development_keys_file, keyring_for
from jobplatform.broker import Queues
from jobplatform.emit import IntentEmitter
from jobplatform.kinds import Registry
from jobplatform.settings import Settings
from schemas import BaseIntent
from writer.db import connect
from writer.engine import Hooks, IntentLogWriter, Writer


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def query(url: str, statement: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    with connect(url, autocommit=True, application_name="jobplatform-test") as conn:
        return conn.execute(statement, tuple(params)).fetchall()


def scalar(url: str, statement: str, params: Iterable[Any] = ()) -> Any:
    return query(url, statement, params)[0][0]


def emit_all(broker: Any, settings: Settings, intents: Iterable[BaseIntent],
             registry: Registry | None = None) -> int:
    emitter = IntentEmitter(broker, Queues.from_settings(settings), registry)
    n = 0
    for intent in intents:
        emitter.emit(intent)
        n += 1
    return n


def held_messages(broker: Any, queue: str) -> int:
    """Messages of ``queue`` fetched by some consumer and not acked (neither queued nor done)."""
    if not isinstance(broker, RedisBroker):
        return rabbitmq_unacked(queue)
    client = broker.client
    waiting = client.llen(f"{broker.namespace}:{queue}")
    stored = client.hlen(f"{broker.namespace}:{queue}.msgs")
    return int(stored) - int(waiting)


def rabbitmq_unacked(queue: str) -> int:
    """RabbitMQ's count of ``queue``'s delivered and unacked messages (``rabbitmqctl``)."""
    out = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name",
                          "messages_unacknowledged"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for line in out.splitlines():
        name, _, count = line.rpartition("\t")
        if name == queue:
            return int(count)
    return 0


@pytest.fixture
def pg_proxy(database_url: str) -> Iterator[TcpProxy]:
    params = conninfo_to_dict(database_url)
    proxy = TcpProxy((str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)))
    yield proxy
    proxy.close()


def proxied_url(database_url: str, proxy: TcpProxy) -> str:
    return make_conninfo(database_url, host="127.0.0.1", port=proxy.port)


class WriterThread:
    """A :class:`Writer` running :meth:`Writer.run` in a thread of this process."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self.writer:
                self.writer.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> WriterThread:
        self.thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        self.writer.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "writer did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def start_writer(settings: Settings) -> Iterator[Callable[..., WriterThread]]:
    """Start writers in threads, each with its own broker (its own consumer identity)."""
    from jobplatform.broker import build_broker

    started: list[tuple[WriterThread, Any]] = []

    def start(*, database_url: str | None = None, registry: Registry | None = None,
              hooks: Sequence[Hooks] = (), log_writer: IntentLogWriter | None = None,
              keyring: Keyring | None = None, **writer_settings: Any) -> WriterThread:
        assert settings.redis_url is not None
        assert settings.database_url is not None
        broker = build_broker(settings, settings.redis_url, set_global=False)
        ws = settings.writer.model_copy(update=writer_settings)
        writer = Writer(ws, database_url=database_url or settings.database_url, broker=broker,
                        queues=Queues.from_settings(settings), standby_poll_s=0.2,
                        heartbeat_s=1.0, registry=registry, hooks=hooks,
                        log_writer=log_writer, keyring=keyring)
        runner = WriterThread(writer).start()
        started.append((runner, broker))
        return runner

    yield start
    for runner, broker in started:
        if runner.thread.is_alive():
            runner.stop()
        broker.close()


class WriterProcess:
    """``python -m jobplatform writer`` in a subprocess, pointed at the test's services."""

    def __init__(self, settings: Settings, tmp_path: Path, name: str,
                 env: dict[str, str] | None = None,
                 argv: Sequence[str] = ("-m", "jobplatform", "writer")) -> None:
        assert settings.database_url is not None
        assert settings.redis_url is not None
        self.log_path = tmp_path / f"{name}.log"
        keyring_for(settings)  # the test's development key, shared with the process
        environ = {
            "AUTH_KEYS_FILE": str(development_keys_file(settings)),
            **os.environ,
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "BROKER_NAMESPACE": settings.broker_namespace,
            **({"BROKER_URL": settings.broker_url} if settings.broker_url else {}),
            "QUEUE_WRITES_FAST": settings.queue_writes_fast,
            "QUEUE_WRITES_BULK": settings.queue_writes_bulk,
            "QUEUE_VIDEO": settings.queue_video,
            "QUEUE_AI": settings.queue_ai,
            "JOBPLATFORM_STATE_DIR": str(tmp_path / f"state-{name}"),
            "LOG_FORMAT": "json",
            "WRITER_STATS_INTERVAL_S": "1",
            **(env or {}),
        }
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *argv], env=environ,
            stdout=self._log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2],
        )

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def has_logged(self, text: str) -> bool:
        return text in self.output()

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def writer_process(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., WriterProcess]]:
    started: list[WriterProcess] = []

    def start(name: str, argv: Sequence[str] = ("-m", "jobplatform", "writer"),
              **env: str) -> WriterProcess:
        process = WriterProcess(settings, tmp_path, name, env, argv)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()
