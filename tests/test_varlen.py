"""Flat batches: texts end to end in one row with variable-length attention (bellm_st.varlen).

On CPU the attention runs through the per-text SDPA stand-in, which must agree with the padded
path for every architecture; on a GPU the benchmarks compare the flash kernel with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bellm_st
from bellm_st.bulk import _flat_batches, encode_bulk
from bellm_st.varlen import (
    VARLEN_ATTENTION,
    _window,
    flat_attention,
    flat_attention_unsupported,
    flat_features,
)
from tests.conftest import TINY_ARCHITECTURES
from tests.test_packing import TEXTS, embed, encoder_for

FLAT_ARCHITECTURES = sorted(set(TINY_ARCHITECTURES) - {"gemma2"})  # gemma2 caps attention logits


def embed_flat(encoder, texts: list[str]) -> torch.Tensor:
    features = flat_features(encoder.tokenize_unpadded(texts))
    with torch.no_grad():
        return encoder(features)["sentence_embedding"]


@pytest.mark.parametrize("architecture", FLAT_ARCHITECTURES)
@pytest.mark.parametrize("layers", [0, 2, 4])
def test_flat_embeddings_equal_padded_ones(tiny_tokenizer, architecture, layers):
    """Causal layers stay causal, patched ones see their whole text and nothing beyond it;
    sliding windows (gemma3_text: 4 tokens) keep transformers' reach in both directions."""
    encoder = encoder_for(tiny_tokenizer, architecture, layers, pooling="mean")
    with torch.no_grad():
        padded = embed(encoder, TEXTS)
    assert torch.allclose(embed_flat(encoder, TEXTS), padded, atol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "mean", "mean_text"])
def test_every_pooling_matches(tiny_tokenizer, pooling):
    encoder = encoder_for(tiny_tokenizer, "llama", 3, pooling=pooling)
    with torch.no_grad():
        padded = embed(encoder, TEXTS)
    assert torch.allclose(embed_flat(encoder, TEXTS), padded, atol=1e-5)


def test_a_text_never_sees_its_neighbours_but_sees_its_own_end(tiny_tokenizer):
    encoder = encoder_for(tiny_tokenizer, "llama", 2, pooling="last")
    features_of = lambda texts: flat_features(encoder.tokenize_unpadded(texts))  # noqa: E731
    with torch.no_grad():
        first = encoder(features_of(["A man is playing a guitar.", "Stocks fell."]))
        second = encoder(features_of(["A man is playing a guitar.", "Scientists discovered a new species of frog."]))
        changed_end = encoder(features_of(["A man is playing a guitar!", "Stocks fell."]))
    assert torch.allclose(first["sentence_embedding"][0], second["sentence_embedding"][0], atol=1e-6)
    # the first token's state changes with the text's own last word only through the bi-directional layers
    assert not torch.allclose(first["token_embeddings"][0, 0], changed_end["token_embeddings"][0, 0], atol=1e-4)


def test_the_attention_implementation_is_restored_even_after_an_error(tiny_tokenizer):
    encoder = encoder_for(tiny_tokenizer, "llama", 2)
    config = encoder.decoder.config
    with pytest.raises(RuntimeError, match="boom"), flat_attention(encoder.decoder):
        assert config._attn_implementation == VARLEN_ATTENTION
        raise RuntimeError("boom")
    assert config._attn_implementation == "sdpa"
    embed_flat(encoder, TEXTS[:2])
    assert config._attn_implementation == "sdpa"


def test_attention_called_outside_a_flat_batch_says_so(tiny_tokenizer):
    encoder = encoder_for(tiny_tokenizer, "llama", 2)
    features = encoder.preprocess(TEXTS[:2])
    with flat_attention(encoder.decoder), pytest.raises(RuntimeError, match="without text boundaries"):
        encoder.auto_model(input_ids=features["input_ids"])


def test_soft_capped_attention_is_refused(tiny_tokenizer):
    encoder = encoder_for(tiny_tokenizer, "gemma2", 2, attn="eager")
    with pytest.raises(ValueError, match="soft-capping"):
        embed_flat(encoder, TEXTS[:2])
    assert "caps its attention logits" in flat_attention_unsupported(encoder.decoder, torch.device("cuda"))


def test_flat_batches_are_only_chosen_where_the_kernel_runs(tiny_tokenizer):
    encoder = encoder_for(tiny_tokenizer, "llama", 2)
    assert "CUDA" in flat_attention_unsupported(encoder.decoder, torch.device("cpu"))
    assert "fp16 or bf16" in flat_attention_unsupported(encoder.decoder, torch.device("cuda"))


@pytest.mark.parametrize(("is_causal", "window", "expected"), [
    (True, None, (-1, 0)), (False, None, (-1, -1)), (True, 4, (3, 0)), (False, 4, (3, 3)),
])
def test_kernel_windows_follow_transformers_conventions(is_causal, window, expected):
    assert _window(is_causal, window) == expected


def test_bulk_flat_batches_fill_both_limits_in_input_order(tiny_model_dir, monkeypatch):
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, pooling="mean", device="cpu")
    texts = TEXTS * 3
    monkeypatch.setattr("bellm_st.bulk.TOKENIZE_CHUNK", 7)  # texts wait across chunks
    batches = list(_flat_batches(model[0], texts, None, batch_size=5, max_batch_tokens=200))
    order = np.concatenate([indices for indices, _ in batches])
    np.testing.assert_array_equal(order, np.arange(len(texts)))
    tokens = [int(features["input_ids"].shape[1]) for _, features in batches]
    counts = [len(indices) for indices, _ in batches]
    for count, total, (_, features) in zip(counts, tokens, batches):
        assert count <= 5 and (total <= 200 or count == 1)
        assert features["cu_seq_lens"][-1] == total and features["max_length"] <= total
    lengths = model[0].tokenize_unpadded(texts).lengths
    for position in range(len(batches) - 1):  # every batch but the last is full: one more text would not fit
        next_length = lengths[sum(counts[: position + 1])]
        assert counts[position] == 5 or tokens[position] + next_length > 200
    expected = model.encode(texts, batch_size=4)
    np.testing.assert_allclose(encode_bulk(model, texts, batch_size=5, max_batch_tokens=200, flat_batches=True),
                               expected, atol=1e-5)


def test_a_lora_wrapped_backbone_runs_flat_batches(tiny_tokenizer):
    """peft's wrapper passes the text boundaries through to the attention (training-time folders keep it)."""
    from peft import LoraConfig, get_peft_model

    from bellm_st.module import BeLLMEncoder
    from tests.conftest import tiny_backbone

    backbone = get_peft_model(tiny_backbone("llama"),
                              LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    encoder = BeLLMEncoder(backbone=backbone, tokenizer=tiny_tokenizer, bidirectional_layers=2, pooling="mean")
    with torch.no_grad():
        padded = embed(encoder, TEXTS)
    assert torch.allclose(embed_flat(encoder, TEXTS), padded, atol=1e-5)
