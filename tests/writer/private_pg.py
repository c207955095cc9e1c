"""A private PostgreSQL server a test may stop, crash and start again (the machine's is shared).

The machine's binaries, run as ``nobody`` when the tests run as root (``initdb`` refuses root),
in a folder of its own, on a port of its own, ``fsync`` off. Started with :meth:`start`; the
port stays the same across restarts, so a client's URL stays valid.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from psycopg.conninfo import make_conninfo

from jobplatform.embedded import (
    owned_dir,
    run_as_prefix,
    system_postgres_bin,
    tmp_root,
    unprivileged_user,
)
from tests.transport import _wait_port, free_port
from writer.db import session_options


class PrivatePostgres:
    def __init__(self, home: Path, bin_dir: Path, as_user: list[str]) -> None:
        self.home = home
        self.bin_dir = bin_dir
        self.as_user = as_user
        self.data = home / "data"
        self.port = free_port()
        self.log = home / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, dbname: str = "postgres") -> str:
        """A URL of database ``dbname``, its search path the writer's schema."""
        return make_conninfo(f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}",
                             options=session_options(), connect_timeout="5")

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*self.as_user, str(self.bin_dir / "postgres"), "-D", str(self.data),
                 "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.home}", "-c", "fsync=off",
                 "-c", "max_connections=40"],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.home)
        _wait_port(self.port, self.proc, self.log)

    def stop(self, *, crash: bool = False) -> None:
        """A fast shutdown (SIGINT), or a crash (SIGKILL of the postmaster, whose backends
        then exit when they notice)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if crash:
            proc.kill()
        else:
            proc.send_signal(2)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """An initialised private server, not started yet; removed afterwards."""
    bin_dir = system_postgres_bin()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries on this machine")
    user = unprivileged_user("nobody")
    home = owned_dir(tmp_root() / f"jp-pg-{uuid.uuid4().hex[:8]}", user)
    as_user = run_as_prefix(user)
    server = PrivatePostgres(home, bin_dir, as_user)
    try:
        subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(server.data), "-U",
                        "postgres", "--auth=trust", "-E", "UTF8", "--no-locale",
                        "--no-instructions"], check=True, capture_output=True, cwd=home)
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
