"""PNG charts of the benchmarks under ``docs/bench/`` (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench._common import fmt
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
        ("video status p99 (ms, committed updates)", "video_p99_ms", True),
        ("peak connections", "peak_connections", False),
        ("server CPU per imported row (ms)", "server_cpu_ms_per_row", True),
    ]
    fig, axes = plt.subplots(1, len(measures), figsize=(14, 3.8))
    for ax, (title, key, log) in zip(axes, measures, strict=True):
        values = [result[w].get(key) or 0 for w in ways]
        bars = ax.bar(ways, values, color=[COLORS[w] for w in ways])
        ax.bar_label(bars, labels=[fmt(v) for v in values])
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


def plot_scaling(result: dict[str, Any], out: Path = OUT) -> list[Path]:
    """Failures, latency and connections against producers; CPU per row by method."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    points = result["points"]
    counts = [p["producers"] for p in points]
    panels = [
        ("failed jobs", "failed_jobs", False),
        ("video status p99 (ms, committed updates)", "video_p99_ms", True),
        ("peak connections (max_connections "
         f"{result['instance']['max_connections']})", "peak_connections", False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    for ax, (title, key, log) in zip(axes, panels, strict=True):
        for way in ("baseline", "platform"):
            values = [p[way].get(key) for p in points]
            ax.plot(counts, [v if v is not None else float("nan") for v in values],
                    marker="o", color=COLORS[way], label=way)
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.set_xlabel("producers of each kind (video + AI)")
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    workload = result["workload"]
    fig.suptitle(f"Pool scaling, fixed work: {workload['rows']:,} roster rows in "
                 f"{workload['roster_files']} files, {workload['video_jobs']} encode jobs\n"
                 f"{_caption(result)}", fontsize=10)
    fig.tight_layout()
    scaling = out / "scaling.png"
    fig.savefig(scaling, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.4
    positions = range(len(points))
    for offset, way in ((-width / 2, "baseline"), (width / 2, "platform")):
        values = [p[way].get("server_cpu_ms_per_row") or 0 for p in points]
        bars = ax.bar([i + offset for i in positions], values, width, color=COLORS[way],
                      label=way)
        ax.bar_label(bars, labels=[fmt(v, 3) for v in values], fontsize=8)
    ax.set_xticks(list(positions), [str(c) for c in counts])
    ax.set_xlabel("producers of each kind")
    ax.set_ylabel("server CPU ms per imported row")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"Server CPU per imported row by method\n{_caption(result)}", fontsize=10)
    fig.tight_layout()
    cpu = out / "cpu_per_row.png"
    fig.savefig(cpu, dpi=110)
    plt.close(fig)
    return [scaling, cpu]


def shards_plot(result: dict[str, Any], path: Path) -> Path:
    """``bench shards``: intents/s (small), rows/s (roster) and CPU per 1,000 intents, by
    shard count, one line per broker."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    cases = result["cases"]
    brokers = sorted({c["broker"] for c in cases})
    panels = [("small intents/s (status changes)", "small", "intents_per_s"),
              ("roster rows/s", "roster", "rows_per_s"),
              ("CPU s per 1,000 small intents", "small", "cpu")]
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 4))
    styles = {"redis": ("#c0392b", "o"), "rabbitmq": ("#2471a3", "s")}
    for ax, (title, backlog, key) in zip(axes, panels, strict=True):
        for broker in brokers:
            mine = sorted((c for c in cases if c["broker"] == broker and c["backlog"] == backlog),
                          key=lambda c: c["shards"])
            xs = [c["shards"] for c in mine]
            color, marker = styles.get(broker, ("#555555", "^"))
            if key == "cpu":
                for part, line in (("postgresql", "-"), ("writers", "--"), ("broker", ":")):
                    ax.plot(xs, [c["cpu_per_1000"][part] for c in mine], line, color=color,
                            marker=marker, label=f"{broker} {part}")
            else:
                ys = [c[key] or 0 for c in mine]
                ax.plot(xs, ys, "-", color=color, marker=marker, label=broker)
                for x, y in zip(xs, ys, strict=True):
                    ax.annotate(fmt(y), (x, y), textcoords="offset points", xytext=(0, 6),
                                ha="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("writer shards")
        ax.set_xticks(sorted({c["shards"] for c in cases}))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(f"{_caption(result)}; {result['tenants']} tenants, one PostgreSQL",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
