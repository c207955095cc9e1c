"""Reading a roster: find the sheet and header, then validate rows into chunks as they stream.

:func:`open_roster` does everything that can reject the file as a whole (the pre-check, opening
the workbook, finding the header, the row and column limits) before a single row is validated, so
a rejected file never produces a chunk. :meth:`Roster.rows` then streams validated rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import Any

import python_calamine as calamine

from actors.roster import normalise
from actors.roster.columns import FIELDS, LABELS, HeaderMatch, looks_like_header, match_header
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
    """

    total: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    chunks: int = 0
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
        rows = self.sheet.iter_rows()
        for _ in range(self._header_index):
            next(rows, None)
        yield from enumerate(rows, self.header_row)

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
        validate_row = _RowValidator({f: columns.get(f, -1) for f in FIELDS}, self.header.names)
        width = max(columns.values()) + 1
        rows = self.raw_rows()
        next(rows, None)
        for index, (number, cells) in enumerate(rows):
            if len(cells) < width:
                cells = cells + [""] * (width - len(cells))
            phone = phones[index]
            result = validate_row(number, cells, phone)
            if result is None:
                continue
            counts.total += 1
            if isinstance(result, list):
                counts.invalid += 1
                counts.problems.extend(result)
                counts.notes[number] = "; ".join(f"{p.column}: {p.reason}" for p in result)
                if phone is not None and last[phone] == number and phone in held:
                    earlier = held.pop(phone)
                    recover[earlier[-1]] = earlier[:-1]
                continue
            counts.valid += 1
            if last[result.phone] != number:
                held.setdefault(result.phone, []).append(number)
                continue
            if result.phone in held:
                _supersede(counts, number, held.pop(result.phone))
            pending.append(result)
            if len(pending) >= chunk_rows:
                on_chunk(tuple(pending))
                counts.chunks += 1
                pending = []
                if on_progress is not None:
                    on_progress(number - self.header_row, total)
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

    def _phones(self) -> tuple[list[str | None], dict[str, int]]:
        """Each data row's phone (``None`` where it does not normalise) and, for each phone, the
        last row carrying it."""
        phones: list[str | None] = []
        last: dict[str, int] = {}
        at = self.header.columns["phone"]
        normal = normalise.phone
        rows = self.raw_rows()
        next(rows, None)
        for number, cells in rows:
            try:
                phone = normal(cells[at]) if at < len(cells) else None
            except ValueError:
                phone = None
            if phone is not None:
                last[phone] = number
            phones.append(phone)
        return phones, last

    def _recover(
        self, validate_row: _RowValidator, phones: list[str | None],
        recover: dict[int, list[int]], counts: Counts,
    ) -> Iterator[StudentRow]:
        """The valid rows in ``recover``, whose phone's last row was invalid, read again."""
        width = max(self.header.columns.values()) + 1
        rows = self.raw_rows()
        next(rows, None)
        for index, (number, cells) in enumerate(rows):
            if number not in recover:
                continue
            if len(cells) < width:
                cells = cells + [""] * (width - len(cells))
            result = validate_row(number, cells, phones[index])
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


_FIELDS_SET = frozenset(StudentRow.model_fields)
_EARLIEST = date(1900, 1, 1)
_new = object.__new__
_set = object.__setattr__


def _student(values: dict[str, Any]) -> StudentRow:
    """A :class:`StudentRow` from values already validated here, without validating again.

    It is what ``model_construct`` does, minus its per-field defaults handling (every field is
    given), which made it the costliest step per row; a test checks the result equals a
    validated row.
    """
    row: StudentRow = _new(StudentRow)
    _set(row, "__dict__", values)
    _set(row, "__pydantic_fields_set__", set(_FIELDS_SET))
    _set(row, "__pydantic_extra__", None)
    _set(row, "__pydantic_private__", None)
    return row


class _RowValidator:
    """Validates rows of one sheet; caches conversions of values that repeat (grades, schools)."""

    _CACHE_LIMIT = 4096

    def __init__(self, index: dict[str, int], names: tuple[str, ...]) -> None:
        self.names = names
        self.name_at = index["name"]
        self.phone_at = index["phone"]
        self.school_at = index["school"]
        self.parent_at = index["parent_phone"]
        self.grade_at = index["grade"]
        self.birth_at = index["birth_date"]
        self.today = date.today()
        self._levels: dict[str, int | None] = {}
        self._grades: dict[tuple[Any, int | None], int | str | None] = {}

    def __call__(
        self, number: int, cells: list[Any], phone: str | None
    ) -> StudentRow | list[Problem] | None:
        """A row validated: a :class:`StudentRow`, its problems, or ``None`` for an empty row.

        ``phone`` is the row's phone already normalised, or ``None`` to normalise it here.
        """
        names = self.names
        name_at = self.name_at
        phone_at = self.phone_at
        raw_name = cells[name_at]
        raw_phone = cells[phone_at]
        if (
            (raw_name == "" or raw_name is None)
            and (raw_phone == "" or raw_phone is None)
            and all(c == "" or c is None or (isinstance(c, str) and not c.strip()) for c in cells)
        ):
            return None
        problems: list[Problem] | None = None
        name = raw_name.strip() if type(raw_name) is str else normalise.text(raw_name)
        if not name:
            problems = [Problem(number, names[name_at], "name is missing")]
        elif len(name) > 100:
            problems = [Problem(number, names[name_at], "name is longer than 100 characters")]
        elif "  " in name or "\t" in name or "\n" in name:
            name = " ".join(name.split())
        if phone is None:
            try:
                phone = normalise.phone(raw_phone)
                if phone is None:
                    raise ValueError("phone is missing")
            except ValueError as exc:
                problems = _add(problems, Problem(number, names[phone_at], str(exc)))
        school: str | None = None
        at = self.school_at
        if at >= 0:
            raw = cells[at]
            school = (raw.strip() if type(raw) is str else normalise.text(raw)) or None
            if school is not None and len(school) > 100:
                problems = _add(
                    problems, Problem(number, names[at], "school is longer than 100 characters")
                )
        parent_phone = grade = birth_date = None
        at = self.parent_at
        if at >= 0:
            try:
                parent_phone = normalise.phone(cells[at])
            except ValueError as exc:
                problems = _add(problems, Problem(number, names[at], str(exc)))
        at = self.grade_at
        if at >= 0:
            found = self._grade(cells[at], school)
            if isinstance(found, str):
                problems = _add(problems, Problem(number, names[at], found))
            else:
                grade = found
        at = self.birth_at
        if at >= 0:
            raw = cells[at]
            if type(raw) is date and _EARLIEST <= raw <= self.today:
                birth_date = raw
            else:
                try:
                    birth_date = normalise.birth_date(raw, self.today)
                except ValueError as exc:
                    problems = _add(problems, Problem(number, names[at], str(exc)))
        if problems:
            return problems
        return _student({
            "source_row": number, "name": name, "phone": phone, "parent_phone": parent_phone,
            "school": school, "grade": grade, "birth_date": birth_date,
        })

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
        if len(self._grades) < self._CACHE_LIMIT:
            self._grades[key] = found
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
    except Exception as exc:  # the reader's errors are not all CalamineError
        raise RosterRejected(f"the file is damaged or not a spreadsheet ({_short(exc)})") from exc
    try:
        return _locate(workbook, fmt, limits)
    except BaseException:
        workbook.close()
        raise


def _locate(workbook: calamine.CalamineWorkbook, fmt: Format, limits: Limits) -> Roster:
    partial: tuple[str, HeaderMatch] | None = None
    for meta in workbook.sheets_metadata:
        if meta.typ != calamine.SheetTypeEnum.WorkSheet:
            continue
        try:
            sheet = workbook.get_sheet_by_name(meta.name)
        except calamine.PasswordError as exc:
            raise RosterRejected(_PROTECTED) from exc
        except Exception as exc:
            raise RosterRejected(
                f"sheet {meta.name!r} is damaged and cannot be read ({_short(exc)})"
            ) from exc
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


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
