"""``jobplatform bench roster``: the AI actor's parse, validate and emit path beside openpyxl,
and beside the roster code of an earlier revision.

One roster written by the benchmark (six columns, mixed phone spellings and grade forms, a few
invalid rows and duplicates) per format is read, each path in its own subprocess so each has
its own peak RSS:

- ``actor``: the import's own path: pre-check, calamine, header detection, validation and
  chunking, each chunk built as a ``RosterChunk`` intent and serialised to the JSON it travels
  as (then dropped: an in-memory sink, no Redis); measured again without building intents
  (``parse_validate_rows_per_s``), with the pre-check alone timed first (``precheck_s``);
- ``openpyxl``: openpyxl's read-only mode iterating the same rows' values (no validation);
- with ``--baseline-rev REV``: the same parse+validate run with the ``actors``, ``schemas`` and
  ``jobplatform`` packages of revision REV (``git archive`` of this checkout into a temporary
  folder, first on the child's path), alternating with the current code, ``--repeat`` times
  each, on the same files: medians and ratios (current / baseline), of wall time and of the
  child's CPU time (steadier on a shared machine).

Formats (``--formats``): ``xlsx`` (openpyxl's writer), ``ods`` (the shape LibreOffice writes for
a sheet nobody formatted: typed cells, ``calcext`` attributes, one ``text:p`` each) and
``ods-padded`` (the same with the padding Calc adds to a sheet formatted as a whole or saved
from Excel: every row filled out with empty cells to column 16384, empty rows repeated to row
1048576; a revision before the pre-check counted values refuses it).
"""

from __future__ import annotations

import io
import json
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import click

PHONE_FORMS = ("010-{a:04d}-{b:04d}", "010{a:04d}{b:04d}", "010 {a:04d} {b:04d}",
               "+82 10-{a:04d}-{b:04d}")
GRADES = ("고1", "중3", "초6", 10, 12.0, "3학년")
HEADER = ("이름", "휴대폰 번호", "학부모 연락처", "학교", "학년", "생년월일")
FORMATS = ("xlsx", "ods", "ods-padded")
ROOT = Path(__file__).resolve().parents[1]
#: What a baseline revision contributes: the code on the roster import's path.
BASELINE_PACKAGES = ("actors", "schemas", "jobplatform")


def roster_rows(rows: int, *, start: int = 0, invalid_every: int = 501) -> list[list[Any]]:
    """``rows`` students numbered from ``start`` (their phones follow the number); every
    ``invalid_every``-th row has a landline, an invalid phone (0: none)."""
    out: list[list[Any]] = []
    for i in range(start, start + rows):
        a, b = 1000 + i // 10_000, i % 10_000
        phone: Any = PHONE_FORMS[i % len(PHONE_FORMS)].format(a=a, b=b)
        if i % 97 == 0:
            phone = int(f"10{a:04d}{b:04d}")
        if invalid_every and i % invalid_every == 0:
            phone = "02-123-4567"
        out.append([
            f"학생{i}", phone, "010-9999-8888" if i % 3 else None, "한국고등학교",
            GRADES[i % len(GRADES)], date(2008, 1 + i % 12, 1 + i % 28),
        ])
    return out


def write_roster(path: Path, rows: int, *, start: int = 0, invalid_every: int = 501) -> None:
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("명단")
    sheet.append(list(HEADER))
    for row in roster_rows(rows, start=start, invalid_every=invalid_every):
        sheet.append(row)
    workbook.save(path)


_ODS_NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:calcext="urn:org:documentfoundation:names:experimental:calc:xmlns:calcext:1.0"'
)


def _ods_cell(value: Any) -> str:
    if value is None:
        return "<table:table-cell/>"
    if isinstance(value, date):
        text = value.isoformat()
        return (f'<table:table-cell table:style-name="ce1" office:value-type="date"'
                f' office:date-value="{text}" calcext:value-type="date"><text:p>{text}</text:p>'
                "</table:table-cell>")
    if isinstance(value, int | float):
        return (f'<table:table-cell office:value-type="float" office:value="{value}"'
                f' calcext:value-type="float"><text:p>{value}</text:p></table:table-cell>')
    text = escape(str(value))
    return (f'<table:table-cell office:value-type="string" calcext:value-type="string">'
            f"<text:p>{text}</text:p></table:table-cell>")


def write_ods_roster(path: Path, rows: int, *, padded: bool = False) -> None:
    """The roster as LibreOffice Calc lays out a sheet; ``padded`` as Calc pads one that was
    formatted as a whole (or saved from Excel)."""
    width = len(HEADER)
    pad = f'<table:table-cell table:number-columns-repeated="{16384 - width}"/>' if padded \
        else ""
    parts = [f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {_ODS_NS}'
             ' office:version="1.3"><office:body><office:spreadsheet>'
             '<table:table table:name="명단" table:style-name="ta1">'
             f'<table:table-column table:style-name="co1" table:number-columns-repeated='
             f'"{16384 if padded else width}" table:default-cell-style-name="Default"/>']
    for row in [list(HEADER), *roster_rows(rows)]:
        parts.append('<table:table-row table:style-name="ro1">'
                     + "".join(_ods_cell(v) for v in row) + pad + "</table:table-row>")
    if padded:
        parts.append(f'<table:table-row table:style-name="ro1" table:number-rows-repeated='
                     f'"{1048576 - rows - 1}"><table:table-cell table:number-columns-repeated='
                     '"16384"/></table:table-row>')
    parts.append("</table:table></office:spreadsheet></office:body></office:document-content>")
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest xmlns:manifest="urn:oasis:'
        'names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.3"><manifest:file-entry '
        'manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.'
        'spreadsheet"/><manifest:file-entry manifest:full-path="content.xml" '
        'manifest:media-type="text/xml"/></manifest:manifest>'
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet",
                         compress_type=zipfile.ZIP_STORED)
        archive.writestr("META-INF/manifest.xml", manifest, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("content.xml", "".join(parts), compress_type=zipfile.ZIP_DEFLATED)
    path.write_bytes(buffer.getvalue())


def write_file(folder: Path, fmt: str, rows: int) -> Path:
    if fmt == "xlsx":
        path = folder / "roster.xlsx"
        write_roster(path, rows)
    else:
        path = folder / f"roster-{fmt}.ods"
        write_ods_roster(path, rows, padded=fmt == "ods-padded")
    return path


def measure_actor(path: Path, emit_intents: bool = True) -> dict[str, Any]:
    import actors
    from actors.roster import Limits, open_roster, precheck
    from schemas import RosterChunk
    from schemas.intents import intent_json

    limits = Limits(max_rows=10_000_000, max_cells=100_000_000)
    started, cpu = time.perf_counter(), time.process_time()
    precheck(path, limits)
    precheck_s, precheck_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    import_id = uuid.uuid4()
    sent_bytes = 0
    started, cpu = time.perf_counter(), time.process_time()
    with open_roster(path, limits) as roster:
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
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    return {"rows": counts.total, "valid": counts.valid, "chunks": counts.chunks,
            "seconds": seconds, "cpu_s": cpu_s, "precheck_s": precheck_s,
            "precheck_cpu_s": precheck_cpu_s, "emitted_mib": sent_bytes / 2**20,
            "code": str(Path(actors.__file__).resolve().parents[1])}


def measure_openpyxl(path: Path) -> dict[str, Any]:
    from openpyxl import load_workbook

    started = time.perf_counter()
    workbook = load_workbook(path, read_only=True, data_only=True)
    rows = sum(1 for _ in workbook["명단"].iter_rows(min_row=2, values_only=True))
    workbook.close()
    return {"rows": rows, "seconds": time.perf_counter() - started}


def _child(which: str, path: Path, code: Path | None = None) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.roster", which, str(path)]
    if code is not None:
        args.append(str(code))
    done = subprocess.run(args, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise click.ClickException(f"{which} on {path.name} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    if code is not None and Path(result["code"]) != code.resolve():
        raise click.ClickException(f"the baseline ran {result['code']}'s code, not {code}'s")
    return result


def extract_revision(rev: str, folder: Path) -> Path:
    """The baseline packages of ``rev`` (a commit of this checkout) under ``folder``."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev,
                                  *BASELINE_PACKAGES], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise click.ClickException(f"cannot read revision {rev!r} of {ROOT}: {exc}") from exc
    target = folder / f"baseline-{rev}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def _summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "parse_validate_rows_per_s": round(statistics.median(
            s["rows"] / s["seconds"] for s in samples)),
        "parse_validate_rows_per_cpu_s": round(statistics.median(
            s["rows"] / s["cpu_s"] for s in samples)),
        "precheck_s": round(statistics.median(s["precheck_s"] for s in samples), 4),
        "precheck_cpu_s": round(statistics.median(s["precheck_cpu_s"] for s in samples), 4),
        "peak_rss_mib": round(max(s["peak_rss_mib"] for s in samples), 1),
        "runs": [{"rows_per_s": round(s["rows"] / s["seconds"]),
                  "rows_per_cpu_s": round(s["rows"] / s["cpu_s"]),
                  "precheck_s": round(s["precheck_s"], 4),
                  "precheck_cpu_s": round(s["precheck_cpu_s"], 4)} for s in samples],
    }


def compare(files: dict[str, Path], baseline: Path | None, repeat: int,
            echo: Any = None) -> dict[str, Any]:
    """Parse+validate (no intents) of each file, current code and baseline alternating."""
    out: dict[str, Any] = {}
    for fmt, path in files.items():
        current: list[dict[str, Any]] = []
        before: list[dict[str, Any]] = []
        for n in range(repeat):
            order = [None, baseline] if n % 2 == 0 else [baseline, None]
            for code in order:
                if code is None:
                    current.append(_child("validate", path))
                elif fmt != "ods-padded":  # the baseline refuses the padding
                    before.append(_child("validate", path, code))
            if echo is not None:
                echo(f"  {fmt}: run {n + 1} of {repeat}")
        figures: dict[str, Any] = {"current": _summary(current)}
        if before:
            figures["baseline"] = _summary(before)
            now, then = figures["current"], figures["baseline"]
            figures["ratio_parse_validate"] = round(
                now["parse_validate_rows_per_s"] / then["parse_validate_rows_per_s"], 3)
            figures["ratio_precheck_s"] = round(now["precheck_s"] / then["precheck_s"], 3)
            figures["ratio_parse_validate_cpu"] = round(
                now["parse_validate_rows_per_cpu_s"] / then["parse_validate_rows_per_cpu_s"], 3)
            figures["ratio_precheck_cpu_s"] = round(
                now["precheck_cpu_s"] / then["precheck_cpu_s"], 3)
        out[fmt] = figures
    return out


@click.command()
@click.option("--rows", default=100_000, show_default=True, help="Rows in the generated roster.")
@click.option("--formats", default="xlsx", show_default=True,
              help=f"Comma-separated, of {', '.join(FORMATS)}: the files the parse+validate "
                   "comparison reads (the emit and openpyxl figures are of the .xlsx file).")
@click.option("--baseline-rev", default=None,
              help="Also run parse+validate with the roster code of this revision (e.g. "
                   "a9f151b, before the pre-check counted values), alternating, in this run.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parse+validate runs per format and code (medians reported).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(rows: int, formats: str, baseline_rev: str | None, repeat: int,
            as_json: bool) -> None:
    """Parse+validate+emit throughput and peak memory of the AI actor, beside openpyxl and
    (``--baseline-rev``) beside an earlier revision's roster code."""
    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    unknown = sorted(set(wanted) - set(FORMATS))
    if unknown:
        raise click.BadParameter(f"unknown format(s) {', '.join(unknown)}; of {FORMATS}",
                                 param_hint="--formats")
    echo = None if as_json else click.echo
    with tempfile.TemporaryDirectory(prefix="bench-roster-") as name:
        folder = Path(name)
        baseline = extract_revision(baseline_rev, folder) if baseline_rev else None
        files = {fmt: write_file(folder, fmt, rows) for fmt in dict.fromkeys(["xlsx", *wanted])}
        path = files["xlsx"]
        actor = _child("actor", path)
        validate_only = _child("validate", path)
        reference = _child("openpyxl", path)
        compared = compare({f: files[f] for f in wanted}, baseline, repeat, echo) \
            if baseline is not None or repeat > 1 or wanted != ["xlsx"] else None
        sizes = {fmt: round(p.stat().st_size / 2**20, 2) for fmt, p in files.items()}
    result: dict[str, Any] = {
        "rows": actor["rows"],
        "file_mib": sizes["xlsx"],
        "rows_per_s": round(actor["rows"] / actor["seconds"]),
        "peak_rss_mib": round(actor["peak_rss_mib"], 1),
        "parse_validate_rows_per_s": round(validate_only["rows"] / validate_only["seconds"]),
        "parse_validate_rows_per_cpu_s": round(validate_only["rows"] / validate_only["cpu_s"]),
        "precheck_s": round(validate_only["precheck_s"], 4),
        "chunks": actor["chunks"],
        "emitted_mib": round(actor["emitted_mib"], 1),
        "openpyxl_rows_per_s": round(reference["rows"] / reference["seconds"]),
        "openpyxl_peak_rss_mib": round(reference["peak_rss_mib"], 1),
    }
    result["speedup_vs_openpyxl"] = round(result["rows_per_s"] / result["openpyxl_rows_per_s"], 1)
    if compared is not None:
        result["baseline_rev"] = baseline_rev
        result["repeat"] = repeat
        result["file_mib_by_format"] = sizes
        result["formats"] = compared
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{result['rows']} rows ({result['file_mib']} MiB .xlsx)\n"
        f"  actor parse+validate+emit: {result['rows_per_s']:,} rows/s,"
        f" peak RSS {result['peak_rss_mib']} MiB, {result['chunks']} chunks\n"
        f"  actor parse+validate only: {result['parse_validate_rows_per_s']:,} rows/s"
        f" (pre-check {result['precheck_s']:.3f} s)\n"
        f"  openpyxl read-only:        {result['openpyxl_rows_per_s']:,} rows/s,"
        f" peak RSS {result['openpyxl_peak_rss_mib']} MiB\n"
        f"  ratio: {result['speedup_vs_openpyxl']}x"
    )
    for fmt, figures in (compared or {}).items():
        now = figures["current"]
        line = (f"  {fmt} ({sizes[fmt]} MiB), medians of {repeat}: parse+validate"
                f" {now['parse_validate_rows_per_s']:,} rows/s"
                f" ({now['parse_validate_rows_per_cpu_s']:,} per CPU s), pre-check"
                f" {now['precheck_s']:.3f} s ({now['precheck_cpu_s']:.3f} CPU s), peak RSS"
                f" {now['peak_rss_mib']} MiB")
        if "baseline" in figures:
            then = figures["baseline"]
            line += (f"\n    {baseline_rev}: {then['parse_validate_rows_per_s']:,} rows/s"
                     f" ({then['parse_validate_rows_per_cpu_s']:,} per CPU s), pre-check"
                     f" {then['precheck_s']:.3f} s ({then['precheck_cpu_s']:.3f} CPU s), peak RSS"
                     f" {then['peak_rss_mib']} MiB\n    ratios (current / baseline):"
                     f" parse+validate rows/s {figures['ratio_parse_validate']:.3f}, per CPU s"
                     f" {figures['ratio_parse_validate_cpu']:.3f}; pre-check time"
                     f" {figures['ratio_precheck_s']:.3f},"
                     f" CPU {figures['ratio_precheck_cpu_s']:.3f}")
        click.echo(line)


def peak_rss_mib() -> float:
    """This process's peak resident size since its exec (``VmHWM``; ``ru_maxrss`` would
    include the parent's size at the fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _main(which: str, path: str, code: str | None = None) -> None:
    if code is not None:
        sys.path.insert(0, code)
    if which == "openpyxl":
        measured = measure_openpyxl(Path(path))
    else:
        measured = measure_actor(Path(path), emit_intents=which == "actor")
    measured["peak_rss_mib"] = peak_rss_mib()
    sys.stdout.write(json.dumps(measured))


if __name__ == "__main__":
    _main(*sys.argv[1:4])
