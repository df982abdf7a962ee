"""Encoding throughput, side by side in one run: our module (k = 0, 1, 2...) against the same backbone
as a plain sentence-transformers model (Transformer + last-token Pooling), end to end
(tokenisation included, embeddings back on the host), through ``SentenceTransformer.encode`` and
through ``bellm_st.fast.bulk.encode_bulk``.

Reports sentences/s, real tokens/s (padding not counted), model TFLOP/s and % of the device's
peak, peak memory, and the ratios the performance issue asks about (patch overhead k=1 vs k=0,
ours vs plain). Variants are interleaved over repeats so that drift hits all alike.

GPU (one H100, results in $OUT):
    python benchmarks/encode_throughput.py --base smollm2-135m --data ../shared/data/sts/stsb-dev.tsv
CPU smoke test of every code path:
    python benchmarks/encode_throughput.py --device cpu --sentences 200 --batch-size 32 --bulk-batch-size 64 --repeats 1
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import harness
import numpy as np
import torch

from bellm_st.api import DEFAULT_BIDIRECTIONAL_LAYERS, DEFAULT_POOLING
from bellm_st.fast import bulk, flat
from bellm_st.fast.bulk import encode_bulk
from bellm_st.fast.kernels import attention_without_cudnn, compile_decoder_layers
from bellm_st.module import BeLLMEncoder
from bellm_st.prompts import DEFAULT_TEMPLATE, Template
from bellm_st.tokenization import ensure_pad_token


def arguments():
    parser = harness.base_arguments(__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    harness.add_dtype_argument(parser)
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2)")
    parser.add_argument("--sentences", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=256, help="batch size for SentenceTransformer.encode")
    parser.add_argument("--bulk-batch-size", type=int, default=1024, help="most texts per encode_bulk batch")
    parser.add_argument("--bulk-max-tokens", type=int, default=65_536, help="most tokens per encode_bulk batch")
    parser.add_argument("--bulk-configs", default=None,
                        help="extra encode_bulk batch limits for the default k (and the compiled variants), "
                             "e.g. 4096:131072,8192:262144 (rows:tokens)")
    parser.add_argument("--layers", default=f"0,1,2,{DEFAULT_BIDIRECTIONAL_LAYERS}",
                        help="bi-directional layer counts k to compare (the last one is the library default)")
    parser.add_argument("--pooling", default=DEFAULT_POOLING, help="pooling of our module (and of the plain model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-plain", action="store_true", help="leave out the plain sentence-transformers model")
    parser.add_argument("--skip-st-encode", action="store_true", help="only the encode_bulk path for our module")
    parser.add_argument("--compile", action="store_true", help="add ours k=max with torch.compile (bulk path)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--compile-layers", action="store_true",
                        help="add ours k=max with each decoder layer compiled (regional compilation, bulk path)")
    parser.add_argument("--forward-only", action="store_true",
                        help="add the compiled-layers model (or the eager one) timed on batches tokenised beforehand and "
                             "already on the device: the forward passes alone, to see what the pipeline costs")
    parser.add_argument("--profile", action="store_true",
                        help="profile one pass of each forward-only and compiled variant: kernel time against wall time")
    parser.add_argument("--compare-buckets", action="store_true",
                        help="add each bulk variant of the default k again with exact-length batches instead of flat ones")
    parser.add_argument("--wait-full", action="store_true",
                        help="add the compiled-layers bulk variant with batches that wait for full length buckets "
                             "(the policy before bounded pending rows)")
    parser.add_argument("--packed-longest", type=int, default=None,
                        help="flat batches whose longest text exceeds this use the flash kernel instead of the packed "
                             "one (default: the library's, bellm_st.fast.flat.packed_longest; 0: flash always)")
    parser.add_argument("--devices", default=None, help="e.g. cuda:0,cuda:1: add multi-device encoding variants")
    parser.add_argument("--check-fp32", type=int, default=1000, help="sentences compared with an fp32 reference (0: skip)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help=f"device peak for %% of peak (default {harness.H100_BF16_DENSE_TFLOPS} on CUDA)")
    return parser.parse_args()


ST_POOLING = {"last": "lasttoken", "mean": "mean", "mean_text": "mean"}


def plain_sentence_transformer(path: str, dtype: torch.dtype, attn: str, device: str, pooling: str):
    """The same backbone as an ordinary sentence-transformers model: Transformer + Pooling."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            transformer = st_models.Transformer(path, model_kwargs={"dtype": dtype, "attn_implementation": attn})
        except TypeError:  # releases that still call it model_args
            transformer = st_models.Transformer(path, model_args={"dtype": dtype, "attn_implementation": attn})
        tokenizer = getattr(transformer, "tokenizer", None) or getattr(transformer, "processor", None)
        if tokenizer is not None and hasattr(tokenizer, "pad_token"):
            ensure_pad_token(tokenizer)
        dimension = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
        pooling = st_models.Pooling(dimension(), pooling_mode=ST_POOLING[pooling])
    return SentenceTransformer(modules=[transformer, pooling], device=device)


def our_model(path: str, layers: int, dtype: torch.dtype, attn: str, device: str, pooling: str):
    from sentence_transformers import SentenceTransformer

    encoder = BeLLMEncoder(path, bidirectional_layers=layers, pooling=pooling,
                           model_kwargs={"dtype": dtype, "attn_implementation": attn})
    return SentenceTransformer(modules=[encoder], device=device)


def real_lengths(model, sentences: list[str], chunk: int = 4096) -> np.ndarray:
    """Tokens per sentence after templating (what the model really processes)."""
    lengths = [model.preprocess(sentences[start : start + chunk])["attention_mask"].sum(1).numpy()
               for start in range(0, len(sentences), chunk)]
    return np.concatenate(lengths)


def padded_tokens(lengths: np.ndarray, batch_size: int) -> int:
    """Tokens including padding when batches are sorted by length (as both encode paths do)."""
    ordered = np.sort(lengths)[::-1]
    return int(sum(ordered[start] * len(ordered[start : start + batch_size])
                   for start in range(0, len(ordered), batch_size)))


def main() -> None:
    args = arguments()
    if args.packed_longest is not None:
        flat.PACKED_LONGEST = flat.PACKED_LONGEST_WIDE_HEADS = args.packed_longest
    device = torch.device(args.device)
    dtype = harness.parse_dtype(args.dtype, device)
    peak = args.peak_tflops or (harness.H100_BF16_DENSE_TFLOPS if device.type == "cuda" else None)
    layer_counts = [int(value) for value in args.layers.split(",")]
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.manual_seed(args.seed)
    path = harness.resolve_base(args.base)
    sentences = harness.load_sentences(args.data, args.sentences, args.words, args.seed)
    template = Template.parse(DEFAULT_TEMPLATE)

    result: dict[str, Any] = {"benchmark": "encode_throughput", "environment": harness.environment(),
                              "arguments": vars(args), "dtype": str(dtype), "variants": {}}
    ours = our_model(path, layer_counts[0], dtype, args.attn, args.device, args.pooling)
    encoder = ours[0]
    parameters = harness.non_embedding_parameters(encoder.auto_model)
    shape = harness.decoder_shape(encoder.auto_model.config)
    lengths = real_lengths(ours, sentences)
    flops = harness.forward_flops(parameters, shape, lengths)
    result["workload"] = {
        "sentences": len(sentences), "mean_words": float(np.mean([len(s.split()) for s in sentences])),
        "mean_tokens": float(lengths.mean()), "max_tokens": int(lengths.max()), "real_tokens": int(lengths.sum()),
        "padding_fraction_encode": 1 - lengths.sum() / padded_tokens(lengths, args.batch_size),
        "padding_fraction_bulk": 0.0,  # encode_bulk batches texts of equal token length
        "non_embedding_parameters": parameters, "model_tflop_per_pass": flops / 1e12, **shape,
    }
    print(f"{len(sentences)} sentences, {lengths.mean():.1f} tokens each after templating; "
          f"{parameters / 1e6:.1f}M non-embedding parameters; {flops / 1e12:.2f} TFLOP per pass")

    # Each variant embeds a list of texts end to end (host strings in, host vectors out).
    variants: dict[str, Callable[[list[str]], np.ndarray]] = {}

    def with_layers(layers: int, function: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
        def run(texts: list[str]) -> np.ndarray:
            if encoder.bidirectional_layers != layers:
                encoder.bidirectional_layers = layers
            return function(texts)
        return run

    def tokenize_only(texts: list[str]) -> np.ndarray:
        """The host side of encode_bulk alone: tokenise in chunks and form its batches (flat or by length)."""
        for _ in bulk._batches(ours, texts, None, args.bulk_batch_size, args.bulk_max_tokens, None):
            pass
        return np.zeros((1, 1))

    variants["tokenize-only"] = tokenize_only
    if not args.skip_plain:
        with harness.recorded_failure(result, "plain-st"):
            plain = plain_sentence_transformer(path, dtype, args.attn, args.device, args.pooling)
            variants["plain-st"] = lambda texts: plain.encode(
                [template.render(text) for text in texts], batch_size=args.batch_size)
    for layers in layer_counts:
        if not args.skip_st_encode:
            variants[f"ours-k{layers}"] = with_layers(
                layers, lambda texts: ours.encode(texts, batch_size=args.batch_size))
        variants[f"ours-k{layers}-bulk"] = with_layers(
            layers, lambda texts: encode_bulk(ours, texts, batch_size=args.bulk_batch_size,
                                              max_batch_tokens=args.bulk_max_tokens))
    top = layer_counts[-1]
    if args.compare_buckets:
        variants[f"ours-k{top}-bulk-buckets"] = with_layers(
            top, lambda texts: encode_bulk(ours, texts, batch_size=args.bulk_batch_size,
                                           max_batch_tokens=args.bulk_max_tokens, flat_batches=False))
    for config in (args.bulk_configs.split(",") if args.bulk_configs else []):
        rows, tokens = (int(value) for value in config.split(":"))
        variants[f"ours-k{top}-bulk-b{rows}-t{tokens}"] = with_layers(
            top, lambda texts, rows=rows, tokens=tokens: encode_bulk(ours, texts, batch_size=rows, max_batch_tokens=tokens))
    def add_compiled(variant: str, failure_key: str, warmup_key: str, what: str, compile_model) -> None:
        """A bulk variant of a freshly compiled model, warmed up on the whole workload once."""
        with harness.recorded_failure(result, failure_key):
            compiled = our_model(path, top, dtype, args.attn, args.device, args.pooling)
            compile_model(compiled)

            def bulk_encode(texts: list[str]) -> np.ndarray:
                return encode_bulk(compiled, texts, batch_size=args.bulk_batch_size, max_batch_tokens=args.bulk_max_tokens)

            seconds, _ = harness.timed(lambda: bulk_encode(sentences), device)
            result[warmup_key] = seconds
            print(f"{what} warm-up (whole workload once): {seconds:.1f} s", flush=True)
            variants[variant] = bulk_encode
            for config in (args.bulk_configs.split(",") if args.bulk_configs else []):
                rows, tokens = (int(value) for value in config.split(":"))
                variants[f"{variant}-b{rows}-t{tokens}"] = lambda texts, rows=rows, tokens=tokens: encode_bulk(
                    compiled, texts, batch_size=rows, max_batch_tokens=tokens)
            if args.compare_buckets:
                variants[f"{variant}-buckets"] = lambda texts: encode_bulk(
                    compiled, texts, batch_size=args.bulk_batch_size, max_batch_tokens=args.bulk_max_tokens,
                    flat_batches=False)
            if args.wait_full:
                variants[f"{variant}-waitfull"] = with_pending_batches(None, lambda texts: encode_bulk(
                    compiled, texts, batch_size=args.bulk_batch_size, max_batch_tokens=args.bulk_max_tokens,
                    flat_batches=False))
            if args.forward_only:
                variants[f"{variant}-forward-only"] = forward_only(compiled)

    def with_pending_batches(pending: int | None, function: Callable[[list[str]], np.ndarray]):
        def run(texts: list[str]) -> np.ndarray:
            saved, bulk.PENDING_BATCHES = bulk.PENDING_BATCHES, pending
            try:
                return function(texts)
            finally:
                bulk.PENDING_BATCHES = saved
        return run

    def forward_only(model) -> Callable[[list[str]], np.ndarray]:
        """The model run over encode_bulk's batches, tokenised beforehand and already on the device.

        Only the workload's own texts are prepared (other text lists, e.g. the warm-up's, run
        end to end), so the timing holds the forward passes and pooling alone.
        """
        prepared = [(indices, {key: value.to(device) if isinstance(value, torch.Tensor) else value
                               for key, value in features.items()})
                    for indices, features in bulk._batches(model, sentences, None, args.bulk_batch_size,
                                                           args.bulk_max_tokens, None)]

        def run(texts: list[str]) -> np.ndarray:
            if texts is not sentences:
                return encode_bulk(model, texts, batch_size=args.bulk_batch_size, max_batch_tokens=args.bulk_max_tokens)
            order, pieces = [], []
            with torch.inference_mode(), attention_without_cudnn():
                for indices, features in prepared:
                    order.append(indices)
                    pieces.append(model(dict(features))["sentence_embedding"].float())
            embeddings = torch.cat(pieces)[torch.from_numpy(np.argsort(np.concatenate(order), kind="stable")).to(device)]
            return embeddings.cpu().numpy()
        return run

    if args.compile:
        add_compiled(f"ours-k{top}-bulk-compiled", "compile", "compile_warmup_seconds", "torch.compile",
                     lambda model: model[0].auto_model.compile(dynamic=True, mode=args.compile_mode))
    if args.compile_layers:
        add_compiled(f"ours-k{top}-bulk-compiled-layers", "compile-layers", "compile_layers_warmup_seconds",
                     "per-layer torch.compile", lambda model: compile_decoder_layers(model[0].decoder))
    if args.forward_only and not args.compile_layers:
        variants[f"ours-k{top}-bulk-forward-only"] = with_layers(top, forward_only(ours))
    pool = None
    if args.devices:
        devices = args.devices.split(",")
        # encode_bulk in each process of sentence-transformers' pool; every call starts its own pool,
        # so these timings include the processes' start-up, as `bellm-st encode --device a,b` pays it.
        encoder.bidirectional_layers = top  # the pool's processes take the model as it is
        variants[f"ours-k{top}-bulk-pool-{len(devices)}dev"] = with_layers(
            top, lambda texts: encode_bulk(ours, texts, devices=devices, batch_size=args.bulk_batch_size,
                                           max_batch_tokens=args.bulk_max_tokens))
        if args.compile_layers:
            # One graph per direction and kernel choice: more than dynamo's default of 8.
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
            variants[f"ours-k{top}-bulk-pool-compiled-layers-{len(devices)}dev"] = lambda texts: encode_bulk(
                ours, texts, devices=devices, compile_layers=True, batch_size=args.bulk_batch_size,
                max_batch_tokens=args.bulk_max_tokens)
        if not args.skip_st_encode:
            with harness.recorded_failure(result, "st-multiprocess"):
                encoder.bidirectional_layers = top
                pool = ours.start_multi_process_pool(devices)
                ours.to(args.device)  # starting a pool moves the model to the CPU, under the other variants' feet
                variants[f"ours-k{top}-st-multiprocess-{len(devices)}dev"] = lambda texts: ours.encode(
                    texts, batch_size=args.batch_size, pool=pool)

    warm = sentences[: min(len(sentences), 4 * args.bulk_batch_size)]
    for name, function in list(variants.items()):
        with harness.recorded_failure(result, f"{name} warm-up"):
            function(warm)
            continue
        variants.pop(name)

    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, np.ndarray] = {}
    memory: dict[str, float] = {}
    for repeat in range(args.repeats):
        for name, function in variants.items():
            if name not in times:
                continue
            with harness.recorded_failure(result, f"{name} run {repeat}"):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds, embeddings = harness.timed(lambda run=function: run(sentences), device)
                times[name].append(seconds)
                print(f"  {name} repeat {repeat}: {len(sentences) / seconds:,.0f} sentences/s", flush=True)
                if repeat == 0:
                    outputs[name] = np.asarray(embeddings)
                    if device.type == "cuda":
                        memory[name] = torch.cuda.max_memory_allocated(device) / 2**30
                continue
            times.pop(name)

    rows = []
    for name, seconds in times.items():
        if not seconds:
            continue
        median = float(np.median(seconds))
        row: dict[str, Any] = {
            "variant": name, "seconds_median": median, "seconds_all": seconds,
            "sentences_per_s": len(sentences) / median,
        }
        if name != "tokenize-only":
            row.update({
                "tokens_per_s": float(lengths.sum()) / median,
                "tflops": flops / median / 1e12,
                "pct_peak": 100 * flops / median / 1e12 / peak if peak else None,
                "peak_memory_gib": memory.get(name),
                "finite": bool(np.isfinite(outputs[name]).all()) if name in outputs else None,
            })
        result["variants"][name] = row
        rows.append(row)
    result["ratios"] = ratios(result["variants"], layer_counts, outputs)
    if args.profile and device.type == "cuda":
        result["profiles"] = {}
        for name, function in variants.items():
            if "compiled" in name or "forward-only" in name:
                with harness.recorded_failure(result, f"{name} profile"):
                    result["profiles"][name] = harness.device_busy_profile(lambda run=function: run(sentences), device)
                    print(f"profile {name}: {result['profiles'][name]}", flush=True)
                    if "forward-only" in name:
                        result["profiles"][f"{name} top kernels"] = harness.profile_top_ops(
                            lambda run=function: run(sentences), device, steps=1, rows=25)
    with harness.recorded_failure(result, "fp32 reference"):
        compared = {name: output[: args.check_fp32] for name, output in outputs.items()
                    if name.startswith(f"ours-k{top}-bulk")}
        if args.check_fp32 and dtype != torch.float32 and compared:
            result["fp32_reference"] = fp32_agreement(path, top, args, sentences[: args.check_fp32], compared)
    if pool is not None:
        with harness.recorded_failure(result, "stop pool"):
            ours.stop_multi_process_pool(pool)

    harness.print_table(rows, ["variant", "sentences_per_s", "tokens_per_s", "tflops", "pct_peak", "peak_memory_gib"],
                        title=f"encode throughput on {result['environment'].get('gpus', [result['environment']['cpu']])[0]} "
                              f"({dtype}, {args.attn}, {args.pooling} pooling, encode batch {args.batch_size}, "
                              f"bulk batch {args.bulk_batch_size})")
    print("\nratios:", {key: round(value, 4) if isinstance(value, float) else value for key, value in result["ratios"].items()})
    if "fp32_reference" in result:
        print("vs fp32 reference:", result["fp32_reference"])
    for key, message in result.get("errors", {}).items():
        print(f"error in {key}: {message}")
    harness.write_result("encode_throughput", result, args.out)


def ratios(variants: dict[str, dict], layer_counts: list[int], outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Throughput ratios (>1 means the first is faster) and agreement checks between variants."""
    speed = {name: row["sentences_per_s"] for name, row in variants.items()}
    found: dict[str, Any] = {}
    for suffix in ("", "-bulk"):
        base = f"ours-k0{suffix}"
        for layers in layer_counts:
            name = f"ours-k{layers}{suffix}"
            if layers and base in speed and name in speed:
                found[f"patch_overhead_pct k={layers}{suffix or ' encode'}"] = 100 * (speed[base] / speed[name] - 1)
    if "plain-st" in speed:
        for name in ("ours-k0", "ours-k0-bulk"):
            if name in speed:
                found[f"{name} / plain-st"] = speed[name] / speed["plain-st"]
        if "ours-k0" in outputs and "plain-st" in outputs:
            found["cosine ours-k0 vs plain-st (min)"] = float(harness.cosine_rows(outputs["ours-k0"], outputs["plain-st"]).min())
    top = layer_counts[-1]
    single = speed.get(f"ours-k{top}-bulk")
    for name, value in speed.items():
        if single and name.endswith("dev") and name.startswith(f"ours-k{top}-"):
            found[f"{name} / ours-k{top}-bulk (one device)"] = value / single
    for name in outputs:
        if name.endswith("-buckets") and name[: -len("-buckets")] in outputs:
            found[f"cosine {name[: -len('-buckets')]} vs {name} (min)"] = float(
                harness.cosine_rows(outputs[name[: -len("-buckets")]], outputs[name]).min())
    if f"ours-k{top}" in outputs and f"ours-k{top}-bulk" in outputs:
        found[f"cosine bulk vs encode k={top} (min)"] = float(
            harness.cosine_rows(outputs[f"ours-k{top}"], outputs[f"ours-k{top}-bulk"]).min())
    return found


def fp32_agreement(
    path: str, layers: int, args, sentences: list[str], low_precision: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """How far each variant's low-precision embeddings are from one fp32 reference, and whether they hold NaNs."""
    reference_model = our_model(path, layers, torch.float32, args.attn, args.device, args.pooling)
    reference = reference_model.encode(sentences, batch_size=args.batch_size)
    del reference_model
    found = {}
    for name, output in low_precision.items():
        cosine = harness.cosine_rows(output, reference)
        found[name] = {"cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
                       "finite": bool(np.isfinite(output).all())}
    return found


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - started:.0f} s")
