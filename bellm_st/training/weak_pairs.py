"""Weak query -> passage pairs built from a corpus alone (no labels), for ``bellm-st adapt``.

Three kinds, each a ``(query, passage)`` pair whose passage is the document as retrieval sees it
(``title + " " + text``, BEIR's convention) minus whatever the query was taken from:

- ``title``: the title as the query, the body as the passage (documents without a title give none).
- ``ict`` (inverse cloze task): one sentence of the document, picked at random (seeded), as the
  query; the title and the remaining sentences as the passage (documents of one sentence give none).
  ``ict_per_document`` > 1 takes several different sentences of each document (as many as it has,
  at most), each its own pair: more queries from a small corpus, closer to the claims users ask.
- ``generated``: a query written for each passage by a decoder LLM (:func:`generate_queries`);
  slow on CPU (one generation per document), so off unless asked for.

A corpus is BEIR's ``corpus.jsonl``: one JSON object per line with ``_id``, ``text`` and an
optional ``title``. Documents with an empty text are skipped with a warning naming their lines.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bellm_st.tabular import DataFileError, read_table

logger = logging.getLogger(__name__)

WEAK_PAIR_KINDS = ("title", "ict", "generated")
# A sentence ends at . ! or ? followed by space and an upper-case letter, digit or opening bracket/quote.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[\"'])")
# Passages per generate() call: a GPU's decoding is launch-bound (wide batches are nearly free), a
# CPU's is compute-bound (padding in a wide batch costs real time).
GPU_GENERATION_BATCH, CPU_GENERATION_BATCH = 64, 8
GENERATION_PROMPT = "Write one short search query that the following passage answers.\n\nPassage: {passage}\n\nQuery:"


@dataclass(frozen=True)
class Document:
    """One corpus document and the line it came from (for error messages)."""

    id: str
    title: str
    text: str
    line: int

    @property
    def passage(self) -> str:
        """The document as retrieval indexes it (BEIR: title, a space, text)."""
        return f"{self.title} {self.text}".strip()


def read_corpus(path: str | os.PathLike) -> list[Document]:
    """Read a BEIR ``corpus.jsonl``; errors name the file and line, empty texts are skipped with a warning."""
    path = Path(path)
    if path.suffix != ".jsonl":
        raise DataFileError(path, None, "a corpus must be BEIR's JSONL: one {\"_id\", \"text\", \"title\"} object per line")
    table = read_table(path)
    documents, seen, empty = [], {}, []
    for row in table.rows:
        document_id = row.values.get("_id", "").strip()
        if not document_id:
            raise DataFileError(path, row.line, 'the document has no "_id"; give every line an "_id" and a "text"')
        if document_id in seen:
            raise DataFileError(path, row.line, f"_id {document_id!r} was already used on line {seen[document_id]}")
        seen[document_id] = row.line
        text = row.values.get("text", "").strip()
        if not text:
            empty.append(row.line)
            continue
        documents.append(Document(document_id, row.values.get("title", "").strip(), text, row.line))
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        logger.warning("%s: skipped %d document(s) without a text (lines %s)", path, len(empty), shown)
    if not documents:
        raise DataFileError(path, None, 'no document has a "text"; every line needs a non-empty "text" field')
    return documents


def split_sentences(text: str) -> list[str]:
    """A passage's sentences (a rule that suits abstracts and news; no language model needed)."""
    return [sentence.strip() for sentence in SENTENCE_END.split(text) if sentence.strip()]


def title_pairs(documents: Iterable[Document]) -> list[tuple[str, str]]:
    """(title, body) for every document that has a title."""
    return [(document.title, document.text) for document in documents if document.title]


def inverse_cloze_pairs(documents: Iterable[Document], seed: int, per_document: int = 1) -> list[tuple[str, str]]:
    """(one sentence, title + the other sentences) for every document of two sentences or more.

    ``per_document`` different sentences of each document (fewer where it has fewer), picked at
    random (seeded); with 1 the picks are those of earlier releases, so a recipe reruns the same.
    """
    if per_document < 1:
        raise ValueError(f"ict_per_document={per_document} must be at least 1 (inverse cloze queries per document)")
    rng = random.Random(seed)
    pairs = []
    for document in documents:
        sentences = split_sentences(document.text)
        if len(sentences) < 2:
            continue
        if per_document == 1:
            picks = [rng.randrange(len(sentences))]
        else:
            picks = rng.sample(range(len(sentences)), min(per_document, len(sentences)))
        for picked in picks:
            rest = " ".join(sentences[:picked] + sentences[picked + 1 :])
            pairs.append((sentences[picked], f"{document.title} {rest}".strip()))
    return pairs


def generate_queries(
    passages: Sequence[str],
    generator: str,
    *,
    max_new_tokens: int = 32,
    max_passage_tokens: int = 256,
    batch_size: int = CPU_GENERATION_BATCH,
    device: str | None = None,
) -> list[str]:
    """One query per passage, written by a decoder LLM (greedy decoding, so the same model gives the same queries).

    ``generator`` is a shipped base name (``smollm2-135m``), a local checkpoint folder or a hub id.
    Instruction-tuned models write better queries; models with a chat template get the prompt as a
    user message. An empty generation becomes an empty string (its pair is dropped).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bellm_st.api import default_device
    from bellm_st.bases import base_checkpoint
    from bellm_st.tokenization import ensure_pad_token

    checkpoint = base_checkpoint(generator)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=False)
    tokenizer.padding_side = "left"
    ensure_pad_token(tokenizer)
    device = device or default_device()
    model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=False).to(device).eval()

    def prompt_for(passage: str) -> str:
        ids = tokenizer(passage, add_special_tokens=False)["input_ids"][:max_passage_tokens]
        text = GENERATION_PROMPT.format(passage=tokenizer.decode(ids))
        if tokenizer.chat_template:
            return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return text

    queries = []
    for start in tqdm(range(0, len(passages), batch_size), desc="writing queries", unit="batch"):
        prompts = [prompt_for(passage) for passage in passages[start : start + batch_size]]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not tokenizer.chat_template).to(device)
        with torch.inference_mode():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        for row in output[:, inputs["input_ids"].shape[1] :]:
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            queries.append(text.splitlines()[0].strip() if text else "")
    return queries


def generated_pairs(documents: Sequence[Document], generator: str, device: str | None = None) -> list[tuple[str, str]]:
    """(written query, passage) for every document the generator wrote a non-empty query for."""
    from bellm_st.api import default_device

    on_gpu = str(device or default_device()).startswith("cuda")
    passages = [document.passage for document in documents]
    batch_size = GPU_GENERATION_BATCH if on_gpu else CPU_GENERATION_BATCH
    queries = generate_queries(passages, generator, device=device, batch_size=batch_size)
    return [(query, passage) for query, passage in zip(queries, passages) if query]


def build_weak_pairs(
    documents: Sequence[Document],
    kinds: Sequence[str] = ("title", "ict"),
    *,
    seed: int = 42,
    ict_per_document: int = 1,
    generator: str | None = None,
    device: str | None = None,
) -> dict[str, list[tuple[str, str]]]:
    """The weak pairs of each kind asked for, in corpus order (the trainer shuffles them)."""
    unknown = [kind for kind in kinds if kind not in WEAK_PAIR_KINDS]
    if unknown:
        raise ValueError(f"weak pair kind(s) {', '.join(unknown)} unknown; use {', '.join(WEAK_PAIR_KINDS)}")
    if "generated" in kinds and not generator:
        raise ValueError("generated queries need a generator model (--generated-queries MODEL)")
    pairs: dict[str, list[tuple[str, str]]] = {}
    if "title" in kinds:
        pairs["title"] = title_pairs(documents)
    if "ict" in kinds:
        pairs["ict"] = inverse_cloze_pairs(documents, seed, ict_per_document)
    if "generated" in kinds:
        pairs["generated"] = generated_pairs(documents, generator, device)
    return pairs
