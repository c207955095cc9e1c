"""The demo's parts that need no database: its input files, its progress view, its summary.

``jobplatform demo`` (in :mod:`jobplatform.cli.demo`, the composition root) starts the services
and the formation, makes a roster spreadsheet with realistic mistakes and a few short test
videos, uploads and publishes them together, shows their progress, and prints a summary that it
completes from the database through ``writer.report``.
"""

from __future__ import annotations

import math
import random
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from jobplatform.publish import JobStatus, Publisher
from jobplatform.watch import read_writer_stats, render, take_snapshot
from schemas import EncodeVideo, ImportRoster, Rendition

#: A ladder that fits the demo's small videos: two renditions, cheap to encode.
DEMO_LADDER = (
    Rendition(name="360p", height=360, video_kbps=800, audio_kbps=96),
    Rendition(name="240p", height=240, video_kbps=400, audio_kbps=64),
)
HEADER = ("이름", "휴대폰 번호", "학부모 연락처", "학교", "학년", "생년월일")

_SURNAMES = "김이박최정강조윤장임한오서신권황안송류홍전고문양손배백허유남심노하곽성차주우구민"
_SYLLABLES = (
    "민서준우지현도윤하은예진수아시우연서주원건태희다인채유나영재석성호경동훈혜"
    "승아린보람소율이안종찬효정규빈"
)
_SCHOOLS = (("대치", "고"), ("한빛", "중"), ("서울", "고등학교"), ("반포", "중학교"),
            ("목동", "고"), ("분당", "중"), ("해운대", "고등학교"), ("수성", "중학교"))
_BAD_PHONES = ("010-123-456", "02-3456-7890", "전화 없음", "010-1234-56789", "1588-1234")
_BAD_GRADES = ("대학생", 15, "고4", "N수")


@dataclass(frozen=True, slots=True)
class RosterFile:
    """A generated roster and the mistakes put in it."""

    path: Path
    rows: int
    """Data rows written (duplicates included)."""
    bad_phone: int
    missing_name: int
    bad_grade: int
    duplicates: int
    """Rows repeating an earlier row's phone number (the later row wins)."""

    @property
    def invalid(self) -> int:
        return self.bad_phone + self.missing_name + self.bad_grade

    @property
    def students(self) -> int:
        """Distinct valid students the file holds."""
        return self.rows - self.invalid - self.duplicates


def phone_number(index: int) -> str:
    """A distinct 010 number for each index below 90,000,000."""
    n = 10_000_000 + (index * 7919 + 1_234_567) % 90_000_000
    return f"010-{n // 10_000:04d}-{n % 10_000:04d}"


def _spelling(canonical: str, rnd: random.Random) -> str | int:
    """One of the ways people type a mobile number into a spreadsheet."""
    digits = canonical.replace("-", "")
    roll = rnd.random()
    if roll < 0.4:
        return canonical
    if roll < 0.65:
        return digits
    if roll < 0.75:
        return f"{digits[:3]} {digits[3:7]} {digits[7:]}"
    if roll < 0.85:
        return f"+82 {digits[1:3]}-{digits[3:7]}-{digits[7:]}"
    if roll < 0.95:
        return int(digits)  # a numeric cell: the leading 0 is lost
    return canonical.translate(str.maketrans("0123456789-", "０１２３４５６７８９－"))


def _grade(school_kind: str, rnd: random.Random) -> str | int | float:
    years = 3
    level = "고" if school_kind.startswith("고") else "중"
    year = rnd.randint(1, years)
    return rnd.choice((f"{level}{year}", year, f"{year}학년", float(year + (9 if level == "고"
                       else 6))))


def _birth(rnd: random.Random) -> date | str:
    born = date(2007, 1, 1) + timedelta(days=rnd.randrange(6 * 365))
    return rnd.choice((born, born.strftime("%Y.%m.%d"), born.strftime("%Y%m%d")))


def write_roster(
    path: Path, rows: int, *, seed: int = 7, error_rate: float = 0.04,
    duplicate_rate: float = 0.02,
) -> RosterFile:
    """An .xlsx roster of ``rows`` data rows under a title row, with mistakes mixed in:
    ``error_rate`` of the rows invalid (bad phones, missing names, impossible grades) and
    ``duplicate_rate`` repeating an earlier student's phone with newer details."""
    from openpyxl import Workbook

    rnd = random.Random(seed)
    book = Workbook(write_only=True)
    sheet = book.create_sheet("명단")
    sheet.append(["2026 겨울방학 특강 수강생 명단"])
    sheet.append([])
    sheet.append(list(HEADER))
    counts = {"bad_phone": 0, "missing_name": 0, "bad_grade": 0, "duplicates": 0}
    valid_phones: list[str] = []
    for index in range(rows):
        surname = rnd.choice(_SURNAMES)
        name = surname + "".join(rnd.choices(_SYLLABLES, k=2))
        town, kind = rnd.choice(_SCHOOLS)
        canonical = phone_number(index)
        row: list[Any] = [
            name, _spelling(canonical, rnd),
            _spelling(phone_number(index + 45_000_000), rnd) if rnd.random() < 0.7 else None,
            town + kind, _grade(kind, rnd), _birth(rnd),
        ]
        roll = rnd.random()
        if roll < error_rate:
            which = rnd.randrange(3)
            if which == 0:
                row[1] = rnd.choice(_BAD_PHONES)
                counts["bad_phone"] += 1
            elif which == 1:
                row[0] = rnd.choice(("", None, "  "))
                counts["missing_name"] += 1
            else:
                row[4] = rnd.choice(_BAD_GRADES)
                counts["bad_grade"] += 1
        elif roll < error_rate + duplicate_rate and valid_phones:
            row[1] = rnd.choice(valid_phones)
            counts["duplicates"] += 1
        else:
            valid_phones.append(canonical)
        sheet.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return RosterFile(path=path, rows=rows, **counts)


def write_video(path: Path, ffmpeg: str, *, seconds: float = 3.0, size: str = "640x360",
                tone_hz: int = 440) -> Path:
    """A short test clip with a tone: lavfi's test pattern, H.264 and AAC in MP4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds:g}",
        "-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=44100:duration={seconds:g}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "96k", "-shortest", "-movflags", "+faststart", str(path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg could not make {path.name}: {done.stderr.strip()[-500:]}")
    return path


# --- publishing --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DemoJobs:
    tenant_id: int
    lecture_id: int
    roster: ImportRoster
    videos: tuple[EncodeVideo, ...]
    published_at: float
    """``time.monotonic()`` right after the last publish."""

    @property
    def all(self) -> tuple[EncodeVideo | ImportRoster, ...]:
        return (self.roster, *self.videos)


def upload_and_publish(
    publisher: Publisher, roster: RosterFile, videos: Sequence[Path], *, tenant_id: int,
    lecture_id: int, ids: Callable[[], Any],
) -> DemoJobs:
    """Upload every source first, then publish all the jobs back to back."""
    roster_key = publisher.upload(roster.path, tenant_id, "roster", roster.path.name)
    video_keys = [publisher.upload(v, tenant_id, "video", v.name) for v in videos]
    roster_job = ImportRoster(tenant_id=tenant_id, import_id=ids(), lecture_id=lecture_id,
                              source_key=roster_key, filename=roster.path.name)
    video_jobs = tuple(
        EncodeVideo(tenant_id=tenant_id, video_id=ids(), source_key=key, ladder=DEMO_LADDER)
        for key in video_keys
    )
    jobs: tuple[EncodeVideo | ImportRoster, ...] = (*video_jobs, roster_job)
    for job in jobs:
        publisher.publish(job, idempotency_key=f"demo-{job.job_id}")
    return DemoJobs(tenant_id, lecture_id, roster_job, video_jobs, time.monotonic())


# --- watching ----------------------------------------------------------------------------------

class PeakSampler:
    """Calls ``sample()`` every ``interval_s`` on a thread and keeps the largest value."""

    def __init__(self, sample: Callable[[], int], interval_s: float = 0.2) -> None:
        self.sample = sample
        self.interval_s = interval_s
        self.peak = 0
        self.last = 0
        self.samples = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)

    def start(self) -> PeakSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.last = self.sample()
                self.peak = max(self.peak, self.last)
                self.samples += 1
            except Exception as exc:  # the sampler reports, the demo goes on
                if len(self.errors) < 5:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.peak


class ProgressView:
    """The demo's live display: rich when the console is a terminal, plain lines otherwise."""

    def __init__(self, console: Console, publisher: Publisher, jobs: DemoJobs,
                 connections: PeakSampler) -> None:
        self.console = console
        self.publisher = publisher
        self.ids = {job.job_id for job in jobs.all}
        self.connections = connections
        self._last_line = ""
        self._last_plain = 0.0

    def statuses(self) -> list[JobStatus]:
        return [self.publisher.status(job_id) for job_id in sorted(self.ids)]

    def renderable(self) -> RenderableType:
        snapshot = take_snapshot(self.publisher.redis, self.publisher.settings, recent_s=1e9)
        snapshot = type(snapshot)(snapshot.at, [j for j in snapshot.jobs if j.job_id in self.ids],
                                  snapshot.queues, snapshot.writer)
        db = Text(f"PostgreSQL connections held by the platform: {self.connections.last} "
                  f"(peak {self.connections.peak})")
        return Group(render(snapshot), db)

    def plain_line(self) -> str:
        parts = []
        for status in self.statuses():
            figure = f"{status.percent:.0f}%" if status.percent is not None else ""
            rows = status.progress.get("rows")
            if isinstance(rows, int):
                figure = f"{rows:,} rows"
            state: str = status.state
            if status.step and status.step != state and state in ("running", "writing"):
                state = f"{state}:{status.step}"
            parts.append(f"{status.job_id[:14]} {state} {figure}".rstrip())
        stats = read_writer_stats(self.publisher.redis, self.publisher.settings.broker_namespace)
        if stats:
            parts.append(f"writer {stats.get('batches', 0)} batches")
        parts.append(f"db conns {self.connections.last} (peak {self.connections.peak})")
        return " | ".join(parts)

    def print_plain(self, every_s: float = 2.0) -> None:
        """One line when something changed, at most every ``every_s`` seconds."""
        now = time.monotonic()
        if now - self._last_plain < every_s:
            return
        line = self.plain_line()
        if line != self._last_line:
            self.console.print(line, highlight=False, soft_wrap=True)
            self._last_line = line
        self._last_plain = now


# --- the summary -------------------------------------------------------------------------------

Span = tuple[datetime | None, datetime | None]


def overlap(a: Span, b: Span) -> bool:
    """Whether two (start, end) spans share a moment; an unknown bound never overlaps."""
    if a[0] is None or a[1] is None or b[0] is None or b[1] is None:
        return False
    return max(a[0], b[0]) < min(a[1], b[1])


def mean_bound_ms(p50: float, p99: float, largest: float, count: int) -> float:
    """An upper bound of the mean of ``count`` samples from their p50 and p99 (nearest rank)
    and their max: at least ceil(n/2) samples are at most p50, at least ceil(0.99 n) at most
    p99, and the others at most the max."""
    if count <= 0:
        return 0.0
    half, most = math.ceil(0.5 * count), math.ceil(0.99 * count)
    return (half * p50 + (most - half) * p99 + (count - most) * largest) / count

@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class DemoSummary:
    """Everything the demo reports; the JSON form is :meth:`as_dict`."""

    rows: int
    videos: int
    elapsed_s: float
    failed_jobs: int
    students_created: int
    students_updated: int
    students_unchanged: int
    students_rejected: int
    duplicates: int
    enrolled: int
    error_report_key: str | None
    hls_master_keys: list[str]
    writer_batches: int
    rows_per_s: float
    p50_txn_ms: float
    p99_txn_ms: float
    max_txn_ms: float
    avg_txn_ms_bound: float
    """The writer's mean transaction time is at most this (see :func:`mean_bound_ms`)."""
    peak_db_connections: int
    max_connections: int
    concurrent: bool
    """An encode and the import were running at the same time."""
    avg_txn_ms: float | None = None
    """The writer's mean transaction time, when its stats carry ``commit_ms_mean``."""
    injected: dict[str, int] = field(default_factory=dict)
    """The mistakes the generator put in the roster, by kind."""
    ids: dict[str, Any] = field(default_factory=dict)
    """Tenant, lecture, import and video ids of this run, to look them up."""
    failures: list[str] = field(default_factory=list)
    timed_out: bool = False

    def checks(self) -> list[Check]:
        limit = 0.8 * self.max_connections
        return [
            Check("connections under 80% of max_connections",
                  self.max_connections > 0 and self.peak_db_connections < limit,
                  f"peak {self.peak_db_connections} of {self.max_connections} "
                  f"(limit {limit:g})"),
            Check("average transaction latency under 100 ms",
                  self.writer_batches > 0 and self.average_ms < 100,
                  f"average {'' if self.avg_txn_ms is not None else 'at most '}"
                  f"{self.average_ms:.1f} ms over {self.writer_batches:,} writer transactions"
                  f" (p50 {self.p50_txn_ms:.1f}, p99 {self.p99_txn_ms:.1f},"
                  f" max {self.max_txn_ms:.1f})"),
            Check("video and roster jobs at the same time without failures",
                  self.concurrent and self.failed_jobs == 0 and not self.timed_out,
                  ("ran concurrently" if self.concurrent else "did not overlap")
                  + f", {self.failed_jobs} failed" + (", timed out" if self.timed_out else "")),
        ]

    @property
    def average_ms(self) -> float:
        """The mean transaction time, or its upper bound when the mean is not known."""
        return self.avg_txn_ms if self.avg_txn_ms is not None else self.avg_txn_ms_bound

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks())

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["checks"] = [asdict(c) for c in self.checks()]
        out["passed"] = self.passed
        return out

    def lines(self) -> list[str]:
        out = [
            f"roster: {self.rows:,} rows -> students created {self.students_created:,}, "
            f"updated {self.students_updated:,}, unchanged {self.students_unchanged:,}, "
            f"rejected {self.students_rejected:,}, duplicates {self.duplicates:,}, "
            f"enrolled {self.enrolled:,}",
            f"error report: {self.error_report_key or '(none)'}",
        ]
        out += [f"HLS master playlist: {key}" for key in self.hls_master_keys]
        out += [
            f"writer: {self.writer_batches:,} batches, {self.rows_per_s:,.0f} rows/s, "
            f"p99 transaction {self.p99_txn_ms:.1f} ms",
            f"PostgreSQL: peak {self.peak_db_connections} connections held by the platform, "
            f"max_connections {self.max_connections}",
            f"jobs: {self.videos + 1} published, {self.failed_jobs} failed or unfinished;"
            f" {self.elapsed_s:.1f} s from publish to the last commit",
        ]
        out += [f"  failure: {f}" for f in self.failures]
        out += [f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in self.checks()]
        return out
