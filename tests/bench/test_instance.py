"""The emulated small instance: started capped, its limits enforced, torn down completely."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from bench._baseline import classify
from bench._instance import EmulatedInstance, InstanceConfig


def _cgroups(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            out[controller] = path
    return out


def test_instance_is_capped_limited_and_removed() -> None:
    # Given an instance of 8 connections (3 reserved for superusers) held to 0.2 of a core
    with EmulatedInstance(InstanceConfig(cpu_quota=0.2, max_connections=8)) as instance:
        folder = instance.folder
        assert folder is not None
        assert folder.exists()
        group_dirs = [getattr(instance.cap, name) for name in ("cpu_dir", "acct_dir", "dir")
                      if getattr(instance.cap, name, None) is not None]
        url = instance.create_database("smoke")
        app = [psycopg.connect(url) for _ in range(5)]
        try:
            # Then a backend forked after start is in the server's group, as the postmaster is
            if instance.cap.method == "cgroup-v1":
                backend = app[0].info.backend_pid
                assert _cgroups(backend)["cpu"] == _cgroups(instance.pid)["cpu"]
                assert _cgroups(backend)["cpu"].startswith("/jobplatform-bench-")
            # And work done shows in the server's CPU
            before = instance.cpu_seconds()
            app[0].execute("SELECT count(*) FROM generate_series(1, 300000)")
            assert instance.cpu_seconds() > before
            # And the sixth application connection is refused, as an application sees it
            with pytest.raises(psycopg.OperationalError) as refused:
                psycopg.connect(url, connect_timeout=5)
            assert classify(refused.value) == "too many clients"
        finally:
            for conn in app:
                conn.close()
    # When it stopped, its folder and groups are gone
    assert not folder.exists()
    for group in group_dirs:
        assert not Path(group).exists()
