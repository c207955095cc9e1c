"""Running ffmpeg on hostile input: probing, the demuxer allow-list, progress, time limits.

An uploaded file is hostile until proven otherwise. ``-protocol_whitelist file`` alone still
lets a playlist (HLS), a concat list or an image-sequence pattern make ffmpeg read *other* local
files, so every run also passes ``-format_whitelist`` with real media containers only, the probe's
result is checked against the same list, and the encode run forces the probed demuxer with ``-f``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from jobplatform.errors import JobError, JobHandedBack
from jobplatform.settings import VideoSettings

#: Demuxers accepted for uploads (first name of ffmpeg's comma-separated demuxer names). Each
#: reads only the file it is given: no playlists, concat lists, image sequences or raw pipes.
ALLOWED_DEMUXERS: Final = (
    "mov", "matroska", "avi", "mpegts", "mpeg", "flv", "asf", "ogg", "mxf", "dv",
)
#: Demuxers refused with a specific reason, for a readable failure.
_REFUSED_KINDS: Final = (
    (re.compile(r"^(hls|applehttp|m3u8|dash|concat|ffconcat|tee|data|subfile)$"),
     "a playlist or list of other files"),
    (re.compile(r"^(image2|.*_pipe|gif|webp|apng|png|jpeg|bmp|tiff)$"), "a still image"),
    (re.compile(r"^(mp3|aac|wav|flac|ogg_audio|w64|aiff|amr)$"), "an audio file"),
)
PROBE_TIMEOUT_S: Final = 60.0
MAX_DIMENSION: Final = 8192
MAX_DURATION_S: Final = 86_000.0
#: Fewest bytes a second of a real video takes (8 kbit/s, far below any real stream): a
#: file's size over this bounds its duration whatever its container or timestamps claim.
MIN_BYTES_PER_S: Final = 1000
#: Slowest rate the packet scan of :func:`measure_duration` is allowed (it only reads).
SCAN_BYTES_PER_S: Final = 20 * 1024 * 1024


def ffmpeg_exe(settings: VideoSettings) -> str:
    """The ffmpeg binary: ``VIDEO_FFMPEG_PATH``, else the static build imageio-ffmpeg ships."""
    if settings.ffmpeg_path:
        return settings.ffmpeg_path
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        from jobplatform.extras import MissingExtra

        raise MissingExtra(
            "the video actor needs ffmpeg: pip install 'jobplatform[video]' (a static build),"
            " or set VIDEO_FFMPEG_PATH to a system ffmpeg", name="imageio_ffmpeg") from exc

    exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    return exe


def input_args(path: Path, demuxer: str | None = None) -> list[str]:
    """Arguments that let ffmpeg read ``path`` and nothing else."""
    args = [
        "-protocol_whitelist", "file",
        "-format_whitelist", demuxer or ",".join(ALLOWED_DEMUXERS),
    ]
    if demuxer:
        args += ["-f", demuxer]
    return [*args, "-i", f"file:{path}"]


# --- probing -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Probe:
    """What an encode needs to know about a source."""

    demuxer: str
    duration_s: float
    """What the container claims (0 when it claims nothing); see :func:`measure_duration`."""
    width: int
    height: int
    video_index: int
    audio_index: int | None = None
    sample_aspect: float = 1.0
    rotation: int = 0

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height as played: square pixels, rotation applied."""
        width = round(self.width * self.sample_aspect)
        if self.rotation % 180:
            return self.height, width
        return width, self.height


def check_demuxer(name: str) -> str:
    """The demuxer's first name if it is allowed, else a :class:`JobError` saying what it is."""
    first = name.split(",", 1)[0].strip()
    if first in ALLOWED_DEMUXERS:
        return first
    for pattern, kind in _REFUSED_KINDS:
        if pattern.match(first):
            raise JobError(f"not a video: the file is {kind} (format {first!r})")
    raise JobError(f"unsupported container format {first!r}")


def probe(exe: str, path: Path, ffprobe: str | None = None) -> Probe:
    """Probe ``path`` with the same input restrictions as the encode; raise :class:`JobError`."""
    if ffprobe:
        cmd = [ffprobe, "-v", "error", "-print_format", "json", "-show_format",
               "-show_streams", *input_args(path)]
        done = _run_probe(cmd)
        if done.returncode != 0:
            raise JobError(_probe_failure(done.stderr))
        return validate(parse_ffprobe_json(done.stdout))
    done = _run_probe([exe, "-hide_banner", "-nostdin", *input_args(path)])
    # Without an output ffmpeg always exits 1 after describing the input; the banner decides.
    if "Input #0" not in done.stderr:
        raise JobError(_probe_failure(done.stderr))
    return validate(parse_banner(done.stderr))


def _run_probe(
    cmd: list[str], timeout_s: float = PROBE_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", timeout=timeout_s,
            stdin=subprocess.DEVNULL, check=False, preexec_fn=die_with_parent(),
        )
    except subprocess.TimeoutExpired as exc:
        raise JobError(f"probing the file took longer than {timeout_s:.0f} s") from exc


def measure_duration(exe: str, path: Path, found: Probe) -> float | None:
    """The duration the file's packets span (video and the audio encoded), read by a stream
    copy to nowhere: demuxing only, no decoding. A container's header may claim anything;
    this is what an encode will meet. None when ffmpeg read no timestamp."""
    maps = ["-map", f"0:{found.video_index}"]
    if found.audio_index is not None:
        maps += ["-map", f"0:{found.audio_index}"]
    cmd = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats",
           "-progress", "pipe:1", *input_args(path, found.demuxer), *maps,
           "-c", "copy", "-f", "null", "-"]
    timeout = PROBE_TIMEOUT_S + path.stat().st_size / SCAN_BYTES_PER_S
    parser = ProgressParser(1.0)
    last = None
    for line in _run_probe(cmd, timeout).stdout.splitlines():
        last = parser.feed(line) or last
    return last.out_time_s if last is not None and last.out_time_s > 0 else None


def encode_duration(found: Probe, measured: float | None, size_bytes: int) -> float:
    """The duration a job's time limit and progress go by: the packets' span when it could be
    read, else the container's claim; never more than the file's size allows
    (:data:`MIN_BYTES_PER_S`). :class:`JobError` when it is unknown or out of range."""
    seconds = measured if measured is not None else found.duration_s
    seconds = min(seconds, size_bytes / MIN_BYTES_PER_S)
    if seconds <= 0:
        raise JobError("could not determine the video's duration")
    if seconds >= MAX_DURATION_S:
        raise JobError(f"unsupported duration {seconds:.1f} s")
    return seconds


def _probe_failure(stderr: str) -> str:
    if "not on whitelist" in stderr or "Format not" in stderr:
        return "not a video: the container format is not an allowed media format"
    if "moov atom not found" in stderr or "Invalid data found" in stderr:
        return "not a video, or a corrupt file: ffmpeg could not read it"
    line = last_error_line(stderr)
    return f"could not read the file: {line}" if line else "could not read the file"


_INPUT = re.compile(r"^Input #0, (?P<fmt>[\w,-]+), from ", re.M)
_DURATION = re.compile(r"^ {2}Duration: (?P<d>N/A|(\d+):(\d\d):(\d\d(?:\.\d+)?))", re.M)
_STREAM = re.compile(
    r"^ +Stream #0:(?P<idx>\d+)\S*: (?P<type>Video|Audio): (?P<rest>.*)$", re.M
)
_SIZE = re.compile(r", (?P<w>\d{1,5})x(?P<h>\d{1,5})(?: \[SAR (?P<sn>\d+):(?P<sd>\d+))?")
_ROTATION = re.compile(r"^ +display ?matrix: rotation of (?P<deg>-?[\d.]+) degrees",
                       re.M | re.I)


def parse_banner(stderr: str) -> Probe:
    """Read a :class:`Probe` from ffmpeg's description of its input (``ffmpeg -i file``).

    Metadata values cannot forge these lines: ffmpeg prints line breaks inside a value with a
    ``: `` prefix, and every pattern here is anchored at the start of a line.
    """
    fmt = _INPUT.search(stderr)
    if not fmt:
        raise JobError("could not read the file: ffmpeg did not recognise it")
    duration = _DURATION.search(stderr)
    seconds = None
    if duration and duration.group("d") != "N/A":
        h, m, s = duration.group(2, 3, 4)
        seconds = int(h) * 3600 + int(m) * 60 + float(s)
    video: dict[str, Any] | None = None
    audio_index = None
    streams = list(_STREAM.finditer(stderr))
    for i, stream in enumerate(streams):
        rest = stream.group("rest")
        if stream.group("type") == "Audio":
            if audio_index is None:
                audio_index = int(stream.group("idx"))
            continue
        size = _SIZE.search(rest)
        if video is not None or "(attached pic)" in rest or not size:
            continue
        end = streams[i + 1].start() if i + 1 < len(streams) else len(stderr)
        rotation = _ROTATION.search(stderr, stream.end(), end)
        sar = 1.0
        if size.group("sn") and int(size.group("sd")) > 0 and int(size.group("sn")) > 0:
            sar = int(size.group("sn")) / int(size.group("sd"))
        video = {
            "video_index": int(stream.group("idx")),
            "width": int(size.group("w")),
            "height": int(size.group("h")),
            "sample_aspect": sar,
            "rotation": round(float(rotation.group("deg"))) if rotation else 0,
        }
    return _build(fmt.group("fmt"), seconds, video, audio_index)


def parse_ffprobe_json(text: str) -> Probe:
    """Read a :class:`Probe` from ``ffprobe -print_format json -show_format -show_streams``."""
    try:
        data = json.loads(text)
        fmt = str(data["format"]["format_name"])
    except (ValueError, KeyError, TypeError) as exc:
        raise JobError("could not read the file: ffprobe gave no format") from exc
    raw_duration = data["format"].get("duration")
    seconds = float(raw_duration) if raw_duration not in (None, "N/A") else None
    video: dict[str, Any] | None = None
    audio_index = None
    for stream in data.get("streams", []):
        kind = stream.get("codec_type")
        if kind == "audio" and audio_index is None:
            audio_index = int(stream["index"])
        attached = stream.get("disposition", {}).get("attached_pic") == 1
        if kind != "video" or video is not None or attached or not stream.get("width"):
            continue
        sar = 1.0
        sn, _, sd = str(stream.get("sample_aspect_ratio", "1:1")).partition(":")
        if sn.isdigit() and sd.isdigit() and int(sn) > 0 and int(sd) > 0:
            sar = int(sn) / int(sd)
        rotation = 0
        for side in stream.get("side_data_list", []):
            if "rotation" in side:
                rotation = round(float(side["rotation"]))
        video = {
            "video_index": int(stream["index"]),
            "width": int(stream["width"]),
            "height": int(stream["height"]),
            "sample_aspect": sar,
            "rotation": rotation,
        }
    return _build(fmt, seconds, video, audio_index)


def _build(
    fmt: str, seconds: float | None, video: dict[str, Any] | None, audio_index: int | None
) -> Probe:
    demuxer = check_demuxer(fmt)
    if video is None:
        if audio_index is not None:
            raise JobError("not a video: the file has audio but no video stream")
        raise JobError("not a video: the file has no video stream")
    # The container's claim, 0 when it makes none: see measure_duration for what counts.
    claimed = seconds if seconds is not None and seconds > 0 else 0.0
    return Probe(demuxer=demuxer, duration_s=claimed, audio_index=audio_index, **video)


def validate(found: Probe) -> Probe:
    if not (16 <= found.width <= MAX_DIMENSION and 16 <= found.height <= MAX_DIMENSION):
        raise JobError(
            f"unsupported frame size {found.width}x{found.height} "
            f"(16 to {MAX_DIMENSION} pixels a side)"
        )
    return found


# --- progress ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EncodeProgress:
    """One ``-progress`` report: share of the duration encoded, and speed (x real time)."""

    percent: float
    out_time_s: float
    speed: float | None
    done: bool


class ProgressParser:
    """Turns ffmpeg's ``-progress`` lines (``key=value`` blocks) into :class:`EncodeProgress`."""

    def __init__(self, duration_s: float) -> None:
        self.duration_s = duration_s
        self._block: dict[str, str] = {}
        self._out_s = 0.0

    def feed(self, line: str) -> EncodeProgress | None:
        """Consume one line; a block's closing ``progress=`` line yields a report."""
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        self._block[key] = value.strip()
        if key != "progress":
            return None
        block, self._block = self._block, {}
        # ffmpeg reports ``out_time_us=N/A`` at times (often just before the end): that is no
        # news, not time 0, and progress never moves backwards.
        reported = _out_time_s(block)
        if reported is not None:
            self._out_s = max(self._out_s, reported)
        out_s = self._out_s
        done = value.strip() == "end"
        percent = 100.0 if done else min(99.9, max(0.0, 100.0 * out_s / self.duration_s))
        return EncodeProgress(round(percent, 1), out_s, _speed(block.get("speed")), done)


def _out_time_s(block: dict[str, str]) -> float | None:
    """The block's output time, None when ffmpeg gave none (``N/A``)."""
    for key in ("out_time_us", "out_time_ms"):  # ffmpeg's out_time_ms is in microseconds too
        raw = block.get(key, "")
        if raw.lstrip("-").isdigit():
            return max(0.0, int(raw) / 1_000_000)
    return None


def _speed(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        return round(float(raw.rstrip("x")), 2)
    except ValueError:
        return None


# --- running -----------------------------------------------------------------------------

_PR_SET_PDEATHSIG: Final = 1
try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for a child process: the kernel SIGKILLs the child when the thread
    that started it dies (``PR_SET_PDEATHSIG``), so an ffmpeg never outlives a killed worker.
    It calls nothing that takes a lock, so it is safe between fork and exec."""
    parent = os.getpid()

    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec

_NOISE = re.compile(
    r"^(Conversion failed!|Last message repeated|Terminating thread|Task finished with error"
    r"|Error closing file|frame=|\s*Qavg|video:|\[q\] )"
)
_CONTEXT = re.compile(r"^(\[[^\]]*\]\s*)+")


def last_error_line(stderr: str) -> str:
    """The last line of ffmpeg's stderr that says what went wrong, without log prefixes."""
    for raw in reversed(stderr.splitlines()):
        line = _CONTEXT.sub("", raw).strip()
        if line and not _NOISE.match(line):
            return line[:300]
    return ""


def run_encode(
    cmd: list[str],
    duration_s: float,
    time_limit_s: float,
    stderr_path: Path,
    on_progress: Callable[[EncodeProgress], None],
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Run an ffmpeg command that writes ``-progress pipe:1``, killing it past ``time_limit_s``.

    A non-zero exit raises :class:`JobError` with ffmpeg's last meaningful error line. When
    ``should_stop`` turns true (checked at least once a second) ffmpeg is killed and
    :class:`JobHandedBack` raised.
    """
    parser = ProgressParser(duration_s)
    deadline = time.monotonic() + time_limit_s
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            start_new_session=True, preexec_fn=die_with_parent(),
        )
    try:
        assert proc.stdout is not None
        for line in _lines_until(proc.stdout, deadline, should_stop):
            report = parser.feed(line)
            if report is not None:
                on_progress(report)
        if should_stop is not None and should_stop() and proc.poll() is None:
            _kill(proc)
            raise JobHandedBack("the worker is stopping: the encode was stopped")
        if time.monotonic() >= deadline and proc.poll() is None:
            _kill(proc)
            raise JobError(
                f"encoding took longer than the time limit of {time_limit_s:.0f} s "
                f"for a {duration_s:.0f} s video"
            )
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as exc:
        raise JobError(f"encoding took longer than the time limit of {time_limit_s:.0f} s") from exc
    finally:
        if proc.poll() is None:
            _kill(proc)
        if proc.stdout:
            proc.stdout.close()
    if code != 0:
        stderr = stderr_path.read_bytes()[-64_000:].decode(errors="replace")
        detail = last_error_line(stderr) or describe_exit(code)
        raise JobError(f"ffmpeg failed ({describe_exit(code)}): {detail}")


def _lines_until(
    stream: Any, deadline: float, should_stop: Callable[[], bool] | None = None
) -> Iterable[str]:
    """Lines of a pipe until EOF, the deadline or ``should_stop``, never blocking past the
    deadline."""
    fd = stream.fileno()
    os.set_blocking(fd, False)
    buffer = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if should_stop is not None and should_stop():
                return
            if not sel.select(timeout=min(remaining, 1.0)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace")
    if buffer:
        yield buffer.decode(errors="replace")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
