"""Byte fuzzing of the roster pre-check and reader: any file either imports or is refused with
a reason (:class:`RosterRejected`), within a time and a memory bound per input.

Inputs are real spreadsheets (the committed LibreOffice files and the corpus' clean ones)
mutated: bytes flipped, cut, inserted or repeated, either in the file as a whole or inside one
member of its zip container (re-zipped, so the mutation reaches the XML scanners and the
reader instead of stopping at a checksum). ``make fuzz`` runs many more inputs than CI.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from actors.roster import Limits, RosterRejected, open_roster, precheck, write_report
from tests.actors.roster_corpus import write_clean_ods, write_clean_xls, write_clean_xlsx
from tests.bounded import run_bounded

FIXTURES = Path(__file__).parent / "fixtures"
SECONDS = 20
MEMORY = 768 << 20
# Small limits: every input stays small, and the limits' own refusals are exercised.
LIMITS = Limits(max_file_bytes=4 << 20, max_uncompressed_bytes=32 << 20,
                max_compression_ratio=200, max_rows=5_000, max_columns=60, max_cells=200_000,
                chunk_rows=100)


def _seeds() -> list[tuple[str, bytes]]:
    import tempfile

    found = [(p.name, p.read_bytes()) for p in sorted(FIXTURES.iterdir())
             if p.suffix in (".xlsx", ".ods", ".xls")]
    with tempfile.TemporaryDirectory() as folder:
        for write in (write_clean_xlsx, write_clean_ods, write_clean_xls):
            path = write(Path(folder))
            found.append((path.name, path.read_bytes()))
    return found


SEEDS = _seeds()

EDITS = st.lists(st.tuples(
    st.sampled_from(["flip", "cut", "insert", "repeat"]),
    st.integers(0, 1 << 20), st.integers(0, 1 << 20),
    st.binary(min_size=1, max_size=24)), min_size=1, max_size=6)


def _edit(data: bytes, edits: list[tuple[str, int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for what, at, length, blob in edits:
        at %= len(out) + 1
        if what == "flip" and out:
            at %= len(out)
            out[at] ^= blob[0] or 1
        elif what == "cut":
            del out[at:at + length % 256 + 1]
        elif what == "insert":
            out[at:at] = blob
        elif what == "repeat":
            piece = out[at:at + length % 512 + 1]
            out[at:at] = piece * (1 + length % 7)
    return bytes(out)


def _edit_member(data: bytes, which: int, edits: list[tuple[str, int, int, bytes]]) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    target = which % len(members)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for n, (info, body) in enumerate(members):
            out.writestr(info.filename, _edit(body, edits) if n == target else body)
    return buffer.getvalue()


@st.composite
def mutated_files(draw: st.DrawFn) -> tuple[str, bytes]:
    name, data = draw(st.sampled_from(SEEDS))
    edits = draw(EDITS)
    if zipfile.is_zipfile(io.BytesIO(data)) and draw(st.booleans()):
        return name, _edit_member(data, draw(st.integers(0, 50)), edits)
    return name, _edit(data, edits)


def _import(path: Path) -> None:
    """What the roster actor does with a downloaded file: check, read, validate, report."""
    precheck(path, LIMITS)
    with open_roster(path, LIMITS) as roster:
        counts = roster.validate(lambda rows: None)
        if counts.invalid or counts.duplicates:
            write_report(roster, counts, path.with_name("report.xlsx"))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@given(mutated_files())
@example(("empty", b""))
@example(("zip-of-nothing", b"PK\x05\x06" + b"\x00" * 18))
def test_any_file_imports_or_is_refused_within_bounds(work: Path, file: tuple[str, bytes]
                                                      ) -> None:
    name, data = file
    path = work / ("input" + Path(name).suffix)
    path.write_bytes(data)
    outcome = run_bounded(lambda: _import(path), expected=(RosterRejected,),
                          seconds=SECONDS, memory_bytes=MEMORY)
    if not outcome.ok:
        kept = work / f"failing-{len(data)}{Path(name).suffix}"
        kept.write_bytes(data)
        pytest.fail(f"{name} mutated to {len(data)} bytes (kept as {kept}): {outcome.problem}",
                    pytrace=False)


def test_the_bounds_catch_a_hang_and_a_hog() -> None:
    # The harness itself: a loop that never ends and an allocation past the bound both fail.
    hang = run_bounded(lambda: [None for _ in iter(int, 1)], expected=(), seconds=1,
                       memory_bytes=MEMORY)
    hog = run_bounded(lambda: bytearray(2 * MEMORY), expected=(), seconds=10,
                      memory_bytes=MEMORY)
    clean = run_bounded(lambda: _import(FIXTURES / "fods-to.xlsx"), expected=(RosterRejected,),
                        seconds=SECONDS, memory_bytes=MEMORY)
    assert (hang.ok, hog.ok, clean.ok) == (False, False, True), (hang, hog, clean)
    assert "within 1 s" in hang.problem or "memory" in hang.problem
    assert "memory bound" in hog.problem


FOUND = Path(__file__).parent / "fuzz_found"


@pytest.mark.parametrize("name", sorted(p.name for p in FOUND.iterdir()))
def test_what_the_fuzzer_found_stays_refused(name: str) -> None:
    # calamine-panic.xls: the reader's Rust code panicked (a BaseException, which passed
    # `except Exception`); sector-chain-loop.xls: a directory chain that loops, which the
    # reader followed until an allocation of 1 GiB failed and the process aborted.
    outcome = run_bounded(lambda: _import(FOUND / name), expected=(RosterRejected,),
                          seconds=SECONDS, memory_bytes=MEMORY)
    assert outcome.ok, outcome.problem
    with pytest.raises(RosterRejected, match=r"damaged|cannot read"):
        _import(FOUND / name)
