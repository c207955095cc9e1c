"""``jobplatform bench video``: the video actor's wall time beside the bare ffmpeg command.

One generated clip (default 30 s, 720p, with audio) is uploaded to an in-memory S3 endpoint
(moto's ``ThreadedMotoServer``, in this process). Each round runs the bare ffmpeg command the
actor builds (same arguments, output to a local folder) and the actor's whole job (download,
probe, the same encode, progress to Redis, upload, two intents), alternating which goes first;
the medians give ``overhead = actor_s / ffmpeg_s`` (target below 1.10).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click

from bench._common import machine, markdown_table

TARGET_OVERHEAD = 1.10


def _generate(ffmpeg: str, path: Path, seconds: int, height: int) -> None:
    width = height * 16 // 9 // 2 * 2
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=30:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
         "-c:v", "libx264", "-preset", "veryfast", "-b:v", "4M", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(path)],
        check=True,
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _bare_ffmpeg(cmd: list[str], out: Path) -> float:
    """Wall time of the command alone; its progress output is read and dropped."""
    started = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
    elapsed = time.perf_counter() - started
    if not (out / "master.m3u8").is_file():
        raise click.ClickException("the bare ffmpeg run wrote no master playlist")
    return elapsed


def run(seconds: int, height: int, rounds: int) -> dict[str, Any]:
    import redis
    from moto.server import ThreadedMotoServer

    from actors.video import build_encoder
    from actors.video.ffmpeg import ffmpeg_exe, probe
    from actors.video.hls import encode_command, select_ladder
    from jobplatform.broker import build_broker
    from jobplatform.cli._common import settings_from_env
    from jobplatform.s3 import ensure_bucket, s3_client
    from jobplatform.stack import LOCAL_REDIS_URL
    from schemas import EncodeVideo, VideoReady

    base = settings_from_env()  # also sends logs to stderr, keeping stdout for the result
    redis_url = base.redis_url or LOCAL_REDIS_URL
    namespace = f"jpbench-video-{uuid.uuid4().hex[:8]}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3_settings = base.s3.model_copy(update={
        "endpoint_url": f"http://{host}:{port}", "bucket": "jpbench-video",
        "access_key_id": "bench", "secret_access_key": "bench",
    })
    settings = base.model_copy(update={
        "s3": s3_settings, "redis_url": redis_url, "broker_namespace": namespace,
    })
    broker = build_broker(settings, redis_url, set_global=False)
    client = redis.Redis.from_url(redis_url)
    ffmpeg = ffmpeg_exe(settings.video)
    try:
        with tempfile.TemporaryDirectory(prefix="jpbench-video-") as tmp:
            folder = Path(tmp)
            clip = folder / "clip.mp4"
            _generate(ffmpeg, clip, seconds, height)
            s3 = s3_client(settings)
            ensure_bucket(s3, s3_settings.bucket)
            job = EncodeVideo(tenant_id=1, video_id=uuid.uuid4(),
                              source_key="tenants/1/uploads/bench/clip.mp4")
            s3.upload_file(str(clip), s3_settings.bucket, job.source_key)
            encoder = build_encoder(broker, settings)

            found = probe(ffmpeg, clip)
            variants = select_ladder(job.ladder, *found.display_size)
            out = folder / "bare"
            cmd = encode_command(
                ffmpeg, clip, out, found, variants,
                segment_seconds=settings.video.segment_seconds, preset=settings.video.preset,
                threads=settings.video.threads,
                stats_period_s=min(1.0, settings.video.progress_interval_s),
            )

            steps: list[dict[str, float]] = []

            def actor() -> float:
                started = time.perf_counter()
                outcome = encoder.run(job)
                elapsed = time.perf_counter() - started
                if not isinstance(outcome.intent, VideoReady):
                    raise click.ClickException(f"the actor failed: {outcome.intent}")
                steps.append({**outcome.steps_s, "total": elapsed})
                return elapsed

            def bare() -> float:
                subprocess.run(["rm", "-rf", str(out)], check=True)
                return _bare_ffmpeg(cmd, out)

            ffmpeg_runs: list[float] = []
            actor_runs: list[float] = []
            cpu: dict[str, list[float]] = {"ffmpeg": [], "actor": []}
            load_before = os.getloadavg()[0]
            for n in range(rounds):
                pair = (("ffmpeg", bare, ffmpeg_runs), ("actor", actor, actor_runs))
                for name, measure, into in pair if n % 2 == 0 else reversed(pair):
                    children = _children_cpu_s()
                    into.append(round(measure(), 3))
                    cpu[name].append(round(_children_cpu_s() - children, 2))
            load_after = os.getloadavg()[0]
            bytes_in = clip.stat().st_size
            bytes_out = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    finally:
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        broker.close()
        server.stop()

    ffmpeg_s = statistics.median(ffmpeg_runs)
    actor_s = statistics.median(actor_runs)
    overhead = actor_s / ffmpeg_s
    return {
        "ffmpeg_s": round(ffmpeg_s, 3),
        "actor_s": round(actor_s, 3),
        "overhead": round(overhead, 3),
        "target_overhead": TARGET_OVERHEAD,
        "target_met": overhead < TARGET_OVERHEAD,
        "ffmpeg_runs_s": ffmpeg_runs,
        "actor_runs_s": actor_runs,
        "overhead_of_fastest": round(min(actor_runs) / min(ffmpeg_runs), 3),
        "actor_steps_s": {
            name: round(statistics.median(s[name] for s in steps), 3) for name in steps[0]
        },
        # Whole job / its own encode step, run by run: robust to load from other processes.
        "overhead_within_run": round(statistics.median(s["total"] / s["encode"] for s in steps), 3),
        "ffmpeg_cpu_s": round(statistics.median(cpu["ffmpeg"]), 2),
        "actor_ffmpeg_cpu_s": round(statistics.median(cpu["actor"]), 2),
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        "rounds": rounds,
        "clip": {"seconds": seconds, "size": f"{found.width}x{found.height}", "audio": True,
                 "bytes": bytes_in},
        "renditions": [f"{v.name} {v.width}x{v.height}" for v in variants],
        "hls_bytes": bytes_out,
        "preset": settings.video.preset,
        "segment_seconds": settings.video.segment_seconds,
        "ffmpeg": ffmpeg,
        "services": {
            "s3": "moto ThreadedMotoServer (in memory, in this process)",
            "redis": redis_url,
        },
        "machine": machine(),
    }


@click.command(name="video")
@click.option("--seconds", type=click.IntRange(2, 600), default=30, show_default=True,
              help="Length of the generated clip.")
@click.option("--height", type=click.IntRange(144, 2160), default=720, show_default=True,
              help="Height of the generated clip (16:9).")
@click.option("--rounds", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Runs of each; medians are reported.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(seconds: int, height: int, rounds: int, as_json: bool) -> None:
    """The video actor's wall time beside the bare ffmpeg command with the same arguments."""
    result = run(seconds, height, rounds)
    if as_json:
        from jobplatform.cli._common import echo_json

        echo_json(result)
        return
    click.echo(f"clip: {seconds} s {result['clip']['size']} with audio -> "
               f"{', '.join(result['renditions'])}; preset {result['preset']}")
    click.echo(f"S3: {result['services']['s3']}; Redis: {result['services']['redis']}")
    click.echo(markdown_table(
        ["", "median s", "runs s"],
        [["bare ffmpeg", result["ffmpeg_s"], " ".join(map(str, result["ffmpeg_runs_s"]))],
         ["actor (whole job)", result["actor_s"], " ".join(map(str, result["actor_runs_s"]))]],
    ))
    click.echo(f"actor steps (median s): {result['actor_steps_s']}; whole job / its encode "
               f"step: {result['overhead_within_run']:.3f}")
    click.echo(f"fastest runs: overhead {result['overhead_of_fastest']:.3f}; ffmpeg CPU s "
               f"{result['ffmpeg_cpu_s']} bare, {result['actor_ffmpeg_cpu_s']} in the actor; "
               f"load average {result['load_average_1m']} (others' work skews wall times)")
    verdict = "met" if result["target_met"] else "MISSED"
    click.echo(f"overhead (actor / ffmpeg): {result['overhead']:.3f} "
               f"(target < {TARGET_OVERHEAD}: {verdict})")
