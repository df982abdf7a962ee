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
