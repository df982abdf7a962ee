"""STS evaluation: Spearman x100 over all rows, reproduced independently; bad files name file and line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from bellm_st.cli import app
from bellm_st.evaluation.sts import evaluate_sts_files, read_scored_pairs
from bellm_st.tabular import DataFileError

PAIRS = [
    ("a", 4.8, "A man is playing a guitar.", "Someone plays an instrument on the stage."),
    ("a", 0.4, "The stock market fell sharply today.", "A woman is slicing an onion in the kitchen."),
    ("a", 2.5, "Children are playing football in the park.", "A man is playing a guitar."),
    ("b", 3.9, "Scientists discovered a new species of frog.", "A new frog was discovered."),
    ("b", 1.2, "A woman is slicing an onion in the kitchen.", "Children are playing football in the park."),
    ("b", 3.0, "The stock market fell sharply today.", "Stocks fell."),
]


def write_sts(path, rows=PAIRS, subset=True):
    header = ("subset\t" if subset else "") + "score\tsentence1\tsentence2\n"
    body = "".join(("\t".join([s] if subset else []) + ("\t" if subset else "")) + f"{score}\t{x}\t{y}\n" for s, score, x, y in rows)
    path.write_text(header + body, encoding="utf-8")
    return path


def hand_spearman(model, rows):
    """Independent reference: cosine of the model's vectors, ranked against the gold scores by scipy."""
    first = model.encode([x for _, _, x, _ in rows])
    second = model.encode([y for _, _, _, y in rows])
    cosine = (first * second).sum(1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))
    return 100 * spearmanr([score for _, score, _, _ in rows], cosine).statistic


def test_spearman_over_all_rows_matches_a_hand_computation(tiny_model, tmp_path):
    path = write_sts(tmp_path / "mixed.tsv")
    results = evaluate_sts_files(tiny_model, [path])
    assert results["mixed"] == pytest.approx(hand_spearman(tiny_model, PAIRS), abs=1e-6)
    # SentEval "all": one ranking over both subsets, not the average of per-subset correlations
    per_subset = np.mean([hand_spearman(tiny_model, [r for r in PAIRS if r[0] == s]) for s in "ab"])
    assert results["mixed"] != pytest.approx(per_subset, abs=1e-3)


def test_several_files_and_their_average(tiny_model, tmp_path):
    first = write_sts(tmp_path / "one.tsv", PAIRS[:3] + PAIRS[4:5], subset=False)
    second = write_sts(tmp_path / "two.tsv", PAIRS[3:])
    results = evaluate_sts_files(tiny_model, [first, second])
    assert results["one"] == pytest.approx(hand_spearman(tiny_model, PAIRS[:3] + PAIRS[4:5]), abs=1e-6)
    assert results["average"] == pytest.approx((results["one"] + results["two"]) / 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"bad\.tsv: the file is empty"),
        ("score\tsentence1\n1.0\ta\n", r"bad\.tsv, line 1: missing column\(s\) sentence2"),
        ("score\tsentence1\tsentence2\n1.0\ta\tb\nfive\tc\td\n", r"bad\.tsv, line 3: column 'score' must be a number, got 'five'"),
        ("score,sentence1,sentence2\n1.0,a,b\n", r"bad\.tsv, line 1: .*single column.*separated by commas"),
        ("score\tsentence1\tsentence2\n1.0\ta\tb\n2.0\tc d\n", r"bad\.tsv, line 3: expected 3 fields"),
        ("score\tsentence1\tsentence2\n1.0\ta\tb\n2.0\t \td\n", r"bad\.tsv, line 3: column 'sentence1' is empty"),
    ],
)
def test_bad_sts_files_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataFileError, match=message):
        read_scored_pairs(path)


def test_cli_eval_prints_table_and_writes_json(tiny_model_dir, tmp_path):
    path = write_sts(tmp_path / "mixed.tsv")
    output = tmp_path / "scores.json"
    result = CliRunner().invoke(app, ["eval", "-m", tiny_model_dir, "--sts", str(path), "-o", str(output), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "mixed" in result.output and "average" in result.output
    scores = json.loads(output.read_text())["sts"]
    assert set(scores) == {"mixed", "average"} and scores["mixed"] == scores["average"]


def test_cli_eval_bad_file_exits_2_naming_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("score\tsentence1\tsentence2\nhigh\ta\tb\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", "--sts", str(path)])
    assert result.exit_code == 2
    assert "bad.tsv, line 2" in result.output.replace("\n", "") and "'high'" in result.output
