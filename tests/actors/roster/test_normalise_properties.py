"""Properties of the cell normalisers over every kind of value a reader returns."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from actors.roster import normalise
from schemas import StudentRow
from schemas.intents import PHONE_PATTERN

TODAY = date(2026, 3, 2)
# Cells as python-calamine and openpyxl return them.
CELLS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(),
    st.text("0123456789 -.+()/０１２３４５６７８９", max_size=20),
    st.dates(), st.datetimes(), st.times(), st.timedeltas(),
)
PHONES = st.builds(lambda a, b, c: f"01{a}-{b}-{c:04d}", st.sampled_from("16789"),
                   st.integers(100, 9999), st.integers(0, 9999)) | st.builds(
    lambda b, c: f"010-{b}-{c:04d}", st.integers(1000, 9999), st.integers(0, 9999))
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def _outcome(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except ValueError as exc:
        refused = exc
    assert str(refused), "a refusal says why"
    return refused


@given(CELLS)
def test_every_cell_normalises_or_is_refused_with_a_reason(cell: Any) -> None:
    number = _outcome(normalise.phone, cell)
    assert number is None or isinstance(number, ValueError) or (
        re.fullmatch(PHONE_PATTERN, number) and normalise.phone(number) == number)
    if isinstance(number, str):  # what the writer's contract accepts
        StudentRow(source_row=1, name="x", phone=number)
    grade = _outcome(normalise.grade, cell)
    assert grade is None or isinstance(grade, ValueError) or 1 <= grade <= 12
    born = _outcome(normalise.birth_date, cell, TODAY)
    assert born is None or isinstance(born, ValueError) or (
        date(1900, 1, 1) <= born <= TODAY)
    assert normalise.text(cell) == normalise.text(cell).strip()


@given(PHONES, st.data())
def test_a_phone_in_any_common_spelling_is_one_number(number: str, data: st.DataObject) -> None:
    digits = number.replace("-", "")
    head, middle, last = number.split("-")
    spelling = data.draw(st.sampled_from([
        number, digits, f"{head} {middle} {last}", f"{head}.{middle}.{last}",
        f"+82 {head[1:]}-{middle}-{last}", f"+82{digits[1:]}", f"82-{head[1:]}-{middle}-{last}",
        number.translate(FULL_WIDTH), f"  {number}  ",
    ]))
    assert normalise.phone(spelling) == number
    assert normalise.phone(int(digits)) == number  # a numeric cell that lost its 0
    assert normalise.phone(float(int(digits))) == number


@given(st.integers(1, 12))
def test_grades_on_the_twelve_year_scale(n: int) -> None:
    assert normalise.grade(n) == normalise.grade(float(n)) == normalise.grade(str(n)) == n
    assert normalise.grade(f"{n}학년") == n
    level, year = (9, n - 9) if n > 9 else (6, n - 6) if n > 6 else (0, n)
    prefix = {0: "초", 6: "중", 9: "고"}[level]
    assert normalise.grade(f"{prefix}{year}") == n
    assert normalise.grade(year, normalise.school_level(f"서울{prefix}")) == n


@given(st.dates(date(1900, 1, 1), TODAY))
def test_a_birth_date_in_any_common_spelling_is_that_day(day: date) -> None:
    y, m, d = day.year, day.month, day.day
    for spelling in (day, datetime.combine(day, time(0)), day.isoformat(), f"{y}.{m}.{d}",
                     f"{y}. {m}. {d}.", f"{y}/{m:02d}/{d:02d}", f"{y}년 {m}월 {d}일",
                     f"{y}{m:02d}{d:02d}"):
        assert normalise.birth_date(spelling, TODAY) == day, spelling
    serial = (day - date(1899, 12, 30)).days
    assert normalise.birth_date(serial, TODAY) == day


@given(st.dates(TODAY + timedelta(days=1)))
def test_a_birth_date_in_the_future_is_refused(day: date) -> None:
    assert isinstance(_outcome(normalise.birth_date, day, TODAY), ValueError)
