"""Flat batches: texts end to end in one row with variable-length attention (bellm_st.fast.flat).

On CPU the attention runs through the packed kernel in Triton's interpreter (or, where it is
off, the per-text SDPA stand-in), which must agree with the padded path for every architecture;
on a GPU benchmarks/flat_agreement.py compares both kernels with padded batches.
"""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch

import bellm_st
from bellm_st.bidirectional import attention_reach
from bellm_st.fast import FLAT_ROW, flat
from bellm_st.fast.bulk import _flat_batches, encode_bulk
from bellm_st.fast.flat import (
    ROUTED_PREFIX,
    _kernel_attention,
    _reference_attention,
    flat_attention_unsupported,
    flat_features,
    flat_marker_mask,
    route_flat_batches,
)
from bellm_st.fast.packing import PackedRows
from bellm_st.testing import TINY_ARCHITECTURES
from tests.fast.test_packing import TEXTS, embed, encoder_for

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


def test_an_encoder_laid_out_in_one_row_encodes_like_a_padded_one(tiny_model):
    """FLAT_ROW as the encoder's batch layout: sentence-transformers' encode gets one row per batch."""
    expected = tiny_model.encode(TEXTS, convert_to_tensor=True)
    tiny_model[0].batch_layout = FLAT_ROW
    assert tiny_model[0].preprocess(TEXTS[:3])["input_ids"].shape[0] == 1
    assert torch.allclose(tiny_model.encode(TEXTS, convert_to_tensor=True, batch_size=4), expected, atol=1e-5)


@pytest.mark.parametrize("architecture", ["llama", "gemma3_text"])
def test_the_exact_stand_in_gives_the_padded_embeddings_too(tiny_tokenizer, architecture, monkeypatch):
    """Without the packed kernel (no Triton, or CPU outside the interpreter) the per-text SDPA loop runs."""
    monkeypatch.setattr(flat, "packed_attention_available", lambda device: False)
    calls = []
    original = flat.packed_attention
    monkeypatch.setattr(flat, "packed_attention", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    encoder = encoder_for(tiny_tokenizer, architecture, 2, pooling="mean")
    with torch.no_grad():
        padded = embed(encoder, TEXTS)
    assert torch.allclose(embed_flat(encoder, TEXTS), padded, atol=1e-5)
    assert not calls


def test_flat_batches_on_cpu_go_through_the_packed_kernel_in_the_interpreter(tiny_tokenizer, monkeypatch):
    pytest.importorskip("triton")
    calls = []
    original = flat.packed_attention
    monkeypatch.setattr(flat, "packed_attention", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    encoder = encoder_for(tiny_tokenizer, "llama", 2, pooling="mean")
    embed_flat(encoder, TEXTS[:2])
    assert len(calls) == encoder.decoder.config.num_hidden_layers


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


def test_the_model_is_routed_once_and_its_padded_calls_stay_as_they_were(tiny_tokenizer):
    """After a flat batch the model keeps the routed attention; padded and packed batches give what they gave."""
    encoder = encoder_for(tiny_tokenizer, "llama", 2, pooling="mean")
    config = encoder.decoder.config
    with torch.no_grad():
        padded = embed(encoder, TEXTS)
        embed_flat(encoder, TEXTS[:2])
        assert config._attn_implementation == ROUTED_PREFIX + "sdpa"
        route_flat_batches(encoder.decoder)
        assert config._attn_implementation == ROUTED_PREFIX + "sdpa"
        assert torch.allclose(embed(encoder, TEXTS), padded, atol=1e-6)
        encoder.batch_layout = PackedRows(64)
        assert torch.allclose(embed(encoder, TEXTS), padded, atol=1e-5)


def test_a_routed_model_pickled_into_a_process_that_never_routed_still_runs(tiny_tokenizer, monkeypatch):
    """The routed name travels with the model; its registration is made again where the model lands."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    encoder = encoder_for(tiny_tokenizer, "llama", 2, pooling="mean")
    with torch.no_grad():
        padded = embed(encoder, TEXTS)
        embed_flat(encoder, TEXTS[:2])
    copy = pickle.loads(pickle.dumps(encoder))
    for interface in (AttentionInterface, AttentionMaskInterface):  # as in a fresh process
        monkeypatch.delitem(interface._global_mapping, ROUTED_PREFIX + "sdpa")
    with torch.no_grad():
        assert torch.allclose(embed(copy, TEXTS), padded, atol=1e-6)
        assert torch.allclose(embed_flat(copy, TEXTS), padded, atol=1e-5)


def test_a_padded_forward_inside_a_flat_forward_gets_its_mask(tiny_tokenizer):
    """The same model object runs a padded batch while a flat one is half way through its layers."""
    encoder = encoder_for(tiny_tokenizer, "gemma3_text", 2, pooling="mean")  # causal, bi-directional and sliding layers
    with torch.no_grad():
        padded_reference = embed(encoder, TEXTS)
        flat_reference = embed_flat(encoder, TEXTS[:4])
    nested = []

    def padded_forward_midway(layer, args, kwargs):
        if "cu_seq_lens_q" in kwargs and not nested:
            nested.append(embed(encoder, TEXTS))

    layers = bellm_st.bidirectional.find_decoder_layers(encoder.decoder)
    handle = layers[2].register_forward_pre_hook(padded_forward_midway, with_kwargs=True)
    try:
        with torch.no_grad():
            flat_embeddings = embed_flat(encoder, TEXTS[:4])
    finally:
        handle.remove()
    assert torch.allclose(nested[0], padded_reference, atol=1e-5)
    assert torch.allclose(flat_embeddings, flat_reference, atol=1e-6)
    assert torch.allclose(flat_embeddings, padded_reference[:4], atol=1e-5)


def test_padded_and_flat_forwards_of_one_model_in_two_threads(tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(flat, "packed_attention_available", lambda device: False)  # the interpreter is slow
    encoder = encoder_for(tiny_tokenizer, "llama", 2, pooling="mean")
    with torch.no_grad():
        reference = embed(encoder, TEXTS)
    results: dict[str, list[torch.Tensor]] = {"padded": [], "flat": []}

    def run(kind: str) -> None:
        with torch.no_grad():
            for _ in range(15):
                results[kind].append(embed(encoder, TEXTS) if kind == "padded" else embed_flat(encoder, TEXTS))

    threads = [threading.Thread(target=run, args=(kind,)) for kind in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(len(embeddings) == 15 for embeddings in results.values())
    for embeddings in results.values():
        for embedding in embeddings:
            assert torch.allclose(embedding, reference, atol=1e-5)


def test_a_flat_batch_whose_boundaries_do_not_reach_the_attention_is_refused(tiny_tokenizer):
    encoder = encoder_for(tiny_tokenizer, "llama", 2)
    route_flat_batches(encoder.decoder)
    features = flat_features(encoder.tokenize_unpadded(TEXTS[:2]))
    with pytest.raises(RuntimeError, match=r"without its text boundaries.*installed: transformers"):
        encoder.auto_model(input_ids=features["input_ids"], position_ids=features["position_ids"],
                           attention_mask=flat_marker_mask(torch.device("cpu")))


def test_flat_batches_on_an_eager_model_name_the_fix(tiny_tokenizer):
    encoder = encoder_for(tiny_tokenizer, "llama", 2, attn="eager")
    with pytest.raises(ValueError, match=r"loaded with 'eager' attention.*attn_implementation='sdpa'"):
        embed_flat(encoder, TEXTS[:2])
    assert encoder.decoder.config._attn_implementation == "eager"


def test_a_sliding_layer_whose_window_keyword_is_missing_is_refused():
    # A release that stopped passing `sliding_window` would otherwise let flat batches attend past it.
    module = torch.nn.Module()
    module.is_causal, module.sliding_window = False, 4
    states = torch.zeros(1, 2, 6, 8)
    bounds = torch.tensor([0, 6], dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"without its `sliding_window` keyword.*installed: transformers"):
        flat.varlen_attention_forward(module, states, states, states, None, cu_seq_lens_q=bounds, max_length_q=6)


def test_soft_capped_attention_is_refused(tiny_tokenizer):
    encoder = encoder_for(tiny_tokenizer, "gemma2", 2, attn="eager")
    with pytest.raises(ValueError, match="soft-capping"):
        embed_flat(encoder, TEXTS[:2])
    assert "caps its attention logits" in flat_attention_unsupported(encoder.decoder, torch.device("cuda"))


def test_flat_batches_are_only_chosen_where_the_kernel_runs(tiny_tokenizer, monkeypatch):
    encoder = encoder_for(tiny_tokenizer, "llama", 2)
    assert "CUDA" in flat_attention_unsupported(encoder.decoder, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(flat, "_VARLEN_KERNEL", reference_kernel({"scale", "window_size"}, []))
    assert "fp16 or bf16" in flat_attention_unsupported(encoder.decoder, torch.device("cuda"))


@pytest.mark.parametrize(("is_causal", "window", "expected"), [
    (True, None, (-1, 0)), (False, None, (-1, -1)), (True, 4, (3, 0)), (False, 4, (3, 3)),
])
def test_kernel_windows_follow_transformers_conventions(is_causal, window, expected):
    assert attention_reach(is_causal, window) == expected


def test_bulk_flat_batches_fill_both_limits_in_input_order(tiny_model_dir, monkeypatch):
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, pooling="mean", device="cpu")
    texts = TEXTS * 3
    monkeypatch.setattr("bellm_st.fast.bulk.TOKENIZE_CHUNK", 7)  # texts wait across chunks
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
    # the per-text SDPA stand-in (the packed kernel in Triton's interpreter is slow for many small batches)
    monkeypatch.setattr(flat, "packed_attention_available", lambda device: False)
    np.testing.assert_allclose(encode_bulk(model, texts, batch_size=5, max_batch_tokens=200, flat_batches=True),
                               expected, atol=1e-5)


def test_a_lora_wrapped_backbone_runs_flat_batches(tiny_tokenizer):
    """peft's wrapper passes the text boundaries through to the attention (training-time folders keep it)."""
    from peft import LoraConfig, get_peft_model

    from bellm_st.module import BeLLMEncoder
    from bellm_st.testing import tiny_backbone

    backbone = get_peft_model(tiny_backbone("llama"),
                              LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    encoder = BeLLMEncoder(backbone=backbone, tokenizer=tiny_tokenizer, bidirectional_layers=2, pooling="mean")
    with torch.no_grad():
        padded = embed(encoder, TEXTS)
    assert torch.allclose(embed_flat(encoder, TEXTS), padded, atol=1e-5)


def reference_kernel(accepted: set[str], calls: list[dict]):
    """A stand-in for PyTorch's varlen_attn that takes only ``accepted`` keywords and computes exactly."""
    from bellm_st.fast.flat import _reference_attention

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, **options):
        assert set(options) <= accepted, f"passed {set(options) - accepted} to a kernel without them"
        calls.append(options)
        if "window_size" in options:
            window = options["window_size"]
        else:
            window = (-1, 0) if options.get("is_causal") else (-1, -1)
        if key.shape[1] != query.shape[1]:
            assert options.get("enable_gqa"), "grouped heads given to a kernel that was not told"
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        output = _reference_attention(query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1),
                                      cu_seq_q, window, options.get("scale"))
        return output.transpose(0, 1)

    return varlen_attn, frozenset(accepted)


@pytest.mark.parametrize("accepted", [
    {"scale", "window_size", "enable_gqa", "return_aux"},  # torch 2.13
    {"scale", "window_size", "return_aux"},  # torch 2.11: no enable_gqa
    {"scale", "is_causal", "return_aux"},  # a release with neither window nor grouped heads
])
@pytest.mark.parametrize("window", [(-1, 0), (-1, -1)])
def test_the_kernel_gets_only_keywords_its_release_takes(accepted, window):
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 4, 12, 8), torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8)  # grouped heads
    bounds = torch.tensor([0, 5, 12], dtype=torch.int32)
    calls = []
    output = _kernel_attention(reference_kernel(accepted, calls), query, key, value, bounds, 7, window, 0.3)
    expected = _reference_attention(query[0], key[0].repeat_interleave(2, 0), value[0].repeat_interleave(2, 0),
                                    bounds, window, 0.3).transpose(0, 1).unsqueeze(0)
    assert calls and calls[0]["scale"] == 0.3
    assert torch.allclose(output, expected, atol=1e-6)


def test_flat_batches_need_a_recent_gpu_and_kernel(tiny_tokenizer, monkeypatch):
    encoder = encoder_for(tiny_tokenizer, "llama", 2)
    encoder.auto_model.to(torch.bfloat16)
    cuda = torch.device("cuda")
    monkeypatch.setattr(flat, "packed_attention_available", lambda device: False)  # no Triton
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(flat, "_VARLEN_KERNEL", reference_kernel({"scale", "window_size"}, []))
    assert flat_attention_unsupported(encoder.decoder, cuda) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert "Ampere" in flat_attention_unsupported(encoder.decoder, cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(flat, "_VARLEN_KERNEL", reference_kernel({"is_causal"}, []))
    assert "no scale" in flat_attention_unsupported(encoder.decoder, cuda)
    sliding = encoder_for(tiny_tokenizer, "gemma3_text", 2)
    sliding.auto_model.to(torch.bfloat16)
    monkeypatch.setattr(flat, "_VARLEN_KERNEL", reference_kernel({"scale", "is_causal"}, []))
    assert "no window" in flat_attention_unsupported(sliding.decoder, cuda)
    assert flat_attention_unsupported(encoder.decoder, cuda) is None
    monkeypatch.setattr(flat, "packed_attention_available", lambda device: True)  # Triton's kernel windows
    assert flat_attention_unsupported(sliding.decoder, cuda) is None
    monkeypatch.setattr(flat, "_VARLEN_KERNEL", None)
    assert flat_attention_unsupported(sliding.decoder, cuda) is None


def test_flat_batches_on_a_model_that_is_not_bellm_are_refused(tiny_model_dir):
    from sentence_transformers import SentenceTransformer, models

    plain = SentenceTransformer(modules=[models.Transformer(tiny_model_dir), models.Pooling(64)], device="cpu")
    with pytest.raises(ValueError, match="needs a BeLLM model"):
        encode_bulk(plain, ["a text"], flat_batches=True)
