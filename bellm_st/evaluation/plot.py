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
