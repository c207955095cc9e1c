"""Content types from the bytes of real files of every container the actors accept."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest

from jobplatform.content import OCTET_STREAM, ODS, XLS, XLSX, sniff_content_type, sniff_file

CONTAINERS = {
    "mp4": ("mp4", "video/mp4"),
    "mov": ("mov", "video/quicktime"),
    "mkv": ("matroska", "video/x-matroska"),
    "webm": ("webm", "video/webm"),
    "avi": ("avi", "video/x-msvideo"),
    "ts": ("mpegts", "video/mp2t"),
    "mpg": ("mpeg", "video/mpeg"),
    "flv": ("flv", "video/x-flv"),
    "asf": ("asf", "video/x-ms-asf"),
    "ogv": ("ogg", "video/ogg"),
}


@pytest.mark.parametrize("ext", sorted(CONTAINERS))
def test_video_containers_are_known_by_their_bytes(tmp_path: Path, ext: str) -> None:
    fmt, expected = CONTAINERS[ext]
    codec = {"webm": "libvpx", "ogv": "libtheora", "flv": "flv", "asf": "wmv2",
             "mpg": "mpeg2video"}.get(ext, "mpeg4")
    path = tmp_path / f"clip.{ext}"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi",
                    "-i", "testsrc=size=64x64:rate=5:duration=1", "-c:v", codec,
                    "-f", fmt, str(path)], check=True)
    # Whatever the file is called: the name is not read
    with path.open("rb") as stream:
        assert sniff_file(stream)[0] == expected


def test_spreadsheets_are_known_by_their_bytes(tmp_path: Path) -> None:
    import openpyxl
    import xlwt

    book = openpyxl.Workbook()
    book.save(tmp_path / "a.xlsx")
    old = xlwt.Workbook()
    old.add_sheet("s").write(0, 0, "이름")
    old.save(str(tmp_path / "a.xls"))
    assert sniff_file(io.BytesIO((tmp_path / "a.xlsx").read_bytes()))[0] == XLSX
    assert sniff_content_type((tmp_path / "a.xls").read_bytes()[:4096]) == XLS
    ods_head = (b"PK\x03\x04" + bytes(26) + b"mimetype" + ODS.encode())
    assert sniff_content_type(ods_head) == ODS


def test_anything_else_is_octet_stream() -> None:
    for head in (b"", b"#EXTM3U\n", b"name,phone\n", b"RIFF\x00\x00\x00\x00WAVEfmt "):
        assert sniff_content_type(head) == OCTET_STREAM
