"""``jobplatform bench roster``: the AI actor's parse, validate and emit path beside openpyxl.

One generated .xlsx roster (six columns, mixed phone spellings and grade forms, a few invalid
rows and duplicates) is read twice, each in its own subprocess so each has its own peak RSS:

- ``actor``: the import's own path: pre-check, calamine, header detection, validation and
  chunking, each chunk built as a ``RosterChunk`` intent and serialised to the JSON it travels
  as (then dropped: an in-memory sink, no Redis); measured again without building intents
  (``parse_validate_rows_per_s``);
- ``openpyxl``: openpyxl's read-only mode iterating the same rows' values (no validation).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import click

PHONE_FORMS = ("010-{a:04d}-{b:04d}", "010{a:04d}{b:04d}", "010 {a:04d} {b:04d}",
               "+82 10-{a:04d}-{b:04d}")
GRADES = ("고1", "중3", "초6", 10, 12.0, "3학년")


def write_roster(path: Path, rows: int, *, start: int = 0, invalid_every: int = 501) -> None:
    """A roster of ``rows`` students numbered from ``start`` (their phones follow the number);
    every ``invalid_every``-th row has a landline, an invalid phone (0: none)."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("명단")
    sheet.append(["이름", "휴대폰 번호", "학부모 연락처", "학교", "학년", "생년월일"])
    for i in range(start, start + rows):
        a, b = 1000 + i // 10_000, i % 10_000
        phone: Any = PHONE_FORMS[i % len(PHONE_FORMS)].format(a=a, b=b)
        if i % 97 == 0:
            phone = int(f"10{a:04d}{b:04d}")
        if invalid_every and i % invalid_every == 0:
            phone = "02-123-4567"
        sheet.append([
            f"학생{i}", phone, "010-9999-8888" if i % 3 else None, "한국고등학교",
            GRADES[i % len(GRADES)], date(2008, 1 + i % 12, 1 + i % 28),
        ])
    workbook.save(path)


def measure_actor(path: Path, emit_intents: bool = True) -> dict[str, Any]:
    from actors.roster import Limits, open_roster
    from schemas import RosterChunk
    from schemas.intents import intent_json

    import_id = uuid.uuid4()
    sent_bytes = 0
    started = time.perf_counter()
    with open_roster(path, Limits(max_rows=10_000_000, max_cells=100_000_000)) as roster:
        index = 0

        def emit(rows: Any) -> None:
            nonlocal index, sent_bytes
            if not emit_intents:
                return
            chunk = RosterChunk(
                tenant_id=1, occurred_at=datetime.now(UTC), import_id=import_id, lecture_id=1,
                chunk_index=index, rows=rows,
            )
            sent_bytes += len(intent_json(chunk))
            index += 1

        counts = roster.validate(emit)
    seconds = time.perf_counter() - started
    return {"rows": counts.total, "valid": counts.valid, "chunks": counts.chunks,
            "seconds": seconds, "emitted_mib": sent_bytes / 2**20}


def measure_openpyxl(path: Path) -> dict[str, Any]:
    from openpyxl import load_workbook

    started = time.perf_counter()
    workbook = load_workbook(path, read_only=True, data_only=True)
    rows = sum(1 for _ in workbook["명단"].iter_rows(min_row=2, values_only=True))
    workbook.close()
    return {"rows": rows, "seconds": time.perf_counter() - started}


def _child(which: str, path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.roster", which, str(path)],
        capture_output=True, text=True, check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@click.command()
@click.option("--rows", default=100_000, show_default=True, help="Rows in the generated roster.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(rows: int, as_json: bool) -> None:
    """Parse+validate+emit throughput and peak memory of the AI actor, beside openpyxl."""
    with tempfile.TemporaryDirectory(prefix="bench-roster-") as folder:
        path = Path(folder) / "roster.xlsx"
        write_roster(path, rows)
        actor = _child("actor", path)
        validate_only = _child("validate", path)
        baseline = _child("openpyxl", path)
        size = path.stat().st_size
    result = {
        "rows": actor["rows"],
        "file_mib": round(size / 2**20, 2),
        "rows_per_s": round(actor["rows"] / actor["seconds"]),
        "peak_rss_mib": round(actor["peak_rss_mib"], 1),
        "parse_validate_rows_per_s": round(validate_only["rows"] / validate_only["seconds"]),
        "chunks": actor["chunks"],
        "emitted_mib": round(actor["emitted_mib"], 1),
        "openpyxl_rows_per_s": round(baseline["rows"] / baseline["seconds"]),
        "openpyxl_peak_rss_mib": round(baseline["peak_rss_mib"], 1),
    }
    result["speedup_vs_openpyxl"] = round(result["rows_per_s"] / result["openpyxl_rows_per_s"], 1)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{result['rows']} rows ({result['file_mib']} MiB .xlsx)\n"
        f"  actor parse+validate+emit: {result['rows_per_s']:,} rows/s,"
        f" peak RSS {result['peak_rss_mib']} MiB, {result['chunks']} chunks\n"
        f"  actor parse+validate only: {result['parse_validate_rows_per_s']:,} rows/s\n"
        f"  openpyxl read-only:        {result['openpyxl_rows_per_s']:,} rows/s,"
        f" peak RSS {result['openpyxl_peak_rss_mib']} MiB\n"
        f"  ratio: {result['speedup_vs_openpyxl']}x"
    )


def _main(which: str, path: str) -> None:
    if which == "openpyxl":
        measured = measure_openpyxl(Path(path))
    else:
        measured = measure_actor(Path(path), emit_intents=which == "actor")
    measured["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(json.dumps(measured))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
