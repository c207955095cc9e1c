"""Private servers and broken paths for the fault benchmarks: never the shared services.

- :class:`PrivateRedis`: ``redis-server`` on a free port and a folder of its own, with an
  append-only file synced at every write (a restart, even after SIGKILL, keeps what it
  acknowledged, as a managed Redis with persistence does); ``maxmemory`` optional.
- :class:`FreezableProxy`: a TCP proxy in front of PostgreSQL that can *freeze* (stop
  forwarding while keeping every socket open: a hung network path, a paused VM) and thaw.
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


class FreezableProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; :meth:`freeze` stops moving bytes (the
    sockets stay open, as on a path that silently drops packets) until :meth:`thaw`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._upstreams: dict[int, socket.socket] = {}
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def local_ports(self) -> set[int]:
        """Local ports of the proxy's connections to the target (``client_port`` in
        ``pg_stat_activity``): which backends are this proxy's clients."""
        with self._lock:
            return set(self._upstreams)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
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
            self._upstreams[port] = upstream
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
                self._upstreams.pop(port, None)
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._closed = True
        self.thaw()
        self._listener.close()


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
