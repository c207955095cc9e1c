"""Private servers and broken paths for the fault benchmarks and tests: never the shared services.

- :class:`PrivateRedis`: ``redis-server`` on a free port and a folder of its own, with an
  append-only file synced at every write (a restart, even after SIGKILL, keeps what it
  acknowledged, as a managed Redis with persistence does); ``maxmemory`` optional.
- :class:`TcpProxy`: a TCP proxy in front of a service that can *freeze* (stop forwarding
  while keeping every socket open: a hung network path, a paused VM) and thaw, or cut every
  connection; the tests' proxies and forwarders are this one too.
- :class:`SmallDisk`: a size-limited tmpfs mounted on a folder (root), to fill to the last byte
  and free again.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from bench._common import stop_process
from bench._instance import free_port


class PrivateRedis:
    """A redis-server of the benchmark's own; :meth:`restart` kills it (SIGKILL) and starts it
    again on the same port and data."""

    def __init__(self, *, maxmemory: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.folder = Path(tempfile.mkdtemp(prefix="jobplatform-bench-redis-"))
        self.port = free_port()
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.folder), "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--logfile", str(self.folder / "redis.log")]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        client = redis.Redis.from_url(self.url)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGKILL)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def used_memory(self) -> int:
        client = redis.Redis.from_url(self.url)
        try:
            return int(client.info("memory")["used_memory"])
        finally:
            client.close()

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)
        self.proc = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpProxy:
    """Forwards ``listen``:``port`` to ``target``, with the broken paths the fault tests need.

    - :meth:`freeze` stops moving bytes in both directions, on every connection and on new
      ones, and closes nothing (a path that silently drops packets, a paused VM: both kernels
      still acknowledge what they are sent, so keepalives see nothing wrong); :meth:`thaw`.
    - :meth:`cut` closes every connection and refuses new ones until :meth:`restore`.
    - ``client_keepalive_s`` sets TCP keepalives and a user timeout on the clients' side, so a
      connection from a client that vanished is closed within about ``client_keepalive_s + 3``
      seconds, upstream too (as a server with ``tcp_keepalives_idle`` set does).
    """

    def __init__(self, target: tuple[str, int], *, listen: str = "127.0.0.1",
                 client_keepalive_s: int | None = None) -> None:
        self.target = target
        self.client_keepalive_s = client_keepalive_s
        self._listener = socket.create_server((listen, 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._pairs: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._refusing = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        self._refusing = True
        self._shut_all()

    def restore(self) -> None:
        self._refusing = False

    def local_ports(self) -> set[int]:
        """Local ports of the proxy's connections to the target (``client_port`` in
        ``pg_stat_activity``): which backends are this proxy's clients."""
        with self._lock:
            return set(self._pairs)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            if self.client_keepalive_s is not None:
                _keepalive(client, self.client_keepalive_s)
            threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name="proxy-pump").start()

    def _serve(self, client: socket.socket) -> None:
        self._flowing.wait()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        port = upstream.getsockname()[1]
        with self._lock:
            self._pairs[port] = (client, upstream)
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._closed:
                self._flowing.wait()
                for key, _ in selector.select(timeout=0.1):
                    if not self._flowing.is_set():
                        break
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    data = source.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            with self._lock:
                self._pairs.pop(port, None)
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _shut_all(self) -> None:
        with self._lock:
            pairs = list(self._pairs.values())
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self.thaw()
        self._listener.close()
        self._shut_all()


def _keepalive(sock: socket.socket, idle_s: int) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    # data sent to a vanished client is given up on after this long too
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, (idle_s + 3) * 1000)


class SmallDisk:
    """A tmpfs of ``size`` mounted on a fresh folder; :meth:`fill` takes every free byte,
    :meth:`free` gives them back. Needs root (``mount``); :meth:`close` unmounts."""

    def __init__(self, size: str = "64m") -> None:
        self.path = Path(tempfile.mkdtemp(prefix="jobplatform-bench-disk-"))
        self._filler = self.path / ".filler"
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs",
                            str(self.path)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            self.path.rmdir()
            raise RuntimeError(f"cannot mount a small tmpfs (root needed): {exc}") from exc

    def fill(self) -> int:
        """Write until the disk is full; the bytes written."""
        written = 0
        block = b"\0" * (1 << 20)
        with open(self._filler, "ab", buffering=0) as fh:
            for size in (1 << 20, 4096, 1):
                chunk = block[:size]
                try:
                    while True:
                        written += fh.write(chunk) or 0
                except OSError:
                    continue
        return written

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._filler)

    def close(self) -> None:
        self.free()
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
        shutil.rmtree(self.path, ignore_errors=True)
