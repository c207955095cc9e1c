"""Looking at a file before any spreadsheet reader does.

The reader (calamine) builds each sheet as a dense grid spanning every cell it finds, and aborts
the whole process when that grid cannot be allocated; it trusts declared sizes too. So the file
is checked first, cheaply and without building anything:

- size (``ROSTER_MAX_FILE_BYTES``), and what the first bytes say it is;
- an OLE container holding ``EncryptedPackage`` is a password-protected .xlsx; an .ods whose
  manifest has ``encryption-data`` is password-protected too;
- OLE containers (.xls): every sector chain (the allocation tables, the directory, each stream)
  must end within the file without visiting a sector twice, and each stream must fit its chain
  and ``ROSTER_MAX_UNCOMPRESSED_BYTES``: the reader follows chains without counting, so a loop
  grows its memory until the process dies;
- zip archives (.xlsx, .ods): every member is inflated here, counting its real size against the
  size it declares, ``ROSTER_MAX_UNCOMPRESSED_BYTES`` and ``ROSTER_MAX_COMPRESSION_RATIO``
  (checked on members over 1 MiB), and its CRC; a member cut short means a truncated file;
- no XML part may declare a DOCTYPE or ENTITY (entity expansion is refused, not defused);
- sheet XML: what the reader will build is bounded before it builds it. It keeps the cells
  holding a value and the grid they span, so those are counted: cells holding values past
  ``ROSTER_MAX_COLUMNS`` or the row limit (references read as the reader reads them: column
  letters in either case, leading zeros skipped; cells and rows without a reference placed after
  the ones before, as the reader places them), and a grid larger than ``ROSTER_MAX_CELLS``, are
  refused. Emptiness costs nothing: cells and rows carrying only a style, and the empty columns,
  cells and rows an .ods file repeats to the edge of the sheet.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from actors.roster.errors import RosterRejected
from actors.roster.limits import Limits

try:  # the .ods tag reader compiled (an optional extension; the same verdicts in Python)
    from actors.roster import _odsscan
except ImportError:  # where the extension was not built
    _odsscan = None  # type: ignore[assignment]

_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ODS_MIMETYPE = b"application/vnd.oasis.opendocument.spreadsheet"
_READ_CHUNK = 1 << 20
_KEEP = 4096
# A tag may run on over pieces up to this length; spreadsheets write tags of a few hundred bytes
# (a long formula: a few KiB).
_MAX_TAG = 1 << 20
_RATIO_FLOOR = 1 << 20
_MAX_MEMBERS = 10_000
_ENTITY_MARKERS = (b"<!DOCTYPE", b"<!ENTITY", b"<!doctype", b"<!entity")


class Format(StrEnum):
    XLSX = "xlsx"
    XLS = "xls"
    ODS = "ods"


def precheck(path: Path, limits: Limits) -> Format:
    """The file's format, or :class:`RosterRejected` saying why it will not be read."""
    size = path.stat().st_size
    if size == 0:
        raise RosterRejected("the file is empty")
    if size > limits.max_file_bytes:
        raise RosterRejected(
            f"the file is {_mib(size)}, larger than the limit of {_mib(limits.max_file_bytes)}"
            " (ROSTER_MAX_FILE_BYTES)"
        )
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(_OLE_MAGIC):
        if _has_encrypted_package(path):
            raise RosterRejected("the file is password-protected; save it without a password")
        _check_ole(path.read_bytes(), limits)
        return Format.XLS
    if head.startswith(_ZIP_MAGIC):
        return _check_zip(path, limits)
    if head.startswith(b"PK"):
        raise RosterRejected("the file is an empty or damaged zip archive, not a spreadsheet")
    raise RosterRejected(
        "the file is not a spreadsheet (.xlsx, .xls or .ods)"
        + ("; it looks like text (CSV?): save it as .xlsx" if _looks_like_text(path) else "")
    )


def _has_encrypted_package(path: Path) -> bool:
    """Whether an OLE compound file has a directory entry named ``EncryptedPackage``.

    Directory entries sit on 128-byte boundaries, a UTF-16 name followed (at +64) by its byte
    length with the terminator; an encrypted .xlsx keeps the real workbook in that stream.
    """
    name = "EncryptedPackage".encode("utf-16-le")
    data = path.read_bytes()
    at = data.find(name)
    while at != -1:
        if at % 128 == 0 and data[at + 64 : at + 66] == struct.pack("<H", len(name) + 2):
            return True
        at = data.find(name, at + 1)
    return False


_END_OF_CHAIN = 0xFFFFFFFE
_FREE = 0xFFFFFFFF
_NOT_A_SECTOR = 0xFFFFFFFA  # ids from here up are markers (MS-CFB 2.2)
_OLE_DAMAGED = "the file is damaged (its OLE sector chains loop or point outside the file)"


def _check_ole(data: bytes, limits: Limits) -> None:
    """Every chain of an OLE compound file (MS-CFB) is finite, in the file and big enough for
    what it holds; :class:`RosterRejected` otherwise."""
    if len(data) < 512:
        raise RosterRejected("the file is truncated (its OLE header is cut short)")
    shift, mini_shift = struct.unpack_from("<HH", data, 0x1E)
    if shift not in (9, 12) or mini_shift != 6:
        raise RosterRejected(_OLE_DAMAGED)
    size = 1 << shift
    sectors = max(0, (len(data) - size + size - 1) // size)  # sector n starts at (n + 1) * size
    fat_count, first_dir = struct.unpack_from("<II", data, 0x2C)
    cutoff, first_minifat, minifat_count, first_difat, difat_count = struct.unpack_from(
        "<IIIII", data, 0x38)
    if max(fat_count, minifat_count, difat_count) > sectors:
        raise RosterRejected(_OLE_DAMAGED)

    def sector(n: int) -> bytes:
        return data[(n + 1) * size:(n + 2) * size].ljust(size, b"\x00")

    # the allocation table's own sectors: 109 in the header, then the DIFAT chain
    fat_ids = list(struct.unpack_from("<109I", data, 0x4C))
    per = size // 4
    difat, seen = first_difat, set[int]()
    while difat < _NOT_A_SECTOR and len(seen) < difat_count:
        if difat >= sectors or difat in seen:
            raise RosterRejected(_OLE_DAMAGED)
        seen.add(difat)
        ids = struct.unpack(f"<{per}I", sector(difat))
        fat_ids += ids[:-1]
        difat = ids[-1]
    fat_ids = [s for s in fat_ids[:fat_count] if s < _NOT_A_SECTOR]
    if any(s >= sectors for s in fat_ids):
        raise RosterRejected(_OLE_DAMAGED)
    fat = [n for s in fat_ids for n in struct.unpack(f"<{per}I", sector(s))]

    def chain(start: int, table: list[int], limit: int) -> int:
        """The length of the chain from ``start``; refused when it loops or leaves ``table``."""
        length, at, visited = 0, start, set()
        while at != _END_OF_CHAIN:
            if at >= len(table) or at >= limit or at in visited or length >= limit:
                raise RosterRejected(_OLE_DAMAGED)
            visited.add(at)
            length += 1
            at = table[at]
        return length

    directory = chain(first_dir, fat, sectors)
    mini_fat: list[int] = []
    if first_minifat < _NOT_A_SECTOR:
        chain(first_minifat, fat, sectors)
        at = first_minifat
        for _ in range(minifat_count):
            if at >= _NOT_A_SECTOR:
                break
            mini_fat += struct.unpack(f"<{per}I", sector(at))
            at = fat[at]
    entries = b"".join(sector(s) for s in _walk(first_dir, fat, directory))
    declared = 0
    mini_sectors = 0
    for offset in range(0, len(entries) - 127, 128):
        kind = entries[offset + 66]
        start, length = struct.unpack_from("<IQ", entries, offset + 116)
        if kind not in (2, 5):  # only streams and the root (the mini stream) hold data
            continue
        length &= 0xFFFFFFFF if shift == 9 else 0xFFFFFFFFFFFFFFFF  # version 3: 32 bits
        if kind == 5:
            mini_sectors = length // 64 + 1
        if length == 0:
            continue
        declared += length
        if declared > limits.max_uncompressed_bytes:
            raise RosterRejected(_too_large("declares", declared, limits))
        if kind == 5 or length >= cutoff:
            held = chain(start, fat, sectors) * size
        else:
            held = chain(start, mini_fat, mini_sectors) * 64
        if held < length:
            raise RosterRejected(_OLE_DAMAGED)


def _walk(start: int, table: list[int], count: int) -> Iterator[int]:
    at = start
    for _ in range(count):
        yield at
        at = table[at]


def _looks_like_text(path: Path) -> bool:
    with path.open("rb") as handle:
        sample = handle.read(4096)
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(sample) - 4
    return b"\x00" not in sample


def _check_zip(path: Path, limits: Limits) -> Format:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise RosterRejected(
            "the file is damaged or truncated (it is not a readable zip archive)"
        ) from exc
    with archive, path.open("rb") as raw:
        try:
            return _check_members(archive, raw, limits)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError,
                NotImplementedError, zlib.error, struct.error) as exc:
            # offsets or sizes that point outside the file, a member the zip module cannot
            # open: damage the checks above did not name
            raise RosterRejected(
                "the file is damaged (its zip directory does not match its content)") from exc


def _check_members(archive: zipfile.ZipFile, raw: BinaryIO, limits: Limits) -> Format:
    """The zip container's members, checked one by one (see :func:`precheck`)."""
    members = archive.infolist()
    names = {m.filename for m in members}
    kind = _zip_kind(archive, names)
    if len(members) > _MAX_MEMBERS:
        raise RosterRejected(f"the file has {len(members)} parts, more than a spreadsheet has")
    declared = sum(m.file_size for m in members)
    if declared > limits.max_uncompressed_bytes:
        raise RosterRejected(_too_large("declares", declared, limits))
    budget = limits.max_uncompressed_bytes
    for member in members:
        _check_member_header(member, limits)
        scanner = _scanner_for(kind, member.filename, limits)
        inflated = 0
        for piece in _inflate(raw, member, budget):
            inflated += len(piece)
            if scanner is not None:
                scanner.feed(piece)
            elif _declares_entities(piece):
                raise RosterRejected(_entity_message(member.filename))
        if scanner is not None:
            scanner.finish()
        budget -= inflated
    return kind


def _read_small(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a member (its declared size is not trusted: a bomb in the
    ``mimetype`` part must not be inflated whole before the size checks)."""
    with archive.open(name) as member:
        return member.read(limit)


def _zip_kind(archive: zipfile.ZipFile, names: set[str]) -> Format:
    if "mimetype" in names and _read_small(archive, "mimetype", 256).strip() == _ODS_MIMETYPE:
        if "META-INF/manifest.xml" in names and b"encryption-data" in _read_small(
            archive, "META-INF/manifest.xml", 1 << 20
        ):
            raise RosterRejected("the file is password-protected; save it without a password")
        return Format.ODS
    if "xl/workbook.xml" in names:
        return Format.XLSX
    if "xl/workbook.bin" in names:
        raise RosterRejected("binary workbooks (.xlsb) are not supported; save the file as .xlsx")
    raise RosterRejected("the file is a zip archive but not a spreadsheet (.xlsx or .ods)")


def _check_member_header(member: zipfile.ZipInfo, limits: Limits) -> None:
    if member.flag_bits & 0x1:
        raise RosterRejected("the file is password-protected; save it without a password")
    if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise RosterRejected(
            f"part {member.filename!r} uses an unsupported compression ({member.compress_type})"
        )
    if member.file_size > _RATIO_FLOOR and (
        member.file_size > limits.max_compression_ratio * max(member.compress_size, 1)
    ):
        raise RosterRejected(
            f"part {member.filename!r} declares a compression ratio over"
            f" {limits.max_compression_ratio} (ROSTER_MAX_COMPRESSION_RATIO): a zip bomb"
        )


def _inflate(raw: BinaryIO, member: zipfile.ZipInfo, budget: int) -> Iterator[bytes]:
    """Yield a member's real content; stop past ``budget`` or its declared size."""
    raw.seek(member.header_offset)
    header = raw.read(30)
    if len(header) < 30 or header[:4] != _ZIP_MAGIC:
        raise RosterRejected(f"the file is damaged or truncated (part {member.filename!r})")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    raw.seek(member.header_offset + 30 + name_len + extra_len)
    left = member.compress_size
    inflater = zlib.decompressobj(-zlib.MAX_WBITS) if member.compress_type else None
    crc = 0
    produced = 0
    limit = min(budget, member.file_size)
    while left > 0 or (inflater is not None and inflater.unconsumed_tail):
        if inflater is not None and inflater.unconsumed_tail:
            data = inflater.unconsumed_tail
        else:
            data = raw.read(min(_READ_CHUNK, left))
            if not data:
                raise RosterRejected(
                    f"the file is truncated (part {member.filename!r} is cut short)"
                )
            left -= len(data)
        try:
            piece = inflater.decompress(data, _READ_CHUNK) if inflater is not None else data
        except zlib.error as exc:
            raise RosterRejected(
                f"the file is damaged (part {member.filename!r} does not inflate)"
            ) from exc
        produced += len(piece)
        if produced > limit:
            if produced > budget:
                raise RosterRejected(_too_large("inflates to", produced, None))
            raise RosterRejected(
                f"part {member.filename!r} inflates to more than the"
                f" {member.file_size} bytes it declares: a zip bomb"
            )
        crc = zlib.crc32(piece, crc)
        yield piece
    if inflater is not None and not inflater.eof:
        raise RosterRejected(f"the file is truncated (part {member.filename!r} is cut short)")
    if crc != member.CRC or produced != member.file_size:
        raise RosterRejected(f"the file is damaged (part {member.filename!r} fails its checksum)")


def _too_large(verb: str, size: int, limits: Limits | None) -> str:
    limit = f" {_mib(limits.max_uncompressed_bytes)}" if limits else ""
    return (
        f"the file {verb} {_mib(size)} uncompressed, over the limit{limit}"
        " (ROSTER_MAX_UNCOMPRESSED_BYTES): a zip bomb"
    )


def _declares_entities(data: bytes) -> bool:
    # "!" alone is found at memchr speed; "<!" would be looked for at every "<".
    return b"!" in data and b"<!" in data and any(m in data for m in _ENTITY_MARKERS)


def _entity_message(part: str) -> str:
    return f"part {part!r} declares XML entities (DOCTYPE/ENTITY), which are refused"


def _scanner_for(kind: Format, name: str, limits: Limits) -> _Scanner | None:
    if kind is Format.XLSX and name.startswith("xl/worksheets/") and name.endswith(".xml"):
        return _XlsxSheetScanner(name, limits)
    if kind is Format.ODS and name == "content.xml":
        return _OdsContentScanner(name, limits)
    return None


class _Scanner:
    """Scans one XML part in pieces, keeping a tail so no match is cut in two."""

    def __init__(self, part: str, limits: Limits) -> None:
        self.part = part
        self.limits = limits
        self._tail = b""
        self.final = False
        """The last piece is being scanned: nothing more will come."""
        self.hold: int | None = None
        """Where the scan of a piece stopped short, at a tag running past its end: the tail
        kept for the next piece starts there."""

    def feed(self, piece: bytes) -> None:
        data = self._tail + piece
        end = max(len(data) - _KEEP, 0)
        self.hold = None
        self._scan(data, end)
        self._tail = data[end if self.hold is None else self.hold:]  # a held tag starts before end

    def finish(self) -> None:
        self.final = True
        self._scan(self._tail, len(self._tail))
        self.done()

    def _scan(self, data: bytes, end: int) -> None:
        """Look at matches starting before ``end`` (the rest comes again with the next piece)."""
        if _declares_entities(data):
            raise RosterRejected(_entity_message(self.part))
        self.scan(data, end)

    def scan(self, data: bytes, end: int) -> None:
        raise NotImplementedError

    def _unended(self, data: bytes, at: int) -> None:
        """A tag at ``at`` runs to the end of the data: it is read again with the next piece,
        unless this is the last or it is too long."""
        if self.final:
            raise RosterRejected(
                f"part {self.part!r} has a tag that never ends (a quote left open), which"
                " spreadsheet software does not write; open the file in Excel or LibreOffice and"
                " save it as .xlsx"
            )
        if len(data) - at > _MAX_TAG:
            raise RosterRejected(
                f"part {self.part!r} has a tag longer than {_MAX_TAG >> 20} MiB, which"
                " spreadsheet software does not write; open the file in Excel or LibreOffice and"
                " save it as .xlsx"
            )
        self.hold = at

    def done(self) -> None:
        raise NotImplementedError

    def refuse_grid(self, rows: int, columns: int, what: str) -> None:
        limits = self.limits
        if columns > limits.max_columns:
            raise RosterRejected(
                f"{what}: column {columns} is past the limit of {limits.max_columns} columns"
                " (ROSTER_MAX_COLUMNS)"
            )
        if rows > limits.max_row_number:
            raise RosterRejected(
                f"{what}: row {rows} is past the limit of {limits.max_rows} rows"
                " (ROSTER_MAX_ROWS)"
            )
        if rows * columns > limits.max_cells:
            raise RosterRejected(
                f"{what}: the sheet spans {rows} rows x {columns} columns, more than"
                f" {limits.max_cells} cells (ROSTER_MAX_CELLS)"
            )


def _column_number(letters: bytes) -> int:
    """A column's number from its letters, in either case (the reader accepts both)."""
    number = 0
    for letter in letters.upper():
        number = number * 26 + letter - 64
    return number


def _row_number(digits: bytes) -> int:
    """A row's number; leading zeros are read past, as the reader does, and a number too long
    to matter counts as 10**12."""
    digits = digits.lstrip(b"0")
    return int(digits) if 0 < len(digits) <= 12 else (0 if not digits else 10**12)


_ODD_EQUALS = re.compile(rb'=[^"]')


def _unusual_attributes(data: bytes) -> bool:
    """Whether some attribute is not written ``name="value"`` after a single space."""
    return (
        b"\t" in data
        or data.find(b"\n", 256) != -1
        or data.find(b"\r", 256) != -1
        or _ODD_EQUALS.search(data) is not None
    )


def _greater_than(number: int) -> bytes:
    """A regex matching the decimal numbers (without leading zeros) greater than ``number``."""
    text = str(number)
    options = [b"[1-9][0-9]{%d,}" % len(text)]
    for i, digit in enumerate(text):
        if digit != "9":
            rest = len(text) - i - 1
            options.append(b"%s[%d-9][0-9]{%d}" % (text[:i].encode(), int(digit) + 1, rest))
    return b"(?:" + b"|".join(options) + b")"


_TAG = re.compile(
    rb"<(?:[A-Za-z_][\w.-]*:)?(row|c)(?=[\s/>])((?:[^>\"']++|\"[^\"]*+\"|'[^']*+')*+)>"
)
# The same, or a tag's start alone where its attributes run to the end of the data (no groups).
_TAG_SCAN = re.compile(_TAG.pattern + rb"|<(?:[A-Za-z_][\w.-]*:)?(?:row|c)(?=[\s/>])")
_REF_ATTRIBUTE = re.compile(rb"\sr\s*=\s*[\"']([A-Za-z]*)([0-9]*)")
_PREFIXED = re.compile(rb":(?:c|row)[\s/>]")
_VALUE_ENDS = (b"/v>", b"/is>")


def _holds_value(data: bytes, tag: re.Match[bytes]) -> bool:
    """Whether a cell element (matched by :data:`_TAG`) has content: the reader keeps only
    cells with a value, so a cell written ``<c .../>`` or ``<c ...></c>`` (a style, no value)
    costs nothing."""
    return not tag.group(2).endswith(b"/") and not data.startswith(b"</", tag.end())


class _XlsxSheetScanner(_Scanner):
    """Refuses references past the limits and bounds the grid a worksheet's values span.

    The reader keeps the cells that hold a value and builds the grid they span; cells that carry
    only a style (LibreOffice 5 and 6 write them out to column 1024) and rows without values are
    dropped, so they cost nothing here either.

    The regex matches only cells worth a closer look: a reference that is wide (two or more
    column letters, in either case), has a leading zero or is past the row limit, or a cell
    whose first attribute is not its reference; a wide cell written ``<c r=".." .../>`` (no
    value) is skipped by the regex itself. So a normal sheet costs one pass that matches almost
    nothing (a lookahead on the number's length keeps each test short). The grid's height is
    taken, in each piece, from the reference of the last cell holding a value.

    The reader places a cell without a reference just after the cell before it, and a row
    without one just below the row before it. A part with such a cell, with elements under a
    namespace prefix, or with unusual attribute quoting takes an exact path from there on: it
    reads every row and cell element and follows the reader's placement, starting from the
    position of the cell and row just before.
    """

    def __init__(self, part: str, limits: Limits) -> None:
        super().__init__(part, limits)
        row_limit = limits.max_row_number
        self._fast = re.compile(
            rb'<c(?=[\s/>])(?! r="[A-Za-z](?![A-Za-z0]|(?=[0-9]{%d})%s"))'
            rb'(?! r="[A-Za-z]+[0-9]+"(?: [\w:.-]+="[^"]*+")*+ ?/>)'
            % (len(str(row_limit)), _greater_than(row_limit))
        )
        self._ref = re.compile(rb' r="([A-Za-z]*)([0-9]*)')
        self._row_ref = re.compile(rb'<row r="([0-9]+)"')
        self.max_row = 1
        self.max_column = 1
        self._exact = False
        # Where the reader is after the last element looked at: the row, and the column of the
        # cell before (0 at the start of a row).
        self._row = 0
        self._column = 0

    def scan(self, data: bytes, end: int) -> None:
        if not self._exact and (
            _unusual_attributes(data) or (b":" in data and _PREFIXED.search(data) is not None)
        ):
            self._exact = True
        if self._exact:
            self._scan_exact(data, end, 0)
            return
        for found in self._fast.finditer(data):
            at = found.start()
            if at >= end:
                break
            ref = self._ref.match(data, at + 2)
            if ref is None:  # a cell whose first attribute is not its reference
                self._row, self._column = self._position_before(data, at)
                self._exact = True
                self._scan_exact(data, end, at)
                return
            tag = _TAG.match(data, at)
            if tag is None or _holds_value(data, tag):
                row_at = data.rfind(b"<row r=", 0, at)
                row = self._row_ref.match(data, row_at) if row_at != -1 else None
                if row is not None:  # the row holding it, as far down as its number says
                    self.refuse_grid(_row_number(row.group(1)), 1, f"sheet part {self.part!r}")
                self._note(_column_number(ref.group(1) or b"A"), _row_number(ref.group(2)) or 1)
        self._note_last_value(data, end)
        self._row, self._column = self._position_before(data, end)

    def _note_last_value(self, data: bytes, end: int) -> None:
        """Note the cell of the last value closing before ``end``: in a sheet whose rows come
        in order (the reader's own requirement for a sane file) the lowest of the piece."""
        at = max(data.rfind(marker, 0, end + len(marker)) for marker in _VALUE_ENDS)
        if at == -1:
            return
        cell = data.rfind(b'<c r="', 0, at)
        ref = self._ref.match(data, cell + 2) if cell != -1 else None
        if ref is not None:
            self._note(_column_number(ref.group(1) or b"A"), _row_number(ref.group(2)) or 1)

    def _position_before(self, data: bytes, at: int) -> tuple[int, int]:
        """The reader's row and column (of the cell before) at ``at``, where every cell before
        has a reference: from the last row and cell elements before it."""
        row_at = data.rfind(b"<row", 0, at)
        cell_at = data.rfind(b"<c ", 0, at)
        if row_at == -1 and cell_at == -1:
            return self._row, self._column
        row = self._row
        if row_at != -1:
            # The last row with a number, plus one for each row without one since.
            ref_at = data.rfind(b'<row r="', 0, at)
            found = self._row_ref.match(data, ref_at) if ref_at != -1 else None
            if found is None:
                row += data.count(b"<row", 0, at)
            else:
                row = _row_number(found.group(1)) + data.count(b"<row", ref_at + 4, at)
        if cell_at < row_at:
            return row, 0
        ref = self._ref.match(data, cell_at + 2)
        column = _column_number(ref.group(1) or b"A") if ref else self.limits.max_columns
        return row, column

    def _scan_exact(self, data: bytes, end: int, start: int) -> None:
        row, column = self._row, self._column
        max_row, max_column = self.max_row, self.max_column
        for tag in _TAG_SCAN.finditer(data, start):
            if tag.start() >= end:
                break
            if tag.lastindex is None:
                self._unended(data, tag.start())
                break
            attributes = tag.group(2)
            ref = _REF_ATTRIBUTE.search(attributes) if b"r" in attributes else None
            if tag.group(1) == b"row":
                row = _row_number(ref.group(2)) if ref is not None else row + 1
                column = 0
                continue
            if ref is not None:
                column = _column_number(ref.group(1) or b"A")
                cell_row = _row_number(ref.group(2)) or 1
            else:
                column += 1
                cell_row = row
            if _holds_value(data, tag):
                if column > max_column:
                    max_column = column
                if cell_row > max_row:
                    max_row = cell_row
        self._row, self._column = row, column
        self.max_row, self.max_column = max_row, max_column
        self.refuse_grid(max_row, max_column, f"sheet part {self.part!r}")

    def _note(self, column: int, row: int) -> None:
        self.max_column = max(self.max_column, column)
        self.max_row = max(self.max_row, row)
        self.refuse_grid(row, column, f"sheet part {self.part!r}")

    def done(self) -> None:
        self.refuse_grid(self.max_row, self.max_column, f"sheet part {self.part!r}")


# The patterns are written as unrolled loops (a run, then (token, run)*), which the regex
# engine walks faster than a loop of alternatives; they match the same text.
# Attributes up to a tag's end: quoted values may hold ">" and "/", a lone "/" is no end.
_ODS_ATTRIBUTES = rb"[^>\"'/]*+(?:(?:\"[^\"]*+\"|'[^']*+'|/(?!>))[^>\"'/]*+)*+"
_ODS_TAG = re.compile(
    rb"<(/?)table:(table|table-row|table-cell|covered-table-cell)(?=[\s/>])"
    rb"([^>\"']*+(?:(?:\"[^\"]*+\"|'[^']*+')[^>\"']*+)*+)>"
)
# A row whose cells hold nothing of the table namespace (text only), read in one match: how
# nearly every row is written. Anything else is read tag by tag.
_ODS_CELL = (
    rb"<table:(?:covered-)?table-cell(?=[\s/>])" + _ODS_ATTRIBUTES
    + rb"(?:/>|>[^<]*+(?:<(?!/?table:)[^<]*+)*+</table:(?:covered-)?table-cell>)"
)
_ODS_SIMPLE_ROW = (
    rb"<table:table-row(?=[\s/>])(" + _ODS_ATTRIBUTES + rb")>((?:" + _ODS_CELL + rb")*+)"
    rb"</table:table-row>"
)
# A tag's start where the whole tag does not match: its attributes run to the end of the data
# (a quote left open, or the tag goes on in the next piece).
_ODS_TAG_START = rb"<(/?)table:(?:table|table-row|table-cell|covered-table-cell)(?=[\s/>])"
_ODS_SCAN = re.compile(_ODS_SIMPLE_ROW + rb"|" + _ODS_TAG.pattern + rb"|" + _ODS_TAG_START)
# The tag-by-tag reading alone, in the same groups: what the compiled reader does.
_ODS_TAGS_ONLY = re.compile(rb"(?!)()()|" + _ODS_TAG.pattern + rb"|" + _ODS_TAG_START)
_UNENDED = 6  # the lastindex of a tag start matched alone
# What the compiled reader stops at (actors/roster/_odsscan.c).
_DONE, _TABLE_OPEN, _TABLE_CLOSE, _INSIDE_CELL, _WIDE_CELL, _SHEET, _UNENDED_TAG = range(7)
# Its counts stop at 2**62: limits below this compare as they do in Python.
_COMPILED_LIMIT = 1 << 60
_ODS_REPEAT = re.compile(rb"number-(?:rows|columns)-repeated\s*=\s*[\"']\s*([0-9]*)")
_ODS_NAME = re.compile(rb"table:name\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")


_ODS_CELL_TAG = re.compile(rb"<table:(?:covered-)?table-cell(?=[\s/>])(" + _ODS_ATTRIBUTES + rb")")


def _row_width(cells: bytes) -> int:
    """How many of a row's cells (its XML; cells holding text only) the reader keeps: up to the
    last one holding a value, repeats included.

    The scan reads a row without repeats in place, as this does: the cells begun before the
    last value (one typed in a cell's text counts too)."""
    at = max(cells.rfind(b"office:"), cells.rfind(b"table:formula"))
    if at == -1:
        return 0
    column = width = 0
    for cell in _ODS_CELL_TAG.finditer(cells):
        if cell.start() > at:
            break
        attributes = cell.group(1)
        column += _repeat(attributes) if b"repeated" in attributes else 1
        if b"office:" in attributes or b"table:formula" in attributes:
            width = column
    return width


def _repeat(attributes: bytes) -> int:
    found = _ODS_REPEAT.search(attributes)
    if found is None:
        return 1
    digits = found.group(1).lstrip(b"0")
    if not digits:  # no digit, or zeros: the reader builds at least one
        return 1
    return int(digits) if len(digits) <= 12 else 10**12


class _OdsContentScanner(_Scanner):
    """Bounds the grid each sheet of an .ods file holds values in, repeats included.

    The reader keeps, in each row, the cells up to the last one holding a value (a value or
    formula attribute), and the rows up to the last one holding a value; empty cells and rows
    between them count, repeated as written. So what LibreOffice writes to fill out a sheet (a
    column declaration or an empty cell repeated to column 16384, an empty row repeated to row
    1048576, a whole sheet formatted at once) costs nothing, while values repeated across a huge
    grid count in full. Sheets are all read when the file opens, so their grids add up against
    ``ROSTER_MAX_CELLS``.

    A row whose cells hold text only (how nearly every row is written) is read in one regex
    match; any other is read tag by tag. A table, row or cell element inside a cell is refused,
    and so are XML comments and CDATA sections: spreadsheets do not write them, and they could
    make this scan see other tags than the reader does.

    Where the compiled reader (``_odsscan``) is installed, it reads every tag, one pass in C
    with the same rules as the tag-by-tag reading here (about 4x less CPU); ``compiled`` says
    which runs, and may be set false.
    """

    pattern = _ODS_SCAN

    def __init__(self, part: str, limits: Limits) -> None:
        super().__init__(part, limits)
        self.compiled = _odsscan is not None and max(
            limits.max_columns, limits.max_row_number, limits.max_cells) < _COMPILED_LIMIT
        self._skip = 0
        self._in_cell = False
        self._depth = 0
        self._sheet = "?"
        self._cells_before = 0
        self._start_table()

    def _start_table(self) -> None:
        self._row = 0
        self._in_row = False
        self._row_repeat = 1
        self._column = 0
        self._width = 0
        self._rows = 0
        self._columns = 0

    def scan(self, data: bytes, end: int) -> None:
        # "!" alone is found at memchr speed; "<!" would be looked for at every "<".
        if b"!" in data and b"<!" in data and (b"<!--" in data or b"<![CDATA[" in data):
            # They could hide tags from this scan, or show it tags the reader does not see.
            raise RosterRejected(
                f"part {self.part!r} holds XML comments or CDATA sections, which spreadsheet"
                " software does not write; open the file in Excel or LibreOffice and save it as"
                " .xlsx"
            )
        if self.compiled:
            self._scan_compiled(data, end)
            return
        max_columns = self.limits.max_columns
        row_limit = self.limits.max_row_number
        max_cells = self.limits.max_cells
        last = self._skip
        repeats = b"repeated" in data
        covered = b"<table:covered-table-cell" in data
        rfind, find, count = data.rfind, data.find, data.count
        for tag in self.pattern.finditer(data, self._skip):
            if tag.start() >= end:
                break
            if tag.lastindex == _UNENDED:
                self._unended(data, tag.start())
                self._skip = 0
                return
            last = tag.end()
            if tag.lastindex == 2:  # a whole row, its cells holding text only
                if self._in_cell:
                    self._refuse_inside_cell()
                if self._in_row:
                    self._end_row()
                begin, stop = tag.span(1)
                self._row += (_repeat(data[begin:stop]) if repeats
                              and find(b"repeated", begin, stop) != -1 else 1)
                # The row's width, as _row_width reads it, on the data in place (no copy).
                begin, stop = tag.span(2)
                at = rfind(b"office:", begin, stop)
                if find(b"table:formula", begin if at == -1 else at + 1, stop) != -1:
                    at = rfind(b"table:formula", begin, stop)
                if at == -1:
                    width = 0
                elif repeats and find(b"repeated", begin, stop) != -1:
                    # A repeat in the row: read cell by cell (the last value's own repeat may
                    # follow a ">" its tag holds in quotes).
                    width = _row_width(data[begin:stop])
                else:
                    width = count(b"<table:table-cell", begin, at)
                    if covered:
                        width += count(b"<table:covered-table-cell", begin, at)
                if width:
                    if width > max_columns:
                        self.refuse_grid(self._row, width, self._what())
                    self._rows = self._row
                    if width > self._columns:
                        self._columns = width
                    if (
                        self._row > row_limit
                        or self._cells_before + self._row * self._columns > max_cells
                    ):
                        self._refuse_sheet()
                continue
            closing, name, attributes = tag.group(3, 4, 5)
            if self._in_cell:
                if closing and (name == b"table-cell" or name == b"covered-table-cell"):
                    self._in_cell = False
                    continue
                self._refuse_inside_cell()
            if closing:
                if name == b"table-row":
                    self._end_row()
                elif name == b"table":
                    self._end_table()
            elif name == b"table-cell" or name == b"covered-table-cell":
                if not self._in_row:
                    continue  # the reader reads cells in rows only
                self._column += _repeat(attributes) if b"repeated" in attributes else 1
                if b"office:" in attributes or b"table:formula" in attributes:
                    self._width = self._column
                    if self._column > max_columns:
                        self.refuse_grid(self._row + 1, self._column, self._what())
                if not attributes.endswith(b"/"):
                    self._in_cell = True
            elif name == b"table-row":
                if self._in_row:
                    self._end_row()
                self._in_row = True
                self._row_repeat = _repeat(attributes) if b"repeated" in attributes else 1
                self._column = self._width = 0
                if attributes.endswith(b"/"):
                    self._end_row()
            else:
                self._start_sheet(attributes)
        self._skip = max(last - end, 0)

    def _scan_compiled(self, data: bytes, end: int) -> None:
        assert _odsscan is not None
        limits = (self.limits.max_columns, self.limits.max_row_number, self.limits.max_cells)
        at = self._skip
        while True:
            state = (int(self._in_cell), int(self._in_row), self._row, self._row_repeat,
                     self._column, self._width, self._rows, self._columns, self._cells_before)
            event, at, begin, stop, state = _odsscan.scan(data, at, end, state, limits)
            (in_cell, in_row, self._row, self._row_repeat, self._column, self._width,
             self._rows, self._columns, self._cells_before) = state
            self._in_cell, self._in_row = bool(in_cell), bool(in_row)
            if event == _DONE:
                break
            if event == _UNENDED_TAG:
                self._unended(data, at)
                self._skip = 0
                return
            if event == _TABLE_OPEN:
                self._start_sheet(data[begin:stop])
            elif event == _TABLE_CLOSE:
                self._end_table()
            elif event == _INSIDE_CELL:
                self._refuse_inside_cell()
            else:
                if event == _WIDE_CELL:
                    self.refuse_grid(self._row + 1, self._column, self._what())
                else:
                    self._refuse_sheet()
                raise AssertionError(f"the compiled .ods reader refused what {self._what()}"
                                     " holds, and the scanner did not")
        self._skip = max(at - end, 0)

    def _refuse_inside_cell(self) -> None:
        raise RosterRejected(
            f"{self._what()} has rows or cells inside a cell, which spreadsheets do not write;"
            " open the file in Excel or LibreOffice and save it as .xlsx"
        )

    def _start_sheet(self, attributes: bytes) -> None:
        self._depth += 1
        if self._depth > 1:
            raise RosterRejected(
                f"{self._what()} has a table inside it, which this importer cannot read; open the"
                " file in Excel or LibreOffice and save it as .xlsx"
            )
        found = _ODS_NAME.search(attributes)
        if found is not None:
            self._sheet = (found.group(1) or found.group(2) or b"").decode("utf-8", "replace")
        self._start_table()
        if attributes.endswith(b"/"):
            self._end_table()

    def _end_row(self) -> None:
        if not self._in_row:
            return
        self._in_row = False
        self._row += self._row_repeat
        if self._width:
            self._rows = self._row
            self._columns = max(self._columns, self._width)
            self._refuse_sheet()

    def _end_table(self) -> None:
        self._end_row()
        if self._depth:
            self._depth -= 1
        self._cells_before += self._rows * self._columns
        self._start_table()

    def _refuse_sheet(self) -> None:
        self.refuse_grid(self._rows, self._columns, self._what())
        if self._cells_before and self._cells_before + self._rows * self._columns > (
            self.limits.max_cells
        ):
            raise RosterRejected(
                f"the sheets span {self._cells_before + self._rows * self._columns} cells in all,"
                f" more than {self.limits.max_cells} (ROSTER_MAX_CELLS); an .ods file's sheets"
                " are all read at once"
            )

    def _what(self) -> str:
        return f"sheet {self._sheet!r}"

    def done(self) -> None:
        self._end_table()


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"

