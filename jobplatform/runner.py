"""The formation runner for development: the Procfile's processes, N of each, one terminal.

Each process runs in its own process group, so the terminal's Ctrl-C reaches only the runner.
On Ctrl-C or SIGTERM the runner sends each process ONE SIGTERM (to the process, not its group:
a dramatiq worker forwards it to its own children, and a second signal would make it hard-kill),
waits up to ``stop_timeout_s`` for them to drain, then SIGKILLs the groups still alive. A second
Ctrl-C skips the wait. A video worker stopping finishes its job within ``VIDEO_STOP_GRACE_S`` or
hands it back to the queue at once: :func:`stop_timeout_for` is the timeout that allows it.
A process that exits on its own stops the formation, and the runner exits non-zero.

With :class:`Probes`, each process gets a ``METRICS_PORT`` of its own and the runner watches its
``/healthz`` and ``/readyz``: it says when a process becomes ready or stops being ready (with
the reason the process gives) and when the whole formation is ready, and it restarts a process
whose liveness probe keeps failing (or stops the formation, or only says so).

Production does not use this: operators run the same Procfile under their own supervisor
(a systemd unit per line, a Heroku-like platform's process types, one Kubernetes Deployment per
line) and scale each line there.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Literal, TextIO

from jobplatform.errors import JobPlatformError

__all__ = [
    "BUILTIN_PROCFILE",
    "DEFAULT_STOP_TIMEOUT_S",
    "STOP_MARGIN_S",
    "Formation",
    "FormationError",
    "OnUnhealthy",
    "Probes",
    "Process",
    "ProcessType",
    "builtin_formation",
    "command_argv",
    "describe_exit",
    "exit_status",
    "parse_procfile",
    "parse_scale",
    "read_procfile",
    "stop_timeout_for",
]

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


#: What the runner does with a process whose liveness probe keeps failing.
OnUnhealthy = Literal["restart", "stop", "report"]


@dataclass(frozen=True, slots=True)
class Probes:
    """How the runner watches each process's ``/healthz`` (liveness) and ``/readyz`` (readiness).

    Each process gets its own ``METRICS_PORT``: ``port_base`` plus its index in the formation,
    or a free port when ``port_base`` is 0 (a Procfile line that sets ``METRICS_PORT`` keeps
    its own, and may then run once only). Every ``interval_s`` each process is asked, with
    ``timeout_s`` for an answer.

    - Readiness: the runner says when a process becomes ready and when it stops being ready,
      with the reason ``/readyz`` gives, and when every watched process is ready
      (:meth:`Formation.wait_ready`).
    - Liveness: a process that answered once and then fails ``failures`` probes in a row is
      unhealthy. ``on_unhealthy``: ``restart`` sends it one SIGTERM (and a SIGCONT, in case it
      was stopped), SIGKILLs its group after the stop timeout and starts it again; after
      ``max_restarts`` restarts of one process its next failure stops the formation.
      ``stop`` stops the formation; ``report`` only says so.
    - A process that has not answered ``/healthz`` within ``startup_s`` of its start serves no
      probes (a command that ignores ``METRICS_PORT``): the runner says so once and leaves it
      unwatched.
    """

    port_base: int = 0
    interval_s: float = 1.0
    timeout_s: float = 2.0
    failures: int = 3
    startup_s: float = 60.0
    on_unhealthy: OnUnhealthy = "restart"
    max_restarts: int = 3


@dataclass(eq=False)
class Process:
    """One running process of the formation, ``name.N``."""

    label: str
    popen: subprocess.Popen[bytes]
    colour: str
    exited: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None
    ptype: ProcessType | None = None
    port: int | None = None
    """Its ``METRICS_PORT`` when the runner watches its probes."""
    restarts: int = 0
    """How many processes of this label the runner restarted before this one."""
    started_at: float = field(default_factory=time.monotonic)
    answered: bool = False
    """Whether its ``/healthz`` ever answered 200 (only then do failures count)."""
    watched: bool = True
    ready: bool | None = None
    """Its readiness at the last probe (None before the first answer)."""
    ready_reason: str = ""
    failed_probes: int = 0
    replaced: bool = False
    """Stopped by the runner to be restarted: its exit does not stop the formation."""

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
        probes: Probes | None = None,
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
        self.probes = probes
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
        self.failure: str | None = None
        """Why the probes stopped the formation (an unhealthy process), if they did."""
        self.ready = threading.Event()
        """Set while every watched process is ready (see :class:`Probes`)."""
        self.was_ready = threading.Event()
        """Set once every watched process has been ready at the same time."""
        self._halt = threading.Event()
        self._started_at = time.monotonic()
        self._ports: dict[str, int] = {}
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
        self._started_at = time.monotonic()
        if self.probes is not None:
            self._ports = self._assign_ports(self.probes)
        index = 0
        for ptype in self.types:
            for n in range(1, self.scale[ptype.name] + 1):
                label = f"{ptype.name}.{n}"
                self._spawn(ptype, label, _COLOURS[index % len(_COLOURS)],
                            self._ports.get(label))
                index += 1
        if self.probes is not None:
            threading.Thread(target=self._watch, name="probes", daemon=True).start()

    def _assign_ports(self, probes: Probes) -> dict[str, int]:
        """Each process's ``METRICS_PORT``: the Procfile line's own, else the next one."""
        labels = [(t, f"{t.name}.{n}") for t in self.types
                  for n in range(1, self.scale[t.name] + 1)]
        ports: dict[str, int] = {}
        for ptype, label in labels:
            own = command_argv(ptype.command)[1].get("METRICS_PORT")
            if own is not None:
                if self.scale[ptype.name] > 1:
                    raise FormationError(
                        f"{ptype.name}: its Procfile line sets METRICS_PORT={own}, so only one"
                        f" of it can run; remove it and the runner gives each process its own")
                if own.isdigit() and int(own):
                    ports[label] = int(own)
        free = [label for _, label in labels if label not in ports]
        if probes.port_base:
            taken = set(ports.values())
            candidates = (p for p in range(probes.port_base, 65536) if p not in taken)
            ports.update(zip(free, candidates, strict=False))
        else:
            ports.update(zip(free, _free_ports(len(free)), strict=True))
        return {label: ports[label] for _, label in labels if label in ports}

    def _spawn(self, ptype: ProcessType, label: str, colour: str, port: int | None = None,
               restarts: int = 0) -> Process | None:
        argv, assigned = command_argv(ptype.command)
        env = {**self.env, **assigned, "JOBPLATFORM_PROCESS": label}
        if port is not None:
            env["METRICS_PORT"] = str(port)
        failed: OSError | None = None
        with self._changed:  # no process starts once a stop has begun
            if self._stopping:
                return None
            try:
                popen = subprocess.Popen(
                    argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as exc:
                failed = exc
            else:
                process = Process(label, popen, colour, ptype=ptype, port=port,
                                  restarts=restarts)
                self.processes.append(process)
        if failed is not None:
            self.stop()
            raise FormationError(f"{label}: cannot start {ptype.command!r}: {failed}") from failed
        probed = f", METRICS_PORT {port}" if port is not None else ""
        self.say(f"{label} started (pid {popen.pid}{probed}): {ptype.command}")
        assert popen.stdout is not None
        process.reader = threading.Thread(
            target=self._pump, args=(process, popen.stdout), name=f"out-{label}", daemon=True
        )
        process.reader.start()
        threading.Thread(
            target=self._reap, args=(process,), name=f"wait-{label}", daemon=True
        ).start()
        return process

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
            if not self._stopping and self.first_exit is None and not process.replaced:
                self.first_exit = process
            process.exited.set()
            self._changed.notify_all()
        self.say(f"{process.label} exited with {describe_exit(code)}")

    def alive(self) -> list[Process]:
        return [p for p in self.processes if not p.exited.is_set()]

    def wait(self, timeout: float | None = None) -> Process | None:
        """Block until a process exits on its own (returned), the probes stop the formation
        (:attr:`failure` set), a stop is requested, or ``timeout`` passes (None)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while (self.first_exit is None and self.failure is None and not self._stopping
                   and not self.requested.is_set()):
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
        self._halt.set()
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

    def run(self, *, ready_timeout_s: float | None = None) -> int:
        """Start, wait for Ctrl-C/SIGTERM, an exit or an unhealthy process, stop; the exit code
        for the CLI. With ``ready_timeout_s`` (and :class:`Probes`), a formation not ready by
        then is stopped too, and the exit code is 1."""
        if ready_timeout_s is not None and self.probes is None:
            raise FormationError("a ready timeout needs the probes (Formation(probes=Probes()))")
        with self.stop_signals():
            self.start()
            first = self.wait(ready_timeout_s) if ready_timeout_s is not None else None
            if ready_timeout_s is not None and first is None and self.failure is None and \
                    not self.requested.is_set() and not self.was_ready.is_set():
                self.failure = f"the formation is not ready after {ready_timeout_s:g} s (" + \
                    "; ".join(self._not_ready()) + ")"
            if self.failure is None and first is None:
                first = self.wait()
            if self.failure is not None:
                self.say(f"{self.failure}: stopping the formation")
                self.stop()
                return 1
            if first is not None:
                self.say(f"{first.label} exited unexpectedly: stopping the formation")
                self.stop()
                return exit_status(first.returncode)
            self.say("stopping the formation")
            self.stop()
            return 0

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every watched process is ready; False when ``timeout`` passed first."""
        return self.ready.wait(timeout)

    def status(self) -> list[dict[str, object]]:
        """Each live process: label, pid, port, whether it is watched, live, ready and why."""
        return [{"label": p.label, "pid": p.pid, "port": p.port, "watched": p.watched,
                 "live": p.answered and p.failed_probes == 0, "ready": bool(p.ready),
                 "reason": p.ready_reason, "restarts": p.restarts}
                for p in self.alive() if not p.replaced]

    # --- probes ----------------------------------------------------------------------------

    def _watch(self) -> None:
        probes = self.probes
        assert probes is not None
        while not self._halt.wait(probes.interval_s):
            for process in self.alive():
                if process.watched and not process.replaced and process.port is not None:
                    self._probe(process, probes)
            self._note_readiness()

    def _probe(self, process: Process, probes: Probes) -> None:
        assert process.port is not None
        status, body = _http_get(process.port, "/healthz", probes.timeout_s)
        if status != 200:
            reason = body if status is None else f"/healthz answered {status}"
            if not process.answered:
                if time.monotonic() - process.started_at > probes.startup_s:
                    process.watched = False
                    self.say(f"{process.label} has not answered /healthz on port {process.port}"
                             f" within {probes.startup_s:g} s: not watching it (does it serve"
                             " METRICS_PORT?)")
                return
            process.failed_probes += 1
            if process.ready:
                self.say(f"{process.label} not ready: {reason}")
            process.ready, process.ready_reason = False, reason
            if process.failed_probes >= probes.failures:
                self._unhealthy(process, probes, reason)
            return
        process.answered = True
        process.failed_probes = 0
        status, body = _http_get(process.port, "/readyz", probes.timeout_s)
        ready = status == 200
        reason = body or (f"/readyz answered {status}" if status is not None else "no answer")
        if ready != process.ready or (not ready and reason != process.ready_reason):
            self.say(f"{process.label} {'ready' if ready else 'not ready'}: {reason}")
        process.ready, process.ready_reason = ready, reason

    def _unhealthy(self, process: Process, probes: Probes, reason: str) -> None:
        label = process.label
        failed = f"{label} failed {process.failed_probes} liveness probes in a row ({reason})"
        process.failed_probes = 0
        if probes.on_unhealthy == "report":
            self.say(failed)
            return
        if probes.on_unhealthy == "restart" and process.restarts < probes.max_restarts:
            self.say(f"{failed}: restarting it ({process.restarts + 1} of at most"
                     f" {probes.max_restarts} restarts)")
            process.replaced = True
            threading.Thread(target=self._restart, args=(process,), name=f"restart-{label}",
                             daemon=True).start()
            return
        if probes.on_unhealthy == "restart":
            failed += f", after {process.restarts} restarts"
        with self._changed:
            if self.failure is None:
                self.failure = failed
            self._changed.notify_all()

    def _restart(self, process: Process) -> None:
        """One SIGTERM (and a SIGCONT: a stopped process cannot act on it), SIGKILL to the group
        after the stop timeout, then the same command again under the same label and port."""
        self.say(f"sending SIGTERM to {process.label} (pid {process.pid})")
        _signal(process.pid, signal.SIGTERM)
        _signal(process.pid, signal.SIGCONT)
        deadline = time.monotonic() + self.stop_timeout_s
        while not process.exited.wait(0.2):
            if self._halt.is_set() or time.monotonic() >= deadline:
                break
        if not process.exited.is_set() or _group_alive(process.pid):
            if not process.exited.is_set():
                self.say(f"{process.label} still running after {self.stop_timeout_s:g} s:"
                         " SIGKILL")
            _signal_group(process.pid, signal.SIGKILL)
            process.exited.wait(5)
        if process.reader is not None:
            process.reader.join(5)
        assert process.ptype is not None
        try:
            self._spawn(process.ptype, process.label, process.colour, process.port,
                        restarts=process.restarts + 1)
        except FormationError as exc:
            with self._changed:
                if self.failure is None:
                    self.failure = str(exc)
                self._changed.notify_all()

    def _watched(self) -> list[Process]:
        """The live processes whose probes are watched, in the formation's order."""
        order = {label: n for n, label in enumerate(self._ports)}
        return sorted((p for p in self.alive()
                       if p.watched and not p.replaced and p.port is not None),
                      key=lambda p: order.get(p.label, len(order)))

    def _not_ready(self) -> list[str]:
        return [f"{p.label}: {p.ready_reason or 'no answer yet'}" for p in self._watched()
                if not p.ready]

    def _note_readiness(self) -> None:
        watched = self._watched()
        restarting = any(p.replaced and not p.exited.is_set() for p in self.processes)
        ready = bool(watched) and not restarting and all(p.ready for p in watched)
        if ready and not self.ready.is_set():
            self.ready.set()
            took = time.monotonic() - self._started_at
            again = " again" if self.was_ready.is_set() else ""
            self.was_ready.set()
            self.say(f"formation ready{again}: {', '.join(p.label for p in watched)}"
                     f" ({took:.1f} s since start)")
        elif not ready and self.ready.is_set():
            self.ready.clear()
            self.say("formation not ready: " + "; ".join(self._not_ready() or ["restarting"]))

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


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now (held together while chosen, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _http_get(port: int, path: str, timeout: float) -> tuple[int | None, str]:
    """``(status, first line of the body)``, or ``(None, why)`` when nothing answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read(2000).decode("utf-8", errors="replace")
        return response.status, body.strip().splitlines()[0] if body.strip() else ""
    except TimeoutError:
        return None, f"no answer within {timeout:g} s"
    except ConnectionRefusedError:
        return None, f"nothing listens on port {port}"
    except (OSError, http.client.HTTPException) as exc:
        return None, str(exc) or type(exc).__name__
    finally:
        conn.close()


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
