"""A process for formation tests: reports the signals it gets, then behaves as told."""

from __future__ import annotations

import os
import signal
import sys
import time

mode = sys.argv[1]
received: list[str] = []


def note(signum: int, frame: object) -> None:
    received.append(signal.Signals(signum).name)
    print(f"got {signal.Signals(signum).name} #{received.count(signal.Signals(signum).name)}",
          flush=True)


signal.signal(signal.SIGTERM, note)
signal.signal(signal.SIGINT, note)
print(f"ready pid={os.getpid()} pgid={os.getpgid(0)}", flush=True)

if mode == "probed":  # serves /healthz and /readyz on METRICS_PORT, as the platform's do
    from jobplatform.metrics import MetricsServer

    born = time.monotonic()

    def readiness() -> tuple[bool, str]:
        if os.environ.get("NEVER_READY"):
            return False, "never ready"
        if time.monotonic() - born < 0.5:
            return False, "warming up"
        return True, "serving"

    MetricsServer(int(os.environ["METRICS_PORT"]), exposition=lambda: b"", ready=readiness,
                  host="127.0.0.1").start()
if mode == "crash":
    time.sleep(0.3)
    print("crashing", flush=True)
    sys.exit(3)
while "SIGTERM" not in received or mode == "stubborn":
    time.sleep(0.02)
# Drain: stay a little longer, so a second signal would be seen and printed.
deadline = time.monotonic() + 0.5
while time.monotonic() < deadline:
    time.sleep(0.02)
print("drained", flush=True)
