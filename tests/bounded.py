"""Run a function in a forked child with a time and a memory bound, for fuzzing.

The child gets ``RLIMIT_AS`` (its current address space plus ``memory_bytes``) and an alarm
after ``seconds``; its outcome comes back through a pipe. Memory that a native library (the
spreadsheet reader's Rust code) allocates is bounded too, which ``tracemalloc`` would not see.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bounded:
    """How the child ended: ``ok`` (returned or raised an expected error), else ``problem``."""

    ok: bool
    problem: str = ""


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def run_bounded(call: Callable[[], object], *, expected: tuple[type[BaseException], ...],
                seconds: int, memory_bytes: int) -> Bounded:
    """``call()`` in a child; an exception of ``expected`` counts as a clean outcome."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        code = 0
        try:
            os.close(read_end)
            faulthandler.disable()  # an abort past the bound is an outcome, not a crash to dump
            limit = _address_space() + memory_bytes
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(seconds)
            try:
                call()
            except expected:
                pass
            except MemoryError:
                os.write(write_end, f"over the memory bound of {memory_bytes >> 20} MiB".encode())
                code = 3
            except BaseException:
                os.write(write_end, traceback.format_exc()[-4000:].encode())
                code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        told = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGALRM:
            return Bounded(False, f"did not finish within {seconds} s")
        return Bounded(False, f"killed by signal {signal.Signals(sig).name} ({told})")
    code = os.WEXITSTATUS(status)
    return Bounded(True) if code == 0 else Bounded(False, told or f"exit code {code}")
