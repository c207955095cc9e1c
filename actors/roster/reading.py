"""Reading a roster: find the sheet and header, then validate rows into chunks as they stream.

:func:`open_roster` does everything that can reject the file as a whole (the pre-check, opening
the workbook, finding the header, the row and column limits) before a single row is validated, so
a rejected file never produces a chunk. :meth:`Roster.rows` then streams validated rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from itertools import count, islice
from pathlib import Path
from types import TracebackType
from typing import Any

import python_calamine as calamine
from pydantic import BaseModel

from actors.roster import normalise
from actors.roster.columns import FIELDS, LABELS, HeaderMatch, looks_like_header, match_header
from actors.roster.describe import unreadable
from actors.roster.errors import RosterRejected
from actors.roster.limits import HEADER_SEARCH_ROWS, Limits
from actors.roster.precheck import Format, precheck
from schemas import StudentRow


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a row was rejected: ``row`` is the 1-based sheet row, ``column`` its header."""

    row: int
    column: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "reason": self.reason}


@dataclass(slots=True)
class Counts:
    """``total`` non-empty rows below the header = ``valid`` + ``invalid``; ``duplicates`` valid
    rows whose phone a later row repeats (the later row wins), so ``valid - duplicates`` students.
    ``empty_slots`` rows holding nothing but a sequence number (the empty numbered rows of a
    sheet prepared in advance): skipped, and counted in neither ``total`` nor ``invalid``.
    """

    total: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    chunks: int = 0
    empty_slots: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)
    """Per source row, the text of the report's reason column (errors and duplicate notes)."""


class Roster:
    """An open roster file whose sheet and header are known; see :func:`open_roster`."""

    def __init__(
        self, workbook: calamine.CalamineWorkbook, sheet: calamine.CalamineSheet,
        header_index: int, header: HeaderMatch, fmt: Format, limits: Limits,
    ) -> None:
        self.workbook = workbook
        self.sheet = sheet
        self.format = fmt
        self.header = header
        self.limits = limits
        start = sheet.start or (0, 0)
        self._first_row = start[0] + 1
        self._first_column = start[1]
        self.header_row = self._first_row + header_index
        self._header_index = header_index
        self.data_rows = sheet.height - header_index - 1

    @property
    def sheet_name(self) -> str:
        return self.sheet.name

    def __enter__(self) -> Roster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.workbook.close()

    def raw_rows(self) -> Iterator[tuple[int, list[Any]]]:
        """The header and every row below it, with 1-based sheet row numbers."""
        return enumerate(islice(self.sheet.iter_rows(), self._header_index, None), self.header_row)

    def _cells(self) -> Iterator[list[Any]]:
        """The rows below the header, each at least as wide as the header's last field."""
        rows = islice(self.sheet.iter_rows(), self._header_index + 1, None)
        width = max(self.header.columns.values()) + 1
        if self.sheet.width >= width:  # every row the reader gives is as wide as the sheet
            return rows
        return (r + [""] * (width - len(r)) if len(r) < width else r for r in rows)

    def validate(
        self,
        on_chunk: Callable[[tuple[StudentRow, ...]], None],
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Counts:
        """Validate every row; hand each full chunk of valid rows to ``on_chunk`` at once.

        A phone carried by several valid rows is sent once, with the last of those rows: a first
        pass over the sheet (already in memory) finds the last row carrying each phone, and this
        pass skips valid rows a later row supersedes. When that later row turns out invalid, the
        last valid row before it is sent instead, in a final chunk (a third pass reads it again).
        """
        counts = Counts()
        columns = self.header.columns
        chunk_rows = self.limits.chunk_rows
        phones, last = self._phones()
        pending: list[StudentRow] = []
        held: dict[str, list[int]] = {}
        recover: dict[int, list[int]] = {}
        total = self.data_rows
        validate_row = _RowValidator(
            {f: columns.get(f, -1) for f in FIELDS}, self.header.names, self.header.sequence,
            self._first_column_numbered,
        )
        valid = invalid = 0
        for number, phone, cells in zip(count(self.header_row + 1), phones, self._cells()):
            result = validate_row(number, cells, phone)
            if result is None:
                continue
            if isinstance(result, list):
                invalid += 1
                counts.problems.extend(result)
                counts.notes[number] = "; ".join(f"{p.column}: {p.reason}" for p in result)
                if phone is not None and last[phone] == number and phone in held:
                    earlier = held.pop(phone)
                    recover[earlier[-1]] = earlier[:-1]
                continue
            valid += 1
            key = phone or result.phone  # the same: the row's phone is the one read first
            if last[key] != number:
                held.setdefault(key, []).append(number)
                continue
            if held and key in held:
                _supersede(counts, number, held.pop(key))
            pending.append(result)
            if len(pending) >= chunk_rows:
                on_chunk(tuple(pending))
                counts.chunks += 1
                pending = []
                if on_progress is not None:
                    on_progress(number - self.header_row, total)
        counts.valid, counts.invalid, counts.total = valid, invalid, valid + invalid
        counts.empty_slots = validate_row.empty_slots
        for earlier in held.values():  # none unless a last row read as empty: send, not lose
            recover[earlier[-1]] = earlier[:-1]
        if recover:
            pending.extend(self._recover(validate_row, phones, recover, counts))
        for at in range(0, len(pending), chunk_rows):
            on_chunk(tuple(pending[at : at + chunk_rows]))
            counts.chunks += 1
        if on_progress is not None:
            on_progress(total, total)
        return counts

    def _first_column_numbered(self) -> bool:
        """Whether the first column names no field and holds nothing but sequence numbers."""
        if 0 in self.header.columns.values():
            return False
        return all(
            _is_sequence_number(cells[0]) or _is_blank(cells[0]) for cells in self._cells() if cells
        )

    def _phones(self) -> tuple[list[str | None], dict[str | None, int]]:
        """Each data row's phone (``None`` where it does not normalise) and, for each phone, the
        last row carrying it."""
        at = self.header.columns["phone"]
        raws = [cells[at] for cells in self._cells()]  # faster than normalising as rows come
        phones: list[str | None] = []
        add = phones.append
        normal = normalise.phone
        for raw in raws:
            try:
                add(normal(raw))
            except ValueError:
                add(None)
        return phones, dict(zip(phones, count(self.header_row + 1)))

    def _recover(
        self, validate_row: _RowValidator, phones: list[str | None],
        recover: dict[int, list[int]], counts: Counts,
    ) -> Iterator[StudentRow]:
        """The valid rows in ``recover``, whose phone's last row was invalid, read again."""
        for number, phone, cells in zip(count(self.header_row + 1), phones, self._cells()):
            if number not in recover:
                continue
            result = validate_row(number, cells, phone)
            assert isinstance(result, StudentRow), f"row {number} was valid on the first read"
            if recover[number]:
                _supersede(counts, number, recover[number])
            yield result


def _supersede(counts: Counts, number: int, earlier: list[int]) -> None:
    """Count the valid rows ``earlier`` that row ``number`` replaces, and note it on that row."""
    counts.duplicates += len(earlier)
    rows = ", ".join(str(n) for n in earlier)
    counts.notes[number] = (
        f"same phone as row{'s' if len(earlier) > 1 else ''} {rows}; this row is kept"
    )


# Every row sets every field; one frozen set serves them all (rows are frozen: pydantic never
# adds to it, and copies it where a copy could change).
_FIELDS = frozenset(StudentRow.model_fields)
_EARLIEST = date(1900, 1, 1)
_NOT_CACHED = object()
_new = object.__new__
_slots = BaseModel.__dict__
_set_dict = _slots["__dict__"].__set__
_set_fields = _slots["__pydantic_fields_set__"].__set__
_set_extra = _slots["__pydantic_extra__"].__set__
_set_private = _slots["__pydantic_private__"].__set__
_phone = normalise.phone
_text = normalise.text


def _student(values: dict[str, Any]) -> StudentRow:
    """A :class:`StudentRow` from values already validated here, without validating again.

    It is what ``model_construct`` does, minus its per-field defaults handling (every field is
    given) and its attribute lookups, which made it the costliest step per row; a test checks
    the result equals a validated row.
    """
    row: StudentRow = _new(StudentRow)
    _set_dict(row, values)
    _set_fields(row, _FIELDS)
    _set_extra(row, None)
    _set_private(row, None)
    return row


def _is_blank(cell: Any) -> bool:
    return cell == "" or cell is None or (isinstance(cell, str) and not cell.strip())


_SEQUENCE_TEXT = re.compile(r"\s*[0-9]{1,6}\.?\s*")


def _is_sequence_number(cell: Any) -> bool:
    """A whole number as a sheet numbers its rows: ``7``, ``7.0``, or the text ``"7"``/``"7."``."""
    if type(cell) is int:
        return cell >= 0
    if type(cell) is float:
        return cell.is_integer() and cell >= 0
    return type(cell) is str and _SEQUENCE_TEXT.fullmatch(cell) is not None


class _RowValidator:
    """Validates rows of one sheet; caches conversions of values that repeat (grades, schools).

    Counts in ``empty_slots`` the rows whose only cell is a sequence number: in the ``sequence``
    column, or in the first column when ``first_column_numbered()`` (asked once, when needed).
    """

    _CACHE_LIMIT = 4096

    def __init__(
        self, index: dict[str, int], names: tuple[str, ...], sequence: int | None = None,
        first_column_numbered: Callable[[], bool] | None = None,
    ) -> None:
        self.names = names
        self.empty_slots = 0
        self._sequence = sequence
        self._first_column_numbered = first_column_numbered
        self._first_numbered: bool | None = None
        self.today = date.today()
        self._at = (
            index["name"], index["phone"], index["school"], index["parent_phone"],
            index["grade"], index["birth_date"],
        )
        self._levels: dict[str, int | None] = {}
        self._grades: dict[tuple[Any, int | None], int | str | None] = {}
        self._school_grades: dict[tuple[Any, str | None], int | str | None] = {}

    def __call__(
        self, number: int, cells: list[Any], phone: str | None
    ) -> StudentRow | list[Problem] | None:
        """A row validated: a :class:`StudentRow`, its problems, or ``None`` for an empty row
        or an empty slot (counted in ``empty_slots``).

        ``phone`` is the row's phone already normalised, or ``None`` to normalise it here.
        """
        name_at, phone_at, school_at, parent_at, grade_at, birth_at = self._at
        raw_name = cells[name_at]
        raw_phone = cells[phone_at]
        if (raw_name == "" or raw_name is None) and (raw_phone == "" or raw_phone is None):
            filled = [at for at, c in enumerate(cells) if not _is_blank(c)]
            if not filled:
                return None
            if len(filled) == 1 and self._is_slot(filled[0], cells[filled[0]]):
                self.empty_slots += 1
                return None
        names = self.names
        problems: list[Problem] | None = None
        name = raw_name.strip() if type(raw_name) is str else _text(raw_name)
        if not name:
            problems = [Problem(number, names[name_at], "name is missing")]
        elif len(name) > 100:
            problems = [Problem(number, names[name_at], "name is longer than 100 characters")]
        elif "  " in name or "\t" in name or "\n" in name:
            name = " ".join(name.split())
        if phone is None:
            try:
                phone = _phone(raw_phone)
                if phone is None:
                    raise ValueError("phone is missing")
            except ValueError as exc:
                problems = _add(problems, Problem(number, names[phone_at], str(exc)))
        school: str | None = None
        if school_at >= 0:
            raw = cells[school_at]
            school = (raw.strip() if type(raw) is str else _text(raw)) or None
            if school is not None and len(school) > 100:
                problems = _add(
                    problems,
                    Problem(number, names[school_at], "school is longer than 100 characters"),
                )
        parent_phone = grade = birth_date = None
        if parent_at >= 0:
            raw = cells[parent_at]
            if raw != "" and raw is not None:
                try:
                    parent_phone = _phone(raw)
                except ValueError as exc:
                    problems = _add(problems, Problem(number, names[parent_at], str(exc)))
        if grade_at >= 0:
            raw = cells[grade_at]
            found = (
                self._school_grades.get((raw, school), _NOT_CACHED)
                if type(raw) is not bool else _NOT_CACHED
            )
            if found is _NOT_CACHED:
                found = self._grade(raw, school)
            if type(found) is str:
                problems = _add(problems, Problem(number, names[grade_at], found))
            else:
                grade = found
        if birth_at >= 0:
            raw = cells[birth_at]
            today = self.today
            if type(raw) is date and _EARLIEST <= raw <= today:
                birth_date = raw
            elif raw != "" and raw is not None:
                try:
                    birth_date = normalise.birth_date(raw, today)
                except ValueError as exc:
                    problems = _add(problems, Problem(number, names[birth_at], str(exc)))
        if problems:
            return problems
        return _student({
            "source_row": number, "name": name, "phone": phone, "parent_phone": parent_phone,
            "school": school, "grade": grade, "birth_date": birth_date,
        })

    def _is_slot(self, at: int, cell: Any) -> bool:
        """Whether ``cell``, alone in its row at column ``at``, is the row's sequence number."""
        if not _is_sequence_number(cell):
            return False
        if at == self._sequence:
            return True
        if at != 0 or self._first_column_numbered is None:
            return False
        if self._first_numbered is None:
            self._first_numbered = self._first_column_numbered()
        return self._first_numbered

    def _grade(self, value: Any, school: str | None) -> int | str | None:
        """The grade, or the reason it is not one (as a string)."""
        level = None
        if school is not None:
            level = self._levels.get(school, -1)
            if level == -1:
                level = normalise.school_level(school)
                if len(self._levels) < self._CACHE_LIMIT:
                    self._levels[school] = level
        key = (value, level)
        if type(value) is not bool and key in self._grades:
            return self._grades[key]
        try:
            found: int | str | None = normalise.grade(value, level)
        except ValueError as exc:
            found = str(exc)
        if type(value) is not bool:
            if len(self._grades) < self._CACHE_LIMIT:
                self._grades[key] = found
            if len(self._school_grades) < self._CACHE_LIMIT:
                self._school_grades[(value, school)] = found
        return found


def _add(problems: list[Problem] | None, problem: Problem) -> list[Problem]:
    if problems is None:
        return [problem]
    problems.append(problem)
    return problems


_PROTECTED = "the file is password-protected; save it without a password"


def open_roster(path: Path, limits: Limits) -> Roster:
    """Open a roster file; :class:`RosterRejected` if it cannot be imported as a whole."""
    fmt = precheck(path, limits)
    try:
        workbook = calamine.CalamineWorkbook.from_path(str(path))
    except calamine.PasswordError as exc:
        raise RosterRejected(_PROTECTED) from exc
    except BaseException as exc:  # the reader's errors are not all CalamineError
        if not _reader_failed(exc):
            raise
        _log_reader_error(fmt, None, exc)
        raise RosterRejected(unreadable(path, fmt)) from exc
    try:
        return _locate(workbook, fmt, limits, path)
    except BaseException:
        workbook.close()
        raise


def _locate(
    workbook: calamine.CalamineWorkbook, fmt: Format, limits: Limits, path: Path
) -> Roster:
    partial: tuple[str, HeaderMatch] | None = None
    for meta in workbook.sheets_metadata:
        if meta.typ != calamine.SheetTypeEnum.WorkSheet:
            continue
        try:
            sheet = workbook.get_sheet_by_name(meta.name)
        except calamine.PasswordError as exc:
            raise RosterRejected(_PROTECTED) from exc
        except BaseException as exc:
            if not _reader_failed(exc):
                raise
            _log_reader_error(fmt, meta.name, exc)
            raise RosterRejected(unreadable(path, fmt, meta.name)) from exc
        if sheet.width > limits.max_columns:
            raise RosterRejected(
                f"sheet {meta.name!r} has {sheet.width} columns, more than the limit of"
                f" {limits.max_columns} (ROSTER_MAX_COLUMNS)"
            )
        for index, cells in enumerate(sheet.iter_rows()):
            if index >= HEADER_SEARCH_ROWS:
                break
            found = match_header(cells)
            if not looks_like_header(found):
                continue
            if found.missing:
                partial = partial or (meta.name, found)
                continue
            roster = Roster(workbook, sheet, index, found, fmt, limits)
            if roster.data_rows > limits.max_rows:
                raise RosterRejected(
                    f"sheet {meta.name!r} has {roster.data_rows} rows below its header, more than"
                    f" the limit of {limits.max_rows} (ROSTER_MAX_ROWS)"
                )
            return roster
    if partial is not None:
        sheet_name, found = partial
        missing = ", ".join(LABELS[f] for f in found.missing)
        raise RosterRejected(
            f"required column {missing} is missing (sheet {sheet_name!r}); columns found: "
            + ", ".join(found.found)
        )
    raise RosterRejected(
        f"no header row found in the first {HEADER_SEARCH_ROWS} rows of any sheet; expected"
        f" columns such as {LABELS['name']} and {LABELS['phone']}"
    )


def _reader_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is the reader failing on the file: any ``Exception``, and the panics of
    its Rust code (``pyo3_runtime.PanicException`` derives from ``BaseException``, so a
    damaged file would otherwise pass ``except Exception`` and kill the job unrecorded)."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _log_reader_error(fmt: Format, sheet: str | None, exc: BaseException) -> None:
    """The reader's own words, for the log (never for the person who sent the file)."""
    from jobplatform.logging import get_logger  # only when needed: reading needs no logging

    get_logger(__name__).info(
        "roster reader failed", format=str(fmt), sheet=sheet, error=_short(exc)
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
