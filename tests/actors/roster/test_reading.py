from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from actors.roster import Counts, Limits, open_roster
from schemas import StudentRow
from tests.actors import roster_corpus as corpus

Chunk = tuple[StudentRow, ...]


def read_all(path: Path, limits: Limits | None = None) -> tuple[list[Chunk], Counts]:
    chunks: list[Chunk] = []
    with open_roster(path, limits or Limits()) as roster:
        counts = roster.validate(chunks.append)
    return chunks, counts


def fields(row: StudentRow) -> tuple[object, ...]:
    return (row.name, row.phone, row.parent_phone, row.school, row.grade, row.birth_date)


@pytest.mark.parametrize(
    "write", [corpus.write_clean_xlsx, corpus.write_clean_xls, corpus.write_clean_ods],
    ids=["xlsx", "xls", "ods"],
)
def test_clean_files_in_each_format(tmp_path: Path, write: Callable[[Path], Path]) -> None:
    chunks, counts = read_all(write(tmp_path))
    assert [fields(r) for c in chunks for r in c] == list(corpus.CLEAN_EXPECTED)
    assert [r.source_row for c in chunks for r in c] == [2, 3, 4, 5]
    assert (counts.total, counts.valid, counts.invalid, counts.duplicates, counts.chunks) == (
        4, 4, 0, 0, 1
    )


def test_rows_built_without_validation_equal_validated_rows(tmp_path: Path) -> None:
    chunks, _ = read_all(corpus.write_messy_xlsx(tmp_path))
    for row in (r for c in chunks for r in c):
        again = StudentRow.model_validate(row.model_dump())
        assert again == row
        assert again.model_dump() == row.model_dump()
        assert row.model_fields_set == again.model_fields_set


def test_messy_layout(tmp_path: Path) -> None:
    path = corpus.write_messy_xlsx(tmp_path)
    with open_roster(path, Limits()) as roster:
        assert roster.sheet_name == "학생 명단"
        assert roster.header_row == 3
        assert roster.header.unknown == ("번호", "비고")
        chunks: list[tuple[StudentRow, ...]] = []
        counts = roster.validate(chunks.append)
    rows = {r.source_row: r for c in chunks for r in c}
    # Row 4 and row 11 share a phone: the later one wins; rows 9 and 10 are invalid; 7 is blank.
    assert sorted(rows) == [5, 6, 8, 11]
    assert fields(rows[11]) == (
        "김철수", "010-1234-5678", None, "한국고등학교", 12, date(2007, 3, 15)
    )
    assert fields(rows[5]) == (
        "이영희", "010-2345-6789", "010-1111-2222", "서울중학교", 8, date(2010, 7, 1)
    )
    assert fields(rows[6]) == ("박민수", "010-3456-7890", None, None, 11, date(2008, 5, 1))
    assert fields(rows[8]) == ("최지우", "010-4567-8901", None, None, 7, date(2012, 1, 9))
    assert (counts.total, counts.valid, counts.invalid, counts.duplicates) == (7, 5, 2, 1)
    assert [p.as_dict() for p in counts.problems] == [
        {"row": 9, "column": "학생 이름", "reason": "name is missing"},
        {"row": 10, "column": "휴대폰 번호",
         "reason": "not a Korean mobile number, expected like 010-1234-5678 ('02-123-4567')"},
        {"row": 10, "column": "학년", "reason": "no such grade ('고4')"},
        {"row": 10, "column": "생일", "reason": "birth date is in the future (2099-01-01)"},
    ]
    assert counts.notes[11] == "same phone as row 4; this row is kept"


def test_formulas_give_their_cached_values(tmp_path: Path) -> None:
    chunks, _ = read_all(corpus.write_formulas_xlsx(tmp_path))
    assert [(r.name, r.phone, r.grade) for r in chunks[0]] == [
        ("김철수", "010-1234-5678", 10), ("이영희", "010-2345-6789", 9)
    ]


def test_dimension_claiming_the_whole_grid_reads_what_is_there(tmp_path: Path) -> None:
    with open_roster(corpus.write_dimension_claim_xlsx(tmp_path), Limits()) as roster:
        assert roster.data_rows == 2
        chunks: list[tuple[StudentRow, ...]] = []
        counts = roster.validate(chunks.append)
    assert counts.valid == 2


def test_chunks_stream_and_duplicates_across_chunks_are_counted(tmp_path: Path) -> None:
    path = corpus.write_many_rows_xlsx(tmp_path, 25)
    progress: list[tuple[int, int]] = []
    chunks: list[tuple[StudentRow, ...]] = []
    with open_roster(path, Limits(chunk_rows=10)) as roster:
        counts = roster.validate(chunks.append, lambda done, total: progress.append((done, total)))
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert counts.chunks == 3
    assert progress[-1] == (25, 25)
    assert [r.source_row for r in chunks[0]] == list(range(2, 12))


def test_duplicates_far_apart_are_sent_once_with_the_last_row(tmp_path: Path) -> None:
    # Given 30 distinct rows (2-31) in chunks of 10, then rows 32-35 repeating phones of rows
    # 2, 3 and 4: row 32 is invalid (no name), so row 3 stays; rows 34 and 35 repeat row 2
    path = corpus.write_far_duplicates_xlsx(tmp_path)
    chunks, counts = read_all(path, Limits(chunk_rows=10))
    rows = [r for c in chunks for r in c]
    by_phone: dict[str, list[StudentRow]] = {}
    for row in rows:
        by_phone.setdefault(row.phone, []).append(row)
    # Then each phone is sent exactly once, with the values of its last valid row
    assert all(len(found) == 1 for found in by_phone.values())
    assert len(rows) == 30
    assert fields(by_phone["010-2000-0000"][0]) == (
        "학생0 마지막", "010-2000-0000", None, "한국고등학교", 12, None
    )
    assert by_phone["010-2000-0000"][0].source_row == 35
    assert by_phone["010-2000-0001"][0].source_row == 3
    assert by_phone["010-2000-0002"][0].source_row == 33
    # And the rows superseded (2 twice over, 4) are counted once each
    assert (counts.total, counts.valid, counts.invalid, counts.duplicates) == (34, 33, 1, 3)
    assert counts.valid - counts.duplicates == len(rows)
    assert counts.notes[35] == "same phone as rows 2, 34; this row is kept"
    assert counts.notes[33] == "same phone as row 4; this row is kept"
    assert not {2, 34} & set(counts.notes)
    assert counts.notes[32] == "이름: name is missing"


def test_a_row_whose_later_repeats_are_all_invalid_is_sent(tmp_path: Path) -> None:
    # Given row 3's phone repeated only on invalid rows further down
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("명단")
    sheet.append(corpus.HEADER)
    sheet.append(["가", "010-3000-0001"])
    sheet.append(["나", "010-3000-0002"])
    sheet.append(["다", "010-3000-0002", None, None, "고1"])
    sheet.append(["", "010-3000-0002"])
    sheet.append(["라", "010-3000-0003"])
    sheet.append(["마", "010-3000-0002", None, None, "고9"])
    path = tmp_path / "invalid-repeats.xlsx"
    workbook.save(path)
    # When it is read in chunks of 2
    chunks, counts = read_all(path, Limits(chunk_rows=2))
    # Then row 4 (the last valid row with that phone) is sent, in the final chunk, once
    assert [[r.source_row for r in c] for c in chunks] == [[2, 6], [4]]
    assert chunks[1][0].grade == 10
    assert (counts.valid, counts.invalid, counts.duplicates) == (4, 2, 1)
    assert counts.notes[4] == "same phone as row 3; this row is kept"


def test_a_bool_grade_is_refused_without_affecting_the_grade_1(tmp_path: Path) -> None:
    # Given a TRUE cell in the grade column, then the grade 1 (equal to True in Python)
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("명단")
    sheet.append(corpus.HEADER)
    sheet.append(["가", "010-3000-0001", None, None, True])
    sheet.append(["나", "010-3000-0002", None, None, 1])
    path = tmp_path / "bool-grade.xlsx"
    workbook.save(path)
    chunks, counts = read_all(path)
    # Then the TRUE is refused and the 1 is read as grade 1
    assert [p.reason for p in counts.problems] == ["not a grade (True)"]
    assert [(r.source_row, r.grade) for c in chunks for r in c] == [(3, 1)]


@pytest.mark.parametrize("header", ["번호", "No.", "#", "순번", "NO", None])
def test_numbered_empty_slots_are_skipped_and_counted(tmp_path: Path, header: str | None) -> None:
    # Given 3 students and 4 empty slots numbered in advance (in a column headed as numbers, or
    # in a first column holding numbers only)
    path = corpus.write_numbered_slots_xlsx(tmp_path, header=header)
    chunks, counts = read_all(path)
    # Then the slots are neither rows nor errors
    assert (counts.total, counts.valid, counts.invalid, counts.empty_slots) == (3, 3, 0, 4)
    assert counts.problems == []
    assert [r.source_row for c in chunks for r in c] == [2, 3, 4]


def test_an_empty_template_reports_no_errors(tmp_path: Path) -> None:
    path = corpus.write_numbered_slots_xlsx(tmp_path, students=0, slots=30)
    chunks, counts = read_all(path)
    assert (counts.total, counts.invalid, counts.empty_slots, chunks) == (0, 0, 30, [])


def test_numbers_typed_as_text_are_sequence_numbers(tmp_path: Path) -> None:
    path = corpus.write_numbered_slots_xlsx(
        tmp_path, numbers=[1, 2, 3, "4", " 5.", 6.0, "7"]
    )
    _, counts = read_all(path)
    assert (counts.invalid, counts.empty_slots) == (0, 4)


def test_a_slot_with_anything_else_in_it_is_an_invalid_row(tmp_path: Path) -> None:
    # Given a numbered row with a school typed in, and one with a name but no phone
    path = corpus.write_numbered_slots_xlsx(tmp_path, extra={
        3: (4, None, None, None, "한빛고등학교"),
        4: (5, "학생5"),
    })
    _, counts = read_all(path)
    # Then those are invalid rows; the other two slots are slots
    assert (counts.invalid, counts.empty_slots) == (2, 2)
    assert [(p.row, p.reason) for p in counts.problems] == [
        (5, "name is missing"), (5, "phone is missing"), (6, "phone is missing")
    ]


def test_a_first_column_not_of_numbers_holds_no_slots(tmp_path: Path) -> None:
    # Given an unheaded first column holding a word somewhere: not a column of sequence numbers
    path = corpus.write_numbered_slots_xlsx(
        tmp_path, header=None, numbers=[1, 2, 3, "메모", 5, 6, 7]
    )
    _, counts = read_all(path)
    # Then the rows holding only a number (or the word) are invalid, as before
    assert (counts.invalid, counts.empty_slots) == (4, 0)


def test_a_number_outside_the_sequence_column_is_no_slot(tmp_path: Path) -> None:
    # Given a row holding only a grade (a number, in a field's column)
    path = corpus.write_numbered_slots_xlsx(tmp_path, extra={3: (None, None, None, None, None, 3)})
    _, counts = read_all(path)
    assert (counts.invalid, counts.empty_slots) == (1, 3)
