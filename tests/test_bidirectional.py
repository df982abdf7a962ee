"""The bi-directional patch on tiny random decoders of every supported architecture."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig, BertModel, DynamicCache, masking_utils

from bellm_st.bidirectional import (
    bidirectional_from_causal,
    bidirectional_layer_indices,
    find_decoder_layers,
    make_bidirectional,
)
from bellm_st.testing import TINY_ARCHITECTURES, tiny_backbone, tiny_config

ARCHITECTURES = list(TINY_ARCHITECTURES)
IMPLEMENTATIONS = ["sdpa", "eager"]
# transformers itself has no SDPA path for gemma2 (attention soft-capping), so it runs eager only.
COMBINATIONS = [
    (architecture, implementation)
    for architecture in ARCHITECTURES
    for implementation in IMPLEMENTATIONS
    if not (architecture == "gemma2" and implementation == "sdpa")
]
SEQUENCE = torch.tensor([[5, 17, 42, 99, 23, 64, 77, 12]])


def last_hidden(model, input_ids, attention_mask=None):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def with_last_word_changed(input_ids):
    changed = input_ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 300
    return changed


@pytest.mark.parametrize(("architecture", "implementation"), COMBINATIONS)
def test_first_token_sees_the_last_word_only_when_bidirectional(architecture, implementation):
    model = tiny_backbone(architecture, implementation)
    changed = with_last_word_changed(SEQUENCE)

    causal_difference = (last_hidden(model, SEQUENCE)[0, 0] - last_hidden(model, changed)[0, 0]).abs().max()
    assert causal_difference == 0  # k=0 is the plain causal model

    make_bidirectional(model, 1)
    bidirectional_difference = (last_hidden(model, SEQUENCE)[0, 0] - last_hidden(model, changed)[0, 0]).abs().max()
    assert bidirectional_difference > 1e-5  # no padding, sdpa included: still bi-directional


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_layers_below_the_patched_ones_are_bit_identical(architecture):
    implementation = "eager" if architecture == "gemma2" else "sdpa"
    reference = tiny_backbone(architecture, implementation)
    patched = tiny_backbone(architecture, implementation)
    make_bidirectional(patched, 2)
    with torch.no_grad():
        expected = reference(input_ids=SEQUENCE, output_hidden_states=True, use_cache=False).hidden_states
        actual = patched(input_ids=SEQUENCE, output_hidden_states=True, use_cache=False).hidden_states
    first_patched = 4 - 2
    for layer in range(first_patched + 1):  # hidden_states[i] is the input of layer i
        assert torch.equal(expected[layer], actual[layer]), f"layer {layer} input changed"
    assert not torch.allclose(expected[-1], actual[-1])


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize(("architecture", "implementation"), COMBINATIONS)
def test_padding_is_never_attended(architecture, padding_side, implementation):
    model = tiny_backbone(architecture, implementation)
    make_bidirectional(model, 2)
    alone = last_hidden(model, SEQUENCE)
    other = torch.tensor([[8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]])
    pad = torch.zeros((1, other.shape[1] - SEQUENCE.shape[1]), dtype=torch.long)
    if padding_side == "left":
        row, mask = torch.cat([pad, SEQUENCE], 1), torch.cat([torch.zeros_like(pad), torch.ones_like(SEQUENCE)], 1)
        span = slice(pad.shape[1], None)
    else:
        row, mask = torch.cat([SEQUENCE, pad], 1), torch.cat([torch.ones_like(SEQUENCE), torch.zeros_like(pad)], 1)
        span = slice(0, SEQUENCE.shape[1])
    batch = torch.cat([row, other])
    attention_mask = torch.cat([mask, torch.ones_like(other)])
    in_batch = last_hidden(model, batch, attention_mask)[0:1, span]
    assert (alone - in_batch).abs().max() < 1e-4


def test_explicit_layer_list_and_remove_restores_causal():
    model = tiny_backbone("llama")
    causal = last_hidden(model, SEQUENCE)
    patch = make_bidirectional(model, [0, -1])
    assert bidirectional_layer_indices(model) == (0, 3)
    assert not torch.allclose(last_hidden(model, SEQUENCE), causal)
    patch.remove()
    assert bidirectional_layer_indices(model) == ()
    assert torch.equal(last_hidden(model, SEQUENCE), causal)


def test_repatching_replaces_the_previous_choice():
    model = tiny_backbone("llama")
    make_bidirectional(model, 3)
    make_bidirectional(model, 0)
    assert bidirectional_layer_indices(model) == ()
    changed = with_last_word_changed(SEQUENCE)
    assert torch.equal(last_hidden(model, SEQUENCE)[0, 0], last_hidden(model, changed)[0, 0])


def test_sliding_window_layers_keep_their_window():
    # Only the last layer (sliding, window 2) is bi-directional: token 0 may now see token 1,
    # but never token 7, which lies outside its window.
    model = tiny_backbone("gemma3_text", sliding_window=2, layer_types=["full_attention"] * 3 + ["sliding_attention"])
    make_bidirectional(model, 1)
    base = last_hidden(model, SEQUENCE)[0, 0]
    far = SEQUENCE.clone()
    far[0, 7] = 3
    near = SEQUENCE.clone()
    near[0, 1] = 3
    assert torch.equal(last_hidden(model, far)[0, 0], base)
    assert (last_hidden(model, near)[0, 0] - base).abs().max() > 1e-5


@pytest.mark.parametrize("bad", [5, -1, 99])
def test_out_of_range_layer_count_is_rejected(bad):
    model = tiny_backbone("llama")
    with pytest.raises(ValueError, match=r"bidirectional_layers=.* use 0..4"):
        make_bidirectional(model, bad)


def test_out_of_range_layer_index_is_rejected():
    with pytest.raises(ValueError, match="layer index 7 is out of range"):
        make_bidirectional(tiny_backbone("llama"), [7])


@pytest.mark.parametrize("bad", [1.5, "all"])
def test_wrong_type_is_rejected_showing_the_valid_forms(bad):
    """A string was read as a list of one-letter layer indices ("layer indices must be ints, got 'a'")."""
    with pytest.raises(TypeError, match=rf"bidirectional_layers={bad!r} is a \w+, which is not accepted; give an int k "
                                        r"\(the last k layers, 0..4; 4 for all\) or a list of layer indices such as \[2, 3\]"):
        make_bidirectional(tiny_backbone("llama"), bad)


def test_encoder_models_are_rejected():
    encoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32))
    with pytest.raises(ValueError, match="no causal attention layers"):
        make_bidirectional(encoder, 1)


def test_generation_with_kv_cache_is_refused():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    make_bidirectional(model, 1)
    with pytest.raises(RuntimeError, match="KV cache"):
        model.generate(SEQUENCE, max_new_tokens=3, do_sample=False, pad_token_id=0)


def filled_cache(model, tokens: int = 3) -> DynamicCache:
    """A KV cache holding ``tokens`` positions for every layer, as generation leaves it after a step."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    cache = DynamicCache()
    for layer_index in range(config.num_hidden_layers):
        states = torch.zeros(1, config.num_key_value_heads, tokens, head_dim)
        cache.update(states, states.clone(), layer_index)
    return cache


# transformers 5.25 renamed the layer keyword `past_key_values` to `cache`; the guard must hold for
# either spelling (and any future one), whichever release is installed.
@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
def test_a_layer_handed_a_filled_kv_cache_refuses_under_either_keyword(keyword):
    model = tiny_backbone("llama")
    make_bidirectional(model, 1)
    layer = find_decoder_layers(model)[-1]
    hidden = torch.zeros(1, 1, model.config.hidden_size)
    with pytest.raises(RuntimeError, match="KV cache"):
        layer(hidden, attention_mask=None, **{keyword: filled_cache(model)})


def test_a_layer_called_without_the_mask_keyword_names_the_installed_release():
    model = tiny_backbone("llama")
    make_bidirectional(model, 1)
    layer = find_decoder_layers(model)[-1]
    with pytest.raises(RuntimeError, match=r"without an `attention_mask`.*installed: transformers \d"):
        layer(torch.zeros(1, 2, model.config.hidden_size))


@pytest.mark.parametrize(
    ("mask", "error"),
    [(object(), NotImplementedError), (torch.ones(1, 2, 2, dtype=torch.bool), ValueError)],
    ids=["unknown-type", "three-dimensional"],
)
def test_a_mask_of_an_unknown_convention_names_the_installed_release(mask, error):
    model = tiny_backbone("llama")
    make_bidirectional(model, 1)
    layer = find_decoder_layers(model)[-1]
    with pytest.raises(error, match=r"installed: transformers \d"):
        layer(torch.zeros(1, 2, model.config.hidden_size), attention_mask=mask)


def test_gradient_checkpointing_recomputes_the_bidirectional_layers_correctly():
    # Contrastive losses embed several batches before one backward pass; recomputed layers must
    # still use each batch's own padding.
    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = tiny_backbone("llama", "eager")
        model.train()
        make_bidirectional(model, 2)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        padded = torch.tensor([[5, 17, 42, 0, 0], [8, 9, 10, 11, 12]])
        padded_mask = (padded != 0).long()
        loss = model(input_ids=padded, attention_mask=padded_mask, use_cache=False).last_hidden_state[:, :3].sum()
        loss = loss + model(input_ids=SEQUENCE, use_cache=False).last_hidden_state.sum()
        loss.backward()
        return {name: parameter.grad for name, parameter in model.named_parameters() if parameter.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-5), name


def incoming_mask_of_first_layer(model, input_ids, **inputs):
    """The 4-D causal mask transformers hands to the decoder layers for this batch."""
    seen = {}

    def grab(module, args, kwargs):
        seen["mask"] = kwargs["attention_mask"]

    handle = find_decoder_layers(model)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False, **inputs)
    finally:
        handle.remove()
    return seen["mask"]


def reference_bidirectional_mask(config, hidden, incoming):
    """transformers' bi-directional mask over the real keys, then each query kept to its own text:
    a query and a key belong together when the causal mask lets one see the other; padding
    queries keep every real key."""
    allowed = (incoming if incoming.dtype == torch.bool else incoming == 0).any(dim=1, keepdim=True)
    keys = allowed.any(dim=-2).squeeze(1)  # (batch, keys): keys some query may see
    mask = masking_utils.create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=keys)
    same = allowed | allowed.transpose(-1, -2) | ~keys[:, None, :, None]
    if mask is None:  # no padding: the texts are the only restriction, in the incoming mask's form
        mask = torch.ones_like(same) if incoming.dtype == torch.bool else torch.zeros(same.shape, dtype=incoming.dtype)
    return mask & same if mask.dtype == torch.bool else mask.masked_fill(~same, torch.finfo(mask.dtype).min)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("layout", ["left", "right", "packed"])
def test_mask_built_from_the_causal_mask_equals_transformers_bidirectional_mask(implementation, layout):
    """Our few element-wise steps give exactly what transformers' bi-directional builder plus the
    per-text restriction give, padding queries included (the rows that must not go empty)."""
    model = tiny_backbone("llama", implementation)
    input_ids = torch.arange(5, 29).reshape(3, 8)
    if layout == "packed":
        inputs = {"position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 0, 1, 2, 3, 0, 1]])}
    else:
        lengths = torch.tensor([8, 5, 2])
        columns = torch.arange(8)
        real = columns < lengths[:, None] if layout == "right" else columns >= 8 - lengths[:, None]
        inputs = {"attention_mask": real.long()}
    incoming = incoming_mask_of_first_layer(model, input_ids, **inputs)
    assert isinstance(incoming, torch.Tensor) and incoming.ndim == 4
    hidden = torch.zeros((3, 8, model.config.hidden_size))
    expected = reference_bidirectional_mask(model.config, hidden, incoming)
    actual = bidirectional_from_causal(incoming)
    assert actual.dtype == expected.dtype
    assert torch.equal(actual.expand_as(expected), expected)
    allowed = actual if actual.dtype == torch.bool else actual == 0
    assert bool(allowed.any(dim=-1).all()), "a query row was left with no key"
