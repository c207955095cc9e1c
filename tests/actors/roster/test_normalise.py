from __future__ import annotations

from datetime import date, datetime

import pytest

from actors.roster import normalise


@pytest.mark.parametrize("value", [
    "010-1234-5678", "01012345678", "010 1234 5678", "010.1234.5678", "+82 10-1234-5678",
    "+82-10-1234-5678", "82 10 1234 5678", "０１０－１２３４－５６７８", "(010) 1234-5678",
    1012345678, 1012345678.0, " 010-1234-5678 ", "+82 010-1234-5678", "10-1234-5678",
    "+8210 1234 5678",
])
def test_phone_spellings_become_canonical(value: object) -> None:
    assert normalise.phone(value) == "010-1234-5678"


def test_phone_old_prefixes_keep_their_length() -> None:
    assert normalise.phone("0113456789") == "011-345-6789"
    assert normalise.phone("016-1234-5678") == "016-1234-5678"
    assert normalise.phone("011 345 6789") == "011-345-6789"


@pytest.mark.parametrize(("value", "reason"), [
    ("02-123-4567", "not a Korean mobile number"),
    ("0101234567", "an 010 number has 11 digits"),
    ("010 123 4567", "an 010 number has 11 digits"),
    ("abc", "not a phone number"),
    (10.5, "not a phone number"),
    (True, "not a phone number"),
])
def test_phone_refusals_say_why(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalise.phone(value)


@pytest.mark.parametrize("value", [None, "", "   "])
def test_empty_phone_is_none(value: object) -> None:
    assert normalise.phone(value) is None


@pytest.mark.parametrize(("value", "expected"), [
    (10, 10), (12.0, 12), ("7", 7), ("고1", 10), ("고3", 12), ("중3", 9), ("중 1", 7), ("초6", 6),
    ("고등학교 2학년", 11), ("중학교3학년", 9), ("grade 10", 10), ("10th", 10), ("３학년", 3),
    ("3학년", 3), (None, None), ("", None),
])
def test_grades(value: object, expected: int | None) -> None:
    assert normalise.grade(value) == expected


def test_grade_without_level_takes_the_schools() -> None:
    high = normalise.school_level("한국고등학교")
    middle = normalise.school_level("서울 중")
    assert normalise.grade("3학년", high) == 12
    assert normalise.grade(2, middle) == 8
    assert normalise.grade("고1", middle) == 10
    assert normalise.grade(10, high) == 10
    assert normalise.school_level("푸른초등학교") == 0
    assert normalise.school_level("한국학원") is None


@pytest.mark.parametrize(("value", "reason"), [
    ("고4", "no such grade"), ("초7", "no such grade"), ("13", "between 1 and 12"),
    (0, "between 1 and 12"), (3.5, "not a whole grade"), ("삼학년", "not a grade"),
])
def test_grade_refusals(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalise.grade(value)


TODAY = date(2024, 6, 1)


@pytest.mark.parametrize("value", [
    date(2010, 3, 15), datetime(2010, 3, 15, 0, 0), 40252, 40252.0, "2010-03-15", "2010.3.15",
    "2010. 3. 15.", "2010/03/15", "2010년 3월 15일", "20100315", "100315", 20100315,
    "2010-03-15 00:00:00", "２０１０－０３－１５",
])
def test_birth_dates(value: object) -> None:
    assert normalise.birth_date(value, TODAY) == date(2010, 3, 15)


def test_two_digit_years_take_the_latest_past_century() -> None:
    assert normalise.birth_date("991231", TODAY) == date(1999, 12, 31)
    assert normalise.birth_date("240101", TODAY) == date(2024, 1, 1)


@pytest.mark.parametrize(("value", "reason"), [
    ("2010-02-30", "no such date"), ("2025-01-01", "in the future"), ("1899-12-31", "before 1900"),
    ("next week", "not a date"), (40252.5, "not a date"),
])
def test_birth_date_refusals(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalise.birth_date(value, TODAY)
