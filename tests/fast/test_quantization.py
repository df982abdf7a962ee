"""int8 ONNX graphs: the split into int8 and fp32 parts is exact, and the int8 vectors stay close to fp32."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

import bellm_st
from bellm_st.fast.quantization import (
    INT8_GRAPH_FILE,
    MICROSOFT_DOMAIN,
    GraphBuilder,
    linear_layers,
    quantise_activations,
    quantise_linear,
    quantise_weight,
    quantize_onnx,
)
from bellm_st.onnx_backbone import GRAPH_FILE
from bellm_st.testing import CORPUS

TEXTS = [
    "A man is playing a guitar on the stage.",
    "Hi",
    "The stock market fell sharply today, and then it fell again.",
    "Children are playing football in the park.",
]
HIDDEN_SIZE = 32  # bellm_st.testing.tiny_config


@pytest.fixture()
def exported_folder(tiny_onnx_dir, tmp_path):
    """A copy of the tiny exported model (k=2, mean pooling) to add int8 graphs to."""
    return shutil.copytree(tiny_onnx_dir, tmp_path / "model")


def op_types(graph) -> list[str]:
    return [node.op_type for node in onnx.load(str(graph), load_external_data=False).graph.node]


def encode(folder, file_name: str = GRAPH_FILE) -> np.ndarray:
    return bellm_st.load(str(folder), backend="onnx", model_kwargs={"file_name": file_name}).encode(TEXTS)


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


def test_all_channels_as_outliers_is_the_fp32_graph(exported_folder):
    """With every channel on the fp32 side the int8 side multiplies zeros: the rewrite itself is exact."""
    graph = quantize_onnx(exported_folder, CORPUS, outlier_channels=10 * HIDDEN_SIZE, keep_float=())
    assert graph == exported_folder / INT8_GRAPH_FILE
    assert "MatMulIntegerToFloat" in op_types(graph)
    np.testing.assert_allclose(encode(exported_folder, INT8_GRAPH_FILE), encode(exported_folder), atol=1e-5)


def test_int8_vectors_stay_close_and_keep_the_bidirectional_effect(exported_folder):
    quantize_onnx(exported_folder, CORPUS, outlier_channels=2)
    int8_vectors = encode(exported_folder, INT8_GRAPH_FILE)
    fp32_vectors = encode(exported_folder)
    causal_model = bellm_st.load(str(exported_folder), device="cpu")
    causal_model[0].bidirectional_layers = 0
    causal = causal_model.encode(TEXTS)
    assert not np.allclose(int8_vectors, fp32_vectors, atol=1e-6), "nothing was quantised"
    assert cosine(int8_vectors, fp32_vectors).min() > 0.999
    error = np.linalg.norm(int8_vectors - fp32_vectors, axis=1)
    effect = np.linalg.norm(fp32_vectors - causal, axis=1)
    assert (error < 0.2 * effect).all(), "int8 error is comparable to the bi-directional layers' effect"


def test_keep_float_leaves_matching_layers_alone(exported_folder):
    layers = linear_layers(onnx.load(str(exported_folder / GRAPH_FILE), load_external_data=False))
    down = [layer for layer in layers if layer.module.endswith("mlp.down_proj")]
    assert len(down) == 4, [layer.module for layer in layers]
    everything = op_types(quantize_onnx(exported_folder, CORPUS, keep_float=(), file_name="model_all.onnx"))
    default = op_types(quantize_onnx(exported_folder, CORPUS))
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
def test_bad_arguments_are_refused(exported_folder, kwargs, error):
    arguments = {"calibration_texts": CORPUS, **kwargs}
    with pytest.raises(error):
        quantize_onnx(exported_folder, **arguments)
    assert not (exported_folder / INT8_GRAPH_FILE).exists()


@pytest.mark.parametrize(("file_name", "error", "message"), [
    (GRAPH_FILE, FileExistsError, "exists already"),
    ("elsewhere/model_int8.onnx", ValueError, "must name an .onnx file of onnx/"),
])
def test_refuses_to_write_over_a_graph_or_outside_the_folder(exported_folder, file_name, error, message):
    before = sorted(path.name for path in (exported_folder / "onnx").iterdir())
    with pytest.raises(error, match=message):
        quantize_onnx(exported_folder, CORPUS, file_name=file_name)
    assert sorted(path.name for path in (exported_folder / "onnx").iterdir()) == before


def test_a_folder_without_a_graph_names_the_export(tiny_model, tmp_path):
    tiny_model.save(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="bellm-st export --onnx"):
        quantize_onnx(tmp_path, CORPUS)
