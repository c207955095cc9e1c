"""Python's cyclic garbage collector held off while the writer works on a batch.

Decoding a batch, planning it and applying it allocate many objects (a model per roster row),
almost all freed by reference counting as soon as the batch is done. Left on, the collector
would traverse them again and again meanwhile: about 40% of the decode's and the plan's CPU.
Held off, it runs between batches, where it finds little. The writer's threads (its own and
the fast lane's) share one hold: the collector runs again once neither holds it.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_held", "hold", "release"]

_lock = threading.Lock()
_holders = 0
_was_enabled = False


def hold() -> None:
    """Hold the collector off until the matching :func:`release` (holds nest and are shared
    by threads: it runs again once none is left)."""
    global _holders, _was_enabled
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1


def release() -> None:
    global _holders
    with _lock:
        _holders -= 1
        if _holders == 0 and _was_enabled:
            gc.enable()


@contextmanager
def gc_held() -> Iterator[None]:
    """The collector held off inside the block; never around a wait, so that it runs while
    the writer is idle."""
    hold()
    try:
        yield
    finally:
        release()
