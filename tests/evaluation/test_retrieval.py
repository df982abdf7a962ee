"""Retrieval evaluation on a tiny BEIR folder, checked against metrics computed by hand."""

from __future__ import annotations

import json
import math
import re

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


def test_hybrid_dense_rows_match_the_dense_evaluation_and_bm25_and_fused_match_a_hand_fusion(tiny_model, beir):
    from bellm_st.bm25 import BM25Index
    from bellm_st.evaluation.retrieval import evaluate_hybrid_retrieval
    from bellm_st.fusion import reciprocal_rank_fusion

    results = evaluate_hybrid_retrieval(tiny_model, beir, "test", weights={"bm25": 1.0, "dense": 0.5}, rrf_k=3)
    assert results["dense"] == pytest.approx(evaluate_retrieval(tiny_model, beir, "test"), abs=1e-9)

    data = read_beir_folder(beir, "test")
    documents = list(data.corpus)
    index = BM25Index([data.corpus[d] for d in documents])
    doc_vectors = tiny_model.encode([data.corpus[d] for d in documents], normalize_embeddings=True)
    bm25, fused = {}, {}
    for query in data.relevant:
        bm25[query] = [documents[p] for p, _ in index.search_one(data.queries[query], top_k=100)]
        scores = doc_vectors @ tiny_model.encode([data.queries[query]], normalize_embeddings=True)[0]
        dense = [documents[i] for i in np.argsort(-scores, kind="stable")]
        fused[query] = [d for d, _ in reciprocal_rank_fusion({"bm25": bm25[query], "dense": dense}, {"bm25": 1.0, "dense": 0.5}, 3)]
    assert results["bm25"] == pytest.approx(metrics_of(bm25, data.relevant), abs=1e-9)
    assert results["fused"] == pytest.approx(metrics_of(fused, data.relevant), abs=1e-9)
    assert results["fusion"]["weights"] == {"bm25": 1.0, "dense": 0.5} and results["fusion"]["rrf_k"] == 3
    assert results["fusion"]["candidates"] == 100 and results["fusion"]["bm25"]["stop_words"] == "en"


def metrics_of(rankings, relevant):
    ndcg, recall, mrr = [], [], []
    for query, ranking in rankings.items():
        gains = [1.0 if d in relevant[query] else 0.0 for d in ranking[:10]]
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant[query]), 10)))
        ndcg.append(sum(g / math.log2(i + 2) for i, g in enumerate(gains)) / ideal)
        recall.append(len(set(ranking[:100]) & relevant[query]) / len(relevant[query]))
        mrr.append(next((1 / (i + 1) for i, d in enumerate(ranking[:10]) if d in relevant[query]), 0.0))
    return {"ndcg@10": 100 * np.mean(ndcg), "recall@100": 100 * np.mean(recall), "mrr@10": 100 * np.mean(mrr)}


def test_hybrid_weights_one_and_zero_give_each_ranking_alone(tiny_model, beir):
    from bellm_st.evaluation.retrieval import evaluate_hybrid_retrieval

    bm25_only = evaluate_hybrid_retrieval(tiny_model, beir, "test", weights={"bm25": 1, "dense": 0})
    dense_only = evaluate_hybrid_retrieval(tiny_model, beir, "test", weights={"bm25": 0, "dense": 1})
    assert bm25_only["fused"] == bm25_only["bm25"]
    assert dense_only["fused"] == pytest.approx(dense_only["dense"], abs=1e-9)
    assert bm25_only["bm25"]["mrr@10"] == 100.0  # BM25 puts d3 ("frog") first for "A new frog was found."


@pytest.mark.parametrize(
    ("weights", "rrf_k", "message"),
    [({"sparse": 1}, 60, "weights names 'sparse'"), ({"dense": -1}, 60, r"weights\['dense'\]=-1"), (None, 0, "rrf_k=0")],
)
def test_hybrid_settings_are_checked_before_anything_is_encoded(tiny_model, beir, monkeypatch, weights, rrf_k, message):
    from bellm_st.evaluation.retrieval import evaluate_hybrid_retrieval

    monkeypatch.setattr(tiny_model, "encode", lambda *args, **kwargs: pytest.fail("encoded before checking"))
    with pytest.raises(ValueError, match=message):
        evaluate_hybrid_retrieval(tiny_model, beir, "test", weights=weights, rrf_k=rrf_k)


def test_the_command_line_scores_dense_bm25_and_fused_in_one_table_and_json(tiny_model, beir, tmp_path):
    from typer.testing import CliRunner

    from bellm_st.cli import app

    tiny_model.save(str(tmp_path / "model"))
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(app, ["eval", "-m", str(tmp_path / "model"), "--retrieval", str(beir), "--device", "cpu",
                                      "--hybrid", "--dense-weight", "0.5", "--rrf-k", "10", "-o", str(out)])
    assert result.exit_code == 0, result.output
    for row in ("dense (the model)", "BM25", "fused (RRF: bm25 1, dense 0.5; rrf_k 10)"):
        assert row in result.output
    scores = json.loads(out.read_text())["retrieval"]
    assert set(scores) == {"dense", "bm25", "fused", "fusion"}
    assert scores["fusion"]["weights"] == {"bm25": 1.0, "dense": 0.5} and scores["fusion"]["rrf_k"] == 10
    assert set(scores["fused"]) == {"ndcg@10", "recall@100", "mrr@10"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--hybrid", "--rrf-k", "0"], "rrf_k=0 must be an integer of at least 1"),
        (["--hybrid", "--dense-weight", "-1"], r"weights\['dense'\]=-1.0 must be a finite number of at least 0"),
        (["--hybrid", "--dense-weight", "0", "--bm25-weight", "0"], "are all 0"),
        (["--rrf-k", "10"], "--rrf-k set the fusion of --hybrid; add --hybrid"),
    ],
)
def test_the_command_line_refuses_bad_fusion_settings_in_one_line(beir, options, message):
    from typer.testing import CliRunner

    from bellm_st.cli import app

    result = CliRunner().invoke(app, ["eval", "-m", "no-such-model", "--retrieval", str(beir), *options])
    assert result.exit_code == 2
    assert re.search(message, " ".join(result.output.split())), result.output


def test_hybrid_without_a_retrieval_folder_is_refused(tmp_path):
    from typer.testing import CliRunner

    from bellm_st.cli import app

    (tmp_path / "sts.tsv").write_text("score\tsentence1\tsentence2\n1\ta\tb\n")
    result = CliRunner().invoke(app, ["eval", "--sts", str(tmp_path / "sts.tsv"), "--hybrid"])
    assert result.exit_code == 2 and "add --retrieval FOLDER" in " ".join(result.output.split())
