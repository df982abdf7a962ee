"""Training data formats, all turned into the columns the objective expects.

Every format becomes one of two shapes (the column order is what sentence-transformers losses read):

- ``anchor, positive[, negative]``: contrastive data (in-batch negatives, plus the hard negative
  when there is one); the angle loss sees positive pairs as label 1 and hard negatives as label 0.
- ``sentence1, sentence2, score``: graded pairs for the angle/CoSENT ranking losses.

Formats (``auto`` recognises them from the header):

==================  ==============================================  ===============================
format              columns                                         becomes
==================  ==============================================  ===============================
triplets            anchor, positive[, negative] (AllNLI; tsv/csv/  anchor, positive[, negative]
                    jsonl)
nli-triplets        premise, entailment, contradiction              anchor, positive, negative
nli-pairs           premise, hypothesis, label (entailment/...)     anchor, positive, negative
                                                                    (grouped per premise)
paraphrase-pairs    sentence1, sentence2, label (1 = paraphrase)    anchor, positive (label-1 rows)
scored-pairs        [subset,] score, sentence1, sentence2           sentence1, sentence2, score
==================  ==============================================  ===============================
"""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from pathlib import Path

from datasets import Dataset

from bellm_st.tabular import DataFileError, Table, parse_float, read_table
from bellm_st.training.recipe import DataSource

logger = logging.getLogger(__name__)

FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "nli-triplets": ("premise", "entailment", "contradiction"),
    "nli-pairs": ("premise", "hypothesis", "label"),
    "triplets": ("anchor", "positive"),
    "scored-pairs": ("score", "sentence1", "sentence2"),
    "paraphrase-pairs": ("sentence1", "sentence2", "label"),
}
FORMAT_HEADERS = {
    "nli-triplets": "premise<TAB>entailment<TAB>contradiction",
    "nli-pairs": "premise<TAB>hypothesis<TAB>label",
    "triplets": "anchor<TAB>positive<TAB>negative (or anchor,positive,negative in CSV/JSONL)",
    "scored-pairs": "score<TAB>sentence1<TAB>sentence2",
    "paraphrase-pairs": "sentence1<TAB>sentence2<TAB>label",
}


def detect_format(table: Table) -> str:
    """The data format a header announces, or an error listing the headers that are understood."""
    for name, columns in FORMAT_COLUMNS.items():
        if all(column in table.columns for column in columns):
            return name
    known = "; ".join(f"{name}: {header}" for name, header in FORMAT_HEADERS.items())
    raise DataFileError(
        table.path, 1, f"cannot tell the data format from the header ({', '.join(table.columns)}); expected one of {known}"
    )


def _texts(table: Table, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Rows as stripped text tuples; rows with a blank text are dropped (and counted in the log)."""
    rows, dropped = [], 0
    for row in table.rows:
        values = tuple(row.values[column].strip() for column in columns)
        if all(values):
            rows.append(values)
        else:
            dropped += 1
    if dropped:
        logger.warning("%s: dropped %d row(s) with an empty text", table.path, dropped)
    return rows


def _as_columns(rows: list[tuple[str, ...]], names: tuple[str, ...]) -> dict[str, list]:
    """Rows of texts as named columns (empty columns when no row is left)."""
    return {name: [row[position] for row in rows] for position, name in enumerate(names)}


def _triplets(table: Table) -> dict[str, list]:
    columns = ("anchor", "positive", "negative") if "negative" in table.columns else ("anchor", "positive")
    return _as_columns(_texts(table, columns), columns)


def _nli_triplets(table: Table) -> dict[str, list]:
    return _as_columns(_texts(table, FORMAT_COLUMNS["nli-triplets"]), ("anchor", "positive", "negative"))


def _nli_pairs(table: Table) -> dict[str, list]:
    """Group hypotheses per premise: each entailment becomes a positive, paired with a contradiction
    of the same premise as hard negative (cycled when a premise has fewer contradictions)."""
    entailed: dict[str, list[str]] = defaultdict(list)
    contradicted: dict[str, list[str]] = defaultdict(list)
    for row in table.rows:
        label = row.values["label"].strip().lower()
        if label not in ("entailment", "neutral", "contradiction"):
            raise DataFileError(
                table.path, row.line, f"label {row.values['label']!r} is not entailment, neutral or contradiction"
            )
        premise, hypothesis = row.values["premise"].strip(), row.values["hypothesis"].strip()
        if premise and hypothesis:
            {"entailment": entailed, "contradiction": contradicted}.get(label, {}).setdefault(premise, []).append(hypothesis)
    columns: dict[str, list] = {"anchor": [], "positive": [], "negative": []}
    for premise, positives in entailed.items():
        negatives = contradicted.get(premise)
        if not negatives:
            continue
        for index, positive in enumerate(positives):
            columns["anchor"].append(premise)
            columns["positive"].append(positive)
            columns["negative"].append(negatives[index % len(negatives)])
    return columns


def _paraphrase_pairs(table: Table) -> dict[str, list]:
    columns: dict[str, list] = {"anchor": [], "positive": []}
    for row in table.rows:
        label = row.values["label"].strip()
        if label not in ("0", "1"):
            raise DataFileError(table.path, row.line, f"label {label!r} must be 1 (paraphrase) or 0 (not)")
        first, second = row.values["sentence1"].strip(), row.values["sentence2"].strip()
        if label == "1" and first and second:
            columns["anchor"].append(first)
            columns["positive"].append(second)
    return columns


def _scored_pairs(table: Table) -> dict[str, list]:
    columns: dict[str, list] = {"sentence1": [], "sentence2": [], "score": []}
    for row in table.rows:
        score = parse_float(table, row, "score")
        first, second = row.values["sentence1"].strip(), row.values["sentence2"].strip()
        if first and second:
            columns["sentence1"].append(first)
            columns["sentence2"].append(second)
            columns["score"].append(score)
    return columns


READERS = {
    "triplets": _triplets,
    "nli-triplets": _nli_triplets,
    "nli-pairs": _nli_pairs,
    "paraphrase-pairs": _paraphrase_pairs,
    "scored-pairs": _scored_pairs,
}


def load_source(source: DataSource, path: str | os.PathLike, seed: int) -> Dataset:
    """Read one training file into a ``datasets.Dataset`` of the objective's columns.

    ``max_rows`` keeps a seeded random sample rather than the head of the file (files are often
    sorted by origin, so the head would be a biased slice).
    """
    table = read_table(path)
    data_format = detect_format(table) if source.format == "auto" else source.format
    table.require(FORMAT_COLUMNS[data_format], FORMAT_HEADERS[data_format])
    columns = READERS[data_format](table)
    size = len(next(iter(columns.values())))
    if size == 0:
        raise DataFileError(path, None, f"no usable {data_format} examples (every row was filtered out)")
    if source.max_rows is not None and source.max_rows < size:
        keep = sorted(random.Random(seed).sample(range(size), source.max_rows))
        columns = {name: [values[i] for i in keep] for name, values in columns.items()}
    logger.info("%s: %d %s examples", path, len(next(iter(columns.values()))), data_format)
    return Dataset.from_dict(columns)


def dataset_name(path: str | os.PathLike) -> str:
    """A short name for a training file (used as the dataset key in a mixture)."""
    return Path(path).stem.replace(".", "_")
