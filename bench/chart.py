"""The chart beside the report (`bench/results/latest.png`, shown in the
README): milliseconds per tool-call turn for each side, and turns/s and
first-event p99 against simultaneous runs for 1 and N workers. Drawn with
matplotlib (installed into bench/.deps); without it the report says so."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def write(results: dict[str, Any], path: Path) -> str:
    """Draw the chart to `path`; its file name, or why it was not drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"not drawn: matplotlib is not installed ({exc})"
    turns = [r for r in results.get("turn", []) if not r.get("error") and r["summary"].get("n")]
    levels = [lv for lv in results.get("concurrency", []) if "rate" not in lv and not lv.get("error")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), gridspec_kw={"width_ratios": [1.5, 1, 1]})
    ax = axes[0]
    labels = [_label(r) for r in turns]
    medians = [r["summary"]["median"] for r in turns]
    p99s = [r["summary"]["p99"] for r in turns]
    colors = [{"pilothouse": "#1f77b4", "peer": "#ff7f0e"}.get(r["role"], "#7f7f7f") for r in turns]
    ys = list(range(len(turns)))[::-1]
    ax.barh(ys, medians, color=colors)
    ax.scatter(p99s, ys, marker="|", color="black", s=120, label="p99")
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel("ms per tool-call turn (bar: median)")
    ax.set_title("Tool-call turn, sequential")
    ax.legend(loc="lower right", fontsize=8)
    for config in sorted({lv["config"] for lv in levels}):
        points = sorted((lv for lv in levels if lv["config"] == config), key=lambda lv: lv["runs"])
        runs = [lv["runs"] for lv in points]
        marker = "o" if len(points) > 1 else "s"
        axes[1].plot(runs, [lv["turns_per_s"] for lv in points], marker=marker, label=config)
        p99 = [lv["ttfe_ms"].get("p99", math.nan) for lv in points]
        axes[2].plot(runs, p99, marker=marker, label=config)
    axes[1].set_title("Throughput")
    axes[1].set_xlabel("simultaneous runs")
    axes[1].set_ylabel("turns/s")
    axes[2].set_title("Time to first event, p99")
    axes[2].set_xlabel("simultaneous runs")
    axes[2].set_ylabel("ms")
    axes[2].set_yscale("log")
    for axis in axes[1:]:
        axis.set_xscale("log")
        axis.legend(fontsize=8)
        axis.grid(True, alpha=0.3)
    m = results["machine"]
    fig.suptitle(f"make bench, {results['generated']}, {m['cpus']} CPUs, at {m['commit']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def _label(row: dict[str, Any]) -> str:
    if row["role"] == "pilothouse":
        return f"Pilothouse {row.get('variant', '')}"
    if row["role"] == "baseline":
        return "baseline: 2 model calls, httpx"
    if row["role"] == "model":
        return "model server alone"
    return row["label"]
