"""Tokenising texts inside a template, truncating the text and never the template.

A template's tokens carry the instruction the embedding depends on (the last token is the
template's closing quote), so when a text is too long we cut the *text* at a token boundary and
re-render, instead of letting the tokenizer chop the end of the sequence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from bellm_st.prompts import Template

logger = logging.getLogger(__name__)


@dataclass
class TokenizedText:
    input_ids: list[int]
    text_mask: list[int]
    truncated_from: int | None = None  # original text token count when truncated


def _encode_one(tokenizer: PreTrainedTokenizerBase, template: Template, text: str) -> tuple[list[int], list[int]]:
    return _encode_many(tokenizer, template, [text])[0]


def _encode_many(
    tokenizer: PreTrainedTokenizerBase, template: Template, texts: list[str]
) -> list[tuple[list[int], list[int]]]:
    rendered = [template.render(text) for text in texts]
    encoded = tokenizer(rendered, add_special_tokens=True, return_offsets_mapping=True, truncation=False)
    results = []
    for ids, offsets, text in zip(encoded["input_ids"], encoded["offset_mapping"], texts):
        start, end = template.text_start, template.text_start + len(text)
        text_mask = [int(token_end > token_start and token_start < end and token_end > start)
                     for token_start, token_end in offsets]
        results.append((list(ids), text_mask))
    return results


def _truncate(
    tokenizer: PreTrainedTokenizerBase, template: Template, text: str, ids: list[int], text_mask: list[int], budget: int
) -> TokenizedText:
    """Shorten ``text`` until the rendered template fits in ``budget`` tokens."""
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
            return TokenizedText(ids[:budget] if len(ids) > budget else ids, text_mask[:budget], original_text_tokens)
        keep -= len(ids) - budget


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
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is a slow tokenizer; bellm-st needs a fast (Rust) tokenizer "
            "to locate the text inside the template: load it with use_fast=True"
        )
    budget = max_length - int(append_eos)
    items = []
    for text, (ids, text_mask) in zip(texts, _encode_many(tokenizer, template, texts)):
        item = TokenizedText(ids, text_mask)
        if len(ids) > budget:
            item = _truncate(tokenizer, template, text, ids, text_mask, budget)
            logger.warning(
                "a text of %d tokens was truncated to %d so the template fits in max_seq_length=%d",
                item.truncated_from, sum(item.text_mask), max_length,
            )
        if append_eos:
            item.input_ids.append(tokenizer.eos_token_id)
            item.text_mask.append(0)
        items.append(item)
    return _pad(items, tokenizer.pad_token_id, tokenizer.padding_side)


def _pad(items: list[TokenizedText], pad_token_id: int, padding_side: str) -> dict[str, torch.Tensor]:
    length = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    text_mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        span = slice(length - n, length) if padding_side == "left" else slice(0, n)
        input_ids[row, span] = torch.tensor(item.input_ids)
        attention_mask[row, span] = 1
        text_mask[row, span] = torch.tensor(item.text_mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "text_mask": text_mask}
