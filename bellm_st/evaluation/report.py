"""Presenting scores: a rich table for people, a JSON file for scripts and result tables."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.table import Table


def scores_table(title: str, scores: Mapping[str, Mapping[str, float]]) -> Table:
    """A table with one row per data set and one column per metric (all x100, two decimals)."""
    metrics: list[str] = []
    for values in scores.values():
        metrics += [metric for metric in values if metric not in metrics]
    table = Table(title=title)
    table.add_column("data")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for name, values in scores.items():
        table.add_row(name, *(f"{values[metric]:.2f}" if metric in values else "" for metric in metrics))
    return table


def write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path
