"""The compiled .ods tag reader gives the verdicts the Python reading gives.

Documents are made of the tags the scanner reads (tables, rows, cells, covered cells, opening,
closing and self-closing, with repeats, values, formulas, quotes holding ">" or tags, quotes
left open) and of text and stray bytes between them, fed in pieces of any size; the compiled
reader and the Python tag-by-tag reading must refuse the same documents with the same message,
and accept the others with the same counts. The Python scan reads most rows in one match
instead; where no text spells a value's attribute name it gives the same verdicts too.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from actors.roster import Limits, RosterRejected, precheck
from actors.roster.precheck import _ODS_SCAN, _ODS_TAGS_ONLY, _OdsContentScanner
from tests.actors import roster_corpus as corpus

module = importlib.import_module("actors.roster.precheck")  # the package's name is the function
FIXTURES = Path(__file__).parent / "fixtures"
LIMITS = Limits(max_rows=50, max_columns=60, max_cells=2_000, max_uncompressed_bytes=2 << 20)

_NUMBERS = [b"0", b"1", b"2", b"5", b"59", b"60", b"61", b"200", b"5000", b"1000000",
            b"00000000000000000007", b"12345678901234567", b"", b" 3", b"7x"]
_REPEAT = st.builds(lambda which, quote, number, space: b" table:number-%s-repeated%s=%s%s%s" % (
    which, space, quote, number, quote), st.sampled_from([b"rows", b"columns"]),
    st.sampled_from([b'"', b"'"]), st.sampled_from(_NUMBERS), st.sampled_from([b"", b" ", b"\t"]))
# What spreadsheets write in a tag, and what no reader should be fooled by.
_WELL_FORMED = st.one_of(_REPEAT, st.sampled_from([
    b' office:value-type="float" office:value="1"', b' office:value-type="string"',
    b' table:formula="of:=1"', b' table:style-name="ce1"', b' a="q>/"', b"\n",
    b" b='<table:table-row>'", b' x="</table:table-cell>"', b' calcext:value-type="string"',
]))
_ATTRIBUTE = st.one_of(_WELL_FORMED, st.sampled_from([
    b' c="open', b" d='open", b"/", b' table:name="S"', b"<", b"'>",
]))


def _attributes(attribute: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.lists(attribute, max_size=4).map(b"".join)


def _tag(name: bytes) -> st.SearchStrategy[bytes]:
    return st.builds(lambda attributes, end: b"<table:" + name + attributes + end,
                     _attributes(_ATTRIBUTE), st.sampled_from([b">", b"/>", b""]))


def _row(attribute: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    attributes = _attributes(attribute)
    cell = st.one_of(
        st.builds(lambda a: b"<table:table-cell" + a + b"/>", attributes),
        st.builds(lambda a: b"<table:table-cell" + a + b"><text:p>v</text:p></table:table-cell>",
                  attributes),
        st.builds(lambda a: b"<table:covered-table-cell" + a + b"/>", attributes))
    return st.builds(lambda a, cells, end: b"<table:table-row" + a + b">" + b"".join(cells) + end,
                     attributes, st.lists(cell, max_size=8),
                     st.sampled_from([b"</table:table-row>"] * 4 + [b""]))


_TOKEN = st.one_of(
    _tag(b"table-cell"), _tag(b"table-row"), _tag(b"covered-table-cell"), _tag(b"table"),
    st.sampled_from([
        b"</table:table-cell>", b"</table:table-row>", b"</table:table>",
        b"</table:covered-table-cell>", b"<text:p>x</text:p>", b"<text:p>", b"</text:p>",
        b'<table:table-column table:number-columns-repeated="9"/>', b"<", b">", b'"', b"'",
        b"<table:", b"</table:", b"<table:table-cellx>", b"<table:table-row\n>", b"abc",
        b'<table:table table:name="T">',
    ]),
    st.binary(max_size=4),
)
_START = b'<office:spreadsheet><table:table table:name="S">'
DOCUMENTS = st.lists(st.one_of(_TOKEN, _row(_ATTRIBUTE), _row(_ATTRIBUTE)), max_size=60).map(
    lambda parts: _START + b"".join(parts))
# Tables of rows as spreadsheets write them: no text spells a value's attribute name.
SHEETS = st.lists(st.one_of(_row(_WELL_FORMED), st.sampled_from([
    b'</table:table><table:table table:name="T">', b"<table:table-row/>",
    b"<table:table-row></table:table-row>"])), max_size=40).map(
    lambda parts: _START + b"".join(parts) + b"</table:table>")
CUTS = st.lists(st.integers(1, 400), max_size=8)


def _verdict(document: bytes, cuts: list[int], *, compiled: bool, tags_only: bool) -> object:
    scanner = _OdsContentScanner("content.xml", LIMITS)
    scanner.compiled = compiled
    scanner.pattern = _ODS_TAGS_ONLY if tags_only else _ODS_SCAN
    at = 0
    try:
        for size in cuts:
            scanner.feed(document[at:at + size])
            at += size
        scanner.feed(document[at:])
        scanner.finish()
    except RosterRejected as refused:
        return str(refused)
    return (scanner._cells_before, scanner._sheet, scanner._depth, scanner._skip)


@pytest.fixture(autouse=True)
def _short_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tail of 64 bytes: the documents cross many piece boundaries."""
    monkeypatch.setattr(module, "_KEEP", 64)


def test_the_compiled_reader_is_built() -> None:
    assert module._odsscan is not None, (
        "actors/roster/_odsscan.c was not built: install a C compiler and run"
        " `pip install -e .` again (without it the pre-check reads .ods files in Python)")
    assert _OdsContentScanner("content.xml", LIMITS).compiled
    assert not _OdsContentScanner("content.xml", Limits(max_cells=1 << 62)).compiled


@given(DOCUMENTS, CUTS)
@example(b'<table:table><table:table-row><table:table-cell office:value="1"'
         b' table:number-columns-repeated="61"/></table:table-row>', [])
@example(b'<table:table><table:table-row table:number-rows-repeated="49"><table:table-cell'
         b' office:value="1"/></table:table-row><table:table-row><table:table-cell'
         b' table:formula="x"/></table:table-row>', [30, 30])
@example(b'<table:table-row><table:table-cell a="q>"><table:table-row>', [])
@example(b'<table:table-cell c="open <table:table-cell office:value="1">', [5])
@example(b'<table:table-row><table:table-cell><table:table table:name="T">', [])
@example(b"<table:table-row><table:table-cell></table:table></table:table-row>", [])
def test_the_compiled_reader_reads_as_the_tag_by_tag_reading(
    document: bytes, cuts: list[int]
) -> None:
    assert _verdict(document, cuts, compiled=True, tags_only=True) == _verdict(
        document, cuts, compiled=False, tags_only=True)


def _kind(verdict: object) -> object:
    return re.sub(r"[0-9]+", "N", verdict) if isinstance(verdict, str) else verdict


@given(SHEETS, CUTS)
def test_the_compiled_reader_reads_as_the_python_scan(document: bytes, cuts: list[int]) -> None:
    # A row read in one match is refused at its last value, the same row read tag by tag at
    # the first value past the limit: the same refusal, its column number may differ.
    assert _kind(_verdict(document, cuts, compiled=True, tags_only=False)) == _kind(_verdict(
        document, cuts, compiled=False, tags_only=False))


def _files() -> list[Callable[[Path], Path]]:
    made = [corpus.write_clean_ods, corpus.write_repeated_rows_ods,
            corpus.write_repeated_value_columns_ods, corpus.write_value_below_padding_ods,
            corpus.write_quoted_repeated_value_ods,
            corpus.write_nested_table_ods, corpus.write_table_inside_table_ods,
            corpus.write_row_inside_cell_ods, corpus.write_quoted_row_inside_cell_ods,
            corpus.write_commented_ods, corpus.write_many_sheets_ods]
    fixtures = [lambda _, path=path: path for path in sorted(FIXTURES.glob("*.ods"))]
    return made + fixtures


@pytest.mark.parametrize("write", _files())
def test_ods_files_get_the_same_verdict_either_way(
    write: Callable[[Path], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path)
    verdicts = []
    for compiled in (True, False):
        monkeypatch.setattr(module, "_odsscan", module._odsscan if compiled else None)
        try:
            verdicts.append(precheck(path, Limits(max_rows=50)))
        except RosterRejected as refused:
            verdicts.append(str(refused))
    assert verdicts[0] == verdicts[1]
