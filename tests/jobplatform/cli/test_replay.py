"""``jobplatform replay`` and ``jobplatform log``, run as a person runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.writer.log_live import a_busy_day, run_live, snapshot
from tests.writer.log_samples import encode_record_for, phone
from writer.db import drop_database, with_database

ROOT = Path(__file__).resolve().parents[3]


def jobplatform(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "jobplatform", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120, check=False)


@pytest.fixture
def logged_day(database_url: str, tmp_path: Path) -> Path:
    folder = tmp_path / "log"
    run_live(database_url, folder, a_busy_day()[0])
    # A writer killed while appending: a torn last record in a segment of its own
    torn = encode_record_for(10_000, "dead:9")
    (folder / "00000000000000010000-dead-9.jsonl").write_bytes(torn[:-30])
    return folder


@pytest.fixture
def empty_database_url(database_url: str) -> Iterator[str]:
    url = with_database(database_url, database_url.rsplit("/", 1)[-1] + "_replica")
    yield url
    drop_database(url)


def test_replay_migrates_replays_and_a_second_run_changes_nothing(
    database_url: str, logged_day: Path, empty_database_url: str
) -> None:
    # When a log is replayed into a database that does not exist yet
    first = jobplatform("replay", str(logged_day), "--database-url", empty_database_url)
    # Then it is created, migrated and holds what the writer's database holds
    assert first.returncode == 0, first.stderr
    assert "intents applied" in first.stdout
    assert "truncated at line 1" in first.stderr
    assert "00000000000000010000-dead-9.jsonl" in first.stderr
    assert snapshot(empty_database_url) == snapshot(database_url)

    again = jobplatform("replay", str(logged_day), "--database-url", empty_database_url, "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["intents_applied"] == 0
    assert summary["intents_already_applied"] > 0
    assert snapshot(empty_database_url) == snapshot(database_url)


def test_replay_without_a_database_url_or_with_a_missing_log_says_what_is_wrong(
    tmp_path: Path,
) -> None:
    missing_url = jobplatform("replay", str(tmp_path))
    assert missing_url.returncode != 0
    assert "--database-url" in missing_url.stderr
    missing_log = jobplatform("replay", str(tmp_path / "nope"), "--database-url",
                              "postgresql://postgres@127.0.0.1:5432/jp_never_created")
    assert missing_log.returncode == 1
    assert "no such log file or folder" in missing_log.stderr


def test_log_show_and_stats_filter_by_kind_tenant_and_entity(logged_day: Path) -> None:
    stats = jobplatform("log", "stats", str(logged_day), "--json")
    assert stats.returncode == 0, stats.stderr
    body = json.loads(stats.stdout)
    # 6 + 2 + 3 chunks of three imports; the redelivered ones were not applied, so not logged
    assert body["kinds"]["roster.chunk"] == 6 + 2 + 3
    assert body["tenants"].keys() == {"7", "8"}
    assert body["writers"] == {"live:1": 5}
    assert "truncated" in body["notes"][0]

    ready = jobplatform("log", "show", str(logged_day), "--kind", "video.ready", "--tenant", "8")
    assert ready.returncode == 0, ready.stderr
    lines = [line for line in ready.stdout.splitlines() if line.startswith("    ")]
    assert len(lines) == 1
    assert "video.ready" in lines[0]
    assert "tenant 8" in lines[0]

    student = jobplatform("log", "show", str(logged_day), "--entity", phone(250), "--json")
    records = [json.loads(line) for line in student.stdout.splitlines()]
    rows = [row for r in records for i in r["intents"] for row in i["rows"]]
    assert {row["phone"] for row in rows} == {phone(250)}
    assert len(rows) == 2  # the first import and the second one
