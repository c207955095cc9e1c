from __future__ import annotations

from pathlib import Path

import pytest

from actors.video.ffmpeg import Probe
from actors.video.hls import (
    Variant,
    content_type,
    encode_command,
    read_output,
    select_ladder,
)
from jobplatform.errors import JobError
from schemas.jobs import DEFAULT_LADDER, Rendition


def sizes(variants: list[Variant]) -> list[tuple[str, int, int]]:
    return [(v.name, v.width, v.height) for v in variants]


def test_ladder_keeps_rungs_no_taller_than_a_1080p_source() -> None:
    assert sizes(select_ladder(DEFAULT_LADDER, 1920, 1080)) == [
        ("1080p", 1920, 1080), ("720p", 1280, 720), ("360p", 640, 360),
    ]


def test_ladder_skips_rungs_taller_than_the_source() -> None:
    assert sizes(select_ladder(DEFAULT_LADDER, 1280, 720)) == [
        ("720p", 1280, 720), ("360p", 640, 360),
    ]
    # 1000 lines: 1080p would upscale, so it is left out.
    assert [v.name for v in select_ladder(DEFAULT_LADDER, 1776, 1000)] == ["720p", "360p"]


def test_source_smaller_than_every_rung_keeps_the_smallest_at_its_own_size() -> None:
    assert sizes(select_ladder(DEFAULT_LADDER, 320, 240)) == [("360p", 320, 240)]


def test_portrait_video_measures_rungs_on_the_short_side() -> None:
    assert sizes(select_ladder(DEFAULT_LADDER, 1080, 1920)) == [
        ("1080p", 1080, 1920), ("720p", 720, 1280), ("360p", 360, 640),
    ]


def test_sizes_are_even_and_keep_the_aspect() -> None:
    [variant] = select_ladder([Rendition(name="360p", height=360, video_kbps=800)], 1000, 750)
    assert (variant.width, variant.height) == (480, 360)
    [odd] = select_ladder(DEFAULT_LADDER, 333, 187)
    assert odd.width % 2 == 0
    assert odd.height % 2 == 0


def test_ladder_order_in_the_job_does_not_matter() -> None:
    shuffled = (DEFAULT_LADDER[2], DEFAULT_LADDER[0], DEFAULT_LADDER[1])
    assert select_ladder(shuffled, 1920, 1080) == select_ladder(DEFAULT_LADDER, 1920, 1080)


def test_ladder_with_a_repeated_name_is_refused() -> None:
    rung = Rendition(name="360p", height=360, video_kbps=800)
    with pytest.raises(JobError, match="repeats a name"):
        select_ladder([rung, rung.model_copy(update={"height": 240})], 640, 360)


def probe_of(audio: bool) -> Probe:
    return Probe(demuxer="mov", duration_s=3.0, width=640, height=360, video_index=0,
                 audio_index=1 if audio else None)


def test_encode_command_forces_the_probed_demuxer_and_reads_only_files(tmp_path: Path) -> None:
    variants = select_ladder(DEFAULT_LADDER, 1280, 720)
    cmd = encode_command("ffmpeg", tmp_path / "source", tmp_path / "out", probe_of(True),
                         variants, segment_seconds=4, preset="veryfast")

    def after(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert after("-protocol_whitelist") == "file"
    assert after("-format_whitelist") == "mov"
    assert after("-f") == "mov"
    assert after("-i") == f"file:{tmp_path / 'source'}"
    assert cmd.index("-f") < cmd.index("-i")
    assert after("-var_stream_map") == "v:0,a:0,name:720p v:1,a:1,name:360p"
    assert after("-hls_time") == "4"
    assert after("-hls_playlist_type") == "vod"
    assert cmd.count("-i") == 1
    assert after("-b:v:1") == "800k"
    assert after("-b:a:1") == "96k"


def test_encode_command_without_audio_maps_video_only(tmp_path: Path) -> None:
    variants = select_ladder(DEFAULT_LADDER, 640, 360)
    cmd = encode_command("ffmpeg", tmp_path / "s", tmp_path / "o", probe_of(False), variants,
                         segment_seconds=6, preset="veryfast")
    assert cmd[cmd.index("-var_stream_map") + 1] == "v:0,name:360p"
    assert "-c:a" not in cmd
    assert not any(arg.startswith("-b:a") for arg in cmd)


def write_output(folder: Path, segments: list[str], listed: list[str]) -> list[Variant]:
    [variant] = select_ladder(DEFAULT_LADDER, 640, 360)
    (folder / "360p").mkdir(parents=True)
    (folder / "master.m3u8").write_text(
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=987000,RESOLUTION=640x360\n360p/index.m3u8\n"
    )
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:6"]
    for name in listed:
        lines += ["#EXTINF:6.0,", name]
    (folder / "360p" / "index.m3u8").write_text("\n".join([*lines, "#EXT-X-ENDLIST", ""]))
    for name in segments:
        (folder / "360p" / name).write_bytes(b"\x47")
    return [variant]


def test_read_output_takes_bandwidth_from_the_master(tmp_path: Path) -> None:
    variants = write_output(tmp_path, ["seg_00000.ts"], ["seg_00000.ts"])
    [out] = read_output(tmp_path, variants)
    assert out.bandwidth == 987000
    assert out.playlist == "360p/index.m3u8"
    assert out.segments == ("seg_00000.ts",)


@pytest.mark.parametrize(
    ("segments", "listed", "message"),
    [
        (["seg_00000.ts"], ["seg_00000.ts", "seg_00001.ts"], "missing segment"),
        ([], [], "no segments"),
        (["seg_00000.ts"], ["../../secret.ts"], "missing segment"),
    ],
)
def test_read_output_refuses_incomplete_output(
    tmp_path: Path, segments: list[str], listed: list[str], message: str
) -> None:
    variants = write_output(tmp_path, segments, listed)
    with pytest.raises(JobError, match=message):
        read_output(tmp_path, variants)


def test_content_types() -> None:
    assert content_type("master.m3u8") == "application/vnd.apple.mpegurl"
    assert content_type("seg_00001.ts") == "video/mp2t"
    assert content_type("seg_00001.m4s") == "video/mp4"
    with pytest.raises(JobError, match="unexpected output file"):
        content_type("ffmpeg.log")
