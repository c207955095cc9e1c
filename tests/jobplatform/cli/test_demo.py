from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobplatform.s3 import s3_client
from jobplatform.settings import Settings
from writer.report import Monitor

PROC = Path(__file__).parent.parent / "_proc.py"


def run_demo(settings: Settings, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """``jobplatform demo --json`` in a subprocess, on this test's database, Redis and S3."""
    assert settings.database_url is not None
    assert settings.redis_url is not None
    assert settings.s3.endpoint_url is not None
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "BROKER_NAMESPACE": settings.broker_namespace,
        "S3_ENDPOINT_URL": settings.s3.endpoint_url,
        "S3_BUCKET": settings.s3.bucket,
        "S3_ACCESS_KEY_ID": "testing",
        "S3_SECRET_ACCESS_KEY": "testing",
        "JOBPLATFORM_STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "jobplatform", "demo", "--json", *args],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


@pytest.mark.slow
def test_demo_summary_matches_the_database(settings: Settings, tmp_path: Path) -> None:
    # When the demo runs a small roster and one video on this test's services
    code, summary, log = run_demo(settings, tmp_path, "--rows", "300", "--videos", "1",
                                  "--timeout", "240")

    # Then every job finished, and each figure of the summary is what the database holds
    assert summary["failed_jobs"] == 0, log
    assert summary["failures"] == []
    assert code == (0 if summary["passed"] else 1)
    ids = summary["ids"]
    assert settings.database_url is not None
    with Monitor(settings.database_url) as db:
        counts = db.tenant_counts(ids["tenant_id"], ids["lecture_id"])
        record = db.roster_import(ids["import_id"])
        [video] = db.videos(ids["video_ids"])
        max_connections = db.max_connections()
    assert record is not None
    assert record["status"] == "done"
    assert summary["students_created"] == counts["students"] == record["created"]
    assert summary["enrolled"] == counts["enrollments"] == record["enrolled"]
    assert summary["students_rejected"] == record["invalid"] == sum(
        v for k, v in summary["injected"].items() if k != "duplicates")
    assert summary["duplicates"] == record["duplicates"] == summary["injected"]["duplicates"]
    assert counts["students"] + summary["students_rejected"] + summary["duplicates"] == 300
    assert summary["error_report_key"] == record["report_key"]
    assert video["status"] == "ready"
    assert summary["hls_master_keys"] == [video["hls_key"]]
    assert summary["max_connections"] == max_connections
    assert 1 <= summary["peak_db_connections"] <= 3
    assert summary["writer_batches"] >= 1
    assert summary["rows_per_s"] > 0
    assert summary["p99_txn_ms"] > 0
    # The outputs it names are in S3.
    s3 = s3_client(settings)
    for key in (video["hls_key"], record["report_key"]):
        assert s3.head_object(Bucket=settings.s3.bucket, Key=key)["ContentLength"] > 0


@pytest.mark.slow
def test_demo_stops_and_fails_when_a_worker_dies(settings: Settings, tmp_path: Path) -> None:
    # Given a formation whose video worker exits at once
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"writer: jobplatform writer\nai: {sys.executable} {PROC} serve\n"
                        f"video: {sys.executable} -c 'exit(3)'\n")

    code, summary, _ = run_demo(settings, tmp_path, "--rows", "50", "--videos", "1",
                                "-f", str(procfile), "--timeout", "120")

    assert code == 1
    assert summary["failed_jobs"] >= 1
    assert any("video.1 exited with code 3" in f for f in summary["failures"]), summary
    assert summary["passed"] is False


def test_demo_refuses_a_procfile_without_its_pools(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("writer: jobplatform writer\n")

    done = subprocess.run(
        [sys.executable, "-m", "jobplatform", "demo", "-f", str(procfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )

    assert done.returncode == 1
    assert f"{procfile} has no ai, video line: the demo needs the video, ai, writer pools" in (
        done.stderr)
