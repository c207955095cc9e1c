"""Named points where a fault test stops or kills the writer; inert unless armed.

The fault suite (``jobplatform bench chaos``) needs a writer to die at a precise place of a
batch, which a signal sent from outside cannot hit. When the environment variable
``JOBPLATFORM_FAULT_FILE`` names a file at the process's start, each point below reads that
file when reached: a file holding ``POINT ACTION`` (``kill``: SIGKILL, ``stop``: SIGSTOP, to be
continued by the test) fires once, at the next time the process reaches ``POINT``; the file is
removed first. Unset (production), a point costs one global lookup and a comparison.

Points: ``after_append`` (the batch is in the intent log, not committed), ``after_commit``
(committed, not acknowledged), ``mid_copy`` (inside a COPY, half of its rows sent),
``after_dead_letter`` (dead letters committed, their messages not acknowledged).
"""

from __future__ import annotations

import os
import signal

__all__ = ["ACTIONS", "ENV", "POINTS", "arm", "armed", "reached"]

ENV = "JOBPLATFORM_FAULT_FILE"
POINTS = ("after_append", "after_commit", "mid_copy", "after_dead_letter")
ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}

_file: str | None = os.environ.get(ENV) or None


def arm(path: str | None) -> None:
    """Watch ``path`` (None: disarm); for tests in one process."""
    global _file
    _file = path


def armed() -> bool:
    """Whether a fault file is watched (a point that must prepare, such as ``mid_copy``)."""
    return _file is not None


def reached(point: str) -> None:
    """The writer is at ``point``: fire the fault the file names for it, if any."""
    if _file is None:
        return
    _fire(_file, point)


def _fire(path: str, point: str) -> None:
    try:
        with open(path, encoding="utf-8") as fh:
            wanted, _, action = fh.read().strip().partition(" ")
    except OSError:
        return
    if wanted != point:
        return
    try:
        os.unlink(path)
    except OSError:
        return  # another thread of this process took it
    os.kill(os.getpid(), ACTIONS.get(action.strip() or "kill", signal.SIGKILL))
