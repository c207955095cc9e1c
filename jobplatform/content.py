"""An upload's content type, read from its first bytes, never from its name.

Covers what the actors accept: the video containers of the video actor's allow-list (MP4 and
QuickTime, Matroska and WebM, AVI, MPEG-TS, MPEG-PS, FLV, ASF, Ogg, MXF, DV) and the roster
formats (.xlsx, .xls, .ods). Anything else is ``application/octet-stream``: a name says what a
user called the file, not what it is.
"""

from __future__ import annotations

import io
import zipfile
from typing import IO, Final

__all__ = ["HEAD_BYTES", "OCTET_STREAM", "sniff_content_type", "sniff_file"]

#: How much of the start of a file :func:`sniff_content_type` looks at.
HEAD_BYTES: Final = 64 * 1024
OCTET_STREAM: Final = "application/octet-stream"
XLSX: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ODS: Final = "application/vnd.oasis.opendocument.spreadsheet"
XLS: Final = "application/vnd.ms-excel"

_QUICKTIME_ATOMS: Final = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
_ASF: Final = bytes.fromhex("3026B2758E66CF11A6D900AA0062CE6C")
_MXF: Final = bytes.fromhex("060E2B34020501010D010201")
_OLE2: Final = bytes.fromhex("D0CF11E0A1B11AE1")
_EBML: Final = bytes.fromhex("1A45DFA3")


def sniff_content_type(head: bytes, names: list[str] | None = None) -> str:
    """The content type of a file starting with ``head`` (its first :data:`HEAD_BYTES`).

    ``names``, a ZIP file's member names when the caller could read them, decides between
    the ZIP-based spreadsheets; without it the local headers in ``head`` are searched.
    """
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "video/quicktime"
        if brand in (b"M4A ", b"M4B ", b"M4P "):
            return "audio/mp4"
        if brand.startswith(b"3g"):
            return "video/3gpp"
        return "video/mp4"
    if len(head) >= 8 and head[4:8] in _QUICKTIME_ATOMS:
        return "video/quicktime"
    if head.startswith(_EBML):
        return "video/webm" if b"\x42\x82\x84webm" in head[:64] else "video/x-matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "video/x-msvideo"
    if _mpegts(head):
        return "video/mp2t"
    if head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):
        return "video/mpeg"
    if head.startswith(b"FLV\x01"):
        return "video/x-flv"
    if head.startswith(_ASF):
        return "video/x-ms-asf"
    if head.startswith(b"OggS"):
        return "video/ogg" if b"\x80theora" in head else "audio/ogg"
    if head.startswith(_MXF):
        return "application/mxf"
    if head[:4] in (b"\x1f\x07\x00\x3f", b"\x1f\x07\x00\xbf"):
        return "video/x-dv"
    if head.startswith(_OLE2):
        return XLS
    if head.startswith(b"PK\x03\x04"):
        return _zip_type(head, names)
    return OCTET_STREAM


def sniff_file(source: IO[bytes]) -> tuple[str, IO[bytes]]:
    """The content type of a readable stream, and a stream to read it whole from.

    A seekable stream is returned rewound to where it was; another is wrapped so that the
    bytes read to decide come first.
    """
    if source.seekable():
        start = source.tell()
        head = source.read(HEAD_BYTES)
        names = None
        if head.startswith(b"PK\x03\x04"):
            source.seek(start)
            names = _zip_names(source)
        source.seek(start)
        return sniff_content_type(head, names), source
    head = source.read(HEAD_BYTES)
    return sniff_content_type(head), io.BufferedReader(_Prefixed(head, source))


def _mpegts(head: bytes) -> bool:
    for packet, offset in ((188, 0), (192, 4)):
        marks = [offset + packet * i for i in range(3)]
        if len(head) > marks[-1] and all(head[m] == 0x47 for m in marks):
            return True
    return False


def _zip_type(head: bytes, names: list[str] | None) -> str:
    if head[30:38] == b"mimetype" and ODS.encode() in head[38:38 + 64 + len(ODS)]:
        return ODS
    if names is not None:
        if "[Content_Types].xml" in names and any(n.startswith("xl/") for n in names):
            return XLSX
        if "mimetype" in names and "content.xml" in names:
            return ODS
        return "application/zip"
    if b"[Content_Types].xml" in head and b"xl/" in head:
        return XLSX
    return "application/zip"


def _zip_names(source: IO[bytes]) -> list[str] | None:
    try:
        with zipfile.ZipFile(source) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``rest``: a stream whose start was read already."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
