"""Tokenising texts inside a template, truncating the text and never the template.

A template's tokens carry the instruction the embedding depends on (the last token is the
template's closing quote), so when a text is too long we cut the *text* at a token boundary and
re-render, instead of letting the tokenizer chop the end of the sequence.

Tokenisation sits on the critical path of every ``encode`` call, so the batch is handled as flat
numpy arrays (one entry per token of the whole batch) straight from the Rust tokenizer: no Python
loop runs per token, and padding is one scatter. Only texts that need truncating, which are rare,
take a per-text path.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from bellm_st.prompts import Template

logger = logging.getLogger(__name__)

_flatten = itertools.chain.from_iterable
# Token counts of the texts truncated since :func:`one_truncation_warning` began (None: outside one).
_truncated_lengths: ContextVar[list[int] | None] = ContextVar("truncated_lengths", default=None)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token (decoders usually have none) its EOS token as one.

    Padded positions are masked out everywhere, so which token pads does not change a vector;
    batching only needs one to exist.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _warn_truncated(lengths: list[int], max_length: int) -> None:
    if lengths:
        logger.warning(
            "%d text(s) were longer than max_seq_length=%d (the longest had %d tokens) and were truncated so the "
            "template fits", len(lengths), max_length, max(lengths),
        )


@contextmanager
def one_truncation_warning(max_length: int) -> Iterator[None]:
    """Gather the truncations of every batch tokenised inside (one ``encode`` call) into one warning.

    Outside it each tokenising call warns once for its own texts.
    """
    token = _truncated_lengths.set([])
    try:
        yield
    finally:
        lengths = _truncated_lengths.get()
        _truncated_lengths.reset(token)
        _warn_truncated(lengths, max_length)


@dataclass
class TokenizedBatch:
    """A batch of token sequences stored end to end: row ``i`` is ``ids[starts[i]:starts[i] + lengths[i]]``."""

    ids: np.ndarray  # (total,) int64
    text_mask: np.ndarray | None  # (total,) bool: the token overlaps the text itself; None when not computed
    lengths: np.ndarray  # (rows,) int64

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.lengths) - self.lengths

    @property
    def text_of_token(self) -> np.ndarray:
        """For each token, the row (text) it belongs to."""
        return np.repeat(np.arange(len(self.lengths)), self.lengths)

    @property
    def position_in_text(self) -> np.ndarray:
        """For each token, its position within its own text (0 at each text's first token)."""
        return np.arange(len(self.ids)) - np.repeat(self.starts, self.lengths)

    def split(self, rows: int) -> tuple[TokenizedBatch, TokenizedBatch]:
        """The first ``rows`` texts and the rest, as two batches (views, no copy)."""
        tokens = int(self.lengths[:rows].sum())
        mask = self.text_mask
        return (TokenizedBatch(self.ids[:tokens], None if mask is None else mask[:tokens], self.lengths[:rows]),
                TokenizedBatch(self.ids[tokens:], None if mask is None else mask[tokens:], self.lengths[rows:]))

    @classmethod
    def concatenate(cls, batches: list[TokenizedBatch]) -> TokenizedBatch:
        """The texts of ``batches`` one after the other (text masks kept only if every batch has one)."""
        masks = [batch.text_mask for batch in batches]
        return cls(np.concatenate([batch.ids for batch in batches]),
                   None if any(mask is None for mask in masks) else np.concatenate(masks),
                   np.concatenate([batch.lengths for batch in batches]))

    def row(self, index: int) -> tuple[list[int], list[int]]:
        start = int(self.starts[index])
        span = slice(start, start + int(self.lengths[index]))
        return self.ids[span].tolist(), self.text_mask[span].astype(np.int64).tolist()

    @classmethod
    def from_rows(cls, rows: list[tuple[list[int], list[int]]]) -> TokenizedBatch:
        lengths = np.array([len(ids) for ids, _ in rows], dtype=np.int64)
        total = int(lengths.sum())
        ids = np.fromiter(_flatten(ids for ids, _ in rows), dtype=np.int64, count=total)
        text_mask = np.fromiter(_flatten(mask for _, mask in rows), dtype=bool, count=total)
        return cls(ids, text_mask, lengths)


def _backend(tokenizer: PreTrainedTokenizerBase):
    """The Rust tokenizer behind a fast tokenizer, set to neither pad nor truncate.

    transformers' own ``__call__`` resets the same two settings before every call; we call the
    backend directly to skip building per-sequence Python dicts we would throw away.
    """
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return backend


def _encode_many(
    tokenizer: PreTrainedTokenizerBase, template: Template, texts: list[str], with_text_mask: bool = True
) -> TokenizedBatch:
    rendered = [template.render(text) for text in texts]
    backend = _backend(tokenizer)
    if not with_text_mask and hasattr(backend, "encode_batch_fast"):  # skips computing offsets in Rust
        encodings = backend.encode_batch_fast(rendered, add_special_tokens=True)
    else:
        encodings = backend.encode_batch(rendered, add_special_tokens=True)
    lengths = np.fromiter((len(encoding) for encoding in encodings), dtype=np.int64, count=len(encodings))
    total = int(lengths.sum())
    ids = np.fromiter(_flatten(encoding.ids for encoding in encodings), dtype=np.int64, count=total)
    if not with_text_mask:
        return TokenizedBatch(ids, None, lengths)
    offsets = np.fromiter(
        _flatten(_flatten(encoding.offsets for encoding in encodings)), dtype=np.int64, count=2 * total
    ).reshape(total, 2)
    text_start = template.text_start
    text_end = np.repeat(np.fromiter((text_start + len(text) for text in texts), dtype=np.int64, count=len(texts)), lengths)
    token_start, token_end = offsets[:, 0], offsets[:, 1]
    text_mask = (token_end > token_start) & (token_start < text_end) & (token_end > text_start)
    return TokenizedBatch(ids, text_mask, lengths)


def _encode_one(tokenizer: PreTrainedTokenizerBase, template: Template, text: str) -> tuple[list[int], list[int]]:
    return _encode_many(tokenizer, template, [text]).row(0)


def _truncate(
    tokenizer: PreTrainedTokenizerBase, template: Template, text: str, ids: list[int], text_mask: list[int], budget: int
) -> tuple[list[int], list[int], int]:
    """Shorten ``text`` until the rendered template fits in ``budget`` tokens.

    Returns the new ids, text mask and the text's original token count.
    """
    original_text_tokens = sum(text_mask)
    template_tokens = len(ids) - original_text_tokens
    if template_tokens >= budget:
        raise ValueError(
            f"the prompt template alone takes {template_tokens} tokens but max_seq_length leaves {budget}; "
            "raise max_seq_length or shorten the template"
        )
    keep = budget - template_tokens
    while True:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        cut = offsets[keep - 1][1] if keep <= len(offsets) else len(text)
        candidate = text[:cut].rstrip() or text[:cut]
        ids, text_mask = _encode_one(tokenizer, template, candidate)
        if len(ids) <= budget or keep <= 1:
            return ids[:budget], text_mask[:budget], original_text_tokens
        keep -= len(ids) - budget


def _truncate_long_rows(
    tokenizer: PreTrainedTokenizerBase, template: Template, texts: list[str], batch: TokenizedBatch, budget: int, max_length: int
) -> TokenizedBatch:
    rows = [batch.row(index) for index in range(len(texts))]
    lengths = []
    for index in np.flatnonzero(batch.lengths > budget):
        ids, text_mask, original_text_tokens = _truncate(tokenizer, template, texts[index], *rows[index], budget)
        lengths.append(original_text_tokens)
        rows[index] = (ids, text_mask)
    gathering = _truncated_lengths.get()
    if gathering is None:
        _warn_truncated(lengths, max_length)
    else:
        gathering.extend(lengths)
    return TokenizedBatch.from_rows(rows)


def _append_token(batch: TokenizedBatch, token_id: int) -> TokenizedBatch:
    ends = np.cumsum(batch.lengths)
    text_mask = None if batch.text_mask is None else np.insert(batch.text_mask, ends, False)
    return TokenizedBatch(np.insert(batch.ids, ends, token_id), text_mask, batch.lengths + 1)


def tokenize_flat(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    template: Template,
    max_length: int,
    append_eos: bool = False,
    with_text_mask: bool = True,
) -> TokenizedBatch:
    """Tokenise ``texts`` inside ``template`` into one flat, unpadded batch.

    The unpadded form lets bulk encoding group texts of exactly equal token length into batches
    that need no padding at all. ``with_text_mask=False`` skips locating the text inside the
    template (only ``mean_text`` pooling needs it), which saves a third of the host-side work.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is a slow tokenizer; bellm-st needs a fast (Rust) tokenizer "
            "to locate the text inside the template: load it with use_fast=True"
        )
    budget = max_length - int(append_eos)
    batch = _encode_many(tokenizer, template, texts, with_text_mask)
    if (batch.lengths > budget).any():
        if batch.text_mask is None:  # truncation needs to know where the text is; rare, so redo the batch
            batch = _encode_many(tokenizer, template, texts)
        batch = _truncate_long_rows(tokenizer, template, texts, batch, budget, max_length)
        if not with_text_mask:
            batch = TokenizedBatch(batch.ids, None, batch.lengths)
    if append_eos:
        batch = _append_token(batch, tokenizer.eos_token_id)
    return batch


def tokenize_with_template(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    template: Template,
    max_length: int,
    append_eos: bool = False,
) -> dict[str, torch.Tensor]:
    """Tokenise ``texts`` inside ``template`` and pad them the tokenizer's way.

    Returns ``input_ids``, ``attention_mask`` and ``text_mask`` (1 on tokens of the text itself,
    used by ``mean_text`` pooling).
    """
    batch = tokenize_flat(tokenizer, texts, template, max_length, append_eos)
    return pad_batch(batch, tokenizer.pad_token_id, tokenizer.padding_side)


def group_by_length(batch: TokenizedBatch) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Split a flat batch into groups of rows with exactly the same length.

    Returns ``(rows, ids, text_mask)`` per length: the row numbers, their ids as a ``(rows,
    length)`` array and the matching text mask (``None`` when the batch has none). Rows of one
    length stack without padding, so the model takes the attention kernels' fastest path (no
    mask tensor at all) and spends no compute on pad tokens.
    """
    groups = []
    starts = batch.starts
    for length in np.unique(batch.lengths):
        rows = np.flatnonzero(batch.lengths == length)
        positions = starts[rows][:, None] + np.arange(int(length))
        text_mask = None if batch.text_mask is None else batch.text_mask[positions]
        groups.append((rows, batch.ids[positions], text_mask))
    return groups


def pad_batch(batch: TokenizedBatch, pad_token_id: int, padding_side: str) -> dict[str, torch.Tensor]:
    """Scatter the flat batch into ``(rows, longest)`` tensors, padding on ``padding_side``."""
    rows, length = len(batch.lengths), int(batch.lengths.max())
    row_of_token = batch.text_of_token
    column = batch.position_in_text
    if padding_side == "left":
        column += np.repeat(length - batch.lengths, batch.lengths)
    input_ids = np.full((rows, length), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((rows, length), dtype=np.int64)
    input_ids[row_of_token, column] = batch.ids
    attention_mask[row_of_token, column] = 1
    features = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask)}
    if batch.text_mask is not None:
        text_mask = np.zeros((rows, length), dtype=np.int64)
        text_mask[row_of_token, column] = batch.text_mask
        features["text_mask"] = torch.from_numpy(text_mask)
    return features
