from __future__ import annotations

import dataclasses
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import imageio_ffmpeg
import pytest

from actors.roster import Limits, open_roster
from jobplatform.demo import (
    DemoSummary,
    PeakSampler,
    mean_bound_ms,
    overlap,
    phone_number,
    write_roster,
    write_video,
)
from jobplatform.settings import load_settings


def test_generated_roster_holds_exactly_the_mistakes_it_reports(tmp_path: Path) -> None:
    roster = write_roster(tmp_path / "roster.xlsx", 2000, seed=3)

    # The roster actor's own reader finds the same invalid rows and duplicates.
    with open_roster(roster.path, Limits.from_settings(load_settings().roster)) as opened:
        counts = opened.validate(lambda rows: None)
    assert roster.invalid > 0
    assert roster.duplicates > 0
    assert min(roster.bad_phone, roster.missing_name, roster.bad_grade) > 0
    assert (counts.total, counts.invalid, counts.duplicates) == (
        2000, roster.invalid, roster.duplicates)
    assert counts.valid - counts.duplicates == roster.students


def test_phone_numbers_are_distinct_and_canonical() -> None:
    numbers = [phone_number(i) for i in (*range(5000), *range(5000, 90_000_000, 900_001))]
    assert len(set(numbers)) == len(numbers)
    assert all(len(n) == 13 and n.startswith("010-") for n in numbers)


def test_generated_video_is_a_short_clip_with_audio(tmp_path: Path) -> None:
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    path = write_video(tmp_path / "clip.mp4", ffmpeg, seconds=1, size="320x180")

    probe = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True,
                           text=True, check=False)
    assert "Video: h264" in probe.stderr
    assert "320x180" in probe.stderr
    assert "Audio: aac" in probe.stderr


def test_overlap_of_spans() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    s = timedelta(seconds=1)
    assert overlap((t, t + 3 * s), (t + 2 * s, t + 5 * s))
    assert not overlap((t, t + s), (t + s, t + 2 * s))
    assert not overlap((t, None), (t, t + s))


@pytest.mark.parametrize(
    ("p50", "p99", "largest", "count", "bound"),
    [(10.0, 10.0, 10.0, 50, 10.0), (10.0, 10.0, 1010.0, 100, 20.0),
     (60.0, 120.0, 120.0, 30, 90.0), (4.0, 10.0, 500.0, 1, 4.0), (0.0, 0.0, 0.0, 0, 0.0)],
)
def test_mean_bound(p50: float, p99: float, largest: float, count: int, bound: float) -> None:
    assert mean_bound_ms(p50, p99, largest, count) == pytest.approx(bound)


def test_peak_sampler_keeps_the_largest_value() -> None:
    values = iter([1, 4, 2])
    seen = []

    def sample() -> int:
        value = next(values, 0)
        seen.append(value)
        if len(seen) == 4:
            raise RuntimeError("database went away")
        return value

    sampler = PeakSampler(sample, interval_s=0.01).start()
    while len(seen) < 5:
        sampler._stop.wait(0.01)
    assert sampler.stop() == 4
    assert sampler.errors == ["RuntimeError: database went away"]


def summary(**changes: object) -> DemoSummary:
    good = DemoSummary(
        rows=100, videos=1, elapsed_s=2.0, failed_jobs=0, students_created=90,
        students_updated=0, students_unchanged=0, students_rejected=8, duplicates=2, enrolled=90,
        error_report_key="tenants/1/uploads/x/r.xlsx.errors.xlsx",
        hls_master_keys=["tenants/1/videos/v/master.m3u8"], writer_batches=4, rows_per_s=45.0,
        p50_txn_ms=5.0, p99_txn_ms=20.0, max_txn_ms=20.0, avg_txn_ms_bound=20.0,
        peak_db_connections=2, max_connections=25, concurrent=True,
    )
    return dataclasses.replace(good, **changes)  # type: ignore[arg-type]


def test_summary_checks_the_incident_checklist() -> None:
    good = summary()
    assert good.passed
    assert [c.passed for c in summary(peak_db_connections=20).checks()] == [False, True, True]
    assert [c.passed for c in summary(avg_txn_ms_bound=150.0).checks()] == [True, False, True]
    # A known mean takes the place of the bound.
    assert summary(avg_txn_ms_bound=150.0, avg_txn_ms=40.0).passed
    assert not summary(avg_txn_ms=140.0).passed
    assert [c.passed for c in summary(concurrent=False).checks()] == [True, True, False]
    assert [c.passed for c in summary(failed_jobs=1).checks()] == [True, True, False]
    text = "\n".join(good.lines())
    assert "PASS  connections under 80% of max_connections: peak 2 of 25 (limit 20)" in text
    assert "HLS master playlist: tenants/1/videos/v/master.m3u8" in text
    data = good.as_dict()
    for key in ("failed_jobs", "students_created", "students_rejected", "rows_per_s",
                "p99_txn_ms", "peak_db_connections", "max_connections"):
        assert key in data
    assert data["passed"] is True
