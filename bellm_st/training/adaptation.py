"""Adapt an embedding model to a user's corpus without labels (``bellm-st adapt``).

The corpus gives weak query -> passage pairs (:mod:`bellm_st.training.weak_pairs`); some general
data (NLI triplets by default) is mixed in so sentence similarity is not forgotten. Both go through
the ordinary trainer as two tasks of one recipe: weak pairs with the in-batch contrastive loss, the
query prompt on the query and the document prompt on the passage, at the documents' token budget;
general data with the model's own objective and template. Each batch comes from one task.

With a teacher (``teacher=``, ``--teacher``; e.g. all-MiniLM-L6-v2), each weak pair also gets a hard
negative: a document of the corpus the teacher ranks high for the query (not the query's own), and
the student learns the teacher's margin between positive and negative (margin-MSE, as GPL does)
beside the contrastive loss. The teacher's vectors of queries and documents are computed once and
cached (:mod:`bellm_st.training.teacher`).

A BeLLM model gets a fresh LoRA adapter on top of its (merged) weights; any other
sentence-transformers model (e.g. all-MiniLM-L6-v2) is fine-tuned in full, so the two can be
compared on the same pairs. The output folder holds the model, ``recipe.json`` (which
``bellm-st train --recipe`` reruns), ``weak_pairs.jsonl`` and, with ``eval_retrieval``,
``eval_history.json`` (scores per evaluation step).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

from bellm_st.pruning import DEFAULT_KEEP_LAYERS
from bellm_st.training.data import load_source
from bellm_st.training.recipe import DataSource, Recipe
from bellm_st.training.trainer import TrainingResult, train
from bellm_st.training.teacher import TeacherVectors, load_teacher
from bellm_st.training.weak_pairs import Document, build_weak_pairs, read_corpus

logger = logging.getLogger(__name__)

WEAK_PAIRS_FILE = "weak_pairs.jsonl"
DEFAULT_GENERAL_DATA = "nli/triplets.tsv"
DEFAULT_GENERAL_RATIO = 0.5  # general examples per weak pair
DEFAULT_DOCUMENT_LENGTH = 256
DEFAULT_KINDS = ("title", "ict")
# LoRA on a BeLLM model trains at the recipe's rate; a full fine-tune needs a far smaller one.
FULL_FINE_TUNE_LEARNING_RATE = 2e-5


DEFAULT_TEACHER_WEIGHT = 1.0  # the margin part, in logit units like the contrastive part beside it
NEGATIVE_DEPTH = 10  # a hard negative is drawn from the teacher's top documents below the query's own


def mine_negatives(
    rows: Sequence[tuple[str, str]], documents: Sequence[Document], vectors: TeacherVectors, seed: int,
    depth: int = NEGATIVE_DEPTH,
) -> list[str]:
    """A hard negative passage per (query, positive): one of the ``depth`` documents the teacher ranks highest
    for the query, leaving out documents that contain the query (its own: the title or sentence it came from)."""
    import torch

    passages = [document.passage for document in documents]
    corpus = torch.nn.functional.normalize(vectors.lookup(passages), dim=-1)
    rng = random.Random(seed)
    negatives = []
    for start in range(0, len(rows), 1024):
        chunk = rows[start : start + 1024]
        queries = torch.nn.functional.normalize(vectors.lookup([query for query, _ in chunk]), dim=-1)
        ranked = (queries @ corpus.T).topk(min(depth + 3, len(passages)), dim=-1).indices.tolist()
        for (query, positive), candidates in zip(chunk, ranked):
            usable = [i for i in candidates if query not in passages[i] and passages[i] != positive][:depth]
            if not usable:  # the query is in every top document (a stock phrase): any document without it
                usable = [i for i in range(len(passages)) if query not in passages[i]] or list(range(len(passages)))
            negatives.append(passages[rng.choice(usable)])
    return negatives


# What a BeLLM model's own settings decide when it is trained further; the recipe records them so
# it describes the adapted model (and not the defaults of a recipe trained from a base).
INHERITED_SETTINGS = ("bidirectional_layers", "pooling", "template", "append_eos")


def bellm_settings(model: str) -> dict[str, Any] | None:
    """The BeLLM settings of a model name or folder (its ``bellm_config.json``; defaults for a shipped
    base), or None when ``model`` is another sentence-transformers model.

    Read from the configs, without loading weights, so bad options fail in a second.
    """
    from bellm_st.bases import SHIPPED_BASES
    from bellm_st.module import CONFIG_FILE
    from bellm_st.shipped import SHIPPED_MODELS, SHIPPED_ROOT

    if model in SHIPPED_BASES:
        return {}
    folder = SHIPPED_ROOT / model if model in SHIPPED_MODELS else Path(model)
    config = folder / CONFIG_FILE
    if config.is_file():
        return json.loads(config.read_text(encoding="utf-8"))
    return None


def model_reference(model: str) -> str:
    """How the recipe names the starting model: shipped names and shortcuts as they are, folders absolute."""
    from bellm_st.shipped import BASELINE_SHORTCUTS

    path = Path(model)
    return str(path.resolve()) if model not in BASELINE_SHORTCUTS and path.exists() else model


@contextlib.contextmanager
def quiet_truncation() -> Iterator[None]:
    """Passages are cut to the token budget on purpose; one warning per passage would bury the progress bar."""
    tokenization = logging.getLogger("bellm_st.tokenization")
    level = tokenization.level
    tokenization.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tokenization.setLevel(level)


def adapt(
    corpus: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    model: str | None = None,
    kinds: Sequence[str] = DEFAULT_KINDS,
    ict_per_document: int = 1,
    generator: str | None = None,
    general_data: str | None = DEFAULT_GENERAL_DATA,
    general_ratio: float = DEFAULT_GENERAL_RATIO,
    data_dir: str | os.PathLike | None = None,
    query_template: str | None = None,
    document_template: str | None = None,
    max_seq_length: int = DEFAULT_DOCUMENT_LENGTH,
    keep_layers: int | None = DEFAULT_KEEP_LAYERS,
    lora_r: int | None = None,
    batch_size: int = 32,
    max_steps: int | None = None,
    epochs: float = 1.0,
    learning_rate: float | None = None,
    seed: int = 42,
    eval_retrieval: str | os.PathLike | None = None,
    eval_split: str = "test",
    eval_steps: int | None = None,
    save_steps: int | None = None,
    resume: bool = False,
    device: str | None = None,
    gradient_checkpointing: bool | None = None,
    teacher: str | None = None,
    teacher_weight: float = DEFAULT_TEACHER_WEIGHT,
    teacher_cache: str | os.PathLike | None = None,
) -> TrainingResult:
    """Train ``model`` (default: the shipped default model) on weak pairs from ``corpus`` plus general data.

    Every input is checked before ``output_dir`` is created: an empty corpus, documents without
    ``_id``, a corpus giving fewer pairs than ``batch_size``, a missing general data file or a
    bad evaluation folder fail with the file (and line) and leave nothing behind. Documents
    without a text are skipped with a warning; documents without a title give no title pair.
    ``general_ratio`` is the number of general examples per weak pair (0: none).
    ``ict_per_document`` inverse cloze queries (different sentences) come from each document.
    ``generator`` (a decoder LLM) adds a written query per document when ``"generated"`` is in
    ``kinds`` (slow on CPU: one generation per document). ``keep_layers`` prunes a BeLLM model to its
    first N layers before it is adapted (:mod:`bellm_st.pruning`). ``lora_r`` sizes the new adapter
    (default: the recipe's); its alpha follows at twice the rank, the shipped recipe's ratio, so a
    larger rank adds capacity without changing the effective learning rate. ``gradient_checkpointing``
    recomputes a BeLLM model's activations in the backward pass: slower steps, far less
    memory. ``None`` turns it on unless training runs on a CUDA GPU: on a laptop or CPU server,
    passages of a few hundred tokens through a decoder's every layer are what runs out of memory.
    ``teacher`` (a model name or folder, e.g. ``minilm``) mines a hard negative per pair and adds its
    margins with weight ``teacher_weight``; its vectors are cached in ``teacher_cache`` (default: beside
    the converted bases).
    """
    from bellm_st.api import default_device, default_model_name
    from bellm_st.prompts import DEFAULT_QUERY_TEMPLATE, DEFAULT_TEMPLATE

    model = model or default_model_name()
    if general_ratio < 0:
        raise ValueError(f"general_ratio={general_ratio} must be >= 0 (general examples per weak pair; 0 for none)")
    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size} must be at least 2: the other passages of a batch are the negatives")
    if generator and "generated" not in kinds:
        kinds = (*kinds, "generated")
    settings_of_model = bellm_settings(model)
    template = None if settings_of_model is None else settings_of_model.get("template", DEFAULT_TEMPLATE)
    if keep_layers is not None and template is None:
        raise ValueError(f"keep_layers={keep_layers} prunes BeLLM models, and {model} is not one; drop keep_layers")
    if lora_r is not None and template is None:
        raise ValueError(f"lora_r={lora_r} sizes a BeLLM model's adapter, and {model} is fine-tuned in full; drop lora_r")
    if teacher_weight <= 0:
        raise ValueError(f"teacher_weight={teacher_weight} must be > 0 (the weight of the teacher's margins)")
    if lora_r is not None and lora_r < 1:
        raise ValueError(f"lora_r={lora_r} must be at least 1 (the adapter's rank, e.g. 16 or 64)")
    if template is not None:
        query_template = query_template or DEFAULT_QUERY_TEMPLATE
        document_template = document_template or template

    documents = read_corpus(corpus)
    pairs = build_weak_pairs(documents, kinds, seed=seed, ict_per_document=ict_per_document, generator=generator, device=device)
    rows = [(query, passage) for kind in pairs for query, passage in pairs[kind]]
    if len(rows) < batch_size:
        counts = ", ".join(f"{len(found)} {kind}" for kind, found in pairs.items())
        raise ValueError(
            f"{corpus}: {len(documents)} document(s) gave {len(rows)} weak pair(s) ({counts}), fewer than "
            f"batch_size={batch_size}; lower --batch-size to at most {max(len(rows), 2)} or give a larger corpus "
            "(title pairs need a title, inverse cloze pairs a text of two sentences or more)"
        )
    columns = {"anchor": [q for q, _ in rows], "positive": [p for _, p in rows]}
    if teacher is not None:  # loaded and run before anything is written; its vectors go to the cache
        from bellm_st.api import default_device as pick_device

        vectors = TeacherVectors(load_teacher(teacher, device or pick_device()), teacher, teacher_cache)
        vectors.ensure([*columns["anchor"], *columns["positive"], *(document.passage for document in documents)])
        columns["negative"] = mine_negatives(rows, documents, vectors, seed)
    weak = Dataset.from_dict(columns)

    output_dir = Path(output_dir)
    weak_source = DataSource(
        str((output_dir / WEAK_PAIRS_FILE).resolve()),
        "triplets",
        prompts={
            **({"anchor": "query"} if query_template else {}),
            **({"positive": "document"} if document_template else {}),
            **({"negative": "document"} if document_template and teacher is not None else {}),
        },
        loss="contrastive",
        max_seq_length=max_seq_length,
    )
    sources = [weak_source]
    settings = Recipe(train_data=[weak_source], dev_data=[])
    if data_dir is not None:
        settings = settings.with_changes(data_dir=str(data_dir))
    general_rows = 0
    if general_data and general_ratio > 0:
        general_rows = max(1, round(general_ratio * len(rows)))
        general = DataSource(general_data, max_rows=general_rows, loss="bellm" if template is not None else "contrastive")
        general_rows = len(load_source(general, settings.resolve(general.path), seed))  # fail now, not after loading the model
        sources.append(general)
    if eval_retrieval is not None:
        from bellm_st.evaluation.retrieval import read_beir_folder

        read_beir_folder(eval_retrieval, eval_split)
    recipe = Recipe(
        base=model,
        init_model=model_reference(model),
        **{key: value for key, value in (settings_of_model or {}).items() if key in INHERITED_SETTINGS},
        query_template=query_template,
        document_template=document_template,
        train_data=sources,
        dev_data=[],
        data_dir=settings.data_dir,
        learning_rate=learning_rate or (Recipe.learning_rate if template is not None else FULL_FINE_TUNE_LEARNING_RATE),
        batch_size=batch_size,
        keep_layers=keep_layers,
        **({"lora_r": lora_r, "lora_alpha": 2 * lora_r} if lora_r is not None else {}),
        max_steps=max_steps if max_steps is not None else -1,
        epochs=epochs,
        angle_weight=Recipe.angle_weight if template is not None else 0.0,
        seed=seed,
        gradient_checkpointing=(
            template is not None and not str(device or default_device()).startswith("cuda")
            if gradient_checkpointing is None
            else gradient_checkpointing
        ),
        eval_retrieval=str(Path(eval_retrieval).resolve()) if eval_retrieval is not None else None,
        eval_retrieval_split=eval_split,
        **({"distill_teacher": model_reference(teacher), "distill_weight": teacher_weight, "distill_loss": "margin",
            "distill_cache": str(Path(teacher_cache).resolve()) if teacher_cache else None} if teacher is not None else {}),
        **({"eval_steps": eval_steps} if eval_steps else {}),
        **({"save_steps": save_steps} if save_steps else {}),
    )

    counts = ", ".join(f"{len(found)} {kind}" for kind, found in pairs.items())
    notes = (
        f"Adapted without labels to `{corpus}` ({len(documents)} documents): weak query -> passage pairs "
        f"({counts}{f'; queries written by `{generator}`' if generator else ''}), in-batch contrastive loss, "
        f"passages up to {max_seq_length} tokens"
        + (f"; mixed with {general_rows} rows of `{general_data}` so sentence similarity is kept." if general_rows else ".")
        + (f" Query prompt `{query_template}`, document prompt `{document_template}`." if query_template or document_template else "")
        + (f" Teacher `{teacher}`: a hard negative per pair from its top {NEGATIVE_DEPTH} documents, its margins learned "
           f"(margin-MSE, weight {teacher_weight})." if teacher is not None else "")
    )
    with quiet_truncation():
        result = train(
            recipe, output_dir, data_dir=data_dir, resume=resume, device=device, card_notes=notes,
            in_memory={weak_source.path: weak},
        )
    with open(output_dir / WEAK_PAIRS_FILE, "w", encoding="utf-8") as handle:
        row = 0
        for kind, found in pairs.items():
            for query, passage in found:
                record = {"anchor": query, "positive": passage, **({"negative": columns["negative"][row]} if teacher else {}), "kind": kind}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                row += 1
    return result
