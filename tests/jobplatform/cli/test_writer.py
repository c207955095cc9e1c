from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from click.testing import CliRunner

from jobplatform.cli import cli
from jobplatform.settings import Settings
from tests.writer.conftest import WriterThread, emit_all, scalar, wait_until
from tests.writer.intent_factory import queued


def test_writer_stats_prints_what_the_active_writer_published(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    assert settings.redis_url is not None
    env = {"REDIS_URL": settings.redis_url, "BROKER_NAMESPACE": settings.broker_namespace}
    before = CliRunner().invoke(cli, ["writer", "stats"], env=env)
    assert before.exit_code == 1
    assert "no writer has published stats" in before.output

    # Given an active writer that applied some intents and published its stats
    runner = start_writer(stats_interval_s=0.2)
    emit_all(broker, settings, [queued(uuid.uuid4()) for _ in range(30)])
    url = settings.database_url
    assert url is not None
    wait_until(lambda: scalar(url, "SELECT count(*) FROM writer_ledger") == 30,
               message="intents applied")

    def published() -> dict[str, Any] | None:
        result = CliRunner().invoke(cli, ["writer", "stats"], env=env)
        if result.exit_code != 0:
            return None
        stats: dict[str, Any] = json.loads(result.stdout)
        return stats if stats.get("applied") == 30 else None

    stats = wait_until(published, message="stats published with the 30 intents")
    runner.stop()
    assert stats["role"] == "active"
    assert stats["batches"] >= 1
    assert "commit_ms_p99" in stats
    assert "db_share" in stats
