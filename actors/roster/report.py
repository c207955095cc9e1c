"""The error report: the original rows with a reason column, invalid rows highlighted."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font, PatternFill

from actors.roster.reading import Counts, Roster

REASON_HEADER = "오류 / Error"
ROW_HEADER = "행 / Row"
INVALID_FILL = PatternFill(fill_type="solid", start_color="FFFFC7CE", end_color="FFFFC7CE")
_BOLD = Font(bold=True)


def write_report(roster: Roster, counts: Counts, path: Path) -> None:
    """Write the report of ``roster`` (already validated into ``counts``) to ``path``.

    Columns: the source row number, the original cells, and the reason. Text that would read as
    a formula is written as text, so the report never computes anything.
    """
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(roster.sheet_name[:31] or "roster")
    invalid_rows = {p.row for p in counts.problems}
    rows = roster.raw_rows()
    _, header = next(rows)
    sheet.append([_cell(sheet, v, _BOLD) for v in [ROW_HEADER, *header, REASON_HEADER]])
    width = len(header)
    for number, cells in rows:
        if not any(c != "" and c is not None for c in cells):
            continue
        values = [number, *cells, *([""] * (width - len(cells))), counts.notes.get(number, "")]
        style = INVALID_FILL if number in invalid_rows else None
        sheet.append([_cell(sheet, v, None, style) for v in values])
    workbook.save(path)


def _cell(sheet: Any, value: Any, font: Font | None = None, fill: PatternFill | None = None) -> Any:
    if isinstance(value, str):
        value = ILLEGAL_CHARACTERS_RE.sub("", value)
    elif not isinstance(value, int | float | date | datetime | time | timedelta) or isinstance(
        value, bool
    ):
        value = value if isinstance(value, bool) else str(value)
    cell = WriteOnlyCell(sheet, value=value)
    if isinstance(value, str) and value.startswith("="):
        cell.data_type = "s"
    if font is not None:
        cell.font = font
    if fill is not None:
        cell.fill = fill
    return cell
