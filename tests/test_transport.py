"""Transport security: Redis with AUTH over TLS (``rediss://``), PostgreSQL with
``sslmode=verify-full``, S3 over TLS with a custom CA bundle. Each against a private server the
session starts with a certificate authority made here."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from jobplatform.auth import keyring_of
from jobplatform.broker import Queues, build_broker
from jobplatform.emit import IntentEmitter
from jobplatform.errors import ConfigError
from jobplatform.publish import Publisher
from jobplatform.s3 import ensure_bucket, s3_client
from jobplatform.settings import Settings, load_settings
from schemas import EncodeVideo
from schemas.intents import decode_intent
from tests.transport import (
    Authority,
    TlsPostgres,
    TlsRedis,
    make_authority,
    tls_postgres,
    tls_redis,
)
from tests.writer.conftest import WriterThread, wait_until
from tests.writer.intent_factory import TENANT, queued
from writer.db import connect
from writer.engine import Writer
from writer.migrate import upgrade


@pytest.fixture(scope="session")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return make_authority(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def secure_redis(authority: Authority, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[TlsRedis]:
    with tls_redis(authority, tmp_path_factory.mktemp("tls-redis")) as server:
        yield server


@pytest.fixture(scope="session")
def secure_postgres(authority: Authority) -> Iterator[TlsPostgres]:
    with tls_postgres(authority) as server:
        yield server


def _pg_connect(url: str) -> psycopg.Connection[Any]:
    deadline = time.monotonic() + 30
    while True:
        try:
            return connect(url, autocommit=True)
        except psycopg.OperationalError as exc:
            if "starting up" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _messages(client: redis.Redis, namespace: str, queue: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(body) for body in client.hvals(f"{namespace}:{queue}.msgs")]


# --- Redis ---------------------------------------------------------------------------------

def test_publish_over_tls_with_a_password(
    bus_settings: Settings, secure_redis: TlsRedis, authority: Authority
) -> None:
    # Given the platform configured with REDIS_URL=rediss://:password@...?ssl_ca_certs=<CA>
    url = secure_redis.url(authority.ca)
    settings = bus_settings.model_copy(update={"redis_url": url})
    job = EncodeVideo(tenant_id=TENANT, video_id=uuid.uuid4(),
                      source_key=f"tenants/{TENANT}/uploads/u/clip.mp4")
    # When a job is published through it
    with Publisher(settings) as publisher:
        publisher.publish(job)
        assert publisher.status(job).state == "queued"
    # Then the job and its first status lie in the TLS server's queues, signed
    client = redis.Redis.from_url(url)
    try:
        [sent] = _messages(client, settings.broker_namespace, settings.queue_video)
        [status] = _messages(client, settings.broker_namespace, settings.queue_writes_fast)
    finally:
        client.close()
    assert sent["args"][0]["video_id"] == str(job.video_id)
    assert decode_intent(status["args"][0]).kind == "video.queued"
    assert sent["options"]["mac"]
    assert status["options"]["mac"]


def test_redis_refuses_a_wrong_authority_a_missing_password_and_plain_text(
    secure_redis: TlsRedis, authority: Authority
) -> None:
    attempts = {
        "an authority that did not sign the server's certificate":
            secure_redis.url(authority.other_ca),
        "no password": secure_redis.url(authority.ca, password=""),
        "a wrong password": secure_redis.url(authority.ca, password="wrong-" + "x" * 20),
        "plain text": f"redis://:{secure_redis.password}@127.0.0.1:{secure_redis.port}/0",
    }
    for what, url in attempts.items():
        client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        try:
            with pytest.raises(redis.RedisError):
                client.ping()
        except pytest.fail.Exception:
            pytest.fail(f"{what}: PING answered")
        finally:
            client.close()


# --- PostgreSQL ----------------------------------------------------------------------------

def test_postgres_verify_full(secure_postgres: TlsPostgres, authority: Authority) -> None:
    # verify-full with the right authority: an encrypted session
    with _pg_connect(secure_postgres.url(authority.ca)) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)
    # a certificate another authority signed, or a host name the certificate does not name:
    # refused (verify-ca, which skips the name, accepts the latter)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _pg_connect(secure_postgres.url(authority.other_ca))
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        _pg_connect(secure_postgres.url(authority.ca, host="localhost"))
    _pg_connect(secure_postgres.url(authority.ca, host="localhost", sslmode="verify-ca")).close()
    # and the server takes no plain-text session
    with pytest.raises(psycopg.OperationalError, match="rejects connection"):
        _pg_connect(secure_postgres.url(authority.ca, sslmode="disable"))


def test_the_writer_over_tls_redis_and_verify_full_postgres(
    bus_settings: Settings, secure_redis: TlsRedis, secure_postgres: TlsPostgres,
    authority: Authority,
) -> None:
    # Given a database made and migrated over verify-full, and Redis over TLS with a password
    name = f"jp_tls_{uuid.uuid4().hex[:8]}"
    with _pg_connect(secure_postgres.url(authority.ca)) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = secure_postgres.url(authority.ca, dbname=name)
    upgrade(database_url)
    settings = bus_settings.model_copy(update={"redis_url": secure_redis.url(authority.ca),
                                               "database_url": database_url})
    assert settings.redis_url is not None
    broker = build_broker(settings, settings.redis_url, set_global=False)
    videos = [uuid.uuid4() for _ in range(3)]
    emitter = IntentEmitter(broker, Queues.from_settings(settings))
    for video in videos:
        emitter.emit(queued(video))
    # When the writer runs on both
    writer = Writer.from_settings(settings, broker, standby_poll_s=0.2, heartbeat_s=1.0)
    runner = WriterThread(writer).start()
    try:
        def applied() -> bool:
            with _pg_connect(database_url) as conn:
                row = conn.execute("SELECT count(*) FROM videos").fetchone()
                return row == (3,)
        wait_until(applied, message="three videos over TLS")
    finally:
        runner.stop()
        broker.close()
    assert keyring_of(broker).signing_key_id


# --- S3 ------------------------------------------------------------------------------------

class _TlsTerminator:
    """TLS in front of a plain HTTP endpoint (moto's server), with the test authority's
    certificate: what an S3 endpoint with a private CA looks like to the client."""

    def __init__(self, authority: Authority, target: tuple[str, int]) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(authority.cert, authority.key)
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        upstream = socket.create_connection(self.target)

        def pump(a: socket.socket, b: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := a.recv(65536):
                    b.sendall(data)
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        self._closed = True
        self.listener.close()


def test_s3_over_tls_with_a_custom_ca_bundle(
    bus_settings: Settings, authority: Authority, s3_endpoint: str
) -> None:
    host, port = s3_endpoint.removeprefix("http://").split(":")
    terminator = _TlsTerminator(authority, (host, int(port)))
    try:
        https = bus_settings.s3.model_copy(update={
            "endpoint_url": f"https://127.0.0.1:{terminator.port}"})
        # With S3_CA_BUNDLE naming the authority: objects go in and come back
        trusting = bus_settings.model_copy(update={
            "s3": https.model_copy(update={"ca_bundle": authority.ca})})
        client = s3_client(trusting)
        ensure_bucket(client, https.bucket)
        client.put_object(Bucket=https.bucket, Key="tenants/7/probe", Body=b"over tls")
        body = client.get_object(Bucket=https.bucket, Key="tenants/7/probe")["Body"].read()
        assert body == b"over tls"
        # Without it (the system's authorities) or with another one: the certificate is refused
        from botocore.exceptions import SSLError

        for settings in (bus_settings.model_copy(update={"s3": https}),
                         bus_settings.model_copy(update={
                             "s3": https.model_copy(update={"ca_bundle": authority.other_ca})})):
            with pytest.raises(SSLError):
                s3_client(settings).head_bucket(Bucket=https.bucket)
    finally:
        terminator.close()


def test_a_wrong_ca_bundle_path_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="S3_CA_BUNDLE: Path does not point to a file"):
        load_settings()
