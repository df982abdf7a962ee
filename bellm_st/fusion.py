"""Weighted reciprocal rank fusion of a BM25 ranking and a dense (embedding) ranking.

A document's fused score is ``sum(weight / (rrf_k + rank))`` over the rankings it appears in,
ranks counted from 1 (Cormack et al., 2009; LangChain's ``EnsembleRetriever`` computes the same).
Only ranks matter, so BM25 scores and cosine similarities need no common scale. Ties keep the
order of first appearance, reading the rankings one after another in the order given (BM25
first), as ``EnsembleRetriever`` does; a ranking with weight 0 is not consulted at all, so
weights 1/0 and 0/1 give each ranking alone.

The defaults are this module's to set; ``bellm-st eval --hybrid`` and both integrations read
them from here. They were chosen on SciFact's train judgements, never test
(benchmarks/hybrid_fusion_sweep.py; docs/RESULTS.md, "Hybrid retrieval"): the best mean fused
nDCG@10 over the shipped default and all-MiniLM-L6-v2 among the settings where neither ever fell
below BM25 alone. Equal weights (1/1, k 60) cost BM25 13-15 points with the default model, a weak
dense ranking on scientific claims; at dense 0.1, k 10 a document the dense side alone finds
enters at about BM25's 100th place, so the dense ranking mostly reorders BM25's first places.
A stronger or adapted model earns a higher dense weight (MiniLM did best at 0.7, k 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

RANKINGS = ("bm25", "dense")
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType({"bm25": 1.0, "dense": 0.1})
DEFAULT_RRF_K = 10
# Documents each ranking hands to the fusion: enough for recall@100 of the fused ranking.
FUSION_CANDIDATES = 100


def resolve_weights(weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """The weights of ``bm25`` and ``dense``: those given, the defaults for the rest.

    Raises ``ValueError`` for a name other than ``bm25``/``dense``, a weight that is negative or
    not a finite number, or weights that are all 0 (nothing left to rank with).
    """
    if weights is None:
        weights = {}
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping such as {dict(DEFAULT_WEIGHTS)}, got {type(weights).__name__}")
    unknown = sorted(map(str, set(weights) - set(RANKINGS)))
    if unknown:
        raise ValueError(f"weights names {', '.join(map(repr, unknown))}; the rankings are {' and '.join(RANKINGS)}")
    resolved = {name: weights.get(name, DEFAULT_WEIGHTS[name]) for name in RANKINGS}
    for name, weight in resolved.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"weights[{name!r}]={weight!r} must be a finite number of at least 0 (0 leaves that ranking out)"
            )
    if not any(resolved.values()):
        raise ValueError(f"weights={resolved} are all 0; give at least one ranking a weight above 0")
    return {name: float(weight) for name, weight in resolved.items()}


def check_rrf_k(rrf_k: int) -> int:
    """``rrf_k`` if it is an integer of at least 1, else ``ValueError``."""
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 1:
        raise ValueError(
            f"rrf_k={rrf_k!r} must be an integer of at least 1: the constant added to each rank "
            f"(default {DEFAULT_RRF_K}; smaller favours each ranking's first places)"
        )
    return rrf_k


def fusion_settings(weights: Mapping[str, float], rrf_k: int, candidates: int = FUSION_CANDIDATES) -> dict:
    """How a fused ranking was made, for result files."""
    return {
        "method": "weighted reciprocal rank fusion, score = sum(weight / (rrf_k + rank)), ranks from 1",
        "weights": dict(weights),
        "rrf_k": rrf_k,
        "candidates": candidates,
    }


def reciprocal_rank_fusion(
    rankings: Mapping[str, Sequence[str]], weights: Mapping[str, float], rrf_k: int = DEFAULT_RRF_K
) -> list[tuple[str, float]]:
    """Fuse rankings (name -> document ids, best first) into (id, fused score) pairs, best first.

    ``weights`` names each ranking (see :func:`resolve_weights` for ``bm25``/``dense``). A
    document found by only one ranking gets that ranking's share alone.
    """
    check_rrf_k(rrf_k)
    if set(weights) != set(rankings):
        raise ValueError(f"weights name {sorted(weights)} but the rankings are {sorted(rankings)}; name each once")
    scores: dict[str, float] = {}
    for name, ranking in rankings.items():
        if len(set(ranking)) != len(ranking):
            raise ValueError(f"the {name} ranking lists a document more than once; give each document once")
        weight = weights[name]
        if weight == 0:
            continue
        for rank, document_id in enumerate(ranking, start=1):
            scores[document_id] = scores.get(document_id, 0.0) + weight / (rrf_k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])  # stable: ties keep their first appearance
