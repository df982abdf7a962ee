"""Retrieval evaluation on a BEIR-layout folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

Reports nDCG@10, Recall@100 and MRR@10 (x100) of cosine similarity, the figures BEIR papers
quote. Documents are ``title + " " + text`` as in BEIR. A model that defines ``query`` and
``document`` prompts gets them applied, so asymmetric models are measured the way they are used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.util import cos_sim

from bellm_st.evaluation.sts import EVAL_BATCH_SIZE
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
