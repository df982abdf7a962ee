"""Weighted reciprocal rank fusion: the formula, ties, one-sided documents, weights 1/0 and 0/1, bad settings."""

from __future__ import annotations

import math

import pytest

from bellm_st.fusion import DEFAULT_RRF_K, DEFAULT_WEIGHTS, check_rrf_k, reciprocal_rank_fusion, resolve_weights

BM25 = ["lexical", "shared", "bm25-only"]
DENSE = ["neighbour", "shared", "lexical", "dense-only"]


def test_scores_follow_the_weighted_formula_with_ranks_from_one():
    fused = dict(reciprocal_rank_fusion({"bm25": BM25, "dense": DENSE}, {"bm25": 1.0, "dense": 0.5}, rrf_k=10))
    assert fused["lexical"] == pytest.approx(1 / 11 + 0.5 / 13)
    assert fused["shared"] == pytest.approx(1 / 12 + 0.5 / 12)
    assert fused["neighbour"] == pytest.approx(0.5 / 11)  # found by the dense side only
    assert fused["bm25-only"] == pytest.approx(1 / 13)
    assert set(fused) == set(BM25) | set(DENSE)


def test_bm25_weighted_fusion_keeps_the_lexical_match_first_and_adds_the_dense_neighbour():
    fused = [doc for doc, _ in reciprocal_rank_fusion({"bm25": BM25, "dense": DENSE}, dict(DEFAULT_WEIGHTS))]
    assert fused[0] == "lexical"
    assert "neighbour" in fused and "neighbour" not in BM25


@pytest.mark.parametrize(("weights", "alone"), [({"bm25": 1, "dense": 0}, BM25), ({"bm25": 0, "dense": 1}, DENSE)])
def test_a_zero_weight_leaves_the_other_ranking_alone(weights, alone):
    fused = reciprocal_rank_fusion({"bm25": BM25, "dense": DENSE}, weights)
    assert [doc for doc, _ in fused] == alone  # same order, nothing from the zero-weight side


def test_ties_keep_the_order_of_first_appearance_bm25_first():
    # rank 1 in one ranking only, equal weights: equal scores
    fused = reciprocal_rank_fusion({"bm25": ["a", "b"], "dense": ["c", "d"]}, {"bm25": 1, "dense": 1})
    assert [doc for doc, _ in fused] == ["a", "c", "b", "d"]
    assert fused[0][1] == fused[1][1]
    swapped = reciprocal_rank_fusion({"dense": ["c", "d"], "bm25": ["a", "b"]}, {"bm25": 1, "dense": 1})
    assert [doc for doc, _ in swapped] == ["c", "a", "d", "b"]


def test_an_empty_ranking_leaves_the_other_alone():
    fused = reciprocal_rank_fusion({"bm25": [], "dense": ["x", "y"]}, {"bm25": 1, "dense": 1})
    assert [doc for doc, _ in fused] == ["x", "y"]
    assert reciprocal_rank_fusion({"bm25": [], "dense": []}, {"bm25": 1, "dense": 1}) == []


def test_missing_weights_keep_their_defaults():
    assert resolve_weights(None) == dict(DEFAULT_WEIGHTS)
    assert resolve_weights({"dense": 0}) == {"bm25": DEFAULT_WEIGHTS["bm25"], "dense": 0.0}
    assert resolve_weights({"bm25": 2, "dense": 1}) == {"bm25": 2.0, "dense": 1.0}


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"sparse": 1.0}, r"weights names 'sparse'; the rankings are bm25 and dense"),
        ({"dense": -0.5}, r"weights\['dense'\]=-0.5 must be a finite number of at least 0"),
        ({"bm25": math.nan}, r"weights\['bm25'\]=nan"),
        ({"bm25": math.inf}, r"weights\['bm25'\]=inf"),
        ({"dense": "high"}, r"weights\['dense'\]='high'"),
        ({"dense": True}, r"weights\['dense'\]=True"),
        ({"bm25": 0, "dense": 0}, r"are all 0; give at least one ranking a weight above 0"),
    ],
)
def test_bad_weights_are_named(weights, message):
    with pytest.raises(ValueError, match=message):
        resolve_weights(weights)


def test_weights_that_are_not_a_mapping_are_refused():
    with pytest.raises(TypeError, match=r"weights must be a mapping such as \{'bm25'"):
        resolve_weights([1.0, 0.3])


@pytest.mark.parametrize("rrf_k", [0, -5, 1.5, True, "60"])
def test_rrf_k_below_one_or_not_an_integer_is_refused(rrf_k):
    with pytest.raises(ValueError, match=rf"rrf_k={rrf_k!r} must be an integer of at least 1"):
        check_rrf_k(rrf_k)
    with pytest.raises(ValueError, match="rrf_k="):
        reciprocal_rank_fusion({"bm25": BM25, "dense": DENSE}, dict(DEFAULT_WEIGHTS), rrf_k=rrf_k)
    assert check_rrf_k(1) == 1 and check_rrf_k(DEFAULT_RRF_K) == DEFAULT_RRF_K


def test_weights_must_name_the_rankings_and_rankings_list_each_document_once():
    with pytest.raises(ValueError, match=r"weights name \['bm25'\] but the rankings are \['bm25', 'dense'\]"):
        reciprocal_rank_fusion({"bm25": BM25, "dense": DENSE}, {"bm25": 1.0})
    with pytest.raises(ValueError, match="the dense ranking lists a document more than once"):
        reciprocal_rank_fusion({"bm25": BM25, "dense": ["x", "x"]}, {"bm25": 1, "dense": 1})
