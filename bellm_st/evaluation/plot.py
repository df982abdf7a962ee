"""The "turning point" figure: dev Spearman against the number of bi-directional layers."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def plot_layer_sweep(
    layer_counts: Sequence[int], scores: Mapping[str, Sequence[float]], path: str | os.PathLike, title: str
) -> Path:
    """One line per data set (the ``average`` line drawn bold); x is k, y is Spearman x100."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, values in scores.items():
        bold = name == "average"
        axes.plot(layer_counts, values, marker="o", linewidth=2.5 if bold else 1.2, label=name, zorder=3 if bold else 2)
    axes.set_xlabel("bi-directional layers k (the last k layers)")
    axes.set_ylabel("dev Spearman x100")
    axes.set_xticks(list(layer_counts))
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_pareto(
    points: Sequence[Mapping[str, object]], path: str | os.PathLike, title: str,
    x_label: str = "CPU single-query latency p50 (ms)", y_label: str = "dev Spearman x100 (average)",
) -> Path:
    """Quality against latency, one labelled marker per point; the points no faster point beats are joined.

    Each point is ``{"label", "x", "y", "baseline"}``; baselines are drawn as stars.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    frontier, best = [], float("-inf")
    for point in sorted(points, key=lambda p: (p["x"], -p["y"])):
        if point["y"] > best:
            frontier.append(point)
            best = point["y"]
    axes.plot([p["x"] for p in frontier], [p["y"] for p in frontier], color="0.6", linestyle="--", zorder=1,
              label="Pareto front")
    for point in points:
        axes.scatter(point["x"], point["y"], marker="*" if point["baseline"] else "o", s=140 if point["baseline"] else 50,
                     zorder=3)
        axes.annotate(str(point["label"]), (point["x"], point["y"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
