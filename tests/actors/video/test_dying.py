"""Video workers that die or stop mid-encode: real dramatiq workers under the formation runner,
real ffmpeg, real signals (SIGKILL as the OOM killer sends it; one SIGTERM as a supervisor)."""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from actors.video import register
from jobplatform.publish import JobStatus, Publisher
from jobplatform.runner import Formation, ProcessType
from jobplatform.settings import PROJECT_ROOT, Settings
from jobplatform.workdir import LOCK_NAME
from tests.actors.conftest import make_clip, put_source, video_job

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.slow

WORKER = f"{sys.executable} -m dramatiq actors.worker --queues video --processes 1 --threads 1"


@pytest.fixture(scope="module")
def long_clip(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of 720p: with the medium preset on one thread, an encode of many seconds."""
    folder = tmp_path_factory.mktemp("long")
    return make_clip(ffmpeg, folder / "long.mp4", size="1280x720", seconds=20)


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            found.append((int(entry.name), name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class Pool:
    """A video pool of one worker process, run by the formation runner."""

    def __init__(self, settings: Settings, work_dir: Path, **env: str) -> None:
        assert settings.redis_url is not None
        assert settings.database_url is not None
        environ = {
            "REDIS_URL": settings.redis_url,
            "DATABASE_URL": settings.database_url,
            "BROKER_NAMESPACE": settings.broker_namespace,
            "JOBPLATFORM_STATE_DIR": str(settings.jobplatform_state_dir),
            "S3_ENDPOINT_URL": str(settings.s3.endpoint_url),
            "S3_BUCKET": settings.s3.bucket,
            "S3_ACCESS_KEY_ID": "testing",
            "S3_SECRET_ACCESS_KEY": "testing",
            "VIDEO_WORK_DIR": str(work_dir),
            "VIDEO_PRESET": "medium",
            "VIDEO_THREADS": "1",
            "VIDEO_SEGMENT_SECONDS": "2",
            "VIDEO_PROGRESS_INTERVAL_S": "0.2",
            "LOG_FORMAT": "json",
            **env,
        }
        self.output = io.StringIO()
        self.formation = Formation([ProcessType("video", WORKER)], env=environ,
                                   cwd=PROJECT_ROOT, output=self.output, colour=False)
        self.formation.start()

    def stop(self, timeout: float = 30) -> float:
        """One SIGTERM, as a supervisor sends it; the seconds until every process exited."""
        started = time.monotonic()
        self.formation.stop(timeout)
        return time.monotonic() - started


@pytest.fixture
def pools() -> Iterator[list[Pool]]:
    started: list[Pool] = []
    yield started
    for pool in started:
        pool.formation.stop(5)


@pytest.fixture
def publisher(broker: RedisBroker, video_settings: Settings, s3: S3Client) -> Publisher:
    # Interrupted after 3 s without a heartbeat (a live worker sends one a second)
    settings = video_settings.model_copy(update={"worker_heartbeat_timeout_s": 3.0})
    return Publisher(settings, broker=broker, s3=s3)


def start_encode(
    publisher: Publisher, video_settings: Settings, s3: S3Client, clip: Path,
    pools: list[Pool], work_dir: Path, **env: str,
) -> tuple[Any, Pool, dict[str, Any]]:
    """Publish a job of ``clip`` to a new pool; wait until ffmpeg is encoding it."""
    job = video_job(ladder=video_job().ladder[:2])
    put_source(s3, video_settings, job, clip)
    pool = Pool(video_settings, work_dir, **env)
    pools.append(pool)
    publisher.publish(job)

    def encoding() -> dict[str, Any] | None:
        record = publisher.progress.get(job.job_id)
        busy = record.get("step") == "encode" and record.get("step_percent", 0) > 0
        return record if busy else None

    record = wait_for(encoding, 120, "the encode to start:\n" + pool.output.getvalue())
    return job, pool, record


def worker_pid(record: dict[str, Any]) -> int:
    return int(str(record["worker"]).rsplit(" pid ", 1)[1])


def test_a_killed_worker_takes_its_ffmpeg_and_shows_interrupted(
    broker: RedisBroker, video_settings: Settings, s3: S3Client, publisher: Publisher,
    long_clip: Path, pools: list[Pool], tmp_path: Path,
) -> None:
    work_dir = tmp_path / "work"
    job, _, record = start_encode(publisher, video_settings, s3, long_clip, pools, work_dir)
    pid = worker_pid(record)
    [ffmpeg_pid] = [p for p, name in children(pid) if name.startswith("ffmpeg")]
    [folder] = [p for p in work_dir.iterdir() if p.name.startswith("jp-video-")]
    assert (folder / LOCK_NAME).is_file()

    # When the worker process is killed as the OOM killer kills it
    os.kill(pid, signal.SIGKILL)

    # Then its ffmpeg dies with it, instead of encoding alone to the end
    wait_for(lambda: not alive(ffmpeg_pid), 10, "ffmpeg to die with its worker")
    # And the job's status says it was interrupted, with the reason, not a stale percent
    status: JobStatus = wait_for(
        lambda: (s := publisher.status(job)).state == "interrupted" and s, 20,
        "the status to show interrupted")
    assert status.error is not None
    assert f"pid {pid}" in status.error
    assert "stopped" in status.error
    # And the folder it left (a copy of the source) is removed when a worker starts
    assert folder.is_dir()
    live = video_settings.video.model_copy(update={"work_dir": work_dir})
    register(broker, video_settings.model_copy(update={"video": live}))
    assert not folder.exists()


def test_sweeping_leaves_a_live_workers_folder_alone(
    broker: dramatiq.Broker, video_settings: Settings, s3: S3Client, publisher: Publisher,
    long_clip: Path, pools: list[Pool], tmp_path: Path,
) -> None:
    work_dir = tmp_path / "work"
    job, _, _ = start_encode(publisher, video_settings, s3, long_clip, pools, work_dir)
    [folder] = list(work_dir.iterdir())
    # A second worker starting on the same machine
    live = video_settings.video.model_copy(update={"work_dir": work_dir})
    register(broker, video_settings.model_copy(update={"video": live}))
    assert folder.is_dir()
    assert publisher.status(job).state == "running"


def test_a_graceful_stop_hands_the_job_back_at_once(
    broker: RedisBroker, video_settings: Settings, s3: S3Client, publisher: Publisher,
    long_clip: Path, pools: list[Pool], tmp_path: Path,
) -> None:
    work_dir = tmp_path / "work"
    job, pool, record = start_encode(publisher, video_settings, s3, long_clip, pools, work_dir,
                                     VIDEO_STOP_GRACE_S="0")
    pid = worker_pid(record)
    [ffmpeg_pid] = [p for p, name in children(pid) if name.startswith("ffmpeg")]

    # When the pool gets its one SIGTERM, with no grace for the job in hand
    took = pool.stop(timeout=30)

    # Then every process exited by itself (the runner killed nothing) ...
    assert "SIGKILL" not in pool.output.getvalue(), pool.output.getvalue()
    assert took < 30
    assert not alive(ffmpeg_pid)
    # ... the job is back on its queue now, not after the broker's 60 s heartbeat timeout
    queue = f"{video_settings.broker_namespace}:{video_settings.queue_video}"
    assert broker.client.llen(queue) == 1
    assert broker.client.hlen(f"{queue}.XQ.msgs") == 0
    # ... its status says so, and its folder is gone
    status = publisher.status(job)
    assert (status.state, status.percent) == ("queued", 0.0)
    assert "handed back" in status.progress["note"]
    assert list(work_dir.iterdir()) == []

    # And the next worker encodes it to the end
    pools.append(Pool(video_settings, work_dir, VIDEO_PRESET="ultrafast"))
    wait_for(lambda: publisher.status(job).state == "done", 120, "the job to be done")


def test_a_graceful_stop_lets_the_job_in_hand_finish_within_its_grace(
    broker: RedisBroker, video_settings: Settings, s3: S3Client, publisher: Publisher,
    ffmpeg: str, pools: list[Pool], tmp_path: Path,
) -> None:
    clip = make_clip(ffmpeg, tmp_path / "medium.mp4", size="1280x720", seconds=6)
    job, pool, _ = start_encode(publisher, video_settings, s3, clip, pools, tmp_path / "work",
                                VIDEO_STOP_GRACE_S="120")

    pool.stop(timeout=130)

    assert "SIGKILL" not in pool.output.getvalue(), pool.output.getvalue()
    status = publisher.status(job)
    assert status.state == "done"
    assert status.progress["hls_key"].endswith("master.m3u8")
    queue = f"{video_settings.broker_namespace}:{video_settings.queue_video}"
    assert broker.client.llen(queue) == 0
