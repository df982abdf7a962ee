"""Packing several texts into each row of a batch, so no compute is spent on padding.

A padded batch is as long as its longest text: with NLI sentences about two thirds of a
training step's tokens were padding. A packed batch lays the texts end to end in rows of a fixed
length (first-fit, longest first), restarting the position ids at 0 for each text. transformers
recognises that layout from the position ids and gives every causal layer a block-diagonal mask
(a token sees earlier tokens of its own text only); the bi-directional patch turns the same mask
into "own text, either direction" (:func:`bellm_st.bidirectional.bidirectional_from_causal`). So a
packed batch gives the same embeddings as a padded one. ``encoder.batch_layout = PackedRows(256)``
makes an encoder's ``preprocess`` pack (``bellm-st train`` does).

The features also carry ``token_index``, which maps each text's tokens back to their place in
the packed rows, and the usual ``attention_mask`` (and ``text_mask``) of the *unpacked* texts,
so pooling and everything after the encoder see an ordinary right-padded batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bellm_st.fast.flat import configured_attention
from bellm_st.module import BATCH_LAYOUT, BeLLMEncoder
from bellm_st.pooling import pool
from bellm_st.tokenization import TokenizedBatch, pad_batch

DEFAULT_ROW_LENGTH = 256  # a few NLI sentences per row; attention over a row stays a small share of the FLOPs
PACKED_FEATURE = "token_index"  # maps each text's tokens to their place in the packed rows
# transformers keeps packed texts apart through the mask it builds for these; its flash-attention
# path splits sequences by position ids only when a batch has a single row.
PACKING_ATTENTION = ("sdpa", "eager")


def first_fit_rows(lengths: np.ndarray, row_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place sequences into rows of ``row_length`` tokens, longest first, each into the first row it fits.

    Returns the row and the offset of every sequence, and how many tokens each row uses.
    """
    row_of = np.empty(len(lengths), dtype=np.int64)
    offset_of = np.empty(len(lengths), dtype=np.int64)
    used = np.zeros(len(lengths), dtype=np.int64)  # at most one row per sequence
    rows = 0
    for index in np.argsort(-lengths, kind="stable"):
        fits = np.flatnonzero(used[:rows] + lengths[index] <= row_length)
        row = int(fits[0]) if len(fits) else rows
        rows += row == rows
        row_of[index], offset_of[index] = row, used[row]
        used[row] += lengths[index]
    return row_of, offset_of, used[:rows]


def pack_rows(batch: TokenizedBatch, row_length: int, pad_token_id: int) -> dict[str, Any]:
    """Pack a flat batch into ``(rows, row_length)`` tensors plus the map back to one row per text.

    Rows are at least as long as the longest text. The unused end of a row is padding whose
    position ids also restart at 0, so the model treats it as one more (ignored) text and no
    real token attends to it.
    """
    if row_length < 1:
        raise ValueError(f"row_length={row_length} must be at least 1")
    lengths = batch.lengths
    row_length = max(row_length, int(lengths.max()))
    row_of, offset_of, used = first_fit_rows(lengths, row_length)
    rows, texts = len(used), len(lengths)

    within = batch.position_in_text
    row_of_token = np.repeat(row_of, lengths)
    column_of_token = np.repeat(offset_of, lengths) + within
    text_of_token = batch.text_of_token

    input_ids = np.full((rows, row_length), pad_token_id, dtype=np.int64)
    input_ids[row_of_token, column_of_token] = batch.ids
    columns = np.arange(row_length)[None, :]
    position_ids = columns - used[:, None]  # the unused tail counts from 0 again...
    position_ids[row_of_token, column_of_token] = within  # ...and every text from its own start

    token_index = np.zeros((texts, int(lengths.max())), dtype=np.int64)
    token_index[text_of_token, within] = row_of_token * row_length + column_of_token
    unpacked = pad_batch(batch, pad_token_id, "right")  # the masks pooling reads, one row per text
    masks = {key: value for key, value in unpacked.items() if key in ("attention_mask", "text_mask")}
    return {
        "input_ids": torch.from_numpy(input_ids),
        "position_ids": torch.from_numpy(position_ids),
        PACKED_FEATURE: torch.from_numpy(token_index),
        **masks,
        BATCH_LAYOUT: PackedRows(row_length),
    }


def unpack_states(packed_states: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
    """``(rows, row_length, hidden)`` states of packed rows as ``(texts, longest, hidden)``, right-padded.

    Padding positions hold an arbitrary token's state; the attention mask marks them.
    ``index_select`` rather than advanced indexing: its backward is a plain ``index_add``, where
    advanced indexing's sorts the indices first, a sizeable share of a training step (measured in
    docs/BENCHMARKS.md, "GPU: LoRA training throughput").
    """
    hidden = packed_states.shape[-1]
    rows = packed_states.reshape(-1, hidden).index_select(0, token_index.reshape(-1))
    return rows.view(*token_index.shape, hidden)


class PackedRows:
    """Texts end to end in rows of ``row_length`` tokens (a :class:`bellm_st.module.BatchLayout`)."""

    def __init__(self, row_length: int = DEFAULT_ROW_LENGTH):
        if isinstance(row_length, bool) or not isinstance(row_length, int) or row_length < 1:
            raise ValueError(f"row_length={row_length!r} must be a positive int, e.g. {DEFAULT_ROW_LENGTH}")
        self.row_length = row_length

    def preprocess(self, encoder: BeLLMEncoder, texts: list[str], prompt: str | None, max_length: int) -> dict[str, Any]:
        batch = encoder.tokenize_unpadded(texts, prompt, max_length)
        return pack_rows(batch, self.row_length, encoder.tokenizer.pad_token_id)

    def embed(self, encoder: BeLLMEncoder, features: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        attention = configured_attention(encoder.decoder.config)
        if attention not in PACKING_ATTENTION:
            raise ValueError(
                f"packed batches need attn_implementation 'sdpa' or 'eager', not {attention!r} (which would let "
                "texts sharing a row attend to each other); set batch_layout=None or load with sdpa"
            )
        # No padding mask: transformers reads the text boundaries from the restarting position ids.
        outputs = encoder.auto_model(
            input_ids=features["input_ids"], position_ids=features["position_ids"], use_cache=False
        )
        states = unpack_states(outputs.last_hidden_state, features[PACKED_FEATURE])
        return states, pool(states, features["attention_mask"], features.get("text_mask"), encoder.pooling)

    def __repr__(self) -> str:
        return f"PackedRows({self.row_length})"


def is_packed(features: dict[str, Any]) -> bool:
    return isinstance(features.get(BATCH_LAYOUT), PackedRows)


def _pad_columns(tensor: torch.Tensor, width: int, value: int = 0) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)


def _widen_rows(features: dict[str, Any], row_length: int, pad_token_id: int) -> dict[str, Any]:
    """Lengthen every packed row to ``row_length``; the added tail is one more ignored sequence."""
    rows, current = features["input_ids"].shape
    if current == row_length:
        return features
    position_ids = features["position_ids"]
    extra = torch.arange(row_length - current, dtype=position_ids.dtype, device=position_ids.device).expand(rows, -1)
    row_of_index = features[PACKED_FEATURE] // current
    return {
        **features,
        "input_ids": _pad_columns(features["input_ids"], row_length, pad_token_id),
        "position_ids": torch.cat([position_ids, extra], dim=1),
        PACKED_FEATURE: features[PACKED_FEATURE] + row_of_index * (row_length - current),
        BATCH_LAYOUT: PackedRows(row_length),
    }


def merge_packed(features_list: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Several packed batches (a loss's anchor, positive and negative columns) as one packed batch.

    One forward pass over all columns instead of one per column: a small model's training step is
    bound by launching kernels, not by the GPU, so fewer and larger passes are faster. Texts keep
    their order, column after column. sentence-transformers' own column merging cannot be used:
    it would concatenate ``token_index`` without moving each column's indices to its rows.
    """
    row_length = max(features["input_ids"].shape[1] for features in features_list)
    features_list = [_widen_rows(features, row_length, pad_token_id) for features in features_list]
    longest = max(features[PACKED_FEATURE].shape[1] for features in features_list)
    merged: dict[str, list[torch.Tensor]] = {key: [] for key in features_list[0] if key != BATCH_LAYOUT}
    rows_before = 0
    for features in features_list:
        if set(features) - {BATCH_LAYOUT} != set(merged):
            raise ValueError(f"packed columns carry different features: {sorted(features)} vs {sorted(merged)}")
        for key, value in features.items():
            if key == BATCH_LAYOUT:
                continue
            if key == PACKED_FEATURE:
                value = _pad_columns(value + rows_before * row_length, longest)
            elif key in ("attention_mask", "text_mask"):
                value = _pad_columns(value, longest)
            merged[key].append(value)
        rows_before += features["input_ids"].shape[0]
    return {**{key: torch.cat(values, dim=0) for key, values in merged.items()}, BATCH_LAYOUT: PackedRows(row_length)}
