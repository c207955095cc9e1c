from __future__ import annotations

import pytest

from jobplatform.errors import ConfigError
from jobplatform.settings import load_settings


def test_defaults_need_no_environment() -> None:
    settings = load_settings()
    assert settings.queue_writes_fast == "writes.fast"
    assert settings.roster.chunk_rows == 500
    assert 0 < settings.writer.db_budget <= 1


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRITER_BATCH_MAX_ROWS", "lots")
    with pytest.raises(ConfigError, match="WRITER_BATCH_MAX_ROWS") as info:
        load_settings()
    assert "'lots'" in str(info.value)


def test_out_of_range_share_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRITER_DB_BUDGET", "1.5")
    with pytest.raises(ConfigError, match="WRITER_DB_BUDGET"):
        load_settings()


def test_top_level_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        load_settings()


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROSTER_CHUNK_ROWS", "250")
    monkeypatch.setenv("S3_BUCKET", "media")
    settings = load_settings()
    assert settings.roster.chunk_rows == 250
    assert settings.s3.bucket == "media"
