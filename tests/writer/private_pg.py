"""A private PostgreSQL that tests may crash and restart (never the machine's shared one).

Started from the machine's binaries, as ``nobody`` when the tests run as root (initdb refuses
root), on a free port and a folder of its own. :meth:`PrivatePostgres.crash` stops it with
``pg_ctl stop -m immediate``: every backend quits at once, without a checkpoint or a commit,
and the next start runs crash recovery from the WAL, as after a power cut of the server.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from jobplatform.embedded import (
    owned_dir,
    run_as_prefix,
    system_postgres_bin,
    tmp_root,
    unprivileged_user,
)
from tests.transport import _wait_port, free_port


class PrivatePostgres:
    """One private server; :attr:`url` stays valid across :meth:`crash` and :meth:`start`."""

    def __init__(self, home: Path, bin_dir: Path, as_user: list[str], *settings: str) -> None:
        self.home = home
        self.bin_dir = bin_dir
        self.as_user = as_user
        self.data = home / "data"
        self.port = free_port()
        self.settings = settings
        self.log = home / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = [part for setting in self.settings for part in ("-c", setting)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*self.as_user, str(self.bin_dir / "postgres"), "-D", str(self.data),
                 "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.home}",
                 *options],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.home)
        _wait_port(self.port, self.proc, self.log)
        deadline = time.monotonic() + 60
        while subprocess.run([str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1",
                              "-p", str(self.port)]).returncode != 0:  # recovery ends first
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    def crash(self) -> None:
        """Stop at once, as a crash does: no checkpoint, no commit of what is in flight."""
        subprocess.run([*self.as_user, str(self.bin_dir / "pg_ctl"), "stop", "-D",
                        str(self.data), "-m", "immediate", "-w"],
                       check=True, capture_output=True, cwd=self.home)
        if self.proc is not None:
            self.proc.wait(30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@contextlib.contextmanager
def private_postgres(*settings: str) -> Iterator[PrivatePostgres]:
    """A started private server with ``settings`` (``name=value``); removed afterwards."""
    import pytest

    bin_dir = system_postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries on this machine")
    user = unprivileged_user("nobody")
    home = owned_dir(tmp_root() / f"jp-pgcrash-{uuid.uuid4().hex[:8]}", user)
    try:
        as_user = run_as_prefix(user)
        subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(home / "data"),
                        "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale",
                        "--no-instructions"], check=True, capture_output=True, cwd=home)
        server = PrivatePostgres(home, bin_dir, as_user, *settings)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
