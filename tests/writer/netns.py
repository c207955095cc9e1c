"""Hosts on one machine: network namespaces on a bridge, and the services reached through it.

:class:`Network` makes a bridge in the root namespace (the services' host, ``10.18.0.1``) and
one namespace per host, each on a veth pair with its own address; :meth:`Network.partition`
takes a host's link down (packets vanish: no reset, as when a host or its network dies) and
:meth:`Network.heal` brings it back. The machine's PostgreSQL, Redis and RabbitMQ listen on
127.0.0.1 only (they are shared and never reconfigured), so :func:`forwarders` listen on the
bridge's address and forwards to them, with TCP keepalives on the hosts' side: a connection
from a host that vanished is closed within about 5 s, upstream too, as a server with
``tcp_keepalives_idle`` set closes the session of a client that is gone (PostgreSQL then
releases that session's advisory locks; RabbitMQ requeues its unacked messages).

Needs root and ``ip`` (iproute2).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

from bench._servers import TcpProxy

SUBNET = "10.18.0"
SERVICES_IP = f"{SUBNET}.1"


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed"
    probe = f"jpprobe{os.getpid() % 10000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Network:
    """A bridge and a namespace per host; ``tag`` keeps names apart between runs."""

    def __init__(self, hosts: list[str], tag: str | None = None) -> None:
        self.tag = tag or f"{os.getpid() % 1000}"
        self.bridge = f"jpbr{self.tag}"
        self.hosts = {name: f"{SUBNET}.{10 + n}" for n, name in enumerate(hosts)}
        self._made: list[str] = []

    def ns(self, host: str) -> str:
        return f"jp{self.tag}-{host}"

    def link(self, host: str) -> str:
        return f"jp{self.tag}{host}"[:15]

    def __enter__(self) -> Network:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append("bridge")
            _ip("addr", "add", f"{SERVICES_IP}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for host, address in self.hosts.items():
                ns = self.ns(host)
                _ip("netns", "add", ns)
                self._made.append(ns)
                _ip("link", "add", self.link(host), "type", "veth", "peer", "name", "eth0",
                    "netns", ns)
                _ip("link", "set", self.link(host), "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", self.link(host))
        for made in reversed(self._made):
            with contextlib.suppress(subprocess.CalledProcessError):
                if made == "bridge":
                    _ip("link", "del", self.bridge)
                else:
                    _ip("netns", "del", made)
        self._made = []

    def command(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run on ``host`` (inside its namespace)."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def partition(self, host: str) -> None:
        """Cut ``host`` off: its link goes down, its packets vanish."""
        _ip("link", "set", self.link(host), "down")

    def heal(self, host: str) -> None:
        _ip("link", "set", self.link(host), "up")


@contextlib.contextmanager
def forwarders(*targets: tuple[str, int]) -> Iterator[list[TcpProxy]]:
    """One proxy per target, listening on ``SERVICES_IP``, with keepalives on the hosts' side."""
    found = [TcpProxy(t, listen=SERVICES_IP, client_keepalive_s=2) for t in targets]
    try:
        yield found
    finally:
        for f in found:
            f.close()
