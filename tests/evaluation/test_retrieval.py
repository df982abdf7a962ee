"""Retrieval evaluation on a tiny BEIR folder, checked against metrics computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bellm_st.shipped import baseline_path
from bellm_st.evaluation.retrieval import evaluate_retrieval, read_beir_folder
from bellm_st.tabular import DataFileError

CORPUS = {
    "d1": ("Guitars", "A man is playing a guitar."),
    "d2": ("", "The stock market fell sharply today."),
    "d3": ("Frogs", "Scientists discovered a new species of frog."),
    "d4": ("", "Children are playing football in the park."),
}
QUERIES = {"q1": "Someone plays an instrument.", "q2": "A new frog was found.", "q3": "Unjudged query."}
QRELS = [("q1", "d1", 1), ("q2", "d3", 1), ("q2", "d4", 1), ("q1", "d2", 0)]


@pytest.fixture()
def beir(tmp_path):
    folder = tmp_path / "tiny-beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in CORPUS.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": x}) + "\n" for k, x in QUERIES.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in QRELS))
    return folder


def hand_metrics(model, data):
    documents = list(data.corpus)
    doc_vectors = model.encode([data.corpus[d] for d in documents], normalize_embeddings=True)
    ndcg, recall, mrr = [], [], []
    for query, relevant in data.relevant.items():
        scores = doc_vectors @ model.encode([data.queries[query]], normalize_embeddings=True)[0]
        ranking = [documents[i] for i in np.argsort(-scores)]
        gains = [1.0 if d in relevant else 0.0 for d in ranking[:10]]
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
        ndcg.append(sum(g / math.log2(i + 2) for i, g in enumerate(gains)) / ideal)
        recall.append(len(set(ranking[:100]) & relevant) / len(relevant))
        mrr.append(next((1 / (i + 1) for i, d in enumerate(ranking[:10]) if d in relevant), 0.0))
    return {"ndcg@10": 100 * np.mean(ndcg), "recall@100": 100 * np.mean(recall), "mrr@10": 100 * np.mean(mrr)}


def test_reading_keeps_judged_queries_and_relevant_documents(beir):
    data = read_beir_folder(beir, "test")
    assert data.relevant == {"q1": {"d1"}, "q2": {"d3", "d4"}}  # score 0 is not relevant; q3 has no judgement
    assert data.corpus["d1"] == "Guitars A man is playing a guitar."


def test_metrics_match_a_hand_computation(tiny_model, beir):
    results = evaluate_retrieval(tiny_model, beir, "test")
    expected = hand_metrics(tiny_model, read_beir_folder(beir, "test"))
    assert results == pytest.approx(expected, abs=1e-4)
    assert results["recall@100"] == 100.0  # every document is within the top 100 of a 4-document corpus


def test_missing_split_and_dangling_ids_are_explained(beir):
    with pytest.raises(FileNotFoundError, match="pick a split from test"):
        read_beir_folder(beir, "dev")
    with open(beir / "qrels" / "test.tsv", "a") as handle:
        handle.write("q1\td9\t1\n")
    with pytest.raises(DataFileError, match=r"test\.tsv, line 6: corpus-id 'd9' is not in corpus\.jsonl"):
        read_beir_folder(beir, "test")


def test_minilm_shortcut_points_at_the_installed_baseline():
    assert (baseline_path("minilm") / "modules.json").exists()


def test_the_command_line_shows_progress_while_encoding_the_corpus(tiny_model, beir, tmp_path, capfd):
    """`bellm-st eval --retrieval` was silent for minutes on a 5,183-document corpus."""
    from typer.testing import CliRunner

    from bellm_st.cli import app

    tiny_model.save(str(tmp_path / "model"))
    result = CliRunner().invoke(app, ["eval", "-m", str(tmp_path / "model"), "--retrieval", str(beir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    shown = result.output + capfd.readouterr().err
    assert "Encoding corpus" in shown or "Batches" in shown
