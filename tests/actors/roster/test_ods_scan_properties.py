"""The .ods scan reads attributes without following quotes where the quoting of a piece allows
it: the same verdicts as the scan that follows every quote, on content made to tell them apart
(quotes holding ">", "/>" and "<", single quotes, quotes in text, rows and cells inside cells).
"""

from __future__ import annotations

import re
import sys

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from actors.roster import Limits, RosterRejected
from actors.roster.precheck import _KEEP, _ODS_QUOTES_PAIRED, _OdsContentScanner

MODULE = sys.modules[_OdsContentScanner.__module__]  # actors.roster.precheck names a function

LIMITS = Limits(max_rows=12, max_columns=6, max_cells=40)

FRAGMENTS = (
    "<table:table-row>", '<table:table-row table:style-name="ro1">', "<table:table-row/>",
    '<table:table-row table:number-rows-repeated="4">', "</table:table-row>",
    "<table:table-cell/>", '<table:table-cell table:style-name="ce1"/>',
    '<table:table-cell office:value-type="string"><text:p>x</text:p></table:table-cell>',
    '<table:table-cell office:value="1"/>', '<table:table-cell table:formula="of:=1"/>',
    '<table:table-cell table:number-columns-repeated="3"/>',
    '<table:table-cell office:value="1" table:number-columns-repeated="3"/>',
    "<table:covered-table-cell/>", '<table:table-cell office:value-type="float">',
    "</table:table-cell>", "<text:p>", "</text:p>", "text", 'say "hi"', "it's",
    '<table:table-cell x="/>">', '<table:table-cell x="a>b" office:value="1"/>',
    '<table:table-cell x="<table:table-row>"/>', "<table:table-cell x='/>'>",
    '<table:table-row x="/>">', '<table:table table:name="s">', "</table:table>", '"', ">",
)


def _verdict(content: bytes, pieces: list[int]) -> str:
    scanner = _OdsContentScanner("content.xml", LIMITS)
    try:
        at = 0
        for size in pieces:
            scanner.feed(content[at:at + size])
            at += size
        scanner.feed(content[at:])
        scanner.finish()
    except RosterRejected as exc:
        return str(exc)
    return "accepted"


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=400),
       st.lists(st.integers(1, 3 * _KEEP), max_size=8))
@example(['<table:table-row><table:table-cell x="/>">', "<table:table-row>",
          '<table:table-cell office:value="1"/>', "</table:table-row>", "</table:table-cell>",
          "</table:table-row>"], [])
def test_reading_attributes_without_quotes_changes_no_verdict(
    fragments: list[str], pieces: list[int]
) -> None:
    content = ('<table:table table:name="명단">' + "".join(fragments) + "</table:table>").encode()
    plain = _verdict(content, pieces)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MODULE, "_ODS_QUOTES_PAIRED", re.compile(rb"(?!)"))  # quote by quote
        assert plain == _verdict(content, pieces)


def test_the_quick_reading_is_taken_where_the_quoting_allows() -> None:
    # Given a LibreOffice-like piece, and pieces a quote-blind reading would misread
    plain = b'<table:table-row a="b"><table:table-cell office:value-type="string"><text:p>x'
    assert _ODS_QUOTES_PAIRED.fullmatch(plain)
    for misread in (b'<table:table-cell x="/>">', b'<table:table-cell x="a<b"/>',
                    b'<text:p>"</text:p><table:table-cell x="', b'x="a>'):
        assert not _ODS_QUOTES_PAIRED.fullmatch(plain + misread), misread
