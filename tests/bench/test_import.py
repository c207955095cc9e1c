"""The end-to-end import benchmark runs its real processes on a small file and reports each
figure (no timing is asserted: only that the run happened and adds up)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.import_ import ACTOR_STAGES, WRITER_STAGES, command
from jobplatform.settings import Settings
from jobplatform.stack import Services


def test_bench_import_quick_runs_the_actor_and_the_writer_end_to_end(
    bus_settings: Settings, services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the test's Redis and S3 endpoint, the session's PostgreSQL server
    assert bus_settings.redis_url is not None
    monkeypatch.setenv("REDIS_URL", bus_settings.redis_url)
    monkeypatch.setenv("DATABASE_URL", services.database_url)
    monkeypatch.setenv("JOBPLATFORM_STATE_DIR", str(tmp_path / "state"))
    # When the quick benchmark runs: one import of 2,000 rows, then two of 1,000 at once
    result = CliRunner().invoke(command, ["--quick", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # Then every row was committed by the writer, through the actor, in both runs
    assert set(report["scenarios"]) == {"one", "several"}
    for name, imports in (("one", 1), ("several", 2)):
        current = report["scenarios"][name]["medians"]["current"]
        assert current["imports"] == imports == len(current["time_to_done_each_s"])
        assert current["rows"] == current["students"] == current["enrollments"] == 2000
        assert current["rows_per_s"] > 0
        # and both processes said where their time went
        assert set(current["actor_stages_s"]) == set(ACTOR_STAGES)
        assert set(current["writer_stages_s"]) == set(WRITER_STAGES)
        assert current["actor_stages_s"]["parse_s"] > 0
        # and the status changes sent meanwhile were committed, each one timed
        assert current["fast"]["intents"] > 0
        assert 0 < current["fast"]["p50_ms"] <= current["fast"]["p99_ms"]
        assert current["writer_stages_s"]["copy"] > 0
        assert all(current["cpu_s"][p] > 0 for p in ("actor", "writer_process",
                                                     "writer_backend"))
    # And the floor ran on the same rows
    assert report["floor"]["rows"] == 2000
    assert report["floor"]["server_cpu_s"] > 0
    assert report["scenarios"]["one"]["medians"]["current"]["server_cpu_vs_floor"] > 0
