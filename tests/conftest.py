"""Tiny random decoders and a tiny fast tokenizer, built in code (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels (bellm_st.fast.packed_attention) then run in Triton's interpreter on CPU tensors;
    # it must be chosen before the first kernel is defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

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


def tiny_config(architecture: str, vocab_size: int = 300, attn_implementation: str = "sdpa", **overrides):
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


def tiny_backbone(architecture: str = "llama", attn_implementation: str = "sdpa", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoModel.from_config(tiny_config(architecture, attn_implementation=attn_implementation, **overrides)).eval()


def build_tiny_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 5, trainer)
    from tokenizers import decoders

    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.padding_side = padding_side
    fast.model_max_length = 512
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> str:
    """A saved tiny llama checkpoint + tokenizer, loadable by path like any real model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_backbone("llama").save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture()
def tiny_model(tiny_model_dir):
    """A BeLLM SentenceTransformer on the tiny llama (k=2, last-token pooling), on CPU."""
    import bellm_st

    return bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu")
