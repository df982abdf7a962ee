"""int8 ONNX graphs: the split into int8 and fp32 parts is exact, and the int8 vectors stay close to fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import bellm_st
from bellm_st.fast.onnx_export import ONNX_FILE, OnnxEncoder, export_onnx
from bellm_st.fast.quantization import (
    MICROSOFT_DOMAIN,
    GraphBuilder,
    linear_layers,
    quantise_activations,
    quantise_linear,
    quantise_weight,
    quantize_onnx,
)
from bellm_st.testing import CORPUS

TEXTS = [
    "A man is playing a guitar on the stage.",
    "Hi",
    "The stock market fell sharply today, and then it fell again.",
    "Children are playing football in the park.",
]
HIDDEN_SIZE = 32  # bellm_st.testing.tiny_config


@pytest.fixture(scope="module")
def tiny_k2(tiny_model_dir):
    return bellm_st.build(tiny_model_dir, bidirectional_layers=2, pooling="mean", device="cpu")


@pytest.fixture(scope="module")
def exported_folder(tiny_k2, tmp_path_factory):
    return export_onnx(tiny_k2, tmp_path_factory.mktemp("onnx") / "tiny-k2")


def op_types(folder) -> list[str]:
    return [node.op_type for node in onnx.load(str(folder / ONNX_FILE), load_external_data=False).graph.node]


def cosine(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return (first * second).sum(1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))


def test_weights_round_trip_within_half_a_step():
    weight = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    weight[:, 3] = np.abs(weight[:, 3])  # a column with no negative value still keeps 0 exact
    quantised, scale, zero_point = quantise_weight(weight)
    restored = (quantised.astype(np.float32) - zero_point) * scale
    assert np.all(np.abs(restored - weight) <= scale / 2 + 1e-7)


def test_one_layer_matches_per_token_int8_arithmetic():
    """The graph computes round-to-nearest per-token int8 of the non-outlier channels, exactly as written down here."""
    import onnxruntime

    rng = np.random.default_rng(1)
    inputs = rng.standard_normal((2, 5, 8)).astype(np.float32)
    weight = rng.standard_normal((8, 6)).astype(np.float32)
    outliers = np.array([2, 5])
    inputs[..., 2] *= 50  # an outlier channel
    builder = GraphBuilder(onnx)
    matmul = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="linear")
    nodes, activations = quantise_activations(builder, "x", outliers, 8)
    nodes += quantise_linear(builder, matmul, weight, outliers, activations)
    graph = onnx.helper.make_graph(
        nodes, "one-layer", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 5, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], builder.initializers,
    )
    opsets = [onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid(MICROSOFT_DOMAIN, 1)]
    session = onnxruntime.InferenceSession(
        onnx.helper.make_model(graph, opset_imports=opsets).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    output = session.run(None, {"x": inputs})[0]

    rest = inputs.copy()
    rest[..., outliers] = 0
    scale = np.abs(rest).max(-1, keepdims=True) / 127
    rest_weight = weight.copy()
    rest_weight[outliers] = 0
    quantised, weight_scale, zero_point = quantise_weight(rest_weight)
    expected = (np.round(rest / scale) * scale) @ ((quantised.astype(np.float32) - zero_point) * weight_scale)
    expected += inputs[..., outliers] @ weight[outliers]
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)


def test_all_channels_as_outliers_is_the_fp32_graph(exported_folder, tmp_path):
    """With every channel on the fp32 side the int8 side multiplies zeros: the rewrite itself is exact."""
    folder = quantize_onnx(exported_folder, tmp_path / "int8", CORPUS, outlier_channels=10 * HIDDEN_SIZE, keep_float=())
    assert "MatMulIntegerToFloat" in op_types(folder)
    np.testing.assert_allclose(OnnxEncoder(folder).encode(TEXTS), OnnxEncoder(exported_folder).encode(TEXTS), atol=1e-5)


def test_int8_vectors_stay_close_and_keep_the_bidirectional_effect(tiny_model_dir, exported_folder, tmp_path):
    folder = quantize_onnx(exported_folder, tmp_path / "int8", CORPUS, outlier_channels=2)
    int8_vectors = OnnxEncoder(folder).encode(TEXTS)
    fp32_vectors = OnnxEncoder(exported_folder).encode(TEXTS)
    causal = bellm_st.build(tiny_model_dir, bidirectional_layers=0, pooling="mean", device="cpu").encode(TEXTS)
    assert not np.allclose(int8_vectors, fp32_vectors, atol=1e-6), "nothing was quantised"
    assert cosine(int8_vectors, fp32_vectors).min() > 0.999
    error = np.linalg.norm(int8_vectors - fp32_vectors, axis=1)
    effect = np.linalg.norm(fp32_vectors - causal, axis=1)
    assert (error < 0.2 * effect).all(), "int8 error is comparable to the bi-directional layers' effect"


def test_keep_float_leaves_matching_layers_alone(exported_folder, tmp_path):
    layers = linear_layers(onnx.load(str(exported_folder / ONNX_FILE), load_external_data=False))
    down = [layer for layer in layers if layer.module.endswith("mlp.down_proj")]
    assert len(down) == 4, [layer.module for layer in layers]
    everything = op_types(quantize_onnx(exported_folder, tmp_path / "all", CORPUS, keep_float=()))
    default = op_types(quantize_onnx(exported_folder, tmp_path / "default", CORPUS))
    assert everything.count("MatMulIntegerToFloat") == len(layers)
    assert default.count("MatMulIntegerToFloat") == len(layers) - 3  # down_proj of blocks 0, 1 and 2


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"outlier_channels": -1}, ValueError),
        ({"keep_float": "*"}, TypeError),
        ({"keep_float": ("*",)}, ValueError),
        ({"calibration_texts": []}, ValueError),
    ],
)
def test_bad_arguments_are_refused(exported_folder, tmp_path, kwargs, error):
    arguments = {"calibration_texts": CORPUS, **kwargs}
    with pytest.raises(error):
        quantize_onnx(exported_folder, tmp_path / "int8", **arguments)


def test_refuses_to_overwrite_its_source(exported_folder):
    with pytest.raises(ValueError, match="source folder"):
        quantize_onnx(exported_folder, exported_folder, CORPUS)
