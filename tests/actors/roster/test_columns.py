from __future__ import annotations

import pytest

from actors.roster.columns import match_header


@pytest.mark.parametrize(("header", "field"), [
    ("이름", "name"), (" 학생 이름 ", "name"), ("성명*", "name"), ("Name", "name"),
    ("STUDENT NAME", "name"), ("전화번호", "phone"), ("휴대폰 번호", "phone"), ("핸드폰", "phone"),
    ("연락처", "phone"), ("Mobile", "phone"), ("Phone_Number", "phone"),
    ("학부모 전화번호", "parent_phone"), ("학부모 연락처", "parent_phone"),
    ("Parent Phone", "parent_phone"), ("학교명", "school"), ("School", "school"),
    ("학년", "grade"), ("Grade", "grade"), ("생년월일", "birth_date"), ("생일", "birth_date"),
    ("Birth Date", "birth_date"), ("DOB", "birth_date"), ("ｎａｍｅ", "name"),
])
def test_header_variants(header: str, field: str) -> None:
    found = match_header(["비고", header])
    assert found.columns == {field: 1}
    assert found.unknown == ("비고",)


def test_missing_and_repeated_columns() -> None:
    found = match_header(["이름", "학교", None, "성명", "메모"])
    assert found.columns == {"name": 0, "school": 1}
    assert found.missing == ("phone",)
    assert found.unknown == ("성명", "메모")
    assert found.found == ("이름", "학교", "성명", "메모")
