from __future__ import annotations

import json
import os
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from actors.video.ffmpeg import (
    EncodeProgress,
    Probe,
    ProgressParser,
    check_demuxer,
    encode_duration,
    last_error_line,
    measure_duration,
    parse_ffprobe_json,
    probe,
    run_encode,
)
from jobplatform.errors import JobError
from tests.actors.conftest import make_clip

# --- progress (pure) -----------------------------------------------------------------------

BLOCK = """frame=50
fps=25.00
stream_0_0_q=-1.0
bitrate=N/A
total_size=N/A
out_time_us={us}
out_time_ms={us}
out_time=00:00:01.000000
dup_frames=0
drop_frames=0
speed={speed}
progress={state}
"""


def feed(parser: ProgressParser, text: str) -> list[EncodeProgress]:
    reports = [parser.feed(line) for line in text.splitlines()]
    return [r for r in reports if r is not None]


def test_progress_blocks_become_percent_and_speed() -> None:
    parser = ProgressParser(duration_s=4.0)
    text = (BLOCK.format(us=1_000_000, speed="2.5x", state="continue")
            + BLOCK.format(us=3_000_000, speed="2.61x", state="continue")
            + BLOCK.format(us=4_000_000, speed="2.7x", state="end"))
    assert feed(parser, text) == [
        EncodeProgress(25.0, 1.0, 2.5, False),
        EncodeProgress(75.0, 3.0, 2.61, False),
        EncodeProgress(100.0, 4.0, 2.7, True),
    ]


def test_progress_tolerates_missing_and_odd_values() -> None:
    parser = ProgressParser(duration_s=2.0)
    [start, over] = feed(parser, BLOCK.format(us="N/A", speed="N/A", state="continue")
                         + BLOCK.format(us=9_000_000, speed="0x", state="continue"))
    assert (start.percent, start.speed, start.out_time_s) == (0.0, None, 0.0)
    # Past the probed duration it stays below 100 until ffmpeg says it has finished.
    assert over.percent == 99.9
    assert parser.feed("garbage without equals sign") is None


def test_last_error_line_skips_summary_noise() -> None:
    stderr = (
        "[vost#0:0/libx264 @ 0x55] [enc:libx264 @ 0x56] Could not open encoder before EOF\n"
        "[vost#0:0/libx264 @ 0x55] Task finished with error code: -22 (Invalid argument)\n"
        "[vost#0:0/libx264 @ 0x55] Terminating thread with return code -22 (Invalid argument)\n"
        "[out#0/hls @ 0x57] Nothing was written into output file, because at least one of its"
        " streams received no packets.\n"
        "frame=    0 fps=0.0 q=0.0 Lsize=       0KiB time=N/A bitrate=N/A speed=N/A\n"
        "[aac @ 0x58] Qavg: nan\n"
        "Conversion failed!\n"
    )
    assert last_error_line(stderr).startswith("Nothing was written into output file")
    assert last_error_line("Conversion failed!\n") == ""


# --- the demuxer allow-list (pure) ---------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "expected"),
    [("mov,mp4,m4a,3gp,3g2,mj2", "mov"), ("matroska,webm", "matroska"), ("mpegts", "mpegts")],
)
def test_media_containers_are_allowed(name: str, expected: str) -> None:
    assert check_demuxer(name) == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("hls", "playlist"), ("concat", "playlist"), ("image2", "still image"),
        ("png_pipe", "still image"), ("mp3", "audio file"), ("lavfi", "unsupported container"),
    ],
)
def test_playlists_images_and_others_are_refused(name: str, message: str) -> None:
    with pytest.raises(JobError, match=message):
        check_demuxer(name)


def test_ffprobe_json_is_read_like_the_banner() -> None:
    document = {
        "format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "12.480000"},
        "streams": [
            {"index": 0, "codec_type": "audio"},
            {"index": 1, "codec_type": "video", "width": 1920, "height": 1080,
             "sample_aspect_ratio": "1:1", "side_data_list": [{"rotation": -90}]},
            {"index": 2, "codec_type": "video", "width": 600, "height": 600,
             "disposition": {"attached_pic": 1}},
        ],
    }
    found = parse_ffprobe_json(json.dumps(document))
    assert (found.demuxer, found.duration_s, found.video_index, found.audio_index) == (
        "mov", 12.48, 1, 0)
    assert found.display_size == (1080, 1920)


# --- probing real files ----------------------------------------------------------------------

def test_probe_reads_duration_size_audio_and_format(ffmpeg: str, clips: dict[str, Path]) -> None:
    found = probe(ffmpeg, clips["av"])
    assert found.demuxer == "mov"
    assert found.duration_s == pytest.approx(3.0, abs=0.1)
    assert (found.width, found.height) == (640, 360)
    assert found.audio_index is not None

    mute = probe(ffmpeg, clips["mute"])
    assert (mute.demuxer, mute.width, mute.height, mute.audio_index) == ("matroska", 320, 240, None)


def test_probe_applies_rotation(ffmpeg: str, clips: dict[str, Path], tmp_path: Path) -> None:
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-display_rotation", "90", "-i",
                    str(clips["av"]), "-c", "copy", str(rotated)], check=True)
    assert probe(ffmpeg, rotated).display_size == (360, 640)


def test_probe_refuses_audio_only(ffmpeg: str, clips: dict[str, Path]) -> None:
    with pytest.raises(JobError, match="audio but no video"):
        probe(ffmpeg, clips["audio"])


@pytest.mark.parametrize(
    "content",
    [b"this is not a video at all\n" * 50, os.urandom(4096), b"\x00" * 1024],
    ids=["text", "random", "zeros"],
)
def test_probe_refuses_what_is_not_a_video(ffmpeg: str, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "source"
    path.write_bytes(content)
    with pytest.raises(JobError, match="not a video"):
        probe(ffmpeg, path)


def test_probe_refuses_a_truncated_file(
    ffmpeg: str, clips: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "source"
    path.write_bytes(clips["av"].read_bytes()[:2000])
    with pytest.raises(JobError, match="corrupt"):
        probe(ffmpeg, path)


# A playlist or concat list next to a readable media file: without the format allow-list ffmpeg
# follows it (the second test proves that) and would encode the other file.
HOSTILE = {
    "hls": ("index.m3u8", "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n"
            "#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:2.0,\nsecret.ts\n#EXT-X-ENDLIST\n"),
    "concat": ("source", "ffconcat version 1.0\nfile 'secret.ts'\n"),
}


def hostile_folder(ffmpeg: str, folder: Path, kind: str) -> Path:
    make_clip(ffmpeg, folder / "secret.ts", size="160x120", seconds=1, audio=False,
              extra=("-f", "mpegts"))
    name, text = HOSTILE[kind]
    (folder / name).write_text(text)
    return folder / name


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_probe_refuses_lists_that_point_at_other_files(
    ffmpeg: str, tmp_path: Path, kind: str
) -> None:
    path = hostile_folder(ffmpeg, tmp_path, kind)
    with pytest.raises(JobError, match="not a video") as raised:
        probe(ffmpeg, path)
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_unrestricted_ffmpeg_would_follow_the_list(ffmpeg: str, tmp_path: Path, kind: str) -> None:
    # The control for the test above: the same file, read without the allow-list.
    path = hostile_folder(ffmpeg, tmp_path, kind)
    done = subprocess.run([ffmpeg, "-hide_banner", "-protocol_whitelist", "file", "-i",
                           str(path)], capture_output=True, text=True, check=False)
    assert "160x120" in done.stderr


# --- running ---------------------------------------------------------------------------------

def test_run_encode_reports_progress_and_finishes(ffmpeg: str, tmp_path: Path) -> None:
    reports: list[EncodeProgress] = []
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats",
           "-progress", "pipe:1", "-stats_period", "0.1",
           "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2",
           "-c:v", "libx264", "-preset", "ultrafast", "-f", "null", "-"]
    run_encode(cmd, 2.0, 60, tmp_path / "err.log", reports.append)
    assert reports[-1].done
    assert reports[-1].percent == 100.0
    assert all(0 <= r.percent <= 100 for r in reports)


def test_run_encode_kills_ffmpeg_past_the_time_limit(ffmpeg: str, tmp_path: Path) -> None:
    marker = str(tmp_path / "never-finished")
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-progress", "pipe:1",
           "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=600",
           "-f", "null", marker]
    with pytest.raises(JobError, match="time limit of 1 s"):
        run_encode(cmd, 600.0, 1.0, tmp_path / "err.log", lambda _: None)
    assert not [cmd for cmd in running_commands().values() if marker in cmd]


def running_commands() -> dict[str, str]:
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
    return found


def test_run_encode_failure_names_ffmpeg_error(ffmpeg: str, tmp_path: Path) -> None:
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-progress", "pipe:1",
           "-f", "lavfi", "-i", "testsrc=duration=1", "-c:v", "no_such_codec", "-f", "null", "-"]
    with pytest.raises(JobError, match=r"ffmpeg failed \(exit code \d+\): .*Encoder not found"):
        run_encode(cmd, 1.0, 60, tmp_path / "err.log", lambda _: None)


def test_progress_without_an_output_time_does_not_move_backwards() -> None:
    # ffmpeg writes out_time_us=N/A now and then, often just before the end of an encode
    parser = ProgressParser(duration_s=10.0)
    reports = feed(parser, BLOCK.format(us=8_500_000, speed="2x", state="continue")
                   + BLOCK.format(us="N/A", speed="2x", state="continue")
                   + BLOCK.format(us=9_000_000, speed="2x", state="continue")
                   + BLOCK.format(us="N/A", speed="N/A", state="end"))
    assert [r.percent for r in reports] == [85.0, 85.0, 90.0, 100.0]
    assert [r.out_time_s for r in reports] == [8.5, 8.5, 9.0, 9.0]


def lying_mkv(ffmpeg: str, folder: Path, claimed_s: float = 80_000.0) -> Path:
    """A 1 s Matroska clip whose header claims ``claimed_s`` seconds."""
    clip = make_clip(ffmpeg, folder / "one.mkv", size="320x240", seconds=1, audio=True)
    data = bytearray(clip.read_bytes())
    at = data.find(b"\x44\x89\x88")  # Segment Info: Duration, an 8-byte float, in ms
    if at >= 0:
        data[at + 3:at + 11] = struct.pack(">d", claimed_s * 1000)
    else:
        at = data.index(b"\x44\x89\x84")
        data[at + 3:at + 7] = struct.pack(">f", claimed_s * 1000)
    liar = folder / "liar.mkv"
    liar.write_bytes(bytes(data))
    return liar


def test_the_packets_duration_is_measured_not_the_containers_claim(
    ffmpeg: str, tmp_path: Path
) -> None:
    liar = lying_mkv(ffmpeg, tmp_path)
    found = probe(ffmpeg, liar)
    assert found.duration_s == pytest.approx(80_000.0)
    measured = measure_duration(ffmpeg, liar, found)
    assert measured == pytest.approx(1.0, abs=0.1)
    assert encode_duration(found, measured, liar.stat().st_size) == measured


def test_duration_is_bounded_by_the_file_size() -> None:
    claimed = Probe(demuxer="matroska", duration_s=80_000.0, width=320, height=240,
                    video_index=0)
    # Unreadable timestamps: the claim, but no more than 1 s per kB
    assert encode_duration(claimed, None, 21_000) == 21.0
    assert encode_duration(claimed, None, 10**9) == 80_000.0
    with pytest.raises(JobError, match="could not determine"):
        encode_duration(replace(claimed, duration_s=0.0), None, 21_000)
    with pytest.raises(JobError, match="unsupported duration"):
        encode_duration(claimed, 90_000.0, 10**12)
