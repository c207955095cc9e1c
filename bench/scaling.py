"""``jobplatform bench scaling``: the same total work from 1 to 40 producers of each kind.

For every producer count N, N AI workers share a fixed set of roster files and N video workers
a fixed set of encode jobs, run both ways on the same emulated instance: peak connections,
failed jobs, server CPU per imported row and p99 status latency against N.
"""

from __future__ import annotations

from typing import Any

import click

from bench._common import markdown_table, ratio
from bench._harness import (
    PlatformOptions,
    baseline_options,
    describe,
    instance_options,
    open_harness,
    publish,
)
from bench._workload import Workload

FULL = (1, 2, 5, 10, 20, 40)
QUICK = (1, 5, 20)
KEYS = ("failed_jobs", "peak_connections", "video_p99_ms", "server_cpu_ms_per_row", "rows",
        "rows_per_s", "max_txn_ms")


def table(points: list[dict[str, Any]]) -> str:
    header = ["producers (each kind)", "way", "failed jobs", "peak conns", "p99 status ms",
              "CPU ms/row", "rows", "rows/s", "longest txn ms"]
    rows = []
    for point in points:
        for way in ("baseline", "platform"):
            report = point[way]
            rows.append([point["producers"], way, *(report.get(k) for k in KEYS)])
    return markdown_table(header, rows)


@click.command(name="scaling")
@click.option("--producers", "counts", type=click.IntRange(min=1), multiple=True,
              help=f"Producer counts (of each kind); default {', '.join(map(str, FULL))}.")
@click.option("--quick", is_flag=True,
              help=f"A smaller run: producers {', '.join(map(str, QUICK))}, half the work.")
@click.option("--files", type=click.IntRange(min=1), default=40, show_default=True,
              help="Roster files in total (shared by the AI workers).")
@click.option("--rows-per-file", type=click.IntRange(min=1), default=250, show_default=True)
@click.option("--video-jobs", type=click.IntRange(min=1), default=40, show_default=True,
              help="Encode jobs in total (shared by the video workers).")
@click.option("--encode-s", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--timeout-s", type=click.FloatRange(min=1), default=300.0, show_default=True)
@instance_options
def command(counts: tuple[int, ...], quick: bool, files: int, rows_per_file: int,
            video_jobs: int, encode_s: float, timeout_s: float, cpu_quota: float,
            uncapped: bool, max_connections: int, statement_timeout_ms: int,
            connect_timeout_s: int, savepoints: bool, chunk_rows: int, as_json: bool,
            plot: bool) -> None:
    """1 to 40 producers of each kind, a fixed total of work, both ways on one instance."""
    if quick:
        counts = counts or QUICK
        files, video_jobs, encode_s = max(1, files // 2), max(1, video_jobs // 2), encode_s / 2
    counts = counts or FULL
    base_opts = baseline_options(statement_timeout_ms, connect_timeout_s, savepoints)
    plat_opts = PlatformOptions(chunk_rows=chunk_rows, timeout_s=timeout_s)

    def echo(text: str) -> None:
        click.echo(text, err=as_json)

    points: list[dict[str, Any]] = []
    with open_harness(None if uncapped else cpu_quota, max_connections, files,
                      echo) as harness:
        for n in counts:
            workload = Workload(ai_workers=n, video_workers=n, files=files,
                                rows_per_file=rows_per_file, video_jobs=video_jobs,
                                encode_s=encode_s)
            echo(f"{n} producers of each kind: baseline ...")
            baseline = harness.baseline(workload, base_opts)
            echo(f"{n} producers of each kind: platform ...")
            platform = harness.platform(workload, plat_opts)
            points.append({"producers": n, "baseline": baseline, "platform": platform})
            echo(f"  failed {baseline['failed_jobs']} / {platform['failed_jobs']}, peak "
                 f"connections {baseline['peak_connections']} / {platform['peak_connections']}")
        reference = Workload(files=files, rows_per_file=rows_per_file, video_jobs=video_jobs,
                             encode_s=encode_s)
        result: dict[str, Any] = {
            "instance": describe(harness, base_opts, plat_opts),
            "workload": {k: v for k, v in reference.describe().items()
                         if k not in ("ai_workers", "video_workers")},
            "points": points,
            "summary": summary(points),
        }
    if publish("scaling", result, plot, as_json, echo):
        return
    click.echo("")
    click.echo(table(points))
    click.echo("")
    for key, value in result["summary"].items():
        click.echo(f"{key}: {value}")


def summary(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The platform's targets over every producer count, and the CPU ratio per count."""
    platform = [p["platform"] for p in points]
    p99s = [r["video_p99_ms"] for r in platform if r["video_p99_ms"] is not None]
    return {
        "platform_failed_jobs_total": sum(r["failed_jobs"] for r in platform),
        "platform_peak_connections_max": max(r["peak_connections"] for r in platform),
        "platform_video_p99_ms_max": max(p99s) if p99s else None,
        "baseline_failed_jobs_total": sum(p["baseline"]["failed_jobs"] for p in points),
        "cpu_per_row_baseline_over_platform": {
            p["producers"]: _rounded(ratio(p["baseline"]["server_cpu_ms_per_row"],
                                           p["platform"]["server_cpu_ms_per_row"]))
            for p in points
        },
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
