"""What a teacher distils on: a deduplicated pool of texts, and query -> passage pairs for the prompts.

The **pool** is every text of the run's training files plus any text column of other files (a
user's corpus, a list of sentences), deduplicated. It is a task of its own: batches of pool texts
carry only the teacher's loss (:mod:`bellm_st.training.distillation`), so the teacher's knowledge
reaches the student on far more text than the labelled data has.

**Query -> passage pairs** train ``encode_query``/``encode_document`` as roles: from a file of
paraphrase pairs, one side becomes the query and the other goes, at a random place, into a passage
of ``sentences`` texts of the same file (the rest drawn at random). The query is read with the
``query`` prompt and the passage with the ``document`` prompt, and the teacher's query-passage
similarities supervise the student's: a short text against a longer one that contains its
meaning among other sentences, the shape of a claim against an abstract.

Pool files: ``PATH`` or ``PATH:COLUMN``. A ``.txt`` file is one text per line; a BEIR corpus
(``.jsonl`` with ``_id`` and ``text``) gives each document as retrieval sees it (title, text);
other tables (TSV, CSV, JSONL) give the named column, or their ``text`` column.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from datasets import Dataset

from bellm_st.tabular import DataFileError, read_table, read_text_file
from bellm_st.training.data import dataset_name, load_source
from bellm_st.training.recipe import DataSource, Recipe

POOL_COLUMN = "text"


def parse_pool_spec(spec: str) -> tuple[str, str | None]:
    """``PATH`` or ``PATH:COLUMN`` -> (path, column or None)."""
    path, separator, column = spec.rpartition(":")
    if not separator or not column or "/" in column or not path:
        return spec, None
    return path, column


def read_pool_file(path: str | os.PathLike, column: str | None = None) -> list[str]:
    """The texts of one pool file (see the module docstring), stripped, empty ones left out."""
    path = Path(path)
    if path.suffix == ".txt" and column is None:
        return [line.strip() for line in read_text_file(path).splitlines() if line.strip()]
    table = read_table(path)
    if column is None and path.suffix == ".jsonl" and {"_id", "text"} <= set(table.columns):
        from bellm_st.training.weak_pairs import read_corpus

        return [document.passage for document in read_corpus(path)]
    name = column or POOL_COLUMN
    if name not in table.columns:
        raise DataFileError(
            path, 1, f"no column {name!r}; the file has {', '.join(table.columns) or 'no columns'}. "
            f"Name the text column as PATH:COLUMN, e.g. {path}:{table.columns[0] if table.columns else 'text'}"
        )
    return [text for row in table.rows if (text := row.values.get(name, "").strip())]


def deduplicated(texts: Iterable[str]) -> list[str]:
    """The texts in first-seen order, each once."""
    return list(dict.fromkeys(text for text in texts if text))


def dataset_texts(dataset: Dataset) -> list[str]:
    """Every text of a training dataset (its string columns, row by row)."""
    columns = [name for name, feature in dataset.features.items() if getattr(feature, "dtype", None) == "string"]
    return [text for name in columns for text in dataset[name]]


def build_pool(
    training: Sequence[Dataset], files: Sequence[tuple[Path, str | None]], seed: int, max_rows: int | None = None
) -> Dataset:
    """The pool task's dataset (one ``text`` column): the training datasets' texts and the files', deduplicated,
    shuffled (seeded) and cut to ``max_rows`` if given. An empty pool is refused."""
    texts = deduplicated([text for dataset in training for text in dataset_texts(dataset)]
                         + [text for path, column in files for text in read_pool_file(path, column)])
    if not texts:
        named = ", ".join(str(path) for path, _ in files) or "no pool files"
        raise ValueError(f"the distillation pool is empty (training files and {named} gave no text); add a pool file with texts")
    random.Random(seed).shuffle(texts)
    return Dataset.from_dict({POOL_COLUMN: texts[:max_rows] if max_rows else texts})


def query_passage_pairs(pairs: Dataset, sentences: int, seed: int) -> Dataset:
    """``anchor`` (query) -> ``positive`` (a passage of ``sentences`` texts holding the query's partner)
    from a dataset of ``anchor, positive`` paraphrases."""
    if sentences < 1:
        raise ValueError(f"sentences={sentences} per passage must be at least 1")
    rng = random.Random(seed)
    partners = list(pairs["positive"])
    queries, passages = [], []
    for query, partner in zip(pairs["anchor"], partners):
        others = [partners[rng.randrange(len(partners))] for _ in range(sentences - 1)]
        others.insert(rng.randrange(sentences), partner)
        queries.append(query)
        passages.append(" ".join(others))
    return Dataset.from_dict({"anchor": queries, "positive": passages})


def distillation_tasks(
    recipe: Recipe, data_dir: str | os.PathLike | None, labelled: Sequence[Dataset]
) -> list[tuple[DataSource, str, Dataset]]:
    """The recipe's teacher-only tasks as (source, dataset name, dataset): the pool (``distill_pool``) and one
    query -> passage task per ``distill_pairs`` file, read with the ``query``/``document`` prompts."""
    tasks = []
    if recipe.distill_pool is not None:
        files = [(recipe.resolve(path, data_dir), column) for path, column in map(parse_pool_spec, recipe.distill_pool)]
        pool = build_pool(labelled, files, recipe.seed, recipe.distill_pool_max_rows)
        tasks.append((DataSource("distill_pool", loss="distill"), "distill_pool", pool))
    for path in recipe.distill_pairs:
        pairs = load_source(DataSource(path), recipe.resolve(path, data_dir), recipe.seed)
        if not {"anchor", "positive"} <= set(pairs.column_names):
            raise DataFileError(path, 1, "distill_pairs files need pairs (paraphrase-pairs or triplets format)")
        source = DataSource(
            path, loss="distill", prompts={"anchor": "query", "positive": "document"},
            max_seq_length=recipe.distill_pairs_max_seq_length,
        )
        name = f"distill_pairs_{dataset_name(path)}"
        tasks.append((source, name, query_passage_pairs(pairs, recipe.distill_pair_sentences, recipe.seed)))
    return tasks
