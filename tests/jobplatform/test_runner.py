from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from jobplatform.runner import (
    Formation,
    FormationError,
    Probes,
    ProcessType,
    command_argv,
    parse_procfile,
    parse_scale,
)
from jobplatform.settings import Settings
from jobplatform.stack import Services
from tests.scrape import get

PROC = Path(__file__).with_name("_proc.py")
ROOT = Path(__file__).parents[2]
PROCFILE = f"""
# a comment, then a blank line

web: {sys.executable} {PROC} serve
worker: {sys.executable} {PROC} serve
"""


class Lines(io.StringIO):
    """Captured output that a test can wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def write(self, text: str) -> int:
        with self.changed:
            n = super().write(text)
            self.changed.notify_all()
            return n

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20) -> list[Any]:
        with self.changed:
            self.changed.wait_for(
                lambda: len(re.findall(pattern, self.getvalue(), re.M)) >= count, timeout
            )
            found: list[Any] = re.findall(pattern, self.getvalue(), re.M)
        assert len(found) >= count, f"{pattern!r} x{count} not in:\n{self.getvalue()}"
        return found


def lines_of(output: str, label: str) -> list[str]:
    """What process ``label`` printed, without the prefix ``HH:MM:SS label |``."""
    found = []
    for line in output.splitlines():
        prefix, _, text = line.partition(" | ")
        if prefix.split()[1:] == [label]:
            found.append(text)
    return found


def test_parse_procfile_and_scale() -> None:
    types = parse_procfile(PROCFILE)
    assert [t.name for t in types] == ["web", "worker"]
    assert types[0].command.endswith("_proc.py serve")
    assert parse_scale("web=2, worker=0", types) == {"web": 2, "worker": 0}
    assert parse_scale(None, types) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("web python a.py\n", "Procfile, line 1: expected 'name: command'"),
        ("web:\n", "line 1: expected 'name: command'"),
        ("a: x\nb c: y\n", "line 2: process name 'b c' must be"),
        ("a: x\na: y\n", "line 2: process name 'a' appears twice"),
        ("# nothing\n", "no processes defined"),
    ],
)
def test_bad_procfiles_name_the_line(text: str, message: str) -> None:
    with pytest.raises(FormationError, match=re.escape(message)):
        parse_procfile(text)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("web=two", "expected name=count, got 'web=two'"), ("web", "expected name=count"),
     ("api=1", "no process 'api' in the Procfile (it has web)")],
)
def test_bad_scales_are_refused(spec: str, message: str) -> None:
    with pytest.raises(FormationError, match=re.escape(message)):
        parse_scale(spec, [ProcessType("web", "x")])


def test_command_argv_runs_plain_commands_directly() -> None:
    assert command_argv("LOG_LEVEL=DEBUG dramatiq actors.worker --queues video") == (
        ["dramatiq", "actors.worker", "--queues", "video"], {"LOG_LEVEL": "DEBUG"})
    assert command_argv("exec a | b") == (["/bin/sh", "-c", "exec a | b"], {})
    with pytest.raises(FormationError, match="has nothing to run"):
        command_argv("A=1")


def test_formation_prefixes_output_and_sends_one_sigterm_each(tmp_path: Path) -> None:
    out = Lines()
    formation = Formation(parse_procfile(PROCFILE), scale={"worker": 2}, output=out,
                          env={"MARK": "x"}, cwd=tmp_path)
    formation.start()
    ready = out.wait_for(r"^\S+ (web\.1|worker\.1|worker\.2) +\| ready pid=(\d+) pgid=(\d+)$", 3)

    formation.stop()

    text = out.getvalue()
    # Each process is the leader of its own group (the terminal's SIGINT does not reach it).
    for _, pid, pgid in ready:
        assert pid == pgid
        assert int(pgid) != os.getpgid(0)
    for label in ("web.1", "worker.1", "worker.2"):
        assert lines_of(text, label)[1:] == ["got SIGTERM #1", "drained"], text
    assert [p.returncode for p in formation.processes] == [0, 0, 0]
    assert "SIGKILL" not in text
    assert formation.first_exit is None


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    out = Lines()
    types = [ProcessType("stubborn", f"{sys.executable} {PROC} stubborn")]
    formation = Formation(types, output=out, stop_timeout_s=0.5)
    formation.start()
    out.wait_for("ready")

    formation.stop()

    assert formation.processes[0].returncode == -signal.SIGKILL
    assert "stubborn.1 still running after 0.5 s: SIGKILL" in out.getvalue()


def test_a_crashing_process_stops_the_formation() -> None:
    out = Lines()
    types = [*parse_procfile(PROCFILE), ProcessType("crash", f"{sys.executable} {PROC} crash")]
    formation = Formation(types, output=out)

    code = formation.run()

    text = out.getvalue()
    assert code == 3
    assert formation.first_exit is not None
    assert formation.first_exit.label == "crash.1"
    assert "crash.1 exited unexpectedly: stopping the formation" in text
    for label in ("web.1", "worker.1"):
        assert lines_of(text, label)[-2:] == ["got SIGTERM #1", "drained"], text


def test_ctrl_c_in_a_terminal_reaches_each_process_once(
    tmp_path: Path, services: Services
) -> None:
    # Given `jobplatform run` in the foreground process group of a terminal
    procfile = tmp_path / "Procfile"
    procfile.write_text(PROCFILE)
    runner = subprocess.Popen(
        [sys.executable, "-m", "jobplatform", "run", "--no-migrate", "-f", str(procfile),
         "--scale", "worker=2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, **services.environ()},
    )
    assert runner.stdout is not None
    seen: list[str] = []
    for line in runner.stdout:
        seen.append(line)
        if sum(" | ready pid=" in s for s in seen) == 3:
            break
    # When the terminal delivers Ctrl-C to that group
    os.killpg(runner.pid, signal.SIGINT)
    rest, _ = runner.communicate(timeout=30)

    # Then each process got exactly one SIGTERM and no SIGINT, drained, and the runner exits 0
    text = "".join(seen) + rest
    assert runner.returncode == 0, text
    for label in ("web.1", "worker.1", "worker.2"):
        assert lines_of(text, label)[1:] == ["got SIGTERM #1", "drained"], text
    assert "SIGINT" not in text


def test_wait_returns_when_nothing_exits() -> None:
    out = Lines()
    formation = Formation([ProcessType("web", f"{sys.executable} {PROC} serve")], output=out)
    formation.start()
    try:
        assert formation.wait(timeout=0.3) is None
        assert formation.alive() == formation.processes
    finally:
        formation.stop()


def test_run_exits_with_the_crashed_process_code(tmp_path: Path, services: Services) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text(PROCFILE + f"crash: {sys.executable} {PROC} crash\n")

    done = subprocess.run(
        [sys.executable, "-m", "jobplatform", "run", "--no-migrate", "-f", str(procfile)],
        capture_output=True, text=True, timeout=60, env={**os.environ, **services.environ()},
        check=False,
    )

    assert done.returncode == 3, done.stdout + done.stderr
    assert "crash.1 exited unexpectedly: stopping the formation" in done.stdout


def test_the_stop_timeout_leaves_a_video_worker_its_grace() -> None:
    from jobplatform.runner import DEFAULT_STOP_TIMEOUT_S, stop_timeout_for

    assert stop_timeout_for(20.0) == DEFAULT_STOP_TIMEOUT_S == 30.0
    assert stop_timeout_for(120.0) == 130.0


def _probes(**overrides: Any) -> Probes:
    return Probes(**{"interval_s": 0.2, "timeout_s": 0.5, "failures": 2, "startup_s": 10,
                     **overrides})


def test_probes_report_readiness_and_restart_a_process_that_stops_answering() -> None:
    out = Lines()
    types = [ProcessType("web", f"{sys.executable} {PROC} probed")]
    formation = Formation(types, output=out, stop_timeout_s=5, probes=_probes())
    formation.start()
    try:
        # Given a process that warms up, then is ready
        [port] = out.wait_for(r"web\.1 started \(pid \d+, METRICS_PORT (\d+)\)")
        out.wait_for(r"web\.1 not ready: warming up$")
        out.wait_for(r"web\.1 ready: serving$")
        out.wait_for(r"formation ready: web\.1 \(")
        assert formation.wait_ready(0)
        [first] = formation.processes
        assert (first.port, first.ready) == (int(port), True)
        # When it stops answering (stopped: its socket still accepts, nothing replies)
        os.kill(first.pid, signal.SIGSTOP)
        # Then it is found unhealthy and restarted: one SIGTERM (it was let go on, so it
        # drains and exits 0), then started again on the same port, and ready again
        out.wait_for(r"web\.1 failed 2 liveness probes in a row \(no answer within 0\.5 s\):"
                     r" restarting it \(1 of at most 3 restarts\)$")
        starts = out.wait_for(r"web\.1 started \(pid (\d+), METRICS_PORT (\d+)\)", 2)
        assert starts[1][0] != str(first.pid)
        assert starts[1][1] == port
        out.wait_for(r"web\.1 ready: serving$", 2)
        out.wait_for(r"formation ready again: web\.1 \(")
        assert first.returncode == 0
        assert lines_of(out.getvalue(), "web.1")[1:3] == ["got SIGTERM #1", "drained"]
        assert formation.first_exit is None
        assert [p["restarts"] for p in formation.status()] == [1]
    finally:
        formation.stop()
    assert [p.returncode for p in formation.processes] == [0, 0]


def test_an_unhealthy_process_stops_the_formation_when_told_to() -> None:
    out = Lines()
    types = [ProcessType("web", f"{sys.executable} {PROC} probed"),
             ProcessType("worker", f"{sys.executable} {PROC} probed")]
    formation = Formation(types, output=out, stop_timeout_s=1,
                          probes=_probes(on_unhealthy="stop"))

    def stop_web_once_ready() -> None:
        out.wait_for(r"formation ready: web\.1, worker\.1")
        os.kill(formation.processes[0].pid, signal.SIGSTOP)

    threading.Thread(target=stop_web_once_ready, daemon=True).start()
    code = formation.run()

    text = out.getvalue()
    assert code == 1
    assert re.search(r"web\.1 failed 2 liveness probes in a row \(no answer within 0\.5 s\):"
                     r" stopping the formation$", text, re.M), text
    assert "restarting" not in text
    assert lines_of(text, "worker.1")[-2:] == ["got SIGTERM #1", "drained"]
    assert formation.processes[0].returncode == -signal.SIGKILL


def test_a_formation_not_ready_in_time_is_stopped() -> None:
    out = Lines()
    types = [ProcessType("web", f"NEVER_READY=1 {sys.executable} {PROC} probed")]
    formation = Formation(types, output=out, stop_timeout_s=5, probes=_probes())

    code = formation.run(ready_timeout_s=1.5)

    assert code == 1
    assert "the formation is not ready after 1.5 s (web.1: never ready): stopping the " \
        "formation" in out.getvalue()


def test_a_process_that_serves_no_probes_is_left_unwatched() -> None:
    out = Lines()
    types = [ProcessType("web", f"{sys.executable} {PROC} serve")]
    formation = Formation(types, output=out, probes=_probes(startup_s=0.5))
    formation.start()
    try:
        out.wait_for(r"web\.1 has not answered /healthz on port \d+ within 0\.5 s: not"
                     r" watching it")
        assert formation.wait(timeout=0.5) is None
        assert [p["watched"] for p in formation.status()] == [False]
    finally:
        formation.stop()
    assert "restarting" not in out.getvalue()


def test_each_process_gets_its_own_metrics_port() -> None:
    types = [ProcessType("web", "a"), ProcessType("api", "METRICS_PORT=9300 b"),
             ProcessType("worker", "c")]
    formation = Formation(types, scale={"worker": 2}, probes=Probes(port_base=9300))
    ports = formation._assign_ports(Probes(port_base=9300))
    assert ports == {"web.1": 9301, "api.1": 9300, "worker.1": 9302, "worker.2": 9303}
    assert list(ports) == ["web.1", "api.1", "worker.1", "worker.2"]  # the formation's order
    free = formation._assign_ports(Probes())
    assert free["api.1"] == 9300
    assert len(set(free.values())) == 4
    with pytest.raises(FormationError, match="sets METRICS_PORT=9300, so only one of it"):
        Formation(types, scale={"api": 2}, probes=Probes())._assign_ports(Probes())


@pytest.mark.slow
def test_run_watches_the_real_writer_and_worker_and_restarts_a_hung_writer(
    tmp_path: Path, settings: Settings
) -> None:
    # Given `jobplatform run` with a writer and an ai worker, on the test's services
    procfile = tmp_path / "Procfile"
    procfile.write_text("writer: jobplatform writer\n"
                        "ai: dramatiq actors.worker --queues ai --processes 1 --threads 1\n")
    assert settings.database_url is not None
    assert settings.redis_url is not None
    env = {**os.environ, "DATABASE_URL": settings.database_url,
           "REDIS_URL": settings.redis_url, "BROKER_NAMESPACE": settings.broker_namespace,
           "JOBPLATFORM_STATE_DIR": str(settings.jobplatform_state_dir)}
    runner = subprocess.Popen(
        [sys.executable, "-m", "jobplatform", "run", "-f", str(procfile), "--stop-timeout",
         "10", "--ready-timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=env, cwd=ROOT,
    )
    assert runner.stdout is not None
    out = Lines()
    pump = threading.Thread(target=lambda: [out.write(line) for line in runner.stdout or ()],
                            daemon=True)
    pump.start()

    def read_until(pattern: str, count: int = 1) -> list[Any]:
        return out.wait_for(pattern, count, timeout=90)

    try:
        # Then each process is started on a port of its own, and each says when it is ready
        ports = dict(read_until(r"(writer\.1|ai\.1) started \(pid \d+, METRICS_PORT (\d+)\)", 2))
        read_until(r"formation ready: writer\.1, ai\.1")
        read_until(r"writer\.1 ready: active$")
        read_until(r"ai\.1 ready: ok$")
        assert get(int(ports["writer.1"]), "/readyz") == (200, "active\n")
        assert get(int(ports["ai.1"]), "/healthz")[0] == 200
        # When the writer hangs (stopped: it holds its lock, its socket accepts, nothing answers)
        [pid] = read_until(r"writer\.1 started \(pid (\d+)")
        os.kill(int(pid), signal.SIGSTOP)
        # Then it is restarted: it stops gracefully once let go on, a new one takes the lock
        read_until(r"writer\.1 failed 3 liveness probes in a row \(no answer within 2 s\):"
                   r" restarting it \(1 of at most 3 restarts\)$")
        read_until(r"writer\.1 exited with code 0$")
        starts = read_until(r"writer\.1 started \(pid (\d+), METRICS_PORT (\d+)\)", 2)
        assert starts[1] == (starts[1][0], ports["writer.1"])
        assert starts[1][0] != pid
        read_until(r"writer\.1 ready: active$", 2)
        read_until(r"formation ready again: writer\.1, ai\.1")
        assert "ai.1 exited" not in out.getvalue()
    finally:
        # When the terminal's Ctrl-C reaches the runner
        os.killpg(runner.pid, signal.SIGINT)
        try:
            runner.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
            raise
        pump.join(10)
    # Then the formation stops cleanly
    assert runner.returncode == 0, out.getvalue()
