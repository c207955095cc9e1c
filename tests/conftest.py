"""Fixtures for real backends: PostgreSQL, Redis, RabbitMQ and an S3 endpoint.

Tests marked ``brokers`` run once per broker (``broker_kind``: ``redis``, ``rabbitmq``);
``@pytest.mark.brokers("redis")`` on a test narrows it to the brokers named. On RabbitMQ each
test has queues of its own (named after its key prefix), deleted afterwards.

The services come from the environment when configured, else the machine's local servers,
else embedded ones the stack starts (see ``jobplatform.stack``). A migrated template database
is built once per session and cloned for each test that asks for ``database_url``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from jobplatform.settings import Settings, load_settings
from jobplatform.stack import Services, session_services

# Property and fuzz tests: a short, deterministic run by default (CI); `make fuzz` selects the
# long, random one (HYPOTHESIS_PROFILE=fuzz), whose failures hypothesis keeps to replay.
hypothesis_settings.register_profile(
    "ci", max_examples=60, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "3000")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BROKERS = ("redis", "rabbitmq")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("brokers")
    if marker is not None and "broker_kind" in metafunc.fixturenames:
        kinds = marker.args or BROKERS
        metafunc.parametrize("broker_kind", kinds, indirect=True, ids=list(kinds))


@pytest.fixture
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The broker of this test: ``redis`` unless the test is marked ``brokers``."""
    kind = str(getattr(request, "param", "redis"))
    if kind == "rabbitmq" and not _rabbitmq_reachable():
        pytest.skip(f"RabbitMQ is not reachable at {RABBITMQ_URL} (TEST_RABBITMQ_URL)")
    return kind


def _rabbitmq_reachable() -> bool:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(RABBITMQ_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2).close()
    except OSError:
        return False
    return True


def queue_names_for(namespace: str) -> dict[str, str]:
    """The queue settings of a test on RabbitMQ, whose queues are global: its own names."""
    return {"queue_video": f"{namespace}.video", "queue_ai": f"{namespace}.ai",
            "queue_writes_fast": f"{namespace}.writes.fast",
            "queue_writes_bulk": f"{namespace}.writes.bulk"}


def delete_rabbitmq_queues(namespace: str) -> None:
    """Delete the test's queues (every shard's, with their delay and dead-letter queues): those
    ``rabbitmqctl`` lists under the test's prefix, so no other test's queue is touched."""
    import subprocess

    import pika

    out = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name"],
                         capture_output=True, text=True, timeout=60, check=False).stdout
    names = [line.strip() for line in out.splitlines()
             if line.strip().startswith(f"{namespace}.")]
    if not names:
        return
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(queue=name)
    finally:
        connection.close()


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """The session's services; embedded servers this session started stop when it ends."""
    with session_services(load_settings()) as found:
        yield found


@pytest.fixture(scope="session")
def template_database(services: Services) -> Iterator[str]:
    from writer.db import drop_database, with_database
    from writer.migrate import upgrade

    url = with_database(services.database_url, f"jp_template_{os.getpid()}")
    drop_database(url)
    upgrade(url)
    yield url
    drop_database(url)


@pytest.fixture
def database_url(services: Services, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for this test, dropped afterwards."""
    from psycopg import sql

    from writer.db import connect, database_name, drop_database, session_options, with_database

    name = f"jp_test_{uuid.uuid4().hex[:12]}"
    admin = with_database(services.database_url, "postgres")
    with connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(database_name(template_database))
            )
        )
    # Its search path is the writer's schema, as the writer's own sessions have it, so a test
    # names the writer's tables unqualified whichever way it connects.
    url = with_database(services.database_url, name, options=session_options())
    yield url
    drop_database(url)


@pytest.fixture
def redis_url(services: Services) -> str:
    """Redis database 15. Tests keep apart by key prefix (see ``settings``), not by flushing,
    so test sessions running side by side do not wipe each other's queues."""
    return _redis_db(services.redis_url, 15)


def _redis_db(url: str, db: int) -> str:
    base = url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    return f"{base}/{db}"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An in-memory S3 endpoint (moto's server) for the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    namespace = f"jptest-{uuid.uuid4().hex[:8]}"
    yield namespace
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def bus_settings(
    tmp_path: Path, redis_url: str, redis_namespace: str, s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch, broker_kind: str,
) -> Iterator[Settings]:
    """Settings with the broker, Redis and S3 only (its own key prefix, bucket, state dir and,
    on RabbitMQ, queues): for code that needs no database, such as the publish client and the
    actors."""
    for key in ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("S3_BUCKET", f"jp-test-{uuid.uuid4().hex[:10]}")
    extra: dict[str, Any] = {}
    if broker_kind == "rabbitmq":
        extra = {"broker_url": RABBITMQ_URL, **queue_names_for(redis_namespace)}
    yield load_settings(
        redis_url=redis_url,
        broker_namespace=redis_namespace,
        jobplatform_state_dir=tmp_path / "state",
        **extra,
    )
    if broker_kind == "rabbitmq":
        delete_rabbitmq_queues(redis_namespace)


@pytest.fixture
def settings(bus_settings: Settings, database_url: str) -> Settings:
    """``bus_settings`` plus a fresh database of this test's own."""
    return bus_settings.model_copy(update={"database_url": database_url})


@pytest.fixture
def broker(settings: Settings) -> Iterator[Any]:
    from jobplatform.broker import build_broker

    assert settings.redis_url is not None
    broker = build_broker(settings, settings.redis_url)
    yield broker
    if settings.broker_kind == "redis":  # RabbitMQ: bus_settings deletes the test's queues
        broker.flush_all()
    broker.close()
