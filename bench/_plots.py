"""PNG charts of the benchmarks under ``docs/bench/`` (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobplatform.settings import PROJECT_ROOT

OUT = PROJECT_ROOT / "docs" / "bench"
COLORS = {"baseline": "#c0392b", "platform": "#2471a3"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _caption(result: dict[str, Any]) -> str:
    instance = result["instance"]
    quota = instance.get("cpu_quota")
    cap = f"{quota:g} core ({instance['cpu_cap_method']})" if quota else "uncapped"
    machine = instance["machine"]
    return (f"PostgreSQL {instance['postgres'].split()[0]}, CPU {cap}, max_connections "
            f"{instance['max_connections']}; {machine['nproc']} x {machine['cpu_model']}")


def plot_incident(result: dict[str, Any], out: Path = OUT) -> list[Path]:
    """Baseline and platform side by side on the incident's measures."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    ways = [w for w in ("baseline", "platform") if result.get(w)]
    measures = [
        ("failed jobs", "failed_jobs", False),
        ("video status p99 (ms)", "video_p99_ms", True),
        ("peak connections", "peak_connections", False),
        ("server CPU per imported row (ms)", "server_cpu_ms_per_row", True),
    ]
    fig, axes = plt.subplots(1, len(measures), figsize=(14, 3.8))
    for ax, (title, key, log) in zip(axes, measures, strict=True):
        values = [result[w].get(key) or 0 for w in ways]
        bars = ax.bar(ways, values, color=[COLORS[w] for w in ways])
        ax.bar_label(bars, labels=[f"{v:,.3g}" for v in values])
        ax.set_title(title, fontsize=10)
        if log and all(v > 0 for v in values):
            ax.set_yscale("log")
    workload = result["workload"]
    fig.suptitle(f"Incident replay: {workload['ai_workers']} AI + {workload['video_workers']} "
                 f"video workers, {workload['rows']:,} roster rows\n{_caption(result)}",
                 fontsize=10)
    fig.tight_layout()
    path = out / "incident.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
