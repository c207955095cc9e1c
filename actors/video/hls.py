"""The HLS ladder, the one ffmpeg command that encodes every rendition, and its output.

Ladder rule: a rung's ``height`` is the short side of the picture (so a portrait phone video's
"720p" is 720 wide). Rungs taller than the source are skipped; when the source is shorter than
every rung, the smallest rung is kept and encoded at the source's own size (never upscaled).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from actors.video.ffmpeg import Probe, input_args
from jobplatform.errors import JobError
from schemas.jobs import Rendition

MASTER_PLAYLIST: Final = "master.m3u8"
VARIANT_PLAYLIST: Final = "index.m3u8"
CONTENT_TYPES: Final = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/mp4",
    ".mp4": "video/mp4",
}


@dataclass(frozen=True, slots=True)
class Variant:
    """A rung chosen for one source, with the frame size it will be encoded at."""

    rung: Rendition
    width: int
    height: int

    @property
    def name(self) -> str:
        return self.rung.name

    @property
    def bandwidth(self) -> int:
        """Peak bits per second, as the master playlist would announce it (video + audio)."""
        return (self.rung.video_kbps + self.rung.audio_kbps) * 1000


def select_ladder(ladder: Iterable[Rendition], width: int, height: int) -> list[Variant]:
    """The variants for a ``width`` x ``height`` (display size) source, tallest first."""
    rungs = sorted(ladder, key=lambda r: r.height, reverse=True)
    if not rungs:
        raise JobError("the rendition ladder is empty")
    names = [r.name for r in rungs]
    if len(set(names)) != len(names):
        raise JobError(f"the rendition ladder repeats a name: {names}")
    short = min(width, height)
    fitting = [r for r in rungs if r.height <= short] or [rungs[-1]]
    variants = []
    for rung in fitting:
        target = min(rung.height, short)
        long_side = _even(max(width, height) * target / short)
        size = (long_side, _even(target)) if width >= height else (_even(target), long_side)
        variants.append(Variant(rung, *size))
    return variants


def _even(value: float) -> int:
    return max(2, round(value / 2) * 2)


def encode_command(
    exe: str,
    source: Path,
    out_dir: Path,
    probe: Probe,
    variants: list[Variant],
    *,
    segment_seconds: int,
    preset: str,
    threads: int = 0,
    stats_period_s: float = 0.5,
) -> list[str]:
    """One ffmpeg run: decode once, split and scale per variant, HLS with a master playlist."""
    n = len(variants)
    labels = "".join(f"[s{i}]" for i in range(n))
    graph = [f"[0:{probe.video_index}]split={n}{labels}"]
    graph += [
        f"[s{i}]scale={v.width}:{v.height}:flags=bicubic,setsar=1,format=yuv420p[v{i}]"
        for i, v in enumerate(variants)
    ]
    audio = probe.audio_index is not None
    cmd = [
        exe, "-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-nostats",
        "-progress", "pipe:1", "-stats_period", f"{stats_period_s:g}",
        *input_args(source, probe.demuxer),
        "-filter_complex", ";".join(graph),
        "-map_metadata", "-1", "-map_chapters", "-1",
    ]
    stream_map = []
    for i, variant in enumerate(variants):
        cmd += ["-map", f"[v{i}]"]
        if audio:
            cmd += ["-map", f"0:{probe.audio_index}"]
        kbps = variant.rung.video_kbps
        cmd += [
            f"-b:v:{i}", f"{kbps}k", f"-maxrate:v:{i}", f"{kbps * 107 // 100}k",
            f"-bufsize:v:{i}", f"{kbps * 3 // 2}k",
        ]
        if audio:
            cmd += [f"-b:a:{i}", f"{variant.rung.audio_kbps}k"]
        stream_map.append(f"v:{i},a:{i},name:{variant.name}" if audio else
                          f"v:{i},name:{variant.name}")
    cmd += [
        "-c:v", "libx264", "-preset", preset, "-profile:v", "high",
        "-force_key_frames", f"expr:gte(t,n_forced*{segment_seconds})",
    ]
    if audio:
        cmd += ["-c:a", "aac", "-ac", "2"]
    if threads:
        cmd += ["-threads", str(threads)]
    cmd += [
        "-f", "hls", "-hls_time", str(segment_seconds), "-hls_playlist_type", "vod",
        "-hls_flags", "independent_segments", "-hls_segment_type", "mpegts",
        "-hls_segment_filename", str(out_dir / "%v" / "seg_%05d.ts"),
        "-master_pl_name", MASTER_PLAYLIST,
        "-var_stream_map", " ".join(stream_map),
        str(out_dir / "%v" / VARIANT_PLAYLIST),
    ]
    return cmd


# --- output ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class VariantOutput:
    variant: Variant
    playlist: str
    """Path of the variant's playlist relative to the output folder."""
    bandwidth: int
    segments: tuple[str, ...]
    duration_s: float = 0.0
    """The sum of the segments' durations (``#EXTINF``): what was encoded."""


_STREAM_INF = re.compile(r"^#EXT-X-STREAM-INF:(?P<attrs>.*)$")
_BANDWIDTH = re.compile(r"(?:^|,)BANDWIDTH=(\d+)")
_EXTINF = re.compile(r"^#EXTINF:(?P<s>\d+(?:\.\d+)?)", re.M)
_TARGET = re.compile(r"^#EXT-X-TARGETDURATION:(?P<s>\d+)\s*$", re.M)


def playlist_duration(text: str) -> float:
    """The sum of a media playlist's ``#EXTINF`` durations."""
    return sum(float(m.group("s")) for m in _EXTINF.finditer(text))


def repair_output(out_dir: Path, variants: list[Variant]) -> bool:
    """Complete what ffmpeg leaves out for very short clips (about half a second or less):
    a master playlist listing no variant, and a target duration of 0. The master is written
    anew from the variants whose playlists exist; True when anything was rewritten."""
    repaired = False
    for variant in variants:
        path = out_dir / variant.name / VARIANT_PLAYLIST
        if not path.is_file():
            continue
        text = path.read_text()
        longest = max((float(m.group("s")) for m in _EXTINF.finditer(text)), default=0.0)
        target = _TARGET.search(text)
        if target and int(target.group("s")) < max(1, round(longest)):
            text = _TARGET.sub(f"#EXT-X-TARGETDURATION:{max(1, math.ceil(longest))}", text)
            path.write_text(text)
            repaired = True
    master = out_dir / MASTER_PLAYLIST
    listed = playlist_uris(master.read_text()) if master.is_file() else []
    present = [v for v in variants if (out_dir / v.name / VARIANT_PLAYLIST).is_file()]
    if present and len(listed) < len(present):
        lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-INDEPENDENT-SEGMENTS"]
        for variant in present:
            lines += [
                f"#EXT-X-STREAM-INF:BANDWIDTH={variant.bandwidth},"
                f"RESOLUTION={variant.width}x{variant.height}",
                f"{variant.name}/{VARIANT_PLAYLIST}",
            ]
        master.write_text("\n".join(lines) + "\n")
        repaired = True
    return repaired


def playlist_uris(text: str) -> list[str]:
    """The URIs a playlist lists (every line that is neither blank nor a tag)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def read_output(out_dir: Path, variants: list[Variant]) -> list[VariantOutput]:
    """Check ffmpeg's output: a master listing each variant, every listed segment present."""
    master = out_dir / MASTER_PLAYLIST
    if not master.is_file():
        raise JobError("encoding produced no master playlist")
    bandwidths: dict[str, int] = {}
    pending: int | None = None
    for line in master.read_text().splitlines():
        match = _STREAM_INF.match(line)
        if match:
            found = _BANDWIDTH.search(match.group("attrs"))
            pending = int(found.group(1)) if found else None
        elif line.strip() and not line.startswith("#"):
            bandwidths[line.strip()] = pending or 0
            pending = None
    outputs = []
    for variant in variants:
        playlist = f"{variant.name}/{VARIANT_PLAYLIST}"
        if playlist not in bandwidths:
            raise JobError(f"the master playlist does not list rendition {variant.name}")
        path = out_dir / playlist
        text = path.read_text() if path.is_file() else ""
        segments = tuple(playlist_uris(text))
        if not segments:
            raise JobError(f"encoding produced no segments for rendition {variant.name}")
        for segment in segments:
            if "/" in segment or not (path.parent / segment).is_file():
                raise JobError(f"rendition {variant.name} lists a missing segment {segment!r}")
        outputs.append(
            VariantOutput(variant, playlist, bandwidths[playlist] or variant.bandwidth, segments,
                          playlist_duration(text))
        )
    return outputs


def content_type(name: str) -> str:
    suffix = Path(name).suffix
    try:
        return CONTENT_TYPES[suffix]
    except KeyError:
        raise JobError(f"unexpected output file {name!r}") from None
