"""Retrieval evaluation on a BEIR-layout folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

Reports nDCG@10, Recall@100 and MRR@10 (x100) of cosine similarity, the figures BEIR papers
quote. Documents are ``title + " " + text`` as in BEIR. A model that defines ``query`` and
``document`` prompts gets them applied, so asymmetric models are measured the way they are used.
:func:`evaluate_hybrid_retrieval` scores the model's ranking, BM25's and the two fused
(:mod:`bellm_st.fusion`) in one pass, with the same metric code for all three.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.util import cos_sim

from bellm_st.evaluation.sts import EVAL_BATCH_SIZE
from bellm_st.fusion import (
    DEFAULT_RRF_K,
    FUSION_CANDIDATES,
    check_rrf_k,
    fusion_settings,
    reciprocal_rank_fusion,
    resolve_weights,
)
from bellm_st.tabular import DataFileError, parse_float, read_table

RETRIEVAL_METRICS = {"ndcg@10": "cosine_ndcg@10", "recall@100": "cosine_recall@100", "mrr@10": "cosine_mrr@10"}


@dataclass(frozen=True)
class RetrievalSet:
    """Queries, documents and which documents are relevant to which query."""

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]


def _read_jsonl_texts(path: Path, with_title: bool) -> dict[str, str]:
    table = read_table(path)
    table.require(("_id", "text"), '{"_id": "...", "text": "..."} on every line')
    texts = {}
    for row in table.rows:
        title = row.values.get("title", "").strip() if with_title else ""
        texts[row.values["_id"]] = f"{title} {row.values['text'].strip()}".strip()
    return texts


def read_beir_folder(folder: str | os.PathLike, split: str = "test") -> RetrievalSet:
    """Read a BEIR folder; qrels rows with score > 0 mark relevant documents."""
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise FileNotFoundError(
            f"{qrels_path} does not exist; pick a split from {', '.join(available) or 'none (no qrels/ folder)'}"
        )
    corpus = _read_jsonl_texts(folder / "corpus.jsonl", with_title=True)
    queries = _read_jsonl_texts(folder / "queries.jsonl", with_title=False)
    qrels = read_table(qrels_path)
    qrels.require(("query-id", "corpus-id", "score"), "query-id<TAB>corpus-id<TAB>score")
    relevant: dict[str, set[str]] = {}
    for row in qrels.rows:
        query_id, document_id = row.values["query-id"], row.values["corpus-id"]
        if parse_float(qrels, row, "score") <= 0:
            continue
        if query_id not in queries:
            raise DataFileError(qrels_path, row.line, f"query-id {query_id!r} is not in queries.jsonl")
        if document_id not in corpus:
            raise DataFileError(qrels_path, row.line, f"corpus-id {document_id!r} is not in corpus.jsonl")
        relevant.setdefault(query_id, set()).add(document_id)
    if not relevant:
        raise DataFileError(qrels_path, None, "no judgement has a score above 0, so nothing is relevant")
    return RetrievalSet(f"{folder.name}-{split}", {q: queries[q] for q in relevant}, corpus, relevant)


def retrieval_evaluator(
    data: RetrievalSet, model: SentenceTransformer, batch_size: int = EVAL_BATCH_SIZE, show_progress_bar: bool = False
) -> InformationRetrievalEvaluator:
    """A sentence-transformers IR evaluator that uses the model's query/document prompts when it has them."""
    prompts = getattr(model, "prompts", {}) or {}
    return InformationRetrievalEvaluator(
        queries=data.queries,
        corpus=data.corpus,
        relevant_docs=data.relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[100],
        map_at_k=[100],
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        name="",
        write_csv=False,
        score_functions={"cosine": cos_sim},
        query_prompt_name="query" if "query" in prompts else None,
        corpus_prompt_name="document" if "document" in prompts else None,
    )


def evaluate_retrieval(
    model: SentenceTransformer,
    folder: str | os.PathLike,
    split: str = "test",
    batch_size: int = EVAL_BATCH_SIZE,
    show_progress_bar: bool = False,
) -> dict[str, float]:
    """nDCG@10, Recall@100 and MRR@10 (x100) of ``model`` on a BEIR folder; ``show_progress_bar``
    shows the encoding of queries and corpus (minutes on a large corpus)."""
    data = read_beir_folder(folder, split)
    metrics = retrieval_evaluator(data, model, batch_size, show_progress_bar)(model)
    return {name: 100.0 * float(metrics[key]) for name, key in RETRIEVAL_METRICS.items()}


Rankings = dict[str, list[str]]  # query id -> document ids, best first


def dense_rankings(
    evaluator: InformationRetrievalEvaluator, model: SentenceTransformer, candidates: int = FUSION_CANDIDATES
) -> Rankings:
    """The model's top ``candidates`` by cosine similarity, encoded as ``evaluator`` encodes (prompts, batch size)."""
    queries = evaluator.embed_inputs(
        model, evaluator.queries, encode_fn_name="query", prompt_name=evaluator.query_prompt_name
    )
    corpus = evaluator.embed_inputs(
        model, evaluator.corpus, encode_fn_name="document", prompt_name=evaluator.corpus_prompt_name
    )
    scores, positions = cos_sim(queries, corpus).topk(min(candidates, len(evaluator.corpus)), dim=1)
    rankings = {}
    for query_id, row_scores, row_positions in zip(evaluator.queries_ids, scores.tolist(), positions.tolist()):
        hits = sorted(((-score, evaluator.corpus_ids[p]) for score, p in zip(row_scores, row_positions)))
        rankings[query_id] = [document_id for _, document_id in hits]  # ties by id, as the evaluator breaks them
    return rankings


def bm25_rankings(data: RetrievalSet, candidates: int = FUSION_CANDIDATES, show_progress: bool = False) -> Rankings:
    """BM25's top ``candidates`` for each query (:mod:`bellm_st.bm25`); fewer where fewer documents share a word."""
    from bellm_st.bm25 import BM25Index

    document_ids = list(data.corpus)
    index = BM25Index([data.corpus[d] for d in document_ids], where=f"{data.name} corpus", show_progress=show_progress)
    query_ids = list(data.queries)
    hits = index.search([data.queries[q] for q in query_ids], candidates, where=f"{data.name} queries")
    return {q: [document_ids[position] for position, _ in ranked] for q, ranked in zip(query_ids, hits)}


def score_rankings(evaluator: InformationRetrievalEvaluator, rankings: Rankings) -> dict[str, float]:
    """nDCG@10, Recall@100 and MRR@10 (x100) of rankings, by the evaluator's own metric code."""
    results = [
        [{"corpus_id": document_id, "score": -float(rank)} for rank, document_id in enumerate(rankings[query_id])]
        for query_id in evaluator.queries_ids
    ]
    metrics = evaluator.compute_metrics(results)
    return {
        "ndcg@10": 100.0 * float(metrics["ndcg@k"][10]),
        "recall@100": 100.0 * float(metrics["recall@k"][100]),
        "mrr@10": 100.0 * float(metrics["mrr@k"][10]),
    }


def fuse_rankings(bm25: Rankings, dense: Rankings, weights: dict[str, float], rrf_k: int) -> Rankings:
    """Each query's BM25 and dense rankings fused (:func:`bellm_st.fusion.reciprocal_rank_fusion`), cut to
    the candidates."""
    fused = {}
    for query_id in dense:
        pairs = reciprocal_rank_fusion({"bm25": bm25[query_id], "dense": dense[query_id]}, weights, rrf_k)
        fused[query_id] = [document_id for document_id, _ in pairs[:FUSION_CANDIDATES]]
    return fused


def evaluate_hybrid_retrieval(
    model: SentenceTransformer,
    folder: str | os.PathLike,
    split: str = "test",
    batch_size: int = EVAL_BATCH_SIZE,
    show_progress_bar: bool = False,
    weights: dict[str, float] | None = None,
    rrf_k: int = DEFAULT_RRF_K,
) -> dict[str, dict]:
    """Dense, BM25 and fused nDCG@10 / Recall@100 / MRR@10 (x100) on a BEIR folder, and the fusion settings.

    RAG users retrieve with both rankings fused; this says what each half and the fusion give.
    ``weights`` (``bm25``/``dense``, missing ones at their default) and ``rrf_k`` are checked
    before anything is encoded. Returns ``{"dense": ..., "bm25": ..., "fused": ..., "fusion": ...}``.
    """
    from bellm_st.bm25 import bm25_settings

    weights = resolve_weights(weights)
    check_rrf_k(rrf_k)
    data = read_beir_folder(folder, split)
    evaluator = retrieval_evaluator(data, model, batch_size, show_progress_bar)
    lexical = bm25_rankings(data, show_progress=show_progress_bar)
    dense = dense_rankings(evaluator, model)
    return {
        "dense": score_rankings(evaluator, dense),
        "bm25": score_rankings(evaluator, lexical),
        "fused": score_rankings(evaluator, fuse_rankings(lexical, dense, weights, rrf_k)),
        "fusion": {**fusion_settings(weights, rrf_k), "bm25": bm25_settings()},
    }
