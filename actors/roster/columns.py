"""Recognising a roster's header row: which column holds which field.

Header cells are compared after folding: Unicode NFKC (full-width letters become ASCII), lower
case, and without spaces, underscores, hyphens, dots, slashes, asterisks, colons and brackets, so
``"휴대폰 번호"``, ``"휴대폰번호*"`` and ``"Mobile_Phone"`` all match.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

#: The fields of a roster row, in the order the error report and messages list them.
FIELDS = ("name", "phone", "parent_phone", "school", "grade", "birth_date")
REQUIRED = ("name", "phone")

#: How each field is named in messages: its usual Korean header and its English name.
LABELS = {
    "name": "이름/name",
    "phone": "전화번호/phone",
    "parent_phone": "학부모 전화번호/parent phone",
    "school": "학교/school",
    "grade": "학년/grade",
    "birth_date": "생년월일/birth date",
}

_ALIASES: dict[str, tuple[str, ...]] = {
    "name": (
        "이름", "성명", "성함", "학생", "학생이름", "학생명", "학생성명", "이름학생",
        "원생", "원생명", "원생이름", "name", "studentname", "fullname", "student", "nameofstudent",
    ),
    "phone": (
        "전화번호", "전화", "휴대폰", "휴대폰번호", "핸드폰", "핸드폰번호", "휴대전화",
        "휴대전화번호",
        "연락처", "학생연락처", "학생전화번호", "학생휴대폰", "학생휴대폰번호", "학생핸드폰",
        "학생핸드폰번호", "학생전화", "본인연락처", "본인휴대폰", "phone", "phonenumber", "phoneno",
        "mobile", "mobilephone", "mobilenumber", "mobileno", "cell", "cellphone", "tel",
        "telephone", "studentphone", "studentmobile", "contact",
    ),
    "parent_phone": (
        "학부모전화번호", "학부모전화", "학부모연락처", "학부모휴대폰", "학부모휴대폰번호",
        "학부모핸드폰", "학부모핸드폰번호", "학부모번호", "부모님연락처", "부모님전화번호",
        "부모님휴대폰", "부모연락처", "보호자연락처", "보호자전화번호", "보호자휴대폰",
        "보호자번호", "parentphone", "parentsphone",
        "parentphonenumber", "parentmobile", "parentcontact", "guardianphone", "guardianmobile",
        "guardiancontact",
    ),
    "school": ("학교", "학교명", "재학학교", "소속학교", "출신학교", "school", "schoolname"),
    "grade": ("학년", "grade", "year", "schoolyear"),
    "birth_date": (
        "생년월일", "생일", "출생일", "출생년월일", "생년월일8자리", "생년월일6자리", "birthdate",
        "birthday", "dateofbirth", "dob", "birth",
    ),
}

#: Headers of a column of sequence numbers (folded): a row holding only its number is an empty
#: slot of a sheet numbered in advance.
SEQUENCE_HEADERS = frozenset({"번호", "순번", "연번", "no", "#"})

_NOISE = re.compile(r"[\s_\-./*:()\[\]{}<>·•※]+")


def fold(header: object) -> str:
    """A header cell in the form aliases are compared in."""
    if not isinstance(header, str):
        return ""
    return _NOISE.sub("", unicodedata.normalize("NFKC", header)).lower()


_BY_ALIAS: dict[str, str] = {fold(a): f for f, aliases in _ALIASES.items() for a in aliases}


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A row read as a header: ``columns`` maps each recognised field to its 0-based column."""

    columns: dict[str, int]
    names: tuple[str, ...]
    """Every header cell's text, by column ("" where blank)."""
    unknown: tuple[str, ...] = field(default=())
    """Header cells that name no field (and repeats of a field already found), in order."""
    sequence: int | None = None
    """The 0-based column headed as sequence numbers (번호, No., #, 순번), if any."""

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(f for f in REQUIRED if f not in self.columns)

    @property
    def found(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n)


def match_header(cells: Sequence[object]) -> HeaderMatch:
    """Read ``cells`` as a header row."""
    columns: dict[str, int] = {}
    names: list[str] = []
    unknown: list[str] = []
    sequence: int | None = None
    for index, cell in enumerate(cells):
        name = cell.strip() if isinstance(cell, str) else ("" if cell in (None, "") else str(cell))
        names.append(name)
        if not name:
            continue
        folded = fold(name)
        field_name = _BY_ALIAS.get(folded)
        if field_name is None or field_name in columns:
            unknown.append(name)
            if sequence is None and folded in SEQUENCE_HEADERS:
                sequence = index
        else:
            columns[field_name] = index
    return HeaderMatch(columns, tuple(names), tuple(unknown), sequence)


def looks_like_header(match: HeaderMatch) -> bool:
    """A row with at least two recognised fields is taken as the header, complete or not."""
    return len(match.columns) >= 2
