"""The incident's jobs as data: roster files that overlap in students, and videos to encode.

One academy (tenant) imports ``files`` rosters, one lecture each. A share of every file's rows
(``shared_fraction``) are students drawn from a pool that other files draw from too, in a
different order in each file, as real academies' rosters overlap; the rest are the file's own.
Videos are rows the API created (status ``queued``) before their encode jobs start.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cached_property
from typing import TypeVar

import psycopg

from schemas import StudentRow
from writer.migrate import upgrade

T = TypeVar("T")
TENANT_ID = 1
LECTURE_BASE = 1000


@dataclass(frozen=True, slots=True)
class Roster:
    """One roster file: an import into one lecture."""

    index: int
    import_id: uuid.UUID
    lecture_id: int
    rows: tuple[StudentRow, ...]


@dataclass(frozen=True)
class Workload:
    """A fixed amount of work, dealt round-robin to ``ai_workers`` and ``video_workers``."""

    ai_workers: int = 20
    video_workers: int = 20
    files: int = 20
    rows_per_file: int = 2000
    shared_fraction: float = 0.3
    video_jobs: int = 100
    encode_s: float = 3.0
    ramp_s: float = 2.0
    """Workers start spread over this many seconds, as pool machines come up."""
    seed: int = 7

    @property
    def rows(self) -> int:
        return self.files * self.rows_per_file

    @cached_property
    def rosters(self) -> tuple[Roster, ...]:
        rng = random.Random(self.seed)
        shared_per_file = round(self.rows_per_file * self.shared_fraction)
        own_per_file = self.rows_per_file - shared_per_file
        pool = list(range(max(2 * shared_per_file, 1)))
        next_own = len(pool)
        out = []
        for index in range(self.files):
            members = rng.sample(pool, shared_per_file) if shared_per_file else []
            members += range(next_own, next_own + own_per_file)
            next_own += own_per_file
            rng.shuffle(members)
            rows = tuple(student(n, source_row=i + 2) for i, n in enumerate(members))
            import_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            out.append(Roster(index, import_id, LECTURE_BASE + index, rows))
        return tuple(out)

    @cached_property
    def video_ids(self) -> tuple[uuid.UUID, ...]:
        rng = random.Random(self.seed + 1)
        return tuple(uuid.UUID(int=rng.getrandbits(128), version=4)
                     for _ in range(self.video_jobs))

    def rosters_of(self, worker: int) -> tuple[Roster, ...]:
        return self.rosters[worker::self.ai_workers]

    def videos_of(self, worker: int) -> tuple[uuid.UUID, ...]:
        return self.video_ids[worker::self.video_workers]

    def start_plan(self, ai: T, video: T) -> list[tuple[float, T, int]]:
        """Who starts when: AI and video workers interleaved, each after a seeded delay within
        the ramp, as machines of two pools come up (the same plan for both ways)."""
        rng = random.Random(self.seed + 2)
        plan: list[tuple[float, T, int]] = []
        for worker in range(max(self.ai_workers, self.video_workers)):
            if worker < self.ai_workers:
                plan.append((rng.uniform(0, self.ramp_s), ai, worker))
            if worker < self.video_workers:
                plan.append((rng.uniform(0, self.ramp_s), video, worker))
        return plan

    def describe(self) -> dict[str, object]:
        return {
            "ai_workers": self.ai_workers,
            "video_workers": self.video_workers,
            "roster_files": self.files,
            "rows_per_file": self.rows_per_file,
            "shared_fraction": self.shared_fraction,
            "rows": self.rows,
            "distinct_students": len({r.phone for f in self.rosters for r in f.rows}),
            "video_jobs": self.video_jobs,
            "encode_s": self.encode_s,
            "ramp_s": self.ramp_s,
        }


def student(n: int, *, source_row: int) -> StudentRow:
    """Student number ``n``: the same person (phone, name, details) in every file."""
    return StudentRow(
        source_row=source_row,
        name=f"Student {n}",
        phone=f"010-{n // 10000 % 10000:04d}-{n % 10000:04d}",
        parent_phone=f"011-{n // 10000 % 10000:04d}-{n % 10000:04d}" if n % 3 else None,
        school=f"School {n % 40}",
        grade=n % 12 + 1,
        birth_date=date(2008 + n % 8, n % 12 + 1, n % 28 + 1),
    )


def prepare_template(url: str, lectures: int) -> None:
    """Migrate a database and create its lectures: the state every run starts from."""
    upgrade(url, create_database=False)
    created = datetime(2024, 3, 1, tzinfo=UTC)
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO lectures (id, tenant_id, created_at) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                [(LECTURE_BASE + i, TENANT_ID, created) for i in range(lectures)],
            )
        conn.execute("ANALYZE")


def create_videos(url: str, workload: Workload) -> None:
    """The videos rows the API inserted when the uploads arrived (status ``queued``)."""
    queued = datetime(2024, 3, 1, tzinfo=UTC)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO videos (id, tenant_id, status, attempt, status_rank, source_key,"
            " queued_at, updated_at) VALUES (%s, %s, 'queued', 1, 0, %s, %s, %s)",
            [(v, TENANT_ID, f"uploads/{v}.mp4", queued, queued) for v in workload.video_ids],
        )
