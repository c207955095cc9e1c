"""Files rejected as a whole: each with a reason that says what is wrong."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from actors.roster import Format, Limits, RosterRejected, open_roster, precheck
from actors.roster.precheck import _KEEP, _READ_CHUNK
from schemas import StudentRow
from tests.actors import roster_corpus as corpus

SMALL = Limits(max_rows=50, max_uncompressed_bytes=2 << 20)

HOSTILE: list[tuple[Callable[[Path], Path], str]] = [
    (corpus.write_not_spreadsheet, "not a spreadsheet"),
    (corpus.write_csv, "looks like text (CSV?)"),
    (corpus.write_empty, "the file is empty"),
    (corpus.write_password_xlsx, "password-protected"),
    (corpus.write_truncated_xlsx, "damaged or truncated"),
    (corpus.write_truncated_member_xlsx,
     "truncated (part 'xl/worksheets/sheet1.xml' is cut short)"),
    (corpus.write_declared_bomb_xlsx, "declares 3.0 MiB uncompressed, over the limit 2.0 MiB"),
    (corpus.write_lying_bomb_xlsx, "inflates to more than the 1000 bytes it declares"),
    (corpus.write_billion_laughs_xlsx, "'xl/sharedStrings.xml' declares XML entities"),
    (corpus.write_wide_row_xlsx,
     "column 201 is past the limit of 200 columns (ROSTER_MAX_COLUMNS)"),
    (corpus.write_far_cell_xlsx, "row 1048576 is past the limit of 50 rows (ROSTER_MAX_ROWS)"),
    (corpus.write_disguised_far_cell_xlsx,
     "column 16384 is past the limit of 200 columns (ROSTER_MAX_COLUMNS)"),
    (corpus.write_leading_zeros_far_row_xlsx,
     "row 1048576 is past the limit of 50 rows (ROSTER_MAX_ROWS)"),
    (corpus.write_quoted_far_cell_xlsx,
     "column 16384 is past the limit of 200 columns (ROSTER_MAX_COLUMNS)"),
    (corpus.write_repeated_rows_ods, "past the limit of 50 rows (ROSTER_MAX_ROWS)"),
    (corpus.write_unreferenced_rows_xlsx,
     "row 100 is past the limit of 50 rows (ROSTER_MAX_ROWS)"),
    (corpus.write_prefixed_wide_row_xlsx,
     "is past the limit of 200 columns (ROSTER_MAX_COLUMNS)"),
    (corpus.write_missing_column_xlsx,
     "required column 전화번호/phone is missing (sheet 'Sheet'); columns found: 이름, 학교, 학년"),
    # Values, not padding: repeated, or far from the rest, they are built by the reader.
    (corpus.write_repeated_value_columns_ods,
     "sheet '명단': column 16384 is past the limit of 200 columns (ROSTER_MAX_COLUMNS)"),
    (corpus.write_value_below_padding_ods,
     "sheet '명단': row 1000002 is past the limit of 50 rows (ROSTER_MAX_ROWS)"),
    (corpus.write_quoted_repeated_value_ods,
     "sheet '명단': column 16384 is past the limit of 200 columns (ROSTER_MAX_COLUMNS)"),
    (corpus.write_nested_table_ods, "sheet '명단' has rows or cells inside a cell"),
    (corpus.write_table_inside_table_ods, "sheet '명단' has a table inside it"),
    (corpus.write_commented_ods, "part 'content.xml' holds XML comments or CDATA sections"),
    (corpus.write_row_inside_cell_ods, "sheet '명단' has rows or cells inside a cell"),
    (corpus.write_quoted_row_inside_cell_ods, "sheet '명단' has rows or cells inside a cell"),
    (corpus.write_far_style_then_unreferenced_xlsx,
     "column 16385 is past the limit of 200 columns (ROSTER_MAX_COLUMNS)"),
]


@pytest.mark.parametrize(("write", "reason"), HOSTILE, ids=[w.__name__[6:] for w, _ in HOSTILE])
def test_hostile_files_are_rejected_with_a_reason(
    tmp_path: Path, write: Callable[[Path], Path], reason: str
) -> None:
    path = write(tmp_path)
    with pytest.raises(RosterRejected) as caught:
        open_roster(path, SMALL)
    assert reason in str(caught.value)


def test_ratio_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    path = corpus.write_declared_bomb_xlsx(tmp_path, size=8 << 20)
    with pytest.raises(RosterRejected, match="compression ratio over 200"):
        precheck(path, Limits())


def test_too_many_rows_below_the_header(tmp_path: Path) -> None:
    # Given 60 rows: within the grid the pre-check allows (50 + room for titles), over max_rows.
    path = corpus.write_many_rows_xlsx(tmp_path, 60)
    with pytest.raises(RosterRejected, match="60 rows below its header, more than the limit of 50"):
        open_roster(path, SMALL)
    with open_roster(path, Limits(max_rows=60)) as roster:
        assert roster.data_rows == 60


def test_file_size_limit(tmp_path: Path) -> None:
    path = corpus.write_clean_xlsx(tmp_path)
    with pytest.raises(RosterRejected, match="ROSTER_MAX_FILE_BYTES"):
        precheck(path, Limits(max_file_bytes=100))


def test_formats_are_recognised_by_content(tmp_path: Path) -> None:
    assert precheck(corpus.write_clean_xlsx(tmp_path), Limits()) is Format.XLSX
    assert precheck(corpus.write_clean_xls(tmp_path), Limits()) is Format.XLS
    assert precheck(corpus.write_clean_ods(tmp_path), Limits()) is Format.ODS


def test_cells_without_references_are_placed_as_the_reader_places_them(tmp_path: Path) -> None:
    # Given a row of 20,000 cells without references and a cell on row 100,000: the reader would
    # build a 2e9-cell grid and abort the process. The pre-check refuses it, so the reader never
    # opens the file.
    path = corpus.write_unreferenced_wide_row_xlsx(tmp_path)
    limit = re.escape("is past the limit of 200 columns (ROSTER_MAX_COLUMNS)")
    with pytest.raises(RosterRejected, match=limit):
        precheck(path, Limits())
    with pytest.raises(RosterRejected, match=r"sheet part 'xl/worksheets/sheet1\.xml'"):
        open_roster(path, Limits())


def test_cells_without_references_count_towards_the_grid(tmp_path: Path) -> None:
    # 200 columns is allowed; 200 columns down to row 100,000 is not.
    path = corpus.write_unreferenced_wide_row_xlsx(tmp_path, cells=200)
    with pytest.raises(RosterRejected, match=r"100000 rows x 200 columns.*\(ROSTER_MAX_CELLS\)"):
        precheck(path, Limits())
    assert precheck(path, Limits(max_cells=20_000_000)) is Format.XLSX


def test_a_roster_without_references_imports(tmp_path: Path) -> None:
    path = corpus.write_unreferenced_clean_xlsx(tmp_path)
    assert precheck(path, SMALL) is Format.XLSX
    rows: list[StudentRow] = []
    with open_roster(path, SMALL) as roster:
        counts = roster.validate(rows.extend)
    assert counts.invalid == 0
    assert [
        (r.name, r.phone, r.parent_phone, r.school, r.grade, r.birth_date)
        for r in rows
    ] == list(corpus.CLEAN_EXPECTED)


def test_a_reference_across_the_scan_boundary_is_seen(tmp_path: Path) -> None:
    # The sheet is scanned in pieces; a reference starting just before where one piece's scan
    # stops is read whole with the next.
    boundary = _READ_CHUNK - _KEEP
    for before in (3, 5, 7):
        path = corpus.write_straddling_far_cell_xlsx(tmp_path, boundary - before)
        with pytest.raises(RosterRejected, match="column 16384 is past the limit"):
            precheck(path, Limits())


def test_style_only_cells_and_rows_cost_nothing(tmp_path: Path) -> None:
    # Given the clean roster with style-only cells out to column XFD and style-only rows down to
    # row 1048576, as office software pads a sheet formatted as a whole
    path = corpus.write_styled_padding_xlsx(tmp_path)
    # Then the pre-check, like the reader, counts only the values: even with tight limits
    assert precheck(path, Limits(max_rows=5, max_columns=6, max_cells=60)) is Format.XLSX
    rows: list[StudentRow] = []
    with open_roster(path, SMALL) as roster:
        assert (roster.sheet.height, roster.sheet.width) == (5, 6)
        counts = roster.validate(rows.extend)
    assert counts.invalid == 0
    assert [
        (r.name, r.phone, r.parent_phone, r.school, r.grade, r.birth_date) for r in rows
    ] == list(corpus.CLEAN_EXPECTED)


def test_padding_repeats_of_an_ods_cost_nothing(tmp_path: Path) -> None:
    # write_ods pads every row with 1,000 empty cells and the sheet with 1,048,000 empty rows
    path = corpus.write_clean_ods(tmp_path)
    assert precheck(path, Limits(max_rows=4, max_columns=6, max_cells=30)) is Format.ODS


def test_the_sheets_of_an_ods_add_up(tmp_path: Path) -> None:
    # Given three sheets of 100 x 100 values: each within the limit, all three read at once
    path = corpus.write_many_sheets_ods(tmp_path)
    assert precheck(path, Limits(max_cells=30_000)) is Format.ODS
    with pytest.raises(RosterRejected, match=r"the sheets span 30000 cells in all, more than 25"):
        precheck(path, Limits(max_cells=25_000))
    with pytest.raises(RosterRejected, match=r"sheet '명단0'.*more than 9999 cells"):
        precheck(path, Limits(max_cells=9_999))


def test_a_value_past_the_limits_is_refused_behind_padding(tmp_path: Path) -> None:
    # Given the styled padding file with a value in the padding's last row
    path = corpus.write_styled_padding_xlsx(tmp_path)
    with zipfile.ZipFile(path) as archive:
        sheet = archive.read("xl/worksheets/sheet1.xml").decode()
    valued = sheet.replace('<c r="XFD1048576" s="1"/>', '<c r="A1048576" s="1"><v>1</v></c>')
    assert valued != sheet
    corpus.write_raw_xlsx(path, [("Sheet1", valued)])
    # Then it is refused, as it would be without the padding
    with pytest.raises(RosterRejected, match="row 1048576 is past the limit of 50 rows"):
        precheck(path, SMALL)


def test_quoted_attribute_text_neither_ends_nor_hides_an_ods_cell(tmp_path: Path) -> None:
    # Given a row of 6 values whose attributes hold "/>", ">" and a single-quoted "'/>'": text
    # of the value, not the end of the cell
    cell = ('<table:table-cell office:value-type="string" table:style-name="a/>b" x=\'c>"/>\'>'
            "<text:p>x</text:p></table:table-cell>")
    path = tmp_path / "quoted.ods"
    corpus._write_ods_content(path, [("명단", f"<table:table-row>{cell * 6}</table:table-row>")])
    # Then the scan counts 6 columns, as the reader does
    assert precheck(path, Limits(max_columns=6)) is Format.ODS
    with pytest.raises(RosterRejected, match="column 6 is past the limit of 5 columns"):
        precheck(path, Limits(max_columns=5))


@pytest.mark.parametrize(("attributes", "count"), [
    (b' table:number-columns-repeated="16384"', 16384),
    (b' table:number-rows-repeated = \' 007\'', 7),
    (b' table:number-columns-repeated="0"', 1),
    (b' table:number-columns-repeated=""', 1),
    (b' table:number-columns-repeated="0000000000000000000000000000"', 1),
    (b' table:number-rows-repeated="99999999999999999999"', 10**12),
    (b' table:style-name="ce1"', 1),
])
def test_ods_repeats_are_read_as_the_reader_builds_them(attributes: bytes, count: int) -> None:
    from actors.roster.precheck import _repeat

    assert _repeat(attributes) == count


def _scan_in_pieces(scanner: object, document: bytes, piece: int) -> None:
    from actors.roster.precheck import _Scanner

    assert isinstance(scanner, _Scanner)
    for at in range(0, len(document), piece):
        scanner.feed(document[at:at + piece])
    scanner.finish()


_LONG = b' table:style-name="' + b"x" * 6000 + b'"'
_ODS_LONG_TAG = (b'<table:table table:name="S"><table:table-row><table:table-cell'
                 b' office:value-type="float" office:value="1"' + _LONG
                 + b' table:number-columns-repeated="16384"/></table:table-row></table:table>')
# A cell without a reference first: the sheet is read tag by tag, in order.
_XLSX_LONG_TAG = (b'<sheetData><row r="1"><c a="1"/><c r="XFD1"' + _LONG.replace(b"table:", b"")
                  + b'><v>1</v></c></row></sheetData>')


@pytest.mark.parametrize("compiled", [True, False])
def test_an_ods_tag_longer_than_the_tail_is_read_whole(compiled: bool) -> None:
    """The cell's tag crosses from one piece to the next: it is read when the rest has come."""
    from actors.roster.precheck import _OdsContentScanner

    for pad in range(0, 8192, 500):  # the tag starting at every distance from a piece's end
        scanner = _OdsContentScanner("content.xml", SMALL)
        scanner.compiled = compiled
        with pytest.raises(RosterRejected, match="column 16384 is past the limit of 200"):
            _scan_in_pieces(scanner, b" " * pad + _ODS_LONG_TAG, 4096)


def test_an_xlsx_tag_longer_than_the_tail_is_read_whole() -> None:
    from actors.roster.precheck import _XlsxSheetScanner

    for pad in range(0, 8192, 500):
        with pytest.raises(RosterRejected, match="column 16384 is past the limit of 200"):
            _scan_in_pieces(_XlsxSheetScanner("xl/worksheets/sheet1.xml", SMALL),
                            b" " * pad + _XLSX_LONG_TAG, 4096)


@pytest.mark.parametrize(("kind", "document"), [
    ("ods", b'<table:table><table:table-row><table:table-cell office:value="1" a="x>'),
    ("xlsx", b'<sheetData><row r="1"><c a="1"/><c r="A2" b=\'x><v>1</v></c></row>'),
])
@pytest.mark.parametrize("compiled", [True, False])
def test_a_tag_that_never_ends_is_refused(kind: str, document: bytes, compiled: bool) -> None:
    from actors.roster.precheck import _OdsContentScanner, _XlsxSheetScanner

    scanner = _OdsContentScanner("content.xml", SMALL) if kind == "ods" else _XlsxSheetScanner(
        "xl/worksheets/sheet1.xml", SMALL)
    if isinstance(scanner, _OdsContentScanner):
        scanner.compiled = compiled
    # The reader's XML parser stops at such a tag; a scan that went on past it, looking for
    # tags at every later "<", would cost time in the square of its length.
    with pytest.raises(RosterRejected, match="has a tag that never ends"):
        _scan_in_pieces(scanner, document + b"<c r='A1'/>" * 2000, 1 << 20)


@pytest.mark.parametrize("compiled", [True, False])
def test_a_tag_longer_than_a_mebibyte_is_refused(compiled: bool) -> None:
    from actors.roster.precheck import _OdsContentScanner

    scanner = _OdsContentScanner("content.xml", SMALL)
    scanner.compiled = compiled
    with pytest.raises(RosterRejected, match="has a tag longer than 1 MiB"):
        _scan_in_pieces(scanner, b'<table:table-row a="' + b"x" * (3 << 20) + b'">', 1 << 20)
