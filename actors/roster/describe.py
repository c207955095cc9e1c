"""Saying what a file is, for the person who sent it, when the reader cannot read it.

Office software opens files the reader refuses (an .ods laid out by KOffice, say); the message
names the kind of file and the program that wrote it, and says what to do, and never shows the
reader's own error (that goes to the log).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from actors.roster.precheck import Format

__all__ = ["describe", "unreadable", "writer_of"]

_KINDS = {
    Format.XLSX: "an Excel workbook (.xlsx)",
    Format.XLS: "an Excel 97-2003 workbook (.xls)",
    Format.ODS: "an OpenDocument spreadsheet (.ods)",
}
# Where each zip format names the program that wrote it (small parts; the pre-check has
# already inflated and checked every part).
_GENERATOR = {
    Format.ODS: ("meta.xml", re.compile(rb"<meta:generator>([^<]{1,200})</meta:generator>")),
    Format.XLSX: ("docProps/app.xml", re.compile(rb"<Application>([^<]{1,200})</Application>")),
}
_PRINTABLE = re.compile(r"[^\w .,/()+:;-]")
_READ_LIMIT = 64 * 1024


def writer_of(path: Path, fmt: Format) -> str | None:
    """The program a file names as its writer (``"KOffice/2.3.3"``), if it names one."""
    part_and_pattern = _GENERATOR.get(fmt)
    if part_and_pattern is None:
        return None
    part, pattern = part_and_pattern
    try:
        with zipfile.ZipFile(path) as archive, archive.open(part) as member:
            found = pattern.search(member.read(_READ_LIMIT))
    except (KeyError, OSError, zipfile.BadZipFile, ValueError):
        return None
    if found is None:
        return None
    # LibreOffice writes "LibreOffice/7.4.7.2$Linux_X86_64 LibreOffice_project/...".
    text = found.group(1).decode("utf-8", "replace").split("$", 1)[0]
    name = _PRINTABLE.sub("", text).strip()
    return name[:80] or None


def describe(path: Path, fmt: Format) -> str:
    """``"an OpenDocument spreadsheet (.ods) written by KOffice/2.3.3"``."""
    writer = writer_of(path, fmt)
    return _KINDS[fmt] + (f" written by {writer}" if writer else "")


def unreadable(path: Path, fmt: Format, sheet: str | None = None) -> str:
    """The reason given for a file (or one of its sheets) the reader fails on."""
    what = f"sheet {sheet!r} cannot be read: " if sheet is not None else ""
    return (
        f"{what}the file is {describe(path, fmt)}, in a form this importer cannot read; open it"
        " in Excel or LibreOffice and save it as .xlsx (if they cannot open it either, the file"
        " is damaged)"
    )
