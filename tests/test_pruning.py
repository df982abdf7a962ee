"""Layer pruning: the pruned model is the unpruned one cut after layer N, its bi-directional layers
counted from the new top, and it saves, loads and exports like any model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import bellm_st
from bellm_st.bidirectional import make_bidirectional
from bellm_st.pruning import check_bidirectional_fits, prune_layers

from bellm_st.testing import tiny_backbone

TEXTS = ["A man is playing a guitar.", "Hi", "The stock market fell sharply today, and then it fell again."]


def first_layers_reference(model, input_ids, attention_mask, keep_layers: int) -> torch.Tensor:
    """The unpruned model's hidden state after layer ``keep_layers``, through its final norm."""
    with torch.no_grad():
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
        return model.norm(outputs.hidden_states[keep_layers])


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma3_text", "mistral", "phi3"])
@pytest.mark.parametrize("keep_layers", [1, 3])
def test_pruned_model_equals_the_first_layers_of_the_unpruned(architecture, keep_layers):
    """Causal and with the last layer of those kept bi-directional (index keep_layers - 1 of the unpruned)."""
    input_ids = torch.randint(4, 300, (2, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    for bidirectional in (0, 1):
        full, pruned = tiny_backbone(architecture), tiny_backbone(architecture)
        prune_layers(pruned, keep_layers)
        make_bidirectional(pruned, bidirectional)
        make_bidirectional(full, list(range(keep_layers - bidirectional, keep_layers)))
        expected = first_layers_reference(full, input_ids, attention_mask, keep_layers)
        with torch.no_grad():
            actual = pruned(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        real = attention_mask.bool()
        torch.testing.assert_close(actual[real], expected[real], atol=1e-5, rtol=1e-4)


def test_config_describes_the_pruned_model():
    model = tiny_backbone("gemma3_text")  # layer_types: sliding, full, sliding, full
    prune_layers(model, 3)
    assert model.config.num_hidden_layers == 3 and len(model.layers) == 3
    assert model.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert all(not key.startswith("layers.3.") for key in model.state_dict())


def test_bidirectional_layers_count_from_the_new_top(tiny_model_dir):
    model = bellm_st.build(tiny_model_dir, keep_layers=3, bidirectional_layers=1, device="cpu")
    assert model[0].bidirectional_layer_indices == (2,)
    assert len(model[0].decoder.layers) == 3
    whole = bellm_st.build(tiny_model_dir, keep_layers=4, bidirectional_layers=2, pooling="mean", device="cpu")
    assert whole[0].bidirectional_layer_indices == (2, 3)  # keeping all layers changes nothing


def test_save_and_load_round_trip(tiny_model_dir, tmp_path):
    model = bellm_st.build(tiny_model_dir, keep_layers=2, bidirectional_layers=1, pooling="mean", device="cpu")
    model.save(str(tmp_path / "pruned"))
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    loaded = SentenceTransformer(str(tmp_path / "pruned"), trust_remote_code=True, device="cpu")
    assert len(loaded[0].decoder.layers) == 2 and loaded[0].bidirectional_layer_indices == (1,)
    np.testing.assert_allclose(loaded.encode(TEXTS), model.encode(TEXTS), atol=1e-6)


def test_onnx_export_round_trip(tiny_model_dir, tmp_path):
    pytest.importorskip("onnxscript")
    from bellm_st.fast.onnx_export import export_onnx

    model = bellm_st.build(tiny_model_dir, keep_layers=3, bidirectional_layers=2, pooling="mean", device="cpu")
    model.save(str(tmp_path))
    export_onnx(model, tmp_path)
    np.testing.assert_allclose(bellm_st.load(str(tmp_path), backend="onnx").encode(TEXTS), model.encode(TEXTS),
                               atol=1e-5)


def test_pruning_a_loaded_encoder_reapplies_the_layer_choice(tiny_model_dir):
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=1, pooling="mean", device="cpu")
    model[0].keep_first_layers(2)
    expected = bellm_st.build(tiny_model_dir, keep_layers=2, bidirectional_layers=1, pooling="mean", device="cpu")
    assert model[0].bidirectional_layer_indices == (1,)
    np.testing.assert_allclose(model.encode(TEXTS), expected.encode(TEXTS), atol=1e-6)


@pytest.mark.parametrize(
    ("keep_layers", "bidirectional_layers", "message"),
    [
        (0, 0, r"keep_layers=0 must keep at least one layer; use 1\.\.4"),
        (5, 2, r"keep_layers=5 but the model has 4 layers; use 1\.\.4"),
        (2.5, 0, r"keep_layers=2\.5 must keep at least one layer"),
        (2, 3, r"bidirectional_layers=3 but keep_layers=2 leaves 2 layers; use 0\.\.2"),
        (2, [3], r"names layers that keep_layers=2 drops"),
    ],
)
def test_bad_values_are_refused_with_the_fix(tiny_model_dir, keep_layers, bidirectional_layers, message):
    with pytest.raises(ValueError, match=message):
        bellm_st.build(tiny_model_dir, keep_layers=keep_layers, bidirectional_layers=bidirectional_layers, device="cpu")


def test_bad_values_leave_a_loaded_encoder_untouched(tiny_model_dir):
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu")
    for keep_layers in (5, 1):
        with pytest.raises(ValueError):
            model[0].keep_first_layers(keep_layers)
    assert len(model[0].decoder.layers) == 4 and model[0].bidirectional_layer_indices == (2, 3)


def test_check_before_loading():
    check_bidirectional_fits(16, None)
    check_bidirectional_fits(16, 20)
    with pytest.raises(ValueError, match="keep_layers=10"):
        check_bidirectional_fits(16, 10)
