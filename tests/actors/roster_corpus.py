"""The roster test corpus, written on demand into a folder.

Files made by real LibreOffice are the exception: they are kept in ``roster/fixtures/`` (see its
README), since CI has no LibreOffice; :func:`fixture` finds them.

Each ``write_*`` function writes one file and returns its path. Clean files hold :data:`CLEAN`;
the messy and hostile ones are described where they are made. .xlsx files come from openpyxl or,
where a case needs XML that openpyxl never writes (cached formula values, a lying dimension tag,
entity declarations, zip tricks), from :func:`write_raw_xlsx`; .ods from :func:`write_ods`;
.xls from xlwt (a development dependency).
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

HEADER = ("이름", "전화번호", "학부모 전화번호", "학교", "학년", "생년월일")

#: A clean roster: (name, phone, parent phone, school, grade as typed, birth date).
CLEAN: tuple[tuple[Any, ...], ...] = (
    ("김철수", "010-1234-5678", "010-9876-5432", "한국고등학교", "고1", date(2009, 3, 15)),
    ("이영희", "010-2345-6789", None, "서울중학교", "중3", date(2010, 7, 1)),
    ("박민수", "010-3456-7890", "010-1111-2222", "푸른초등학교", "초6", date(2013, 12, 31)),
    ("최지우", "011-345-6789", None, None, 12, None),
)
#: What the clean rows become: (name, phone, parent phone, school, grade, birth date).
CLEAN_EXPECTED = (
    ("김철수", "010-1234-5678", "010-9876-5432", "한국고등학교", 10, date(2009, 3, 15)),
    ("이영희", "010-2345-6789", None, "서울중학교", 9, date(2010, 7, 1)),
    ("박민수", "010-3456-7890", "010-1111-2222", "푸른초등학교", 6, date(2013, 12, 31)),
    ("최지우", "011-345-6789", None, None, 12, None),
)


# --- clean files in three formats -------------------------------------------------------------

def write_clean_xlsx(folder: Path, name: str = "clean.xlsx") -> Path:
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "명단"
    sheet.append(HEADER)
    for row in CLEAN:
        sheet.append(row)
    for cell in sheet["F"][1:]:
        cell.number_format = "yyyy-mm-dd"
    path = folder / name
    workbook.save(path)
    return path


def write_clean_xls(folder: Path) -> Path:
    import xlwt

    workbook = xlwt.Workbook(encoding="utf-8")
    sheet = workbook.add_sheet("명단")
    dates = xlwt.easyxf(num_format_str="YYYY-MM-DD")
    for col, text in enumerate(HEADER):
        sheet.write(0, col, text)
    for r, row in enumerate(CLEAN, start=1):
        for col, value in enumerate(row):
            if value is None:
                continue
            if isinstance(value, date):
                sheet.write(r, col, datetime(value.year, value.month, value.day), dates)
            else:
                sheet.write(r, col, value)
    path = folder / "clean.xls"
    workbook.save(str(path))
    return path


def write_clean_ods(folder: Path) -> Path:
    path = folder / "clean.ods"
    write_ods(path, [("명단", [HEADER, *CLEAN])])
    return path


# --- messy real-world layouts -----------------------------------------------------------------

#: The messy roster: title rows, a header on row 3 with variant names, mixed spellings.
MESSY_HEADER = (
    "번호", " 학생 이름 ", "휴대폰 번호", "학부모 연락처", "학교명", "학년", "생일", "비고"
)
MESSY_ROWS: tuple[tuple[Any, ...], ...] = (
    (1, "  김철수 ", "01012345678", "+82 10-9876-5432", "한국고등학교", "3학년", "2007.3.15", ""),
    (2, "이영희", "010 2345 6789", "０１０－１１１１－２２２２", "서울중학교", 2.0, 40360, "메모"),
    (3, "박민수", 1034567890, None, None, "고2", "2008년 5월 1일", None),
    (None, None, None, None, None, None, None, None),
    (4, "최지우", "010-4567-8901", None, None, "중1", date(2012, 1, 9), None),
    (5, "", "010-5678-9012", None, None, None, None, "이름 없음"),
    (6, "정하늘", "02-123-4567", None, None, "고4", "2099-01-01", None),
    (7, "김철수", "010.1234.5678", None, "한국고등학교", "고3", "20070315", "다시 적음"),
)
#: Sheet row numbers in the messy file: header on 3, rows from 4 (row 7 is blank).
MESSY_FIRST_ROW = 4


def write_messy_xlsx(folder: Path) -> Path:
    """An instructions sheet first; then the roster under a merged title and a blank row, with
    trailing blank rows that still carry formatting."""
    from openpyxl import Workbook
    from openpyxl.styles import PatternFill

    workbook = Workbook()
    notes = workbook.active
    notes.title = "작성 방법"
    notes.append(["학생 명단을 두 번째 시트에 적어 주세요."])
    notes.append(["이름과 휴대폰 번호는 꼭 적어야 합니다."])
    sheet = workbook.create_sheet("학생 명단")
    sheet["A1"] = "2024 봄학기 수강생 명단"
    sheet.merge_cells("A1:H1")
    sheet.append([])
    sheet.append(MESSY_HEADER)
    for row in MESSY_ROWS:
        sheet.append(list(row))
    fill = PatternFill(fill_type="solid", start_color="FFEEEEEE", end_color="FFEEEEEE")
    for r in range(sheet.max_row + 1, sheet.max_row + 6):
        sheet.cell(row=r, column=1).fill = fill
    path = folder / "messy.xlsx"
    workbook.save(path)
    return path


def write_missing_column_xlsx(folder: Path) -> Path:
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["이름", "학교", "학년"])
    sheet.append(["김철수", "한국고등학교", "고1"])
    path = folder / "missing-phone.xlsx"
    workbook.save(path)
    return path


def write_formulas_xlsx(folder: Path) -> Path:
    """Cells with formulas and cached values: the cached values are read, nothing computed."""
    rows = [
        _row(1, [_text("A1", "이름"), _text("B1", "전화번호"), _text("C1", "학년")]),
        _row(2, [
            '<c r="A2" t="str"><f>CONCAT("김","철수")</f><v>김철수</v></c>',
            '<c r="B2" t="str"><f>"010-1234-"&amp;"5678"</f><v>010-1234-5678</v></c>',
            '<c r="C2"><f>9+1</f><v>10</v></c>',
        ]),
        _row(3, [
            _text("A3", "이영희"),
            '<c r="B3" t="str"><f>WEBSERVICE("http://127.0.0.1:9/")</f><v>010-2345-6789</v></c>',
            '<c r="C3"><f>1/0</f><v>9</v></c>',
        ]),
    ]
    path = folder / "formulas.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows))])
    return path


def write_dimension_claim_xlsx(folder: Path) -> Path:
    """A dimension tag claiming the whole grid over three rows."""
    rows = [
        _row(1, [_text("A1", "이름"), _text("B1", "전화번호")]),
        _row(2, [_text("A2", "김철수"), _text("B2", "010-1234-5678")]),
        _row(3, [_text("A3", "이영희"), _text("B3", "010-2345-6789")]),
    ]
    path = folder / "dimension.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows, dimension="A1:XFD1048576"))])
    return path


def write_many_rows_xlsx(folder: Path, rows: int, name: str = "many.xlsx") -> Path:
    """A header and ``rows`` valid rows with distinct phones."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("명단")
    sheet.append(HEADER[:2])
    for i in range(rows):
        sheet.append([f"학생{i}", f"010-{1000 + i // 10000:04d}-{i % 10000:04d}"])
    path = folder / name
    workbook.save(path)
    return path


def write_far_duplicates_xlsx(folder: Path, rows: int = 30) -> Path:
    """``rows`` rows with distinct phones, then rows repeating some of them far below.

    Row 2's phone comes again on the last two rows, the latter with other values; row 3's comes
    again on an invalid row (no name), so row 3 stays; row 4's comes again on a row whose phone
    is spelled differently.
    """
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("명단")
    sheet.append(HEADER)
    for i in range(rows):
        sheet.append([f"학생{i}", f"010-2000-{i:04d}", None, None, None, None])
    sheet.append([None, "010-2000-0001", None, None, "고1", None])
    sheet.append(["다른학생", "+82 10 2000 0002", None, None, None, None])
    sheet.append(["학생0 다시", "01020000000", None, "한국고등학교", 11, None])
    sheet.append(["학생0 마지막", "010 2000 0000", None, "한국고등학교", "고3", None])
    path = folder / "far-duplicates.xlsx"
    workbook.save(path)
    return path


# --- hostile and broken files -----------------------------------------------------------------

def write_not_spreadsheet(folder: Path) -> Path:
    path = folder / "photo.xlsx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return path


def write_csv(folder: Path) -> Path:
    path = folder / "roster.xlsx"
    path.write_text("이름,전화번호\n김철수,010-1234-5678\n", encoding="utf-8")
    return path


def write_empty(folder: Path) -> Path:
    path = folder / "empty.xlsx"
    path.write_bytes(b"")
    return path


def write_password_xlsx(folder: Path) -> Path:
    """The clean roster encrypted with a password, as Excel's "Encrypt with password" does."""
    from msoffcrypto.format.ooxml import OOXMLFile

    plain = write_clean_xlsx(folder, "plain-for-password.xlsx")
    path = folder / "password.xlsx"
    with plain.open("rb") as source, path.open("wb") as out:
        OOXMLFile(source).encrypt("secret", out)
    plain.unlink()
    return path


def write_truncated_xlsx(folder: Path) -> Path:
    data = write_clean_xlsx(folder, "whole.xlsx").read_bytes()
    path = folder / "truncated.xlsx"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def write_truncated_member_xlsx(folder: Path) -> Path:
    """A readable central directory, but the sheet's compressed data is cut short."""
    rows = [_row(1, [_text("A1", "이름"), _text("B1", "전화번호")])]
    rows += [
        _row(r, [_text(f"A{r}", f"학생{r}"), _text(f"B{r}", f"010-1000-{r:04d}")])
        for r in range(2, 40)
    ]
    path = folder / "cut.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows))])
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("xl/worksheets/sheet1.xml")
    # The entry now says its compressed data ends halfway: the deflate stream stops mid-way.
    path.write_bytes(_patch_sizes(
        path.read_bytes(), info.filename, compressed=info.compress_size // 2
    ))
    return path


def write_declared_bomb_xlsx(folder: Path, size: int = 3 << 20) -> Path:
    """A sheet that honestly declares ``size`` bytes of (highly compressible) XML."""
    padding = " " * size
    rows = [_row(1, [_text("A1", "이름"), _text("B1", "전화번호")])]
    path = folder / "bomb-declared.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows).replace("<sheetData>", "<sheetData>" + padding))])
    return path


def write_lying_bomb_xlsx(folder: Path, size: int = 3 << 20) -> Path:
    """A sheet whose zip entry declares 1,000 bytes but inflates to ``size``."""
    path = write_declared_bomb_xlsx(folder, size)
    lying = folder / "bomb-lying.xlsx"
    lying.write_bytes(_patch_sizes(path.read_bytes(), "xl/worksheets/sheet1.xml", size=1000))
    return lying


def write_billion_laughs_xlsx(folder: Path) -> Path:
    """Shared strings declaring nested entities (the "billion laughs")."""
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    )
    shared = (
        f'<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE lolz [{entities}]>'
        f'<sst xmlns="{_NS}" count="1" uniqueCount="1"><si><t>&lol9;</t></si></sst>'
    )
    rows = [_row(1, ['<c r="A1" t="s"><v>0</v></c>', _text("B1", "전화번호")])]
    path = folder / "laughs.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows))], shared_strings=shared)
    return path


def write_wide_row_xlsx(folder: Path, cells: int = 300) -> Path:
    """A header, then a row with ``cells`` cells."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("명단")
    sheet.append(HEADER[:2])
    sheet.append(["김철수", "010-1234-5678", *range(cells - 2)])
    path = folder / "wide.xlsx"
    workbook.save(path)
    return path


def write_far_cell_xlsx(folder: Path) -> Path:
    """A cell at the last column of the last row: the reader would build the whole grid."""
    rows = [
        _row(1, [_text("A1", "이름"), _text("B1", "전화번호")]),
        _row(1048576, ['<c r="XFD1048576"><v>1</v></c>']),
    ]
    path = folder / "far.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows))])
    return path


def write_disguised_far_cell_xlsx(folder: Path, ref: str = 'r="xfd01048576"') -> Path:
    """A far cell whose reference the reader takes in lower case and with leading zeros."""
    rows = [
        _row(1, [_text("A1", "이름"), _text("B1", "전화번호")]),
        _row(2, [f"<c {ref}><v>1</v></c>"]),
    ]
    path = folder / "disguised-far.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows))])
    return path


def write_leading_zeros_far_row_xlsx(folder: Path) -> Path:
    return write_disguised_far_cell_xlsx(folder, 'r="a0001048576"')


def write_quoted_far_cell_xlsx(folder: Path) -> Path:
    """A far cell in lower case, its reference quoted the other way, with spaces."""
    return write_disguised_far_cell_xlsx(folder, "r = 'xfd1048576'")


def write_unreferenced_wide_row_xlsx(
    folder: Path, cells: int = 20_000, far_row: int = 100_000
) -> Path:
    """A row of ``cells`` cells without references (the reader places each after the one before)
    and one cell on row ``far_row``: read as is, a grid of ``cells`` x ``far_row``."""
    rows = [
        _row(1, [_text("A1", "이름"), _text("B1", "전화번호")]),
        _row(2, ["<c><v>1</v></c>" * cells]),
        _row(far_row, [f'<c r="A{far_row}"><v>1</v></c>']),
    ]
    path = folder / "unreferenced-wide.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows))])
    return path


def write_unreferenced_rows_xlsx(folder: Path) -> Path:
    """Row 40 has a reference; the 60 rows after it have none, so they are rows 41 to 100."""
    rows = [_row(1, [_text("A1", "이름"), _text("B1", "전화번호")]), _row(40, [])]
    rows += ["<row><c><v>1</v></c></row>"] * 60
    path = folder / "unreferenced-rows.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows))])
    return path


def write_prefixed_wide_row_xlsx(folder: Path) -> Path:
    """Row and cell elements under a namespace prefix (the reader ignores prefixes), 300 cells
    without references in one row."""
    rows = [
        _row(1, [_text("A1", "이름"), _text("B1", "전화번호")]),
        "<x:row>" + "<x:c><v>1</v></x:c>" * 300 + "</x:row>",
    ]
    path = folder / "prefixed-wide.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows))])
    return path


def write_unreferenced_clean_xlsx(folder: Path) -> Path:
    """The clean roster with no references on its rows or cells, as some writers save it."""

    def cell(value: Any) -> str:
        if value is None:
            return "<c/>"
        if isinstance(value, int):
            return f"<c><v>{value}</v></c>"
        text = value.isoformat() if isinstance(value, date) else str(value)
        return f'<c t="inlineStr"><is><t>{escape(text)}</t></is></c>'

    rows = ["<row>" + "".join(cell(v) for v in row) + "</row>" for row in (HEADER, *CLEAN)]
    path = folder / "unreferenced-clean.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows))])
    return path


def write_straddling_far_cell_xlsx(folder: Path, at: int) -> Path:
    """Plain rows, then a cell at the last column whose reference starts at byte ``at`` of the
    sheet XML, then more plain rows (over 1 MiB in all, compressing like real data)."""
    head = _sheet([]).split("<sheetData>")[0] + "<sheetData>"
    parts: list[str] = [head]
    size = len(head)
    number = 1
    while True:
        row = f'<row r="{number}"><c r="A{number}"><v>{number * 7919 % 100_003}</v></c></row>'
        if size + len(row) + 64 > at:
            break
        parts.append(row)
        size += len(row)
        number += 1
    opening = f'<row r="{number}">'
    padding = " " * (at - size - len(opening))
    parts.append(f'{opening}{padding}<c r="XFD{number}"><v>1</v></c></row>')
    parts += [
        f'<row r="{n}"><c r="A{n}"><v>{n * 7919 % 100_003}</v></c></row>'
        for n in range(number + 1, number + 20_000)
    ]
    parts.append("</sheetData></worksheet>")
    xml = "".join(parts)
    assert xml.encode().find(b'<c r="XFD') == at
    path = folder / "straddling-far.xlsx"
    write_raw_xlsx(path, [("Sheet1", xml)])
    return path


def write_repeated_rows_ods(folder: Path) -> Path:
    """One .ods row repeated three million times (a few bytes of XML)."""
    path = folder / "repeated.ods"
    content = (
        '<table:table-row><table:table-cell office:value-type="string"><text:p>이름</text:p>'
        '</table:table-cell><table:table-cell office:value-type="string"><text:p>전화번호'
        '</text:p></table:table-cell></table:table-row>'
        '<table:table-row table:number-rows-repeated="3000000"><table:table-cell '
        'office:value-type="string"><text:p>김철수</text:p></table:table-cell></table:table-row>'
    )
    _write_ods_content(path, [("명단", content)])
    return path


def write_repeated_value_columns_ods(folder: Path) -> Path:
    """A value repeated across 16,384 columns (the reader builds every one of them)."""
    path = folder / "repeated-value-columns.ods"
    content = (
        '<table:table-row><table:table-cell office:value-type="string"><text:p>이름</text:p>'
        '</table:table-cell><table:table-cell office:value-type="string"><text:p>전화번호'
        '</text:p></table:table-cell></table:table-row>'
        '<table:table-row><table:table-cell office:value-type="float" office:value="1" '
        'table:number-columns-repeated="16384"/></table:table-row>'
    )
    _write_ods_content(path, [("명단", content)])
    return path


def write_value_below_padding_ods(folder: Path) -> Path:
    """LibreOffice's trailing padding row, then a row with a value under it: the padding is now
    in the middle of the sheet, a million empty rows the reader builds."""
    path = folder / "value-below-padding.ods"
    content = (
        '<table:table-row><table:table-cell office:value-type="string"><text:p>이름</text:p>'
        '</table:table-cell><table:table-cell office:value-type="string"><text:p>전화번호'
        '</text:p></table:table-cell></table:table-row>'
        '<table:table-row table:number-rows-repeated="1000000"><table:table-cell '
        'table:number-columns-repeated="1024"/></table:table-row>'
        '<table:table-row><table:table-cell office:value-type="float" office:value="1"/>'
        "</table:table-row>"
    )
    _write_ods_content(path, [("명단", content)])
    return path


def write_quoted_repeated_value_ods(folder: Path) -> Path:
    """A value repeated across 16,384 columns, its repeat behind an attribute holding ">": a
    search for the tag's end that does not follow quotes stops before the repeat."""
    path = folder / "quoted-repeated-value.ods"
    content = (
        '<table:table-row><table:table-cell office:value-type="string"><text:p>이름</text:p>'
        '</table:table-cell><table:table-cell office:value-type="string"><text:p>전화번호'
        '</text:p></table:table-cell></table:table-row>'
        '<table:table-row><table:table-cell office:value-type="float" office:value="1" '
        'table:style-name="a>b" table:number-columns-repeated="16384"/></table:table-row>'
    )
    _write_ods_content(path, [("명단", content)])
    return path


def write_nested_table_ods(folder: Path) -> Path:
    """A table (of values repeated across a huge grid) inside a cell."""
    path = folder / "nested-table.ods"
    content = (
        '<table:table-row><table:table-cell office:value-type="string"><text:p>이름</text:p>'
        f"{_INNER_TABLE}</table:table-cell></table:table-row>"
    )
    _write_ods_content(path, [("명단", content)])
    return path


def write_table_inside_table_ods(folder: Path) -> Path:
    """A table between the rows of another."""
    path = folder / "table-inside-table.ods"
    content = (
        '<table:table-row><table:table-cell office:value-type="string"><text:p>이름</text:p>'
        f"</table:table-cell></table:table-row>{_INNER_TABLE}"
    )
    _write_ods_content(path, [("명단", content)])
    return path


_INNER_TABLE = (
    '<table:table table:name="inner"><table:table-row table:number-rows-repeated="1000000">'
    '<table:table-cell office:value-type="float" office:value="1" '
    'table:number-columns-repeated="16384"/></table:table-row></table:table>'
)


def write_row_inside_cell_ods(folder: Path) -> Path:
    """Row and cell elements inside a cell, as if to restart the row's count."""
    path = folder / "row-inside-cell.ods"
    content = (
        '<table:table-row><table:table-cell office:value-type="float" office:value="1" '
        'table:number-columns-repeated="150"/><table:table-cell office:value-type="string">'
        "<text:p>x table-cell></text:p><table:table-row><table:table-cell/></table:table-row>"
        '</table:table-cell><table:table-cell office:value-type="float" office:value="1" '
        'table:number-columns-repeated="150"/></table:table-row>'
    )
    _write_ods_content(path, [("명단", content)])
    return path


def write_quoted_row_inside_cell_ods(folder: Path) -> Path:
    """A row inside a cell behind a double-quoted "/>": a reading of attributes up to the first
    ">" would take the cell for an empty one and the row for the next row."""
    path = folder / "quoted-row-inside-cell.ods"
    content = (
        '<table:table-row><table:table-cell office:value-type="string" table:style-name="/>">'
        '<table:table-row><table:table-cell office:value-type="float" office:value="1"/>'
        "</table:table-row></table:table-cell></table:table-row>"
    )
    _write_ods_content(path, [("명단", content)])
    return path


def write_commented_ods(folder: Path) -> Path:
    """A comment ending the table early, as far as a scan of the tags could tell, before a value
    a million empty rows further down."""
    path = folder / "commented.ods"
    content = (
        '<table:table-row><table:table-cell office:value-type="string"><text:p>이름</text:p>'
        '</table:table-cell></table:table-row><table:table-row table:number-rows-repeated='
        '"1000000"><table:table-cell/></table:table-row><!-- </table:table> -->'
        '<table:table-row><table:table-cell office:value-type="float" office:value="1"/>'
        "</table:table-row>"
    )
    _write_ods_content(path, [("명단", content)])
    return path


def write_many_sheets_ods(folder: Path, sheets: int = 3, rows: int = 100) -> Path:
    """``sheets`` sheets, each ``rows`` rows of 100 values (repeated cells)."""
    path = folder / "many-sheets.ods"
    row = (
        f'<table:table-row table:number-rows-repeated="{rows}"><table:table-cell '
        'office:value-type="float" office:value="1" table:number-columns-repeated="100"/>'
        "</table:table-row>"
    )
    _write_ods_content(path, [(f"명단{i}", row) for i in range(sheets)])
    return path


def write_far_style_then_unreferenced_xlsx(folder: Path) -> Path:
    """A style-only cell in the last column, then a value without a reference: the reader places
    the value just after the styled cell, past the last column."""
    rows = [
        _row(1, [_text("A1", "이름"), _text("B1", "전화번호")]),
        _row(2, ['<c r="XFD2" s="1"/>', "<c><v>1</v></c>"]),
    ]
    path = folder / "far-style-then-unreferenced.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows))])
    return path


def write_styled_padding_xlsx(folder: Path) -> Path:
    """The clean roster's values, then style-only cells out to the last column and style-only
    rows down to the last row, as office software pads a formatted sheet."""
    from openpyxl.utils import get_column_letter

    rows = []
    for r, values in enumerate((HEADER, *CLEAN), start=1):
        cells = [
            _text(f"{get_column_letter(c)}{r}", v.isoformat() if isinstance(v, date) else str(v))
            for c, v in enumerate(values, start=1) if v is not None
        ]
        cells += [f'<c r="{get_column_letter(c)}{r}" s="1"/>' for c in (300, 1024, 16384)]
        rows.append(_row(r, cells))
    rows += [
        f'<row r="{r}" s="1" customFormat="1"><c r="XFD{r}" s="1"/></row>'
        for r in (100, 200_000, 1_048_576)
    ]
    path = folder / "styled-padding.xlsx"
    write_raw_xlsx(path, [("Sheet1", _sheet(rows))])
    return path


def write_numbered_slots_xlsx(
    folder: Path, header: str | None = "번호", students: int = 3, slots: int = 4,
    numbers: Sequence[Any] | None = None, extra: dict[int, tuple[Any, ...]] | None = None,
) -> Path:
    """A roster numbered in advance: ``students`` students, then empty numbered rows, with the
    number in the first column (headed ``header``, or blank when None). ``numbers`` replaces the
    numbers written; ``extra`` replaces whole rows (by 0-based data row)."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("명단")
    sheet.append([header, *HEADER])
    count = students + slots
    written = list(numbers) if numbers is not None else list(range(1, count + 1))
    for i in range(count):
        if extra and i in extra:
            sheet.append(list(extra[i]))
        elif i < students:
            sheet.append([written[i], f"학생{i}", f"010-4000-{i:04d}"])
        else:
            sheet.append([written[i]])
    path = folder / "numbered.xlsx"
    workbook.save(path)
    return path


FIXTURES = Path(__file__).parent / "roster" / "fixtures"


def fixture(name: str) -> Path:
    """A file made by LibreOffice, kept in ``roster/fixtures/``."""
    path = FIXTURES / name
    assert path.is_file(), f"missing fixture {name}; see {FIXTURES / 'README.md'}"
    return path


# --- writers ----------------------------------------------------------------------------------

_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"


def _text(ref: str, value: str) -> str:
    return f'<c r="{ref}" t="inlineStr"><is><t>{escape(value)}</t></is></c>'


def _row(number: int, cells: Sequence[str]) -> str:
    return f'<row r="{number}">{"".join(cells)}</row>'


def _sheet(rows: Sequence[str], dimension: str | None = None) -> str:
    dim = f'<dimension ref="{dimension}"/>' if dimension else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{_NS}">{dim}'
        f'<sheetData>{"".join(rows)}</sheetData></worksheet>'
    )


def write_raw_xlsx(
    path: Path, sheets: Sequence[tuple[str, str]], shared_strings: str | None = None
) -> None:
    """A minimal .xlsx from worksheet XML written by hand."""
    overrides = "".join(
        f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        for i in range(1, len(sheets) + 1)
    )
    if shared_strings is not None:
        overrides += (
            '<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
        )
    types = (
        '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
        'package/2006/content-types"><Default Extension="rels" ContentType="application/'
        'vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" '
        'ContentType="application/xml"/><Override PartName="/xl/workbook.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main'
        f'+xml"/>{overrides}</Types>'
    )
    root_rels = (
        f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{_PKG_REL}">'
        f'<Relationship Id="rId1" Type="{_REL}/officeDocument" Target="xl/workbook.xml"/>'
        "</Relationships>"
    )
    sheet_list = "".join(
        f'<sheet name="{escape(name)}" sheetId="{i}" r:id="rId{i}"/>'
        for i, (name, _) in enumerate(sheets, start=1)
    )
    workbook = (
        f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{_NS}" xmlns:r="{_REL}">'
        f"<sheets>{sheet_list}</sheets></workbook>"
    )
    rels = "".join(
        f'<Relationship Id="rId{i}" Type="{_REL}/worksheet" Target="worksheets/sheet{i}.xml"/>'
        for i in range(1, len(sheets) + 1)
    )
    if shared_strings is not None:
        rels += (
            f'<Relationship Id="rId{len(sheets) + 1}" Type="{_REL}/sharedStrings" '
            'Target="sharedStrings.xml"/>'
        )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", types)
        archive.writestr("_rels/.rels", root_rels)
        archive.writestr("xl/workbook.xml", workbook)
        archive.writestr(
            "xl/_rels/workbook.xml.rels",
            f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{_PKG_REL}">{rels}'
            "</Relationships>",
        )
        for i, (_, xml) in enumerate(sheets, start=1):
            archive.writestr(f"xl/worksheets/sheet{i}.xml", xml)
        if shared_strings is not None:
            archive.writestr("xl/sharedStrings.xml", shared_strings)


def _patch_sizes(
    data: bytes, member: str, *, size: int | None = None, compressed: int | None = None
) -> bytes:
    """Rewrite ``member``'s uncompressed and/or compressed size in its local header and its
    central directory entry."""
    out = bytearray(data)
    name = member.encode()
    # (signature, offset of the name length, offset of the name, of compressed, of uncompressed)
    for signature, len_at, name_at, comp_at, size_at in (
        (b"PK\x03\x04", 26, 30, 18, 22), (b"PK\x01\x02", 28, 46, 20, 24)
    ):
        at = out.find(signature)
        while at != -1:
            name_len = struct.unpack("<H", out[at + len_at : at + len_at + 2])[0]
            if out[at + name_at : at + name_at + name_len] == name:
                if size is not None:
                    out[at + size_at : at + size_at + 4] = struct.pack("<I", size)
                if compressed is not None:
                    out[at + comp_at : at + comp_at + 4] = struct.pack("<I", compressed)
            at = out.find(signature, at + 4)
    return bytes(out)


_ODS_NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"'
)


def _ods_cell(value: Any) -> str:
    if value is None or value == "":
        return "<table:table-cell/>"
    if isinstance(value, date):
        return (
            f'<table:table-cell office:value-type="date" office:date-value="{value.isoformat()}">'
            f"<text:p>{value.isoformat()}</text:p></table:table-cell>"
        )
    if isinstance(value, int | float):
        return (
            f'<table:table-cell office:value-type="float" office:value="{value}">'
            f"<text:p>{value}</text:p></table:table-cell>"
        )
    return (
        f'<table:table-cell office:value-type="string"><text:p>{escape(str(value))}</text:p>'
        "</table:table-cell>"
    )


def write_ods(path: Path, sheets: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
    """A minimal .ods, with the trailing padding LibreOffice adds to every sheet."""
    tables = []
    for name, rows in sheets:
        body = "".join(
            "<table:table-row>" + "".join(_ods_cell(v) for v in row)
            + '<table:table-cell table:number-columns-repeated="1000"/></table:table-row>'
            for row in rows
        )
        body += (
            '<table:table-row table:number-rows-repeated="1048000">'
            '<table:table-cell table:number-columns-repeated="1024"/></table:table-row>'
        )
        tables.append((name, body))
    _write_ods_content(path, tables)


def _write_ods_content(path: Path, tables: Sequence[tuple[str, str]]) -> None:
    body = "".join(
        f'<table:table table:name="{escape(name)}">{rows}</table:table>' for name, rows in tables
    )
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {_ODS_NS} '
        f'office:version="1.2"><office:body><office:spreadsheet>{body}</office:spreadsheet>'
        "</office:body></office:document-content>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest xmlns:manifest="urn:oasis:'
        'names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2"><manifest:file-entry '
        'manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.'
        'spreadsheet"/><manifest:file-entry manifest:full-path="content.xml" '
        'manifest:media-type="text/xml"/></manifest:manifest>'
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "mimetype", "application/vnd.oasis.opendocument.spreadsheet",
            compress_type=zipfile.ZIP_STORED,
        )
        archive.writestr("META-INF/manifest.xml", manifest, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("content.xml", content, compress_type=zipfile.ZIP_DEFLATED)
    path.write_bytes(buffer.getvalue())
