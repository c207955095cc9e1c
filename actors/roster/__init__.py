"""Roster import: reading, checking and validating student rosters from spreadsheets.

Plain functions the AI actor (``actors.ai``) and ``jobplatform roster check`` share:
:func:`open_roster` rejects a file as a whole or finds its sheet and header;
:meth:`Roster.validate` streams valid rows in chunks and counts the rest;
:func:`write_report` writes the error report.
"""

from actors.roster.columns import FIELDS, LABELS, REQUIRED, fold, match_header
from actors.roster.errors import RosterRejected
from actors.roster.limits import HEADER_SEARCH_ROWS, Limits
from actors.roster.precheck import Format, precheck
from actors.roster.reading import Counts, Problem, Roster, open_roster
from actors.roster.report import REASON_HEADER, write_report

__all__ = [
    "FIELDS",
    "HEADER_SEARCH_ROWS",
    "LABELS",
    "REASON_HEADER",
    "REQUIRED",
    "Counts",
    "Format",
    "Limits",
    "Problem",
    "Roster",
    "RosterRejected",
    "fold",
    "match_header",
    "open_roster",
    "precheck",
    "write_report",
]
