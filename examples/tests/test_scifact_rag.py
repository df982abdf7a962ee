"""Both SciFact RAG examples (LangChain + Chroma, LlamaIndex + FAISS) on a tiny corpus and model:
hybrid retrieval on by default, BM25 alone, each model dense and fused."""

from __future__ import annotations

import argparse
import importlib

import pytest

DOCUMENTS = [
    "Frogs breed in ponds every spring and lay their eggs in shallow water.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Insulin resistance raises the risk of type 2 diabetes in adults.",
    "Vitamin D deficiency is common in northern countries during winter.",
    "Smoking increases the risk of lung cancer and heart disease.",
    "Regular exercise lowers blood pressure in older patients.",
    "Antibiotic resistance spreads between bacteria through plasmids.",
    "Sleep deprivation impairs memory consolidation in students.",
    "Coffee consumption is linked to a lower risk of liver disease.",
    "Air pollution worsens asthma symptoms in children.",
    "Gene therapy restored vision in patients with a rare retinal disease.",
    "Malaria parasites develop resistance to artemisinin in Southeast Asia.",
]


@pytest.fixture(params=["langchain_scifact_rag", "llama_index_scifact_rag"])
def example(request):
    return importlib.import_module(request.param)


@pytest.fixture()
def subset(example):
    from scifact_rag import Subset

    others = [f"Report {index} describes a survey of regional transport and housing costs." for index in range(28)]
    corpus = {f"d{index}": text for index, text in enumerate(DOCUMENTS + others)}  # 40: the top ten is a choice
    queries = {"q-frogs": "where do frogs lay eggs", "q-malaria": "artemisinin resistance of malaria parasites"}
    return Subset(queries, corpus, {"q-frogs": {"d0"}, "q-malaria": {"d11"}}, "tiny")


ARGS = argparse.Namespace(batch_size=4, weights={"bm25": 1.0, "dense": 0.2}, rrf_k=5)


def test_bm25_alone_ranks_the_document_sharing_the_query_words_first(example, subset):
    rankings = example.fuse_with_bm25(None, subset, ARGS)
    assert rankings["q-frogs"][0] == "d0" and rankings["q-malaria"][0] == "d11"


def test_a_model_fused_with_bm25_gives_the_top_ten_distinct_documents(example, subset, tiny_bellm):
    fused = example.fuse_with_bm25(tiny_bellm, subset, ARGS)
    for query_id in subset.queries:
        assert len(fused[query_id]) == len(set(fused[query_id])) == example.TOP_K
        assert set(fused[query_id]) <= set(subset.corpus)
    # the random model ranks the 40 at random; BM25's clear first place keeps the relevant document in the top ten
    assert "d0" in fused["q-frogs"] and "d11" in fused["q-malaria"]


def test_weights_of_one_and_zero_give_the_model_alone(example, subset, tiny_bellm):
    dense_only = argparse.Namespace(batch_size=4, weights={"bm25": 0.0, "dense": 1.0}, rrf_k=60)
    assert example.fuse_with_bm25(tiny_bellm, subset, dense_only) == example.index_and_retrieve(tiny_bellm, subset, ARGS)


def test_hybrid_is_the_default_and_bad_fusion_options_stop_the_parser(monkeypatch):
    import scifact_rag

    monkeypatch.setattr("sys.argv", ["example"])
    args = scifact_rag.parse_args("RAG")
    assert not args.dense_only and args.weights == scifact_rag.resolve_weights(None)
    monkeypatch.setattr("sys.argv", ["example", "--dense-only", "--dense-weight", "0.5", "--rrf-k", "10"])
    args = scifact_rag.parse_args("RAG")
    assert args.dense_only and args.weights["dense"] == 0.5 and args.rrf_k == 10
    for bad in (["--rrf-k", "0"], ["--dense-weight", "-1"], ["--dense-weight", "0", "--bm25-weight", "0"]):
        monkeypatch.setattr("sys.argv", ["example", *bad])
        with pytest.raises(SystemExit):
            scifact_rag.parse_args("RAG")


def test_the_report_shows_bm25_and_each_models_dense_and_fused_rows(example, subset, tiny_bellm, monkeypatch, capsys):
    import scifact_rag

    monkeypatch.setattr(scifact_rag, "load_subset", lambda *args: subset)
    monkeypatch.setattr(scifact_rag, "models", lambda *args: {"BeLLM tiny": tiny_bellm})
    monkeypatch.setattr("sys.argv", ["example", "--batch-size", "4"])
    scifact_rag.run_comparison("RAG", example.index_and_retrieve, example.fuse_with_bm25)
    report = capsys.readouterr().out.split("nDCG@10 on SciFact train qrels")[-1]
    labels = [line.split("nDCG@10 =")[0].strip() for line in report.splitlines() if "nDCG@10 =" in line]
    assert labels == ["BM25 alone", "BeLLM tiny, dense", "BeLLM tiny + BM25, fused"]
    assert "weighted reciprocal rank fusion (bm25 1, dense" in report
