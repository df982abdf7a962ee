"""Tiny random decoders and a tiny fast tokenizer, built in code: test models for bellm-st and
for packages built on it.

They need no download and run in seconds on a CPU, so the core tests, the speed tests and each
framework integration's tests (which must run with only bellm-st installed) use the same models
from here instead of reaching into another package's test folder. Importing this needs no pytest
(not a dependency of bellm-st); the pytest fixtures on these models are in
:mod:`bellm_st.testing.fixtures`, and model folders that must not load in :mod:`bellm_st.testing.bad_folders`.
"""

from __future__ import annotations

import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModel, PreTrainedModel, PreTrainedTokenizerFast

CORPUS = [
    "A man is playing a guitar.",
    "Someone plays an instrument on the stage.",
    "The stock market fell sharply today.",
    "A woman is slicing an onion in the kitchen.",
    "Children are playing football in the park.",
    "The representative word for sentence is:",
    "Scientists discovered a new species of frog.",
]

# architecture -> config overrides for a tiny random model of that family
TINY_ARCHITECTURES: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": 64},
    "qwen2": {},
    "qwen3": {},
    "gemma": {},
    "gemma2": {"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"] * 2},
    "gemma3_text": {"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"] * 2},
    "phi3": {},
}


def tiny_config(architecture: str, vocab_size: int = 300, attn_implementation: str = "sdpa", **overrides) -> AutoConfig:
    """The config of a tiny model of ``architecture`` (a key of :data:`TINY_ARCHITECTURES`): 4 layers, width 32."""
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(TINY_ARCHITECTURES[architecture])
    settings.update(overrides)
    config = AutoConfig.for_model(architecture, **settings)
    config._attn_implementation = attn_implementation
    return config


def tiny_backbone(architecture: str = "llama", attn_implementation: str = "sdpa", seed: int = 0, **overrides) -> PreTrainedModel:
    """A tiny random decoder of ``architecture`` in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return AutoModel.from_config(tiny_config(architecture, attn_implementation=attn_implementation, **overrides)).eval()


def build_tiny_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of 300 tokens trained on :data:`CORPUS`, with pad, BOS and EOS tokens."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 5, trainer)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.padding_side = padding_side
    fast.model_max_length = 512
    return fast


def save_tiny_checkpoint(folder: str | os.PathLike) -> str:
    """A tiny llama checkpoint and its tokenizer saved in ``folder``, loadable by path like any real model."""
    tiny_backbone("llama").save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    return str(folder)
