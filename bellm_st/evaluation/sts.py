"""Semantic textual similarity: read scored sentence pairs and score a model on them.

The number reported is Spearman's rank correlation (x100) between the gold scores and the cosine
of the two sentence embeddings, over all rows of a file together (SentEval's "all" setting: a
file with a ``subset`` column is still one list, so the model must rank pairs across subsets).
The same evaluator object serves ``bellm-st eval`` and the dev evaluation during training, so a
dev score in a training log and one from the command line are the same measurement.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

from bellm_st.tabular import DataFileError, parse_float, read_table

# Texts per encode batch when scoring (STS and retrieval): it changes speed and memory, not the scores.
EVAL_BATCH_SIZE = 64
STS_COLUMNS = ("score", "sentence1", "sentence2")
STS_HEADER_HINT = "score<TAB>sentence1<TAB>sentence2 (optionally a leading subset column)"


@dataclass(frozen=True)
class ScoredPairs:
    """Sentence pairs with gold similarity scores, as read from one file."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.scores)


def read_scored_pairs(path: str | os.PathLike) -> ScoredPairs:
    """Read a ``[subset] score sentence1 sentence2`` file, refusing blank sentences and bad scores."""
    table = read_table(path)
    table.require(STS_COLUMNS, STS_HEADER_HINT)
    sentences1, sentences2, scores = [], [], []
    for row in table.rows:
        scores.append(parse_float(table, row, "score"))
        for column, bucket in (("sentence1", sentences1), ("sentence2", sentences2)):
            text = row.values[column].strip()
            if not text:
                raise DataFileError(table.path, row.line, f"column {column!r} is empty; every pair needs two sentences")
            bucket.append(text)
    if len(set(scores)) < 2:
        raise DataFileError(table.path, None, "all gold scores are equal, so a rank correlation is undefined")
    return ScoredPairs(Path(path).stem, sentences1, sentences2, scores)


def sts_evaluator(pairs: ScoredPairs, batch_size: int = EVAL_BATCH_SIZE) -> EmbeddingSimilarityEvaluator:
    """A sentence-transformers evaluator for one file: cosine similarity, Spearman as main score."""
    return EmbeddingSimilarityEvaluator(
        pairs.sentences1,
        pairs.sentences2,
        pairs.scores,
        batch_size=batch_size,
        main_similarity="cosine",
        similarity_fn_names=["cosine"],
        name=pairs.name,
        write_csv=False,
    )


def spearman_x100(model: SentenceTransformer, pairs: ScoredPairs, batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Spearman x100 of cosine similarity against the gold scores, over every row of ``pairs``."""
    evaluator = sts_evaluator(pairs, batch_size)
    metrics = evaluator(model)
    return 100.0 * float(metrics[evaluator.primary_metric])


def evaluate_sts_files(
    model: SentenceTransformer, paths: Sequence[str | os.PathLike], batch_size: int = EVAL_BATCH_SIZE
) -> dict[str, float]:
    """Spearman x100 per file (keyed by file stem) plus their unweighted ``average``.

    All files are read before the model runs, so a bad file fails in a second, not after an hour.
    """
    if not paths:
        raise ValueError("no STS files given; pass at least one file of scored sentence pairs")
    all_pairs = [read_scored_pairs(path) for path in paths]
    names = [pairs.name for pairs in all_pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"two STS files share a name ({', '.join(names)}); rename one so results stay distinguishable")
    results = {pairs.name: spearman_x100(model, pairs, batch_size) for pairs in all_pairs}
    results["average"] = sum(results.values()) / len(results)
    return results
