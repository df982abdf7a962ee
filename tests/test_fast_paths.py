"""The bi-directional patch stays on the fast paths: one mask per forward, no mask at all without
padding under SDPA (flash-eligible, non-causal), safe across threads, and picklable."""

from __future__ import annotations

import pickle
import threading

import torch
from torch.nn import functional

from bellm_st.bidirectional import make_bidirectional
from bellm_st.testing import tiny_backbone


def test_one_mask_is_built_per_forward_whatever_the_number_of_layers(monkeypatch):
    model = tiny_backbone("llama")
    patch = make_bidirectional(model, 3)
    built = []
    original = patch._build_mask
    monkeypatch.setattr(patch, "_build_mask", lambda *args: built.append(1) or original(*args))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        model(input_ids=torch.randint(5, 100, (2, 5)), attention_mask=mask)
        assert len(built) == 1
        model(input_ids=torch.randint(5, 100, (2, 5)), attention_mask=mask)
    assert len(built) == 2


def test_without_padding_sdpa_gets_no_mask_and_is_not_causal(monkeypatch):
    model = tiny_backbone("llama", attn_implementation="sdpa")
    make_bidirectional(model, 2)
    calls = []
    original = functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return original(*args, **kwargs)

    monkeypatch.setattr(functional, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model(input_ids=torch.randint(5, 100, (2, 6)), attention_mask=torch.ones(2, 6, dtype=torch.long))
    assert len(calls) == 4
    assert calls[:2] == [(None, True), (None, True)]  # causal layers: flash-eligible causal kernel
    assert calls[2:] == [(None, False), (None, False)]  # bi-directional layers: flash-eligible, no mask


def test_threads_sharing_one_model_each_get_their_own_masks():
    model = tiny_backbone("llama")
    make_bidirectional(model, 2)
    inputs = []
    for length in (5, 7, 9):
        ids = torch.randint(5, 100, (3, length))
        mask = torch.ones(3, length, dtype=torch.long)
        mask[1, length - 2 :] = 0
        inputs.append((ids, mask))
    with torch.no_grad():
        expected = [model(input_ids=ids, attention_mask=mask).last_hidden_state for ids, mask in inputs]
    failures = []

    def work(index):
        ids, mask = inputs[index % 3]
        for _ in range(20):
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=mask).last_hidden_state
            if not torch.allclose(out, expected[index % 3], atol=1e-5):
                failures.append(index)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_a_patched_model_pickles_and_stays_bidirectional():
    model = tiny_backbone("llama")
    make_bidirectional(model, 2)
    ids, mask = torch.randint(5, 100, (2, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)  # leaves masks in the memo, which must not travel
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        copy = pickle.loads(pickle.dumps(model))
        assert copy._bellm_patch.layer_indices == (2, 3) and copy._bellm_patch._last_masks == {}
        assert torch.allclose(copy(input_ids=ids, attention_mask=mask).last_hidden_state, expected, atol=1e-6)
        copy._bellm_patch.remove()
        assert not torch.allclose(copy(input_ids=ids, attention_mask=mask).last_hidden_state, expected, atol=1e-3)


def test_bulk_encoding_runs_with_cudnn_attention_off_and_restores_it(tiny_model, monkeypatch):
    """cuDNN re-plans attention for every batch shape; bulk encoding must not use it, and must put it back."""
    from bellm_st.fast.bulk import encode_bulk

    seen = []
    original = tiny_model[0].forward

    def forward(features, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return original(features, **kwargs)

    monkeypatch.setattr(tiny_model[0], "forward", forward)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    encode_bulk(tiny_model, ["a first text", "a second, longer text here"], batch_size=1)
    assert seen and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()


def test_compiled_layers_can_be_made_eager_again(tiny_model):
    from bellm_st.bidirectional import find_decoder_layers
    from bellm_st.fast.kernels import compile_decoder_layers, uncompile_decoder_layers

    decoder = tiny_model[0].decoder
    assert compile_decoder_layers(decoder) == len(find_decoder_layers(decoder))
    compiled_forwards = [layer.forward for layer in find_decoder_layers(decoder)]
    assert compile_decoder_layers(decoder) == len(compiled_forwards)  # a second call does not wrap twice
    assert [layer.forward for layer in find_decoder_layers(decoder)] == compiled_forwards
    uncompile_decoder_layers(decoder)
    assert all("forward" not in vars(layer) for layer in find_decoder_layers(decoder))
    import pickle

    pickle.dumps(tiny_model)  # eager layers pickle again (multi-process encoding sends the model to workers)


def test_uncompiling_restores_a_forward_set_by_someone_else(tiny_model):
    from bellm_st.bidirectional import find_decoder_layers
    from bellm_st.fast.kernels import compile_decoder_layers, uncompile_decoder_layers

    decoder = tiny_model[0].decoder
    layer = find_decoder_layers(decoder)[0]
    wrapped = layer.forward  # stands for accelerate's device-dispatch forward
    layer.forward = wrapped
    compile_decoder_layers(decoder)
    assert layer.forward is not wrapped
    uncompile_decoder_layers(decoder)
    assert vars(layer)["forward"] is wrapped
    assert all("forward" not in vars(other) for other in find_decoder_layers(decoder)[1:])
