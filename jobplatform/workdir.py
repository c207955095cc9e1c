"""Jobs' temporary folders, and removing the ones dead workers left behind.

A job folder holds a copy of the job's source (up to gigabytes for a video). A worker killed
mid-job (SIGKILL, the OOM killer) runs no cleanup, so each folder carries a lock file that its
worker process holds with ``flock`` for as long as the job runs. The kernel releases the lock
when the process dies, however it dies: a folder whose lock can be taken belongs to no live
worker, and :func:`sweep` removes it. Workers sweep their folder's parent when they start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

__all__ = ["LEGACY_AGE_S", "LOCK_NAME", "job_folder", "sweep"]

LOCK_NAME: Final = ".owner.lock"
#: A folder without a lock file (from a version before locks, or caught between its creation
#: and its lock) is removed only when nothing in it changed for this long.
LEGACY_AGE_S: Final = 24 * 3600.0


@contextmanager
def job_folder(parent: Path | None, prefix: str) -> Iterator[Path]:
    """A fresh folder under ``parent`` (the system's temp folder when None), locked by this
    process while the block runs, then removed."""
    base = parent if parent is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    fd = _take(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def _take(folder: Path) -> int:
    # Locked under a private name, then renamed: the lock file is never seen unlocked.
    private = folder / f".lock-{os.getpid()}"
    fd = os.open(private, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
    os.rename(private, folder / LOCK_NAME)
    return fd


def sweep(parent: Path | None, prefix: str, *, legacy_age_s: float = LEGACY_AGE_S) -> list[Path]:
    """Remove the ``prefix*`` folders under ``parent`` that no live process holds; return them.

    Folders of live workers (on this machine, or sharing the folder) are left alone, and so
    are folders this user may not delete.
    """
    base = parent if parent is not None else Path(tempfile.gettempdir())
    removed: list[Path] = []
    try:
        candidates = sorted(base.glob(prefix + "*"))
    except OSError:
        return removed
    for folder in candidates:
        try:
            if folder.is_symlink() or not folder.is_dir():
                continue
        except OSError:
            continue
        if _remove_if_abandoned(folder, legacy_age_s):
            removed.append(folder)
    return removed


def _remove_if_abandoned(folder: Path, legacy_age_s: float) -> bool:
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        if _quiet_for(folder) < legacy_age_s:
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return not folder.exists()
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its worker is alive
        shutil.rmtree(folder, ignore_errors=True)
        return not folder.exists()
    finally:
        os.close(fd)


def _quiet_for(folder: Path) -> float:
    """Seconds since anything in ``folder`` last changed."""
    latest = 0.0
    for root, dirs, files in os.walk(folder):
        for name in (root, *(os.path.join(root, n) for n in (*dirs, *files))):
            with contextlib.suppress(OSError):
                latest = max(latest, os.lstat(name).st_mtime)
    return time.time() - latest
