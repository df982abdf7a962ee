"""The layer sweep: how the number of bi-directional layers k changes dev STS, for any backbone.

BeLLM's central figure shows performance rising as the last layers become bi-directional and
falling past a "turning point". This sweep redraws it: for each k it trains (or, ``zero_shot``, only
builds) the model, scores it on the dev files with the same STS code as ``bellm-st eval``, and
writes ``sweep.json``, ``sweep.md`` and ``sweep.png``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bellm_st.api import DEFAULT_POOLING, build
from bellm_st.evaluation.plot import plot_layer_sweep
from bellm_st.evaluation.report import write_json
from bellm_st.evaluation.sts import evaluate_sts_files
from bellm_st.training.recipe import Recipe
from bellm_st.training.trainer import train


@dataclass
class SweepPoint:
    """Dev scores (Spearman x100 per file and ``average``) for one k."""

    bidirectional_layers: int
    scores: dict[str, float]


def markdown_table(points: Sequence[SweepPoint]) -> str:
    """The sweep as a markdown table, best average marked in bold."""
    names = list(points[0].scores)
    best = max(points, key=lambda point: point.scores["average"]).bidirectional_layers
    lines = ["| k | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for point in points:
        cells = [f"{point.scores[name]:.2f}" for name in names]
        if point.bidirectional_layers == best:
            cells = [f"**{cell}**" for cell in cells]
        lines.append(f"| {point.bidirectional_layers} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _zero_shot_scores(base: str, k: int, pooling: str, dev_files: Sequence[Path], device: str | None) -> dict[str, float]:
    model = build(base, bidirectional_layers=k, pooling=pooling, device=device)
    return evaluate_sts_files(model, dev_files)


def _trained_scores(recipe: Recipe, k: int, dev_files: Sequence[Path], output_dir: Path, data_dir, device) -> dict[str, float]:
    run_recipe = recipe.with_changes(bidirectional_layers=k, dev_data=[str(path) for path in dev_files])
    return train(run_recipe, output_dir / f"k{k}", data_dir=data_dir, resume=True, device=device).dev_scores


def layer_sweep(
    base: str,
    layer_counts: Sequence[int],
    dev_files: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    zero_shot: bool = False,
    pooling: str = DEFAULT_POOLING,
    recipe: Recipe | None = None,
    data_dir: str | os.PathLike | None = None,
    device: str | None = None,
) -> list[SweepPoint]:
    """Score ``base`` for every k in ``layer_counts`` and write table, JSON and plot to ``output_dir``.

    With ``zero_shot=False`` each k is trained with ``recipe`` (its base, pooling and dev files are
    replaced by the sweep's) into ``output_dir/k<k>``; rerunning a killed sweep resumes each run.
    """
    if not layer_counts:
        raise ValueError("layer_counts is empty; give the k values to try, e.g. 0 1 2 4 8")
    output_dir = Path(output_dir)
    dev_paths = [Path(path) for path in dev_files]
    if not zero_shot:
        recipe = (recipe or Recipe()).with_changes(base=base, pooling=pooling)
    points = []
    for k in layer_counts:
        scores = (
            _zero_shot_scores(base, k, pooling, dev_paths, device)
            if zero_shot
            else _trained_scores(recipe, k, dev_paths, output_dir, data_dir, device)
        )
        points.append(SweepPoint(k, scores))
    mode = "zero-shot" if zero_shot else "trained"
    write_json(output_dir / "sweep.json", {"base": base, "pooling": pooling, "mode": mode, "points": [asdict(p) for p in points]})
    (output_dir / "sweep.md").write_text(markdown_table(points), encoding="utf-8")
    by_name = {name: [point.scores[name] for point in points] for name in points[0].scores}
    plot_layer_sweep([p.bidirectional_layers for p in points], by_name, output_dir / "sweep.png", f"{Path(base).name or base} ({mode}, {pooling} pooling)")
    return points
