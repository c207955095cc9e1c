"""Rosters as office software writes them: files made by LibreOffice 7.4 (``fixtures/``)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from actors.roster import Limits, RosterRejected, open_roster, precheck
from actors.roster.describe import describe
from schemas import StudentRow
from tests.actors import roster_corpus as corpus

STUDENTS = 18
SLOTS = 12
SMALL = Limits(max_rows=50, max_columns=10, max_cells=500)


def expected(number: int) -> tuple[object, ...]:
    """What student ``number`` (1-18) of the fixtures becomes (see make_fixtures.student)."""
    return (
        f"학생{number:02d}", f"010-2400-{number:04d}",
        f"010-9000-{number:04d}" if number % 2 else None, "한빛고등학교", 10 + number % 3,
        date(2008, 1 + number % 12, 1 + number % 28),
    )


#: (fixture, empty numbered slots below the students)
MADE_BY_LIBREOFFICE = [
    ("excel-saved-as.ods", SLOTS),
    ("select-all-font.ods", 0),
    ("select-all-font.xlsx", 0),
    ("select-all-font.xls", 0),
    ("fods-to.xlsx", SLOTS),
    ("fods-to.xls", SLOTS),
    ("fods-to.ods", SLOTS),
]


@pytest.mark.parametrize(("name", "slots"), MADE_BY_LIBREOFFICE)
@pytest.mark.parametrize("limits", [Limits(), SMALL], ids=["default-limits", "tight-limits"])
def test_libreoffice_files_import_as_the_small_sheets_they_are(
    name: str, slots: int, limits: Limits
) -> None:
    # Given a roster LibreOffice saved: padded to its full grid, formatted as a whole, or
    # converted from another format, with empty numbered slots below the students
    path = corpus.fixture(name)
    rows: list[StudentRow] = []
    # When it is read, even with limits that leave no room for the padding
    with open_roster(path, limits) as roster:
        assert roster.header_row == 1
        assert roster.data_rows == STUDENTS + slots
        counts = roster.validate(rows.extend)
    # Then every student is there, and the empty slots are neither rows nor errors
    assert (counts.total, counts.valid, counts.invalid, counts.empty_slots) == (
        STUDENTS, STUDENTS, 0, slots
    )
    assert counts.problems == []
    assert [
        (r.name, r.phone, r.parent_phone, r.school, r.grade, r.birth_date) for r in rows
    ] == [expected(n) for n in range(1, STUDENTS + 1)]
    assert [r.source_row for r in rows] == list(range(2, STUDENTS + 2))


def test_styled_empty_cells_to_column_1024_cost_nothing() -> None:
    # Given a sheet in LibreOffice 5/6's form (style-only cells out to AMJ on every row), as
    # LibreOffice 7.4 saves it again
    path = corpus.fixture("lo6-styled-empty-resaved.xlsx")
    assert precheck(path, SMALL).value == "xlsx"
    rows: list[StudentRow] = []
    with open_roster(path, SMALL) as roster:
        assert roster.sheet.width == 6
        counts = roster.validate(rows.extend)
    assert (counts.total, counts.valid, counts.invalid) == (5, 5, 0)
    assert [(r.name, r.phone) for r in rows] == [expected(n)[:2] for n in range(1, 6)]


def test_a_koffice_ods_is_named_with_what_to_do() -> None:
    # Given an .ods in the form KOffice writes (LibreOffice opens it; the reader cannot)
    path = corpus.fixture("koffice-form.ods")
    with pytest.raises(RosterRejected) as caught:
        open_roster(path, Limits())
    message = str(caught.value)
    # Then the message says what the file is and what to do, and nothing of the reader's error
    assert message.startswith(
        "the file is an OpenDocument spreadsheet (.ods) written by KOffice/2.3.3, in a form this"
        " importer cannot read; open it in Excel or LibreOffice and save it as .xlsx"
    )
    for internal in ("Expecting", "table-cell", "Text(", "BytesText", "Borrowed", "\\n"):
        assert internal not in message
    # And the cause is kept for the log
    assert caught.value.__cause__ is not None


def test_check_cli_reports_empty_slots() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobplatform", "roster", "check",
         str(corpus.fixture("excel-saved-as.ods")), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["total"], result["valid"], result["invalid"], result["empty_slots"]) == (
        STUDENTS, STUDENTS, 0, SLOTS
    )
    assert result["errors"] == []


def test_fixture_readme_names_the_libreoffice_version() -> None:
    version = (corpus.FIXTURES / "LIBREOFFICE_VERSION").read_text().strip()
    assert version.startswith("LibreOffice ")
    assert version in (corpus.FIXTURES / "README.md").read_text().replace("**", "")
    for name, _ in MADE_BY_LIBREOFFICE:
        assert f"`{Path(name).stem}" in (corpus.FIXTURES / "README.md").read_text()


@pytest.mark.parametrize(("name", "described"), [
    ("fods-to.xlsx", "an Excel workbook (.xlsx) written by LibreOffice/7.4.7.2"),
    ("fods-to.ods", "an OpenDocument spreadsheet (.ods) written by LibreOffice/7.4.7.2"),
    ("fods-to.xls", "an Excel 97-2003 workbook (.xls)"),
    ("koffice-form.ods", "an OpenDocument spreadsheet (.ods) written by KOffice/2.3.3"),
])
def test_files_are_described_by_kind_and_writer(name: str, described: str) -> None:
    path = corpus.fixture(name)
    assert describe(path, precheck(path, Limits())) == described
