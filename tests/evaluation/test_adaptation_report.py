"""The adaptation benchmark's report: runs from several machines, some stopped before their last step."""

from __future__ import annotations

from benchmarks import retrieval_adaptation


def history(*steps_and_ndcg: tuple[int, float]) -> list[dict]:
    return [{"step": step, "cosine_ndcg@10": value} for step, value in steps_and_ndcg]


def test_table_reports_each_runs_last_step_and_leaves_missing_sts_empty():
    results = [
        {"model": "minilm", "seed": 42, "history": history((0, 0.66), (300, 0.662)), "sts_dev_adapted": {"average": 83.0}},
        {"model": "bellm", "seed": 42, "history": history((0, 0.25), (200, 0.60)), "sts_dev_adapted": None},
        {"model": "bellm", "seed": 43, "history": history((0, 0.25), (150, 0.58))},
    ]
    rows = retrieval_adaptation.table(results).splitlines()[2:]
    assert rows[0] == "| minilm | 1 | 66.00 | 300 | 66.20 (66.20-66.20) | 83.00 |"
    assert rows[1] == "| bellm | 2 | 25.00 | 200/150 | 59.00 (58.00-60.00) | – |"


def test_variants_of_one_model_get_rows_of_their_own():
    results = [
        {"model": "bellm", "seed": 42, "history": history((0, 0.25), (300, 0.60))},
        {"model": "bellm", "variant": "b128", "seed": 42, "history": history((0, 0.25), (300, 0.64))},
        {"model": "bellm", "variant": "b128", "seed": 43, "history": history((0, 0.25), (300, 0.62))},
    ]
    rows = retrieval_adaptation.table(results).splitlines()[2:]
    assert rows == ["| bellm | 1 | 25.00 | 300 | 60.00 (60.00-60.00) | – |",
                    "| bellm (b128) | 2 | 25.00 | 300/300 | 63.00 (62.00-64.00) | – |"]


def test_combined_report_writes_table_and_plot(tmp_path):
    results = [{"model": "bellm", "seed": 42, "history": history((0, 0.25), (50, 0.5)), "sts_dev_adapted": None}]
    retrieval_adaptation.write_report(results, tmp_path)
    assert "| bellm | 1 | 25.00 | 50 | 50.00" in (tmp_path / "table.md").read_text(encoding="utf-8")
    assert (tmp_path / "adaptation_steps.png").stat().st_size > 1000
