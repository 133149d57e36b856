"""PNG plots of a run's time series (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def available() -> bool:
    try:
        _plt()
    except ImportError:
        return False
    return True


def latency(path: Path, title: str, series: dict[str, list[dict[str, float]]]) -> Path:
    """Per-second p50/p99/max publish→receive latency, one colour per target."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colours = {"gateway": "tab:blue", "raw": "tab:grey"}
    for target, points in series.items():
        if not points:
            continue
        t = [p["t"] for p in points]
        colour = colours.get(target, "tab:green")
        ax.plot(t, [p["p99"] for p in points], color=colour, label=f"{target} p99")
        ax.plot(t, [p["p50"] for p in points], color=colour, linestyle="--", label=f"{target} p50")
        ax.plot(t, [p["max"] for p in points], color=colour, linestyle=":", alpha=0.6, label=f"{target} max")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("publish → receive (ms)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rate(path: Path, title: str, series: dict[str, list[dict[str, float]]], *,
         key: str = "frames_per_s", ylabel: str = "frames delivered / s",
         second: tuple[str, str] | None = None) -> Path:
    """Delivered frames/s over time; ``second`` adds another key on a right-hand axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colours = {"gateway": "tab:blue", "raw": "tab:grey"}
    right = ax.twinx() if second else None
    for target, points in series.items():
        if not points:
            continue
        t = [p["t"] for p in points]
        colour = colours.get(target, "tab:green")
        ax.plot(t, [p.get(key, 0) for p in points], color=colour, label=f"{target} {key}")
        if right is not None and second is not None:
            right.plot(t, [p.get(second[0], 0) for p in points], color=colour, linestyle="--", alpha=0.7,
                       label=f"{target} {second[0]}")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if right is not None and second is not None:
        right.set_ylabel(second[1])
        h2, l2 = right.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lines(path: Path, title: str, points: list[dict[str, float]], keys: list[tuple[str, str]],
          ylabel: str) -> Path:
    """Several keys of one series against time (staleness percentiles, RSS, …)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    t = [p["t"] for p in points]
    for key, label in keys:
        ax.plot(t, [p.get(key) for p in points], label=label)
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
