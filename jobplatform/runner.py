"""The formation runner for development: the Procfile's processes, N of each, one terminal.

Each process runs in its own process group, so the terminal's Ctrl-C reaches only the runner.
On Ctrl-C or SIGTERM the runner sends each process ONE SIGTERM (to the process, not its group:
a dramatiq worker forwards it to its own children, and a second signal would make it hard-kill),
waits up to ``stop_timeout_s`` for them to drain, then SIGKILLs the groups still alive. A second
Ctrl-C skips the wait. A video worker stopping finishes its job within ``VIDEO_STOP_GRACE_S`` or
hands it back to the queue at once: :func:`stop_timeout_for` is the timeout that allows it.
A process that exits on its own stops the formation, and the runner exits non-zero.

Production does not use this: operators run the same Procfile under their own supervisor
(a systemd unit per line, a Heroku-like platform's process types, one Kubernetes Deployment per
line) and scale each line there.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TextIO

from jobplatform.errors import JobPlatformError

DEFAULT_STOP_TIMEOUT_S = 30.0
#: Time a video worker needs past ``VIDEO_STOP_GRACE_S`` to hand its job back and exit.
STOP_MARGIN_S = 10.0
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SHELL_CHARS = re.compile(r"[|&;<>()$`\\\"'*?\[\]{}~]")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")


class FormationError(JobPlatformError):
    """A Procfile or a scale is wrong, or a process could not be started."""


@dataclass(frozen=True, slots=True)
class ProcessType:
    """One Procfile line: ``name: command``."""

    name: str
    command: str


def parse_procfile(text: str, source: str = "Procfile") -> list[ProcessType]:
    """The process types of a Procfile; blank lines and ``#`` comments are skipped."""
    types: list[ProcessType] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, command = line.partition(":")
        name, command = name.strip(), command.strip()
        where = f"{source}, line {number}"
        if not colon or not command:
            raise FormationError(f"{where}: expected 'name: command', got {line!r}")
        if not _NAME.match(name):
            raise FormationError(
                f"{where}: process name {name!r} must be 1-32 letters, digits, '_' or '-'"
            )
        if name in seen:
            raise FormationError(f"{where}: process name {name!r} appears twice")
        seen.add(name)
        types.append(ProcessType(name, command))
    if not types:
        raise FormationError(f"{source}: no processes defined")
    return types


#: The formation of an installed package, the same as the repository's Procfile (a test checks
#: it): ``jobplatform run`` and ``jobplatform demo`` start it when no Procfile is given.
BUILTIN_PROCFILE = """\
writer: jobplatform writer
video: dramatiq actors.worker --queues video --processes 1 --threads 1
ai: dramatiq actors.worker --queues ai --processes 1 --threads 2
# Tenant shards (README "Tenant shards"): with WRITER_SHARDS=2 in every process's environment,
# one line per shard replaces `writer` (a second process of a line is that shard's standby).
# writer0: jobplatform writer --shard 0/2
# writer1: jobplatform writer --shard 1/2
"""


def builtin_formation() -> list[ProcessType]:
    """The built-in formation: one writer, one video worker, one ai worker."""
    return parse_procfile(BUILTIN_PROCFILE, "the built-in formation")


def read_procfile(path: Path) -> list[ProcessType]:
    """The process types of the Procfile at ``path``; a missing one raises FormationError."""
    if not path.exists():
        raise FormationError(
            f"Procfile {path} does not exist (resolved from {Path.cwd()}): pass an existing"
            " file to --procfile, or leave it out to run the built-in formation")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FormationError(f"cannot read the Procfile {path}: {exc.strerror}") from exc
    return parse_procfile(text, str(path))


def parse_scale(spec: str | None, types: Sequence[ProcessType] = ()) -> dict[str, int]:
    """``"video=2,ai=2"`` -> ``{"video": 2, "ai": 2}``; names must be in ``types`` if given."""
    scale: dict[str, int] = {}
    known = {t.name for t in types}
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, count = item.partition("=")
        name = name.strip()
        if not eq or not count.strip().isdigit():
            raise FormationError(f"--scale: expected name=count, got {item!r}")
        if known and name not in known:
            raise FormationError(
                f"--scale: no process {name!r} in the Procfile (it has {', '.join(sorted(known))})"
            )
        scale[name] = int(count)
    return scale


def command_argv(command: str) -> tuple[list[str], dict[str, str]]:
    """The argv and leading ``VAR=value`` assignments of a Procfile command.

    A plain command is executed directly, so the runner's signal reaches it; one using shell
    syntax runs under ``/bin/sh -c`` (prefix it with ``exec`` to keep signals direct).
    """
    if _SHELL_CHARS.search(command):
        return ["/bin/sh", "-c", command], {}
    words = shlex.split(command)
    env: dict[str, str] = {}
    while words and _ASSIGNMENT.match(words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if not words:
        raise FormationError(f"command {command!r} has nothing to run")
    return words, env


@dataclass(eq=False)
class Process:
    """One running process of the formation, ``name.N``."""

    label: str
    popen: subprocess.Popen[bytes]
    colour: str
    exited: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode


class Formation:
    """Starts, prefixes and stops a set of processes; :meth:`run` is the blocking CLI loop."""

    def __init__(
        self,
        types: Sequence[ProcessType],
        *,
        scale: Mapping[str, int] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        output: TextIO | None = None,
        colour: bool | None = None,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    ) -> None:
        scale = dict(scale or {})
        unknown = set(scale) - {t.name for t in types}
        if unknown:
            raise FormationError(f"scale names unknown processes: {', '.join(sorted(unknown))}")
        self.types = list(types)
        self.scale = {t.name: scale.get(t.name, 1) for t in types}
        if not any(self.scale.values()):
            raise FormationError("the scale leaves no process to run")
        self.cwd = cwd
        self.output: TextIO = output or sys.stdout
        if colour is None:
            colour = self.output.isatty() and "NO_COLOR" not in os.environ
        self.colour = colour
        self.stop_timeout_s = stop_timeout_s
        self.env = self._environ(env or {})
        self.processes: list[Process] = []
        self.first_exit: Process | None = None
        """The first process that exited before :meth:`stop` was called."""
        self._changed = threading.Condition()
        self._write_lock = threading.RLock()  # a signal handler may write too
        self._stopping = False
        self._hurry = threading.Event()
        self.requested = threading.Event()
        """Set by the first SIGINT/SIGTERM while :meth:`stop_signals` is active."""
        width = max(
            [len(f"{t.name}.{n}") for t in types for n in range(1, self.scale[t.name] + 1)]
            + [len("system")]
        )
        self._width = width

    @staticmethod
    def _environ(extra: Mapping[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(extra)
        env["PYTHONUNBUFFERED"] = "1"
        # Console scripts of this interpreter's environment (dramatiq, jobplatform) come first.
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bindir, env.get("PATH", os.defpath)])
        return env

    # --- starting --------------------------------------------------------------------------

    def start(self) -> None:
        index = 0
        for ptype in self.types:
            for n in range(1, self.scale[ptype.name] + 1):
                self._spawn(ptype, f"{ptype.name}.{n}", _COLOURS[index % len(_COLOURS)])
                index += 1

    def _spawn(self, ptype: ProcessType, label: str, colour: str) -> None:
        argv, assigned = command_argv(ptype.command)
        env = {**self.env, **assigned, "JOBPLATFORM_PROCESS": label}
        try:
            popen = subprocess.Popen(
                argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            self.stop()
            raise FormationError(f"{label}: cannot start {ptype.command!r}: {exc}") from exc
        process = Process(label, popen, colour)
        self.processes.append(process)
        self.say(f"{label} started (pid {popen.pid}): {ptype.command}")
        assert popen.stdout is not None
        process.reader = threading.Thread(
            target=self._pump, args=(process, popen.stdout), name=f"out-{label}", daemon=True
        )
        process.reader.start()
        threading.Thread(
            target=self._reap, args=(process,), name=f"wait-{label}", daemon=True
        ).start()

    # --- output ----------------------------------------------------------------------------

    def _line(self, label: str, colour: str, text: str) -> str:
        stamp = time.strftime("%H:%M:%S")
        prefix = f"{stamp} {label:<{self._width}} |"
        if self.colour:
            prefix = f"\x1b[{colour}m{prefix}\x1b[0m"
        return f"{prefix} {text}\n"

    def _write(self, text: str) -> None:
        with self._write_lock:
            try:
                self.output.write(text)
                self.output.flush()
            except (OSError, ValueError):
                pass

    def say(self, text: str) -> None:
        """A line of the runner's own, prefixed ``system``."""
        self._write(self._line("system", "1", text))

    def _pump(self, process: Process, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self._write(self._line(process.label, process.colour, text))
        stream.close()

    # --- exits -----------------------------------------------------------------------------

    def _reap(self, process: Process) -> None:
        code = process.popen.wait()
        with self._changed:
            if not self._stopping and self.first_exit is None:
                self.first_exit = process
            process.exited.set()
            self._changed.notify_all()
        self.say(f"{process.label} exited with {describe_exit(code)}")

    def alive(self) -> list[Process]:
        return [p for p in self.processes if not p.exited.is_set()]

    def wait(self, timeout: float | None = None) -> Process | None:
        """Block until a process exits on its own (returned) or ``timeout`` passes (None)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self.first_exit is None and not self._stopping and not self.requested.is_set():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                # Short waits keep the main thread responsive to signals.
                self._changed.wait(0.2 if remaining is None else min(remaining, 0.2))
            return self.first_exit

    # --- stopping --------------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> None:
        """One SIGTERM to each live process; SIGKILL to the groups still alive at the deadline."""
        with self._changed:
            if self._stopping:
                return
            self._stopping = True
            self._changed.notify_all()
        timeout = self.stop_timeout_s if timeout is None else timeout
        for process in self.alive():
            self.say(f"sending SIGTERM to {process.label} (pid {process.pid})")
            _signal(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            while not process.exited.wait(0.2):
                if self._hurry.is_set() or time.monotonic() >= deadline:
                    break
        for process in self.processes:
            if not process.exited.is_set():
                self.say(f"{process.label} still running after {timeout:g} s: SIGKILL")
                _signal_group(process.pid, signal.SIGKILL)
            elif _group_alive(process.pid):
                # Children it left behind would hold its output pipe open forever.
                self.say(f"{process.label} left processes behind: SIGKILL to its group")
                _signal_group(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.exited.wait(5)
            if process.reader is not None:
                process.reader.join(5)

    def hurry(self) -> None:
        """Stop waiting for graceful exits: the stop in progress SIGKILLs what is left."""
        if not self._hurry.is_set():
            self._hurry.set()
            self.say("second signal: not waiting any longer")

    def run(self) -> int:
        """Start, wait for Ctrl-C/SIGTERM or an exit, stop; the exit code for the CLI."""
        with self.stop_signals():
            self.start()
            first = self.wait()
            if first is not None:
                self.say(f"{first.label} exited unexpectedly: stopping the formation")
                self.stop()
                return exit_status(first.returncode)
            self.say("stopping the formation")
            self.stop()
            return 0

    @contextmanager
    def stop_signals(self) -> Iterator[None]:
        """While inside: the first SIGINT/SIGTERM sets :attr:`requested` (which ends
        :meth:`wait`); the next ones hurry the stop."""

        def handle(signum: int, frame: FrameType | None) -> None:
            if self.requested.is_set():
                self.hurry()
            self.requested.set()

        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def stop_timeout_for(video_stop_grace_s: float) -> float:
    """The stop timeout that lets a video worker use its whole ``VIDEO_STOP_GRACE_S`` and then
    hand its job back (so no job is killed and silently redelivered 60 s later)."""
    return max(DEFAULT_STOP_TIMEOUT_S, video_stop_grace_s + STOP_MARGIN_S)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def exit_status(code: int | None) -> int:
    """The runner's exit code after a process died unexpectedly: never 0."""
    if code is None or code == 0:
        return 1
    return 128 - code if code < 0 else code


def _signal(pid: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signum)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
