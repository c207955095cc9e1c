"""What the benchmarks share: server CPU, connection sampling, percentiles, tables, machine."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process from /proc; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    # The command name may hold spaces or parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (PostgreSQL backends are children of the postmaster)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                stat = fh.read()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(entry))
    return found


def postmaster_cpu_seconds(postmaster_pid: int) -> float:
    """CPU of a local server's postmaster and its live children (exited backends are lost)."""
    return proc_cpu_seconds(postmaster_pid) + sum(
        proc_cpu_seconds(child) for child in children_of(postmaster_pid)
    )


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout_s: float = 30.0) -> None:
    """Send ``sig``, wait up to ``timeout_s``, then kill."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass(slots=True)
class ActivityPeaks:
    """What sampling ``pg_stat_activity`` saw."""

    peak_connections: int = 0
    max_txn_ms: float = 0.0
    samples: int = 0


class ActivitySampler:
    """Samples ``pg_stat_activity`` on its own connection in a thread.

    Counts client backends other than its own (optionally only those of ``usename``) and the
    oldest open transaction among them. Use as a context manager around the measured phase.
    """

    def __init__(self, url: str, *, usename: str | None = None, interval_s: float = 0.05) -> None:
        self.url = url
        self.usename = usename
        self.interval_s = interval_s
        self.peaks = ActivityPeaks()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.backend_pid = 0

    def __enter__(self) -> ActivitySampler:
        self._conn = psycopg.connect(self.url, autocommit=True, application_name="bench-monitor")
        self.backend_pid = self._conn.info.backend_pid
        self._thread = threading.Thread(target=self._run, name="activity-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._conn is not None:
            self._conn.close()

    def sample(self) -> tuple[int, float]:
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT count(*),"
            " coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)) * 1000, 0)"
            " FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND (%(u)s::text IS NULL OR usename = %(u)s::text)",
            {"u": self.usename},
        ).fetchone()
        assert row is not None
        return int(row[0]), float(row[1])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                count, txn_ms = self.sample()
            except psycopg.Error:
                break
            peaks = self.peaks
            peaks.samples += 1
            peaks.peak_connections = max(peaks.peak_connections, count)
            peaks.max_txn_ms = max(peaks.max_txn_ms, txn_ms)
            self._stop.wait(self.interval_s)


def machine() -> dict[str, Any]:
    """The machine a run happened on: cores, CPU model, kernel, Python, and how busy it was
    (other work on a shared machine slows wall times; CPU seconds are less affected)."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor() or "unknown",
        "memory_gb": round(mem_gb, 1),
        "kernel": platform.release(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: numbers with thousands separators, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:,.{digits}f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table, aligned so that it also reads well in a terminal."""
    cells = [list(header)] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


class Stopwatch:
    """Monotonic elapsed seconds since creation."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start
