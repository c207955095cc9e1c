"""``jobplatform bench incident``: the incident replayed on an emulated small instance.

20 video workers and 20 AI (roster import) workers at the same time, on a PostgreSQL held to
0.2 of one core with 25 connections, two ways: the original pattern (every worker with its own
connection, per-row ``get_or_create`` in one transaction per file, ``SELECT ... FOR UPDATE``
status updates) and the platform (the workers emit write intents, one writer applies them).
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
from bench._platform import WriterUnavailable
from bench._workload import Workload

#: (label, key) of the table's rows, in order.
ROWS = (
    ("jobs", "jobs"),
    ("failed jobs", "failed_jobs"),
    ("  failed roster imports", "failed_ai_jobs"),
    ("  failed video jobs", "failed_video_jobs"),
    ("video status updates committed", "video_updates"),
    ("video status p50 ms (event -> commit)", "video_p50_ms"),
    ("video status p99 ms", "video_p99_ms"),
    ("rows imported", "rows"),
    ("import completion s", "import_s"),
    ("rows/s", "rows_per_s"),
    ("server CPU s", "server_cpu_s"),
    ("server CPU ms per imported row", "server_cpu_ms_per_row"),
    ("server CPU share of wall (cap)", "server_cpu_share"),
    ("statements", "statements"),
    ("peak connections", "peak_connections"),
    ("longest transaction ms", "max_txn_ms"),
    ("wall s", "wall_s"),
)


def table(baseline: dict[str, Any], platform: dict[str, Any] | None) -> str:
    header = ["", "baseline (original)", "platform (one writer)", "baseline / platform"]
    rows = []
    for label, key in ROWS:
        mine = platform.get(key) if platform else None
        rows.append([label, baseline.get(key), mine, ratio(baseline.get(key), mine)])
    return markdown_table(header, rows)


def failures_text(name: str, report: dict[str, Any]) -> str:
    failures = report.get("failures") or {}
    if not failures:
        return f"{name}: no failures"
    return f"{name} failures: " + ", ".join(f"{reason} x{n}" for reason, n in failures.items())


@click.command(name="incident")
@click.option("--ai-workers", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--video-workers", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--rows-per-file", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Rows of each roster file (one file per AI worker).")
@click.option("--shared-fraction", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Share of each file's students that other files hold too.")
@click.option("--video-jobs", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--encode-s", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Seconds each encode takes on its worker machine (a wait, not DB load).")
@click.option("--baseline-only", is_flag=True, help="Skip the platform (no writer needed).")
@click.option("--timeout-s", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Longest wait for the writer to apply everything.")
@instance_options
def command(ai_workers: int, video_workers: int, rows_per_file: int, shared_fraction: float,
            video_jobs: int, encode_s: float, baseline_only: bool, timeout_s: float,
            cpu_quota: float, uncapped: bool, max_connections: int, statement_timeout_ms: int,
            connect_timeout_s: int, savepoints: bool, chunk_rows: int, as_json: bool,
            plot: bool) -> None:
    """20 video and 20 AI workers at once on an emulated small instance, both ways."""
    workload = Workload(ai_workers=ai_workers, video_workers=video_workers, files=ai_workers,
                        rows_per_file=rows_per_file, shared_fraction=shared_fraction,
                        video_jobs=video_jobs, encode_s=encode_s)
    base_opts = baseline_options(statement_timeout_ms, connect_timeout_s, savepoints)
    plat_opts = PlatformOptions(chunk_rows=chunk_rows, timeout_s=timeout_s)

    def echo(text: str) -> None:
        click.echo(text, err=as_json)

    with open_harness(None if uncapped else cpu_quota, max_connections, workload.files,
                      echo) as harness:
        echo(f"workload: {workload.describe()}")
        echo("baseline: the original pattern ...")
        baseline = harness.baseline(workload, base_opts)
        platform: dict[str, Any] | None = None
        skipped = None
        if not baseline_only:
            echo("platform: intents through one writer ...")
            try:
                platform = harness.platform(workload, plat_opts)
            except WriterUnavailable as exc:
                skipped = str(exc)
                echo(f"platform skipped: {skipped}")
        result: dict[str, Any] = {
            "instance": describe(harness, base_opts, plat_opts),
            "workload": workload.describe(),
            "baseline": baseline,
            "platform": platform,
        }
    if skipped:
        result["platform_skipped"] = skipped
    if platform:
        result["targets"] = targets(baseline, platform)
    if publish("incident", result, plot, as_json, echo):
        return
    click.echo("")
    click.echo(table(baseline, platform))
    click.echo("")
    click.echo(failures_text("baseline", baseline))
    if platform:
        click.echo(failures_text("platform", platform))
        for name, target in result["targets"].items():
            click.echo(f"target {name}: {'met' if target['met'] else 'MISSED'} "
                       f"({target['value']}; wanted {target['wanted']})")


def targets(baseline: dict[str, Any], platform: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 8's targets for the platform, measured in this run."""
    cpu_ratio = ratio(baseline.get("server_cpu_ms_per_row"), platform.get("server_cpu_ms_per_row"))
    p99 = platform.get("video_p99_ms")
    return {
        "no failed job": {"met": platform["failed_jobs"] == 0, "value": platform["failed_jobs"],
                          "wanted": 0},
        "peak connections": {"met": platform["peak_connections"] <= 2,
                             "value": platform["peak_connections"], "wanted": "<= 2"},
        "video status p99 ms": {"met": p99 is not None and p99 < 1000,
                                "value": None if p99 is None else round(p99, 1),
                                "wanted": "< 1000"},
        "server CPU per row, baseline / platform": {
            "met": cpu_ratio is not None and cpu_ratio >= 25,
            "value": None if cpu_ratio is None else round(cpu_ratio, 1), "wanted": ">= 25"},
    }
