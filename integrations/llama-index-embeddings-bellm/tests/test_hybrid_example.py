"""The LlamaIndex SciFact example's hybrid retrieval (``--hybrid``) on a tiny corpus and model."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
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


@pytest.fixture()
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import llama_index_scifact_rag

    return llama_index_scifact_rag


@pytest.fixture()
def subset(example):
    from scifact_rag import Subset

    others = [f"Report {index} describes a survey of regional transport and housing costs." for index in range(28)]
    corpus = {f"d{index}": text for index, text in enumerate(DOCUMENTS + others)}  # 40: the top ten is a choice
    queries = {"q-frogs": "where do frogs lay eggs", "q-malaria": "artemisinin resistance of malaria parasites"}
    return Subset(queries, corpus, {"q-frogs": {"d0"}, "q-malaria": {"d11"}}, "tiny")


ARGS = argparse.Namespace(batch_size=4)


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


def test_only_a_framework_with_hybrid_retrieval_offers_the_option(example, monkeypatch):
    import scifact_rag

    monkeypatch.setattr("sys.argv", ["example", "--hybrid"])
    assert scifact_rag.parse_args("LlamaIndex", hybrid=True).hybrid
    with pytest.raises(SystemExit):
        scifact_rag.parse_args("LangChain")
