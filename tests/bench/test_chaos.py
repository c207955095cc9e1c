"""A short chaos run (``jobplatform bench chaos``): every fault once, then the oracle.

One run (about a minute) on private PostgreSQL and Redis servers and two writer processes,
with a fixed seed; each invariant is a test of its own. The ones a known defect breaks are
strict xfails naming the issue item whose fix makes them pass: when it lands, the xfail fails
(XPASS), and its mark goes.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from bench import chaos

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs as the log disk (root)"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

SEED = 19
CONFIG = chaos.ChaosConfig(seed=SEED, duration_s=30, kills=5, videos=100, imports=4,
                           rows_per_import=400)


def needs(item: str) -> Any:
    return pytest.mark.xfail(strict=True, reason=f"needs issue 19 {item}")


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    out = chaos.run(CONFIG, print)
    print(chaos.faults_table(out))
    print(chaos.invariants_table(out))
    return out


def test_every_fault_was_injected(result: dict[str, Any]) -> None:
    injected = {f["name"] for f in result["faults"]
                if not f["outcome"].startswith(("not injected", "no active", "point "))}
    assert injected == set(chaos.FAULTS)
    assert result["producers_finished"]
    assert result["drained"]


@pytest.mark.parametrize("name", [
    "nothing lost",
    "nothing applied twice",
    "dead letters once",
    "no field dropped",
    "no state backwards",
    "replay equal",
    "takeover under 5 s",
    "every job ends",
])
def test_invariant(result: dict[str, Any], name: str) -> None:
    found = result["invariants"][name]
    assert found["checked"] > 0
    assert found["passed"], f"{name}: {found['violations']} violations: {found['detail']}"
