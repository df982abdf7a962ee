"""int8 for the ONNX CPU path: per-token activations, fp32 outlier channels, a few layers kept fp32.

:func:`quantize_onnx` rewrites the graph :func:`bellm_st.fast.export_onnx` put in a model
folder so that its linear layers multiply in int8 on ONNX Runtime, and writes it beside the fp32
one as ``onnx/model_int8.onnx``, which ``backend="onnx"`` loads with
``model_kwargs={"file_name": "onnx/model_int8.onnx"}``.

Why not ONNX Runtime's own ``quantize_dynamic``: it quantises each activation tensor with one
scale, and a decoder's hidden states hold a few tokens and a few channels hundreds of times larger
than the rest, so one scale leaves the ordinary values a handful of levels: on the shipped model
the bi-directional effect was lost, and SmoothQuant-style smoothing did not bring the vectors
back near fp32's (figures in docs/BENCHMARKS.md, "int8 with outlier handling"). Here, as in
LLM.int8(), each linear layer's input is split in two:

* the ``outlier_channels`` input channels with the largest magnitudes on calibration texts stay
  fp32 and meet their fp32 weight rows in a small matmul;
* the rest are quantised per token (one scale per row, symmetric, stored as uint8 around 128)
  and meet uint8 weights quantised per output channel, in ONNX Runtime's fused
  ``MatMulIntegerToFloat``, which applies the row scales itself.

The weights are uint8 (asymmetric) rather than int8 because the AVX2 kernel for uint8 x int8
sums pairs of products in 16 bits and saturates with full-range int8 weights; ONNX Runtime's
remedy, 7-bit weights, costs more accuracy than int8 activations do. Layers matching
``keep_float`` stay untouched: by default the down projections of the first three blocks, where
a Llama-style decoder writes its massive activations and where int8 error grew most (measured in
``docs/BENCHMARKS.md``).

Needs the ``onnx`` extra: ``pip install 'bellm-st[onnx]'``.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bellm_st.fast.onnx_export import require_extra
from bellm_st.inputs import validate_texts
from bellm_st.module import BeLLMEncoder
from bellm_st.onnx_backbone import GRAPH_FILE, GRAPH_FOLDER, GRAPH_INPUTS

DEFAULT_OUTLIER_CHANNELS = 16
DEFAULT_KEEP_FLOAT = ("*.layers.[012].mlp.down_proj",)
MICROSOFT_DOMAIN = "com.microsoft"
QUANTISED_PREFIX = "int8"
INT8_GRAPH_FILE = f"{GRAPH_FOLDER}/model_int8.onnx"


@dataclass(frozen=True)
class LinearLayer:
    """A MatMul of the graph that is a linear layer: activations times a constant weight."""

    node: Any
    module: str  # the torch module it was exported from, e.g. "backbone.layers.3.mlp.up_proj"


def module_path(node: Any) -> str:
    """The torch module a node came from, as torch's dynamo exporter records it ("" if unknown)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [scope.strip(" '\"") for scope in prop.value.strip("[]").split(",")]
            return scopes[-2] if len(scopes) >= 2 else ""
    return node.name


def linear_layers(model: Any) -> list[LinearLayer]:
    """The graph's linear layers: MatMuls whose right operand is a 2-D weight initializer."""
    weights = {initializer.name: initializer for initializer in model.graph.initializer}
    return [
        LinearLayer(node, module_path(node))
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in weights and len(weights[node.input[1]].dims) == 2
    ]


def calibrate(
    model: Any, encoder: BeLLMEncoder, texts: Sequence[str], layers: Sequence[LinearLayer], batch_size: int = 16
) -> dict[str, np.ndarray]:
    """Largest magnitude of each input channel of each linear layer over the real tokens of ``texts``.

    The graph runs with the layers' inputs as extra outputs, so the statistics come from the
    graph and kernels that will run quantised; padding positions are left out.
    """
    onnx = require_extra("onnx")
    onnxruntime = require_extra("onnxruntime")
    inputs = sorted({layer.node.input[0] for layer in layers})
    outputs = len(model.graph.output)
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in inputs)
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    finally:
        del model.graph.output[outputs:]
    largest: dict[str, np.ndarray] = {}
    for start in range(0, len(texts), batch_size):
        features = encoder.preprocess(texts[start : start + batch_size])
        feeds = {name: features[name].numpy() for name in GRAPH_INPUTS}
        real_tokens = features["attention_mask"].numpy().astype(bool)
        for name, values in zip(inputs, session.run(inputs, feeds)):
            channel_max = np.abs(values[real_tokens]).max(axis=0)
            largest[name] = np.maximum(largest[name], channel_max) if name in largest else channel_max
    return largest


def quantise_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 weights, scales and zero points per output channel (columns of a [in, out] weight)."""
    low = np.minimum(weight.min(axis=0), 0.0)
    high = np.maximum(weight.max(axis=0), 0.0)
    scale = np.maximum(high - low, np.finfo(np.float32).tiny) / 255.0
    zero_point = np.round(-low / scale)
    quantised = np.clip(np.round(weight / scale) + zero_point, 0, 255)
    return quantised.astype(np.uint8), scale.astype(np.float32), zero_point.astype(np.uint8)


class GraphBuilder:
    """Collects the new nodes and initializers of the rewrite under unique names."""

    def __init__(self, onnx: Any):
        self.onnx = onnx
        self.initializers: list[Any] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op_type: str, inputs: list[str], output: str, **attributes: Any) -> Any:
        domain = MICROSOFT_DOMAIN if op_type == "MatMulIntegerToFloat" else ""
        return self.onnx.helper.make_node(op_type, inputs, [output], name=output, domain=domain, **attributes)


@dataclass(frozen=True)
class SplitActivations:
    """Graph names of one activation tensor's two parts, shared by every layer that reads it."""

    uint8: str  # the non-outlier channels, per-token quantised around zero point 128
    scale: str  # one scale per token, [..., 1]
    zero_point: str
    outliers: str  # the outlier channels, fp32


def quantise_activations(
    builder: GraphBuilder, name: str, outliers: np.ndarray, channels: int
) -> tuple[list[Any], SplitActivations]:
    """Nodes that split one activation tensor into its fp32 outlier channels and per-token uint8 rest."""
    prefix = f"{QUANTISED_PREFIX}/{name}"
    keep = np.ones(channels, dtype=np.float32)
    keep[outliers] = 0.0
    nodes = [
        builder.node("Mul", [name, builder.constant(prefix + "/keep", keep)], prefix + "/rest"),
        builder.node("Abs", [prefix + "/rest"], prefix + "/abs"),
        builder.node("ReduceMax", [prefix + "/abs", builder.constant(prefix + "/axis", np.array([-1]))],
                     prefix + "/max", keepdims=1),
        # An all-zero row gets scale 0: its uint8 values are then arbitrary but are multiplied by 0.
        builder.node("Div", [prefix + "/max", builder.constant(prefix + "/levels", np.array(127.0, np.float32))],
                     prefix + "/scale"),
        builder.node("Div", [prefix + "/rest", prefix + "/scale"], prefix + "/steps"),
        # + 128.5 then a truncating cast: round to nearest, stored around the zero point 128
        builder.node("Add", [prefix + "/steps", builder.constant(prefix + "/offset", np.array(128.5, np.float32))],
                     prefix + "/shifted"),
        builder.node("Cast", [prefix + "/shifted"], prefix + "/uint8", to=builder.onnx.TensorProto.UINT8),
        builder.node("Gather", [name, builder.constant(prefix + "/outlier_index", outliers.astype(np.int64))],
                     prefix + "/outliers", axis=-1),
    ]
    zero_point = builder.constant(prefix + "/zero_point", np.array(128, np.uint8))
    return nodes, SplitActivations(prefix + "/uint8", prefix + "/scale", zero_point, prefix + "/outliers")


def quantise_linear(
    builder: GraphBuilder, node: Any, weight: np.ndarray, outliers: np.ndarray, activations: SplitActivations
) -> list[Any]:
    """Nodes that replace one linear MatMul: uint8 matmul of the rest plus fp32 matmul of the outliers."""
    prefix = f"{QUANTISED_PREFIX}/{node.name}"
    rest = weight.copy()
    rest[outliers] = 0.0
    quantised, scale, zero_point = quantise_weight(rest)
    return [
        builder.node("MatMulIntegerToFloat", [
            activations.uint8, builder.constant(prefix + "/weight", quantised), activations.scale,
            builder.constant(prefix + "/weight_scale", scale), activations.zero_point,
            builder.constant(prefix + "/weight_zero_point", zero_point),
        ], prefix + "/int8"),
        builder.node("MatMul", [activations.outliers, builder.constant(prefix + "/outlier_weight", weight[outliers])],
                     prefix + "/fp32"),
        builder.onnx.helper.make_node("Add", [prefix + "/int8", prefix + "/fp32"], list(node.output),
                                      name=prefix + "/sum"),
    ]


def quantize_onnx(
    folder: str | os.PathLike,
    calibration_texts: Sequence[str],
    *,
    file_name: str = INT8_GRAPH_FILE,
    outlier_channels: int = DEFAULT_OUTLIER_CHANNELS,
    keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
) -> Path:
    """Add an int8 copy of a model folder's ONNX graph, for faster CPU inference with nearly the same vectors.

    Args:
        folder: a model folder holding ``onnx/model.onnx`` (from :func:`bellm_st.fast.export_onnx` or
            ``bellm-st export --onnx``).
        calibration_texts: a few hundred texts like the ones to be encoded, not the evaluation
            texts; they choose each layer's outlier channels.
        file_name: where the int8 graph goes, a new file of the ``onnx/`` folder; load it with
            ``backend="onnx", model_kwargs={"file_name": file_name}``.
        outlier_channels: input channels per layer kept in fp32 (0 quantises every channel).
        keep_float: ``fnmatch`` patterns of torch module names (``backbone.layers.0.mlp.down_proj``)
            whose layers stay fp32.

    Returns the int8 graph's path. The vectors differ from fp32; ``docs/BENCHMARKS.md`` measures how much.
    """
    onnx = require_extra("onnx")
    folder = Path(folder)
    source = folder / GRAPH_FILE
    if not source.is_file():
        raise FileNotFoundError(
            f"{folder} holds no {GRAPH_FILE}; export one first with `bellm-st export --onnx` or bellm_st.fast.export_onnx"
        )
    name = file_name.removeprefix(f"{GRAPH_FOLDER}/")
    target = folder / GRAPH_FOLDER / name
    if Path(name).name != name or not name.endswith(".onnx"):
        raise ValueError(f"file_name={file_name!r} must name an .onnx file of {GRAPH_FOLDER}/, e.g. {INT8_GRAPH_FILE!r}")
    if target.exists():
        raise FileExistsError(f"{target} exists already (the fp32 graph or an earlier int8 one); "
                              "pass another file_name or delete it (nothing was written)")
    if isinstance(outlier_channels, bool) or not isinstance(outlier_channels, int) or outlier_channels < 0:
        raise ValueError(f"outlier_channels={outlier_channels!r} must be an int >= 0")
    if isinstance(keep_float, str):
        raise TypeError(f"keep_float={keep_float!r} must be a sequence of patterns, e.g. ({keep_float!r},)")
    texts = validate_texts(calibration_texts, where="calibration_texts")
    if not texts:
        raise ValueError("calibration_texts is empty; pass a few hundred texts like the ones you will encode")

    model = onnx.load(str(source))
    layers = [layer for layer in linear_layers(model)
              if not any(fnmatch.fnmatchcase(layer.module, pattern) for pattern in keep_float)]
    if not layers:
        raise ValueError(f"no linear layer of {folder} is left to quantise (keep_float={list(keep_float)!r})")
    largest = calibrate(model, BeLLMEncoder.load(str(folder), backend="onnx"), texts, layers)
    weights = {initializer.name: initializer for initializer in model.graph.initializer}
    builder = GraphBuilder(onnx)
    activations: dict[str, SplitActivations] = {}
    outliers: dict[str, np.ndarray] = {}
    replaced = {id(layer.node): layer for layer in layers}
    nodes = []
    for node in model.graph.node:
        if id(node) not in replaced:
            nodes.append(node)
            continue
        source = node.input[0]
        if source not in activations:
            channels = largest[source].shape[0]
            count = min(outlier_channels, channels)
            outliers[source] = np.sort(np.argsort(-largest[source], kind="stable")[:count])
            split, activations[source] = quantise_activations(builder, source, outliers[source], channels)
            nodes.extend(split)
        weight = onnx.numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        nodes.extend(quantise_linear(builder, node, weight, outliers[source], activations[source]))

    still_used = {name for node in nodes for name in node.input}
    kept = [initializer for initializer in model.graph.initializer if initializer.name in still_used]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + builder.initializers)
    if not any(opset.domain == MICROSOFT_DOMAIN for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MICROSOFT_DOMAIN, 1))

    data_file = target.with_name(target.name + ".data")
    data_file.unlink(missing_ok=True)  # a leftover without its graph: onnx would append to it
    onnx.save_model(model, str(target), save_as_external_data=True, location=data_file.name)
    return target
