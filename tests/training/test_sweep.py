"""The layer sweep writes its table, JSON and plot, with one point per k scored like `bellm-st eval`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import bellm_st
from bellm_st.cli import app
from bellm_st.evaluation.sts import evaluate_sts_files
from bellm_st.training.sweep import layer_sweep

ROWS = [
    (4.8, "A man is playing a guitar.", "Someone plays an instrument on the stage."),
    (0.4, "The stock market fell sharply today.", "A woman is slicing an onion in the kitchen."),
    (2.5, "Children are playing football in the park.", "A man is playing a guitar."),
    (3.9, "Scientists discovered a new species of frog.", "A new frog was discovered."),
    (1.2, "A woman is slicing an onion in the kitchen.", "Children are playing football in the park."),
]


@pytest.fixture()
def dev_file(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("score\tsentence1\tsentence2\n" + "".join(f"{s}\t{a}\t{b}\n" for s, a, b in ROWS), encoding="utf-8")
    return path


def test_zero_shot_sweep_writes_table_json_and_png(tiny_model_dir, dev_file, tmp_path):
    points = layer_sweep(tiny_model_dir, [0, 2, 4], [dev_file], tmp_path / "sweep", zero_shot=True, pooling="last", device="cpu")

    assert [p.bidirectional_layers for p in points] == [0, 2, 4]
    for point in points:  # each point is exactly what `bellm-st eval` measures for that k
        model = bellm_st.build(tiny_model_dir, bidirectional_layers=point.bidirectional_layers, pooling="last", device="cpu")
        assert point.scores == pytest.approx(evaluate_sts_files(model, [dev_file]))
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["mode"] == "zero-shot" and [p["bidirectional_layers"] for p in saved["points"]] == [0, 2, 4]
    table = (tmp_path / "sweep" / "sweep.md").read_text().splitlines()
    assert table[0] == "| k | dev | average |" and len(table) == 5 and "**" in "".join(table)
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_sweep(tiny_model_dir, dev_file, tmp_path):
    arguments = ["sweep", "--base", tiny_model_dir, "-k", "0", "-k", "3", "--dev-data", str(dev_file),
                 "-o", str(tmp_path / "out"), "--zero-shot", "--pooling", "mean", "--device", "cpu"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "| 3 |" in result.output
    assert (tmp_path / "out" / "sweep.png").exists()


def test_empty_layer_list_is_refused(tiny_model_dir, dev_file, tmp_path):
    with pytest.raises(ValueError, match="layer_counts is empty"):
        layer_sweep(tiny_model_dir, [], [dev_file], tmp_path)
