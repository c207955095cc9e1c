"""``jobplatform demo``: the whole platform in one command, on embedded services if need be."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from jobplatform.cli._common import echo_json, settings_from_env
from jobplatform.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

    from jobplatform.demo import DemoJobs, DemoSummary, PeakSampler, RosterFile
    from jobplatform.publish import Publisher
    from jobplatform.runner import Formation, ProcessType
    from writer.report import Monitor

#: How often the demo looks at the database for finished jobs.
POLL_S = 0.25
#: The Procfile lines the demo needs.
POOLS = ("video", "ai", "writer")


@click.command()
@click.option("--rows", type=click.IntRange(1, 200_000), default=50_000, show_default=True,
              help="Rows of the generated roster (about 4% invalid, 2% duplicated).")
@click.option("--videos", type=click.IntRange(0, 8), default=2, show_default=True,
              help="Short generated videos to encode at the same time.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as one JSON object (progress goes to stderr).")
@click.option("--timeout", type=click.FloatRange(min=1), default=900.0, show_default=True,
              help="Seconds to wait for every job to finish.")
@click.option("-f", "--procfile", type=click.Path(dir_okay=False, path_type=Path),
              help="The formation to start (its video, ai and writer lines). Default: the"
                   " built-in formation, the same as the repository's Procfile.")
@click.option("-s", "--scale", help="Processes per Procfile line, e.g. video=2,ai=2.")
def demo(rows: int, videos: int, as_json: bool, timeout: float, procfile: Path | None,
         scale: str | None) -> None:
    """Start the services and the formation, import a generated roster while encoding
    generated videos, show their progress, and print a summary with the incident's
    checklist. Stops what it started. Exits 1 when a job failed or a check did not pass."""
    from rich.console import Console

    from jobplatform.extras import require_extra
    from jobplatform.runner import FormationError, builtin_formation, parse_scale, read_procfile
    from jobplatform.stack import session_services

    settings = settings_from_env()
    console = Console(stderr=as_json, highlight=False, soft_wrap=True)
    # The demo runs every pool and generates a spreadsheet and videos itself.
    for extra in ("writer", "roster") if settings.video.ffmpeg_path else (
            "writer", "roster", "video"):
        require_extra(extra, "`jobplatform demo`")
    types = read_procfile(procfile) if procfile is not None else builtin_formation()
    missing = sorted(set(POOLS) - {t.name for t in types})
    if missing:
        raise FormationError(f"{procfile} has no {', '.join(missing)} line: the demo needs "
                             f"the {', '.join(POOLS)} pools")
    counts = parse_scale(scale, types)
    started = time.monotonic()
    with session_services(settings) as services:
        if services.started:
            console.print(f"started embedded {', '.join(services.started)} under "
                          f"{settings.jobplatform_state_dir}")
        summary = _run(services.apply(settings), services.environ(), types, counts, rows,
                       videos, timeout, console)
    if as_json:
        echo_json(summary.as_dict())
    else:
        console.print()
        for line in summary.lines():
            console.print(line)
        console.print(f"demo took {time.monotonic() - started:.1f} s in all")
    ok = summary.passed and summary.failed_jobs == 0 and not summary.timed_out
    raise click.exceptions.Exit(0 if ok else 1)


def _run(settings: Settings, environ: dict[str, str], types: Sequence[ProcessType],
         counts: dict[str, int], rows: int, videos: int, timeout: float,
         console: Console) -> DemoSummary:
    import imageio_ffmpeg

    from jobplatform.demo import PeakSampler, write_roster, write_video
    from jobplatform.publish import Publisher
    from jobplatform.runner import Formation
    from jobplatform.s3 import ensure_bucket, s3_client
    from writer.migrate import upgrade
    from writer.report import Monitor

    assert settings.database_url is not None
    upgrade(settings.database_url)
    s3 = s3_client(settings)
    ensure_bucket(s3, settings.s3.bucket)
    work = settings.jobplatform_state_dir / "demo"
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "formation.log"
    with log_path.open("w", encoding="utf-8") as log:
        env = {**environ, "WRITER_STATS_INTERVAL_S": "1",
               "BROKER_NAMESPACE": settings.broker_namespace}
        formation = Formation(types, scale=counts, env=env, cwd=None, output=log,
                              colour=False, stop_timeout_s=30)
        sampler_monitor = Monitor(settings.database_url)
        monitor = Monitor(settings.database_url)
        publisher = Publisher(settings, s3=s3)
        sampler = PeakSampler(sampler_monitor.platform_connections)
        try:
            with formation.stop_signals():
                formation.start()
                sampler.start()
                console.print(f"formation: {', '.join(p.label for p in formation.processes)}"
                              f" (logs in {log_path})")
                ffmpeg = settings.video.ffmpeg_path or imageio_ffmpeg.get_ffmpeg_exe()
                roster = write_roster(work / "roster.xlsx", rows)
                clips = [write_video(work / f"lecture-{n + 1}.mp4", ffmpeg, tone_hz=330 + 110 * n)
                         for n in range(videos)]
                console.print(f"generated {roster.rows:,} roster rows ({roster.invalid} invalid,"
                              f" {roster.duplicates} duplicated) and {len(clips)} videos")
                return _publish_and_wait(publisher, monitor, sampler, formation, roster, clips,
                                         timeout, console)
        finally:
            sampler.stop()
            formation.stop()
            publisher.close()
            sampler_monitor.close()
            monitor.close()


def _publish_and_wait(publisher: Publisher, monitor: Monitor, sampler: PeakSampler,
                      formation: Formation, roster: RosterFile, clips: list[Path],
                      timeout: float, console: Console) -> DemoSummary:
    from rich.live import Live

    from jobplatform.demo import ProgressView, upload_and_publish

    tenant_id = 1_000_000 + uuid.uuid4().int % 1_000_000_000
    jobs = upload_and_publish(publisher, roster, clips, tenant_id=tenant_id,
                              lecture_id=tenant_id * 100 + 1, ids=uuid.uuid4)
    console.print(f"published {len(jobs.all)} jobs for tenant {tenant_id}")
    view = ProgressView(console, publisher, jobs, sampler)
    deadline = jobs.published_at + timeout
    failures: list[str] = []
    live = Live(view.renderable(), console=console, auto_refresh=False) \
        if console.is_terminal else None
    if live is not None:
        live.start()
    try:
        while True:
            finished = _finished(monitor, jobs)
            if live is not None:
                live.update(view.renderable(), refresh=True)
            else:
                view.print_plain()
            if finished:
                break
            if formation.first_exit is not None:
                p = formation.first_exit
                failures.append(f"{p.label} exited with code {p.returncode} (see its log)")
                break
            if formation.requested.is_set():
                failures.append("interrupted")
                break
            if time.monotonic() > deadline:
                failures.append(f"timed out after {timeout:g} s")
                break
            time.sleep(POLL_S)
    finally:
        if live is not None:
            live.stop()
    done_at = time.monotonic()
    return _summary(publisher, monitor, sampler, jobs, roster, done_at, failures,
                    timed_out=not finished)


def _finished(monitor: Monitor, jobs: DemoJobs) -> bool:
    record = monitor.roster_import(jobs.roster.import_id)
    vids = monitor.videos([v.video_id for v in jobs.videos])
    roster_done = record is not None and record["status"] in ("done", "failed")
    videos_done = len(vids) == len(jobs.videos) and all(
        v["status"] in ("ready", "failed") for v in vids)
    return roster_done and videos_done


def _writer_stats(publisher: Publisher, after: float, wait_s: float = 5.0) -> dict[str, Any]:
    """The writer's stats published after ``after`` (wall clock), waiting for the next ones."""
    from jobplatform.watch import read_writer_stats

    namespace = publisher.settings.broker_namespace
    deadline = time.monotonic() + wait_s
    stats = read_writer_stats(publisher.redis, namespace) or {}
    while float(stats.get("at", 0)) < after and time.monotonic() < deadline:
        time.sleep(0.2)
        stats = read_writer_stats(publisher.redis, namespace) or {}
    return stats


def _summary(publisher: Publisher, monitor: Monitor, sampler: PeakSampler, jobs: DemoJobs,
             roster: RosterFile, done_at: float, failures: list[str], *,
             timed_out: bool) -> DemoSummary:
    from jobplatform.demo import DemoSummary, mean_bound_ms, overlap

    elapsed = done_at - jobs.published_at
    stats = _writer_stats(publisher, time.time() - 0.1)
    record = monitor.roster_import(jobs.roster.import_id) or {}
    vids = monitor.videos([v.video_id for v in jobs.videos])
    failed = [f"video {v['id']}: {v['error']}" for v in vids if v["status"] == "failed"]
    if record.get("status") == "failed":
        failed.append(f"roster import: {record.get('error')}")
    unfinished = (0 if record.get("status") in ("done", "failed") else 1) + sum(
        v["status"] not in ("ready", "failed") for v in vids) + len(jobs.videos) - len(vids)
    roster_span = (record.get("started_at"), record.get("finished_at"))
    concurrent = any(overlap((v["started_at"], v["finished_at"]), roster_span) for v in vids)
    written = sum(int(record.get(k) or 0) for k in ("created", "updated", "unchanged"))
    count = int(stats.get("commit_ms_count", 0))
    p50, p99 = float(stats.get("commit_ms_p50", 0.0)), float(stats.get("commit_ms_p99", 0.0))
    largest = float(stats.get("commit_ms_max", 0.0))
    return DemoSummary(
        rows=roster.rows,
        videos=len(jobs.videos),
        elapsed_s=round(elapsed, 2),
        failed_jobs=len(failed) + unfinished,
        students_created=int(record.get("created") or 0),
        students_updated=int(record.get("updated") or 0),
        students_unchanged=int(record.get("unchanged") or 0),
        students_rejected=int(record.get("invalid") or 0),
        duplicates=int(record.get("duplicates") or 0),
        enrolled=int(record.get("enrolled") or 0),
        error_report_key=record.get("report_key"),
        hls_master_keys=[v["hls_key"] for v in vids if v["hls_key"]],
        writer_batches=int(stats.get("batches", 0)),
        rows_per_s=round(written / elapsed, 1) if elapsed > 0 else 0.0,
        p50_txn_ms=p50,
        p99_txn_ms=p99,
        max_txn_ms=largest,
        avg_txn_ms_bound=round(mean_bound_ms(p50, p99, largest, count), 2),
        avg_txn_ms=float(stats["commit_ms_mean"]) if "commit_ms_mean" in stats else None,
        peak_db_connections=sampler.peak,
        max_connections=monitor.max_connections(),
        concurrent=concurrent,
        injected={"bad_phone": roster.bad_phone, "missing_name": roster.missing_name,
                  "bad_grade": roster.bad_grade, "duplicates": roster.duplicates},
        failures=failures + failed + sampler.errors,
        timed_out=timed_out,
        ids={"tenant_id": jobs.tenant_id, "lecture_id": jobs.lecture_id,
               "import_id": str(jobs.roster.import_id),
               "video_ids": [str(v.video_id) for v in jobs.videos]},
    )

