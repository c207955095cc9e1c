"""The ``jobplatform`` pytest plugin: intents captured from actors, replayed into a database."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dramatiq
import pytest

from actors.video import register as register_video
from actors.video.ffmpeg import ffmpeg_exe
from jobplatform.broker import ENCODE_VIDEO
from jobplatform.s3 import ensure_bucket, s3_client
from jobplatform.settings import Settings
from schemas import EncodeVideo
from schemas.jobs import Rendition
from tests.actors.conftest import make_clip
from tests.writer.log_samples import roster_import, student
from writer.intentlog import IntentLog
from writer.pytest_plugin import IntentCapture, ReplayedDatabase

ROOT = Path(__file__).resolve().parents[2]
Replay = Callable[..., ReplayedDatabase]


@pytest.fixture
def jobplatform_settings(settings: Settings) -> Settings:
    """The plugin's settings are this suite's: its database server, Redis db, S3 endpoint."""
    video = settings.video.model_copy(update={"segment_seconds": 1, "preset": "ultrafast",
                                              "max_retries": 0})
    return settings.model_copy(update={"video": video})


def test_captured_video_intents_replay_into_a_ready_video(
    jobplatform_intent_capture: IntentCapture,
    jobplatform_replay_into_database: Replay,
    jobplatform_settings: Settings,
    tmp_path: Path,
) -> None:
    # Given the real video actor registered on the capture's stub broker, and an upload in S3
    settings = jobplatform_settings
    s3 = s3_client(settings)
    ensure_bucket(s3, settings.s3.bucket)
    clip = make_clip(ffmpeg_exe(settings.video), tmp_path / "clip.mp4", seconds=1)
    job = EncodeVideo(tenant_id=3, video_id=uuid.uuid4(), source_key="tenants/3/up/clip.mp4",
                      ladder=(Rendition(name="240p", height=240, video_kbps=300),))
    s3.put_object(Bucket=settings.s3.bucket, Key=job.source_key, Body=clip.read_bytes())
    capture = jobplatform_intent_capture
    capture.register(register_video)

    # When the job runs in-process
    capture.send(ENCODE_VIDEO, job)
    intents = capture.run()

    # Then its intents are captured, and replayed they make the video ready
    assert [i.kind for i in intents] == ["video.processing", "video.ready"]
    db = jobplatform_replay_into_database(capture)
    assert db.rows("SELECT id, tenant_id, status FROM videos") == [(job.video_id, 3, "ready")]
    assert db.scalar("SELECT count(*) FROM writer_ledger") == 2
    assert db.summary.intents_applied == 2


def test_an_actor_that_fails_fails_the_run_with_its_error(
    jobplatform_intent_capture: IntentCapture,
) -> None:
    def register(broker: dramatiq.Broker, settings: Settings) -> None:
        def broken(payload: dict[str, object]) -> None:
            raise ValueError(f"cannot import {payload['name']}")

        declare = dramatiq.actor(actor_name="broken", queue_name=settings.queue_ai,
                                 broker=broker, max_retries=0)
        declare(broken)

    jobplatform_intent_capture.register(register)
    jobplatform_intent_capture.send("broken", {"name": "roster.xlsx"})
    with pytest.raises(ValueError, match=r"cannot import roster\.xlsx"):
        jobplatform_intent_capture.run(timeout_s=30)


def test_replay_a_log_folder_into_a_fresh_database(
    jobplatform_replay_into_database: Replay, tmp_path: Path
) -> None:
    intents = roster_import(5, 42, [student(n) for n in range(30)], 0, chunk_rows=10)
    with IntentLog(tmp_path / "log", writer_id="w:1") as log:
        log.append(1, intents[:3])
        log.append(2, intents[3:])

    first = jobplatform_replay_into_database(tmp_path / "log")
    second = jobplatform_replay_into_database(intents)

    for db in (first, second):
        assert db.scalar("SELECT count(*) FROM enrollments WHERE lecture_id = 42") == 30
        assert db.rows("SELECT status, chunks_applied FROM roster_imports") == [("done", 3)]
    assert first.url != second.url


def test_the_plugin_is_registered_by_its_entry_point(tmp_path: Path, settings: Settings) -> None:
    # A service's own test file, with no conftest: the fixtures come from the entry point
    (tmp_path / "test_service.py").write_text(textwrap.dedent("""
        import dramatiq
        from jobplatform.emit import IntentEmitter
        from jobplatform.broker import Queues
        from schemas import RosterChunk, StudentRow

        def register(broker, settings):
            emit = IntentEmitter(broker, Queues.from_settings(settings)).emit
            def enroll(job):
                row = StudentRow(source_row=2, name="Kim", phone="010-1234-5678")
                emit(RosterChunk(tenant_id=1, occurred_at=job["at"], import_id=job["id"],
                                 lecture_id=10, chunk_index=0, rows=(row,)))
            dramatiq.actor(enroll, queue_name=settings.queue_ai, broker=broker)

        def test_enroll(jobplatform_intent_capture, jobplatform_replay_into_database):
            capture = jobplatform_intent_capture
            capture.register(register)
            capture.send("enroll", {"at": "2024-05-01T09:00:00Z",
                                    "id": "6f1c1f9e-7c1c-4c55-9d7e-3b8b7c1d2e3f"})
            db = jobplatform_replay_into_database(capture.run())
            assert db.rows("SELECT phone, name FROM students") == [("010-1234-5678", "Kim")]
    """))
    env = dict(os.environ, DATABASE_URL=str(settings.database_url),
               REDIS_URL=str(settings.redis_url), PYTHONPATH=str(ROOT))
    # no S3 configured: the fixtures start an embedded one in the test's folder
    for name in [n for n in env if n.startswith(("S3_", "AWS_"))]:
        del env[name]
    basetemp = tmp_path / "basetemp"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--basetemp={basetemp}", "test_service.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    # the fixture's embedded S3 is gone with the test
    # (its watcher, a shell polling every 2 s, follows it)
    deadline = time.monotonic() + 5
    while _processes_naming(basetemp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_naming(basetemp) == []


def _processes_naming(path: Path) -> list[str]:
    """Command lines of the running processes that name ``path``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in text:
            found.append(text)
    return found
