"""Turning what people type into spreadsheet cells into the values a roster row holds.

Each function takes a cell as the reader returns it (``str``, ``int``, ``float``, ``bool``,
``date``, ``datetime``, ``time``, ``timedelta`` or ``None`` for an empty cell) and returns the
normalised value, ``None`` for an empty cell, or raises :class:`ValueError` with a reason a person
can act on. They are plain functions, fast enough to run on every cell of a large roster.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime, timedelta

Cell = object

_CANONICAL_PHONE = re.compile(r"01[016789]-[0-9]{3,4}-[0-9]{4}")
_PHONE_NOISE = str.maketrans("", "", " -.()/\t\u00a0\u2010\u2011\u2012\u2013\u2014\u2212")
_DIGITS = re.compile(r"[0-9]+")
_MOBILE = re.compile(r"01[016789][0-9]{7,8}")
# The spellings most cells use, read in one match: an optional +82, the prefix with or without
# its 0, then the two groups, each after an optional space, hyphen or dot.
_COMMON_PHONE = re.compile(r"(?:\+82[ -]?)?0?1([016789])[ .-]?([0-9]{3,4})[ .-]?([0-9]{4})")


def text(value: Cell) -> str:
    """A cell as trimmed text ("" for an empty cell); integral floats lose their ``.0``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def phone(value: Cell) -> str | None:
    """A Korean mobile number as ``010-1234-5678``.

    Accepts ``010-1234-5678``, ``01012345678``, ``010 1234 5678``, ``010.1234.5678``,
    ``+82 10-1234-5678``, ``82-10-...``, full-width digits, and numeric cells that lost their
    leading zero (``1012345678``).
    """
    if isinstance(value, str):
        raw = value.strip()
        if _CANONICAL_PHONE.fullmatch(raw):
            return raw
        if not raw:
            return None
    elif isinstance(value, bool):
        raise ValueError(f"not a phone number ({value!r})")
    elif isinstance(value, int):
        raw = str(value)
    elif isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"not a phone number ({value!r})")
        raw = str(int(value))
    elif value is None:
        return None
    else:
        raise ValueError(f"not a phone number ({value!r})")
    common = _COMMON_PHONE.fullmatch(raw)
    if common is not None:
        kind, middle, last = common.groups()
        if kind != "0" or len(middle) == 4:
            return f"01{kind}-{middle}-{last}"
    digits = unicodedata.normalize("NFKC", raw).translate(_PHONE_NOISE)
    if digits.startswith("+82"):
        digits = digits[3:]
    elif digits.startswith("82") and len(digits) in (11, 12):
        digits = digits[2:]
    if not _DIGITS.fullmatch(digits):
        raise ValueError(f"not a phone number ({_shown(raw)})")
    if not digits.startswith("0"):
        digits = "0" + digits
    if not _MOBILE.fullmatch(digits):
        raise ValueError(f"not a Korean mobile number, expected like 010-1234-5678 ({_shown(raw)})")
    if digits.startswith("010") and len(digits) != 11:
        raise ValueError(f"an 010 number has 11 digits ({_shown(raw)})")
    return f"{digits[:3]}-{digits[3:-4]}-{digits[-4:]}"


_LEVEL_OFFSET = {"초": 0, "초등": 0, "초등학교": 0, "중": 6, "중학": 6, "중학교": 6, "중등": 6,
                 "고": 9, "고등": 9, "고등학교": 9, "고교": 9}
_LEVEL_YEARS = {0: 6, 6: 3, 9: 3}
_GRADE_TEXT = re.compile(
    r"(?:(초등학교|초등|초|중학교|중학|중등|중|고등학교|고등|고교|고)|grade|g|year)?"
    r"([0-9]{1,2})(?:학년|th|st|nd|rd)?"
)
_SCHOOL_LEVEL = re.compile(r"(초등학교|초|중학교|중|고등학교|고교|고)$")


def school_level(school: str | None) -> int | None:
    """The grade offset a school's name implies.

    0 for 초(등학교), 6 for 중(학교), 9 for 고(등학교); ``None`` when the name does not say.
    """
    if not school:
        return None
    found = _SCHOOL_LEVEL.search(school.replace(" ", ""))
    return _LEVEL_OFFSET[found.group(1)] if found else None


def grade(value: Cell, level: int | None = None) -> int | None:
    """A grade on the 1-12 scale: ``10``, ``10.0``, ``"고1"`` (10), ``"중3"`` (9), ``"초6"`` (6).

    A grade without its school level (``"3학년"``, ``3``) takes the level from the school's name
    when ``level`` is given (see :func:`school_level`) and is read on the 1-12 scale otherwise.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a grade ({value!r})")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"not a whole grade ({value!r})")
        value = int(value)
    if isinstance(value, int):
        return _on_scale(value, level, value)
    if not isinstance(value, str):
        raise ValueError(f"not a grade ({value!r})")
    folded = unicodedata.normalize("NFKC", value).replace(" ", "").lower()
    if not folded:
        return None
    found = _GRADE_TEXT.fullmatch(folded)
    if found is None:
        raise ValueError(f"not a grade, expected like 고1, 중3, 초6 or 1-12 ({_shown(value)})")
    number = int(found.group(2))
    if found.group(1):
        offset = _LEVEL_OFFSET[found.group(1)]
        if not 1 <= number <= _LEVEL_YEARS[offset]:
            raise ValueError(f"no such grade ({_shown(value)})")
        return offset + number
    return _on_scale(number, level, value)


def _on_scale(number: int, level: int | None, shown: Cell) -> int:
    if level is not None and 1 <= number <= _LEVEL_YEARS[level]:
        return level + number
    if not 1 <= number <= 12:
        raise ValueError(f"grade must be between 1 and 12 ({_shown(shown)})")
    return number


_EXCEL_EPOCH = date(1899, 12, 30)
_EARLIEST_BIRTH = date(1900, 1, 1)
_DATE_TEXT = re.compile(
    r"([0-9]{4})\s*[-./년]\s*([0-9]{1,2})\s*[-./월]\s*([0-9]{1,2})\s*[.일]?"
    r"(?:[ T][0-9:.]+)?"
)
_COMPACT_DATE = re.compile(r"([0-9]{2}|[0-9]{4})([0-9]{2})([0-9]{2})")


def birth_date(value: Cell, today: date | None = None) -> date | None:
    """A birth date from a date cell, an Excel serial number, or text.

    Text may be ``2010-03-15``, ``2010.3.15``, ``2010. 3. 15.``, ``2010/03/15``,
    ``2010년 3월 15일``, ``20100315`` or ``100315`` (two-digit years: the most recent past
    century). Dates in the future or before 1900 are refused.
    """
    today = today or date.today()
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        result = value.date()
    elif isinstance(value, date):
        result = value
    elif isinstance(value, bool):
        raise ValueError(f"not a date ({value!r})")
    elif isinstance(value, int | float):
        result = _from_number(value, today)
    elif isinstance(value, str):
        result = _from_text(value, today)
    else:
        raise ValueError(f"not a date ({value!r})")
    if result > today:
        raise ValueError(f"birth date is in the future ({result.isoformat()})")
    if result < _EARLIEST_BIRTH:
        raise ValueError(f"birth date is before 1900 ({result.isoformat()})")
    return result


def _from_number(value: float, today: date) -> date:
    if not float(value).is_integer():
        raise ValueError(f"not a date ({value!r})")
    number = int(value)
    if 1 <= number <= (today - _EXCEL_EPOCH).days:
        return _EXCEL_EPOCH + timedelta(days=number)
    return _from_text(str(number), today)


def _from_text(value: str, today: date) -> date:
    folded = unicodedata.normalize("NFKC", value).strip()
    found = _DATE_TEXT.fullmatch(folded)
    if found is None:
        found = _COMPACT_DATE.fullmatch(folded)
    if found is None:
        raise ValueError(f"not a date, expected like 2010-03-15 ({_shown(value)})")
    year, month, day = (int(g) for g in found.groups())
    if len(found.group(1)) == 2:
        year += 2000 if year <= today.year % 100 else 1900
    try:
        return date(year, month, day)
    except ValueError:
        raise ValueError(f"no such date ({_shown(value)})") from None


def _shown(value: Cell) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
