"""Pooling token states into one sentence vector.

``last``: the state of the last real token (the template's closing quote), the BeLLM default.
``mean``: the average over every real token, template included.
``mean_text``: the average over the sentence's own tokens only.
"""

from __future__ import annotations

from typing import Literal

import torch

PoolingMode = Literal["last", "mean", "mean_text"]
POOLING_MODES: tuple[str, ...] = ("last", "mean", "mean_text")


def check_pooling(pooling: str) -> PoolingMode:
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling={pooling!r} is not supported; use one of {', '.join(POOLING_MODES)}")
    return pooling  # type: ignore[return-value]


def last_token_indices(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.bool()).argmax(dim=1)


def masked_mean(token_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def pool(
    token_embeddings: torch.Tensor,
    attention_mask: torch.Tensor,
    text_mask: torch.Tensor | None,
    pooling: PoolingMode,
) -> torch.Tensor:
    """Reduce ``(batch, tokens, hidden)`` states to ``(batch, hidden)`` in float32."""
    states = token_embeddings.float()
    if pooling == "last":
        rows = torch.arange(states.shape[0], device=states.device)
        return states[rows, last_token_indices(attention_mask)]
    if pooling == "mean":
        return masked_mean(states, attention_mask)
    if text_mask is None:
        raise ValueError("pooling='mean_text' needs the `text_mask` feature produced by BeLLMEncoder.preprocess")
    return masked_mean(states, text_mask)


def pool_flat(
    states: torch.Tensor,
    sequence_index: torch.Tensor,
    bounds: torch.Tensor,
    text_mask: torch.Tensor | None,
    pooling: PoolingMode,
) -> torch.Tensor:
    """Reduce the ``(tokens, hidden)`` states of a flat batch (texts end to end) to ``(texts, hidden)`` in float32.

    ``sequence_index`` gives each token's text, ``bounds`` the texts' start offsets plus the end.
    """
    texts = bounds.shape[0] - 1
    if pooling == "last":  # pick the rows first: a batch's states in float32 can take gigabytes
        return states[bounds[1:].long() - 1].float()
    if pooling == "mean":
        weighted, weights = states.float(), None
    elif text_mask is None:
        raise ValueError("pooling='mean_text' needs the `text_mask` feature produced by BeLLMEncoder.preprocess")
    else:
        weights = text_mask.to(torch.float32)
        weighted = states.to(torch.float32, copy=True).mul_(weights[:, None])
    sums = torch.zeros((texts, states.shape[1]), dtype=torch.float32, device=states.device)
    sums.index_add_(0, sequence_index, weighted)
    if weights is None:
        counts = (bounds[1:] - bounds[:-1]).to(torch.float32)
    else:
        counts = torch.zeros(texts, dtype=torch.float32, device=states.device).index_add_(0, sequence_index, weights)
    return sums / counts.clamp(min=1)[:, None]
