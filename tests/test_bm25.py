"""BM25 over bm25s: lexical matches first, stemming and stop words, zero scores left out, clear errors."""

from __future__ import annotations

import pytest

from bellm_st.bm25 import BM25Index, bm25_settings

DOCUMENTS = [
    "The stock market fell sharply today.",
    "Frogs lay their eggs in ponds every spring.",
    "Amphibians spawn in shallow water.",
    "A frog was seen near the river.",
    "Central banks raised interest rates again.",
]


def test_the_document_sharing_the_query_words_ranks_first_and_stems_match():
    index = BM25Index(DOCUMENTS)
    hits = index.search_one("where do frogs lay eggs", top_k=5)
    assert hits[0][0] == 1
    assert [position for position, _ in hits] == [1, 3]  # "frog" in document 3 matches "frogs" by its stem
    assert hits[0][1] > hits[1][1] > 0


def test_documents_sharing_no_word_are_left_out_and_top_k_cuts():
    index = BM25Index(DOCUMENTS)
    assert [position for position, _ in index.search_one("interest rates", top_k=5)] == [4]
    assert len(index.search_one("frog", top_k=1)) == 1
    assert index.search_one("photosynthesis", top_k=5) == []


def test_a_query_of_stop_words_matches_nothing():
    assert BM25Index(DOCUMENTS).search_one("the of and", top_k=3) == []


def test_ties_keep_the_documents_order():
    index = BM25Index(["a red apple", "green pears", "a red apple"])
    assert [position for position, _ in index.search_one("apple", top_k=3)] == [0, 2]


def test_search_takes_many_queries_at_once():
    index = BM25Index(DOCUMENTS)
    first, second = index.search(["frogs and eggs", "stock market"], top_k=2)
    assert first[0][0] == 1 and second == [(0, second[0][1])]


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        ([], ValueError, r"^documents is empty; BM25 needs at least one document"),
        (["fine", ""], ValueError, r"^documents\[1\] is empty"),
        (["fine", None], TypeError, r"^documents\[1\] is NoneType"),
        ("one string", TypeError, r"^documents must be a list of strings"),
    ],
)
def test_bad_corpora_are_named(texts, error, message):
    with pytest.raises(error, match=message):
        BM25Index(texts)


@pytest.mark.parametrize(
    ("query", "error", "message"),
    [("", ValueError, r"^query is empty"), ("  ", ValueError, r"^query is only whitespace"), (3, TypeError, r"^query is int")],
)
def test_bad_queries_are_named(query, error, message):
    with pytest.raises(error, match=message):
        BM25Index(DOCUMENTS).search_one(query, top_k=3)


@pytest.mark.parametrize("top_k", [0, -1, 2.5, None])
def test_top_k_below_one_is_refused(top_k):
    with pytest.raises(ValueError, match=rf"top_k={top_k!r} must be an integer of at least 1"):
        BM25Index(DOCUMENTS).search_one("frogs", top_k=top_k)


def test_settings_name_the_library_stemmer_and_stop_words():
    settings = bm25_settings()
    assert settings["library"].startswith("bm25s ") and settings["stop_words"] == "en"
    assert "english" in settings["stemmer"] and "PyStemmer" in settings["stemmer"]
