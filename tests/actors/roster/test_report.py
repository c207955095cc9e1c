from __future__ import annotations

from pathlib import Path

from openpyxl import load_workbook

from actors.roster import REASON_HEADER, Limits, open_roster, write_report
from actors.roster.report import INVALID_FILL, ROW_HEADER
from tests.actors import roster_corpus as corpus


def test_report_holds_the_original_rows_with_reasons_and_highlights(tmp_path: Path) -> None:
    out = tmp_path / "report.xlsx"
    with open_roster(corpus.write_messy_xlsx(tmp_path), Limits()) as roster:
        counts = roster.validate(lambda rows: None)
        write_report(roster, counts, out)
    sheet = load_workbook(out).active
    rows = list(sheet.iter_rows(values_only=True))
    assert sheet.title == "학생 명단"
    assert rows[0] == (ROW_HEADER, *corpus.MESSY_HEADER, REASON_HEADER)
    by_row = {r[0]: r for r in rows[1:]}
    # Blank source rows are left out; every other row is there, in order.
    assert list(by_row) == [4, 5, 6, 8, 9, 10, 11]
    assert by_row[9][2] is None
    assert by_row[9][-1] == "학생 이름: name is missing"
    assert by_row[10][-1] == (
        "휴대폰 번호: not a Korean mobile number, expected like 010-1234-5678 ('02-123-4567'); "
        "학년: no such grade ('고4'); 생일: birth date is in the future (2099-01-01)"
    )
    assert by_row[11][-1] == "same phone as row 4; this row is kept"
    assert by_row[4][-1] is None
    assert by_row[4][2] == "  김철수 "
    fills = {
        row[0].value: row[1].fill.fgColor.rgb for row in sheet.iter_rows(min_row=2)
    }
    assert fills[9] == fills[10] == INVALID_FILL.fgColor.rgb
    assert fills[4] != INVALID_FILL.fgColor.rgb
    assert fills[11] != INVALID_FILL.fgColor.rgb


def test_report_never_turns_text_into_formulas(tmp_path: Path) -> None:
    from openpyxl import Workbook

    source = tmp_path / "formula-text.xlsx"
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["이름", "전화번호"])
    cell_text = '=HYPERLINK("http://127.0.0.1/","x")'
    sheet.append(["김철수", "02-1234"])
    sheet.cell(row=2, column=1).value = cell_text
    sheet.cell(row=2, column=1).data_type = "s"
    workbook.save(source)
    out = tmp_path / "report.xlsx"
    with open_roster(source, Limits()) as roster:
        counts = roster.validate(lambda rows: None)
        write_report(roster, counts, out)
    cell = load_workbook(out).active.cell(row=2, column=2)
    assert cell.value == cell_text
    assert cell.data_type == "s"
