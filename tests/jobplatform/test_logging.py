"""Logs carry no secrets, no message bodies and no local variables of any frame."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from pydantic import SecretStr
from structlog.testing import capture_logs

from actors import ai
from jobplatform.auth import keyring_of
from jobplatform.broker import IMPORT_ROSTER, build_broker, make_message
from jobplatform.logging import configure_logging, get_logger, redact, scrub
from jobplatform.settings import Settings

# Planted where a careless log would show them: the settings (keys, S3, the database URL's
# password) and a job's body (a student's name).
AUTH_SECRET = "planted-auth-secret-" + uuid.uuid4().hex
S3_SECRET = "planted-s3-secret-" + uuid.uuid4().hex
DB_PASSWORD = "planted-db-pw-" + uuid.uuid4().hex[:12]
PAYLOAD_MARK = "planted-student-" + uuid.uuid4().hex[:12]
PLANTED = (AUTH_SECRET, S3_SECRET, DB_PASSWORD, PAYLOAD_MARK)


@pytest.fixture
def planted(bus_settings: Settings) -> Settings:
    return bus_settings.model_copy(update={
        "auth": bus_settings.auth.model_copy(update={"keys": SecretStr(f"k1={AUTH_SECRET}")}),
        "s3": bus_settings.s3.model_copy(update={"secret_access_key": S3_SECRET}),
        "database_url": f"postgresql://app:{DB_PASSWORD}@127.0.0.1:5432/jobplatform",
    })


@pytest.fixture
def planted_broker(planted: Settings) -> Iterator[dramatiq.Broker]:
    assert planted.redis_url is not None
    broker = build_broker(planted, planted.redis_url, set_global=False)
    yield broker
    broker.close()


def _failing_run(settings: Settings, broker: dramatiq.Broker, fmt: str) -> str:
    """A roster worker given a signed job it cannot decode (no readable ids): the actor
    re-raises for dramatiq to dead-letter it, and dramatiq logs the failure with its traceback,
    through frames holding the job's body and the settings."""
    out = io.StringIO()
    configure_logging(settings.model_copy(update={"log_format": fmt}), stream=out)
    ai.register(broker, settings)
    body = {"kind": "roster.import", "rows": [{"name": PAYLOAD_MARK}], "import_id": "?"}
    broker.enqueue(keyring_of(broker).sign(make_message(settings.queue_ai, IMPORT_ROSTER, body)))
    worker = Worker(broker, queues={settings.queue_ai}, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        broker.join(settings.queue_ai)
        worker.join()
    finally:
        worker.stop()

    # and a log call of our own, from a frame holding the settings and the body
    def crash(settings: Settings, payload: dict[str, Any]) -> None:
        raise RuntimeError("the import crashed")

    try:
        crash(settings, body)
    except RuntimeError:
        get_logger("test").exception("import crashed",
                                     redis=f"redis://user:{DB_PASSWORD}@host:6379/0")
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_failing_run_logs_no_secret_body_or_local(
    planted: Settings, planted_broker: dramatiq.Broker, fmt: str
) -> None:
    logged = _failing_run(planted, planted_broker, fmt)
    # The failures are there, with their tracebacks ...
    assert "Failed to process message" in logged
    assert "DecodeError" in logged
    assert "import crashed" in logged
    assert "the import crashed" in logged
    assert f"{IMPORT_ROSTER}(message " in logged
    # ... and nothing planted
    for secret in PLANTED:
        assert secret not in logged, (secret, logged[-3000:])


def test_scrub_masks_url_passwords_and_registered_secrets() -> None:
    secret = "registered-" + uuid.uuid4().hex
    redact(secret, "short")
    line = (f"connect postgresql://app:p%40ss@db:5432/x and rediss://:{secret}@cache:6380/0;"
            f" key {secret}; a short word stays")
    assert scrub(line) == ("connect postgresql://app:***@db:5432/x and rediss://:***@cache:6380/0;"
                           " key ***; a short word stays")


def test_a_logger_cached_before_a_second_configuration_follows_it() -> None:
    # Given a module-level logger used (and so cached) under one configuration
    log = get_logger("tests.cached")
    configure_logging(Settings(), stream=io.StringIO())
    log.info("first")
    # When the process configures logging again, here with logs captured for a test
    second = io.StringIO()
    configure_logging(Settings(), stream=second)
    log.info("second")
    with capture_logs() as logs:
        log.info("captured")
    # Then the cached logger writes where the latest configuration says
    assert "second" in second.getvalue()
    assert [e["event"] for e in logs] == ["captured"]
