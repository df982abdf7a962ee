"""The model's own encoding ceiling on one fixed batch shape: eager against torch.compile, with a kernel profile.

No tokenisation and no host work: the same (rows x length) batch without padding is embedded
again and again, so the figures say how fast the forward pass itself can go, and the profile
says which kernels the time goes to. Compare with ``encode_throughput.py`` (end to end) to see
how much the host side costs.

GPU:  python benchmarks/forward_ceiling.py --base smollm2-135m --rows 4096 --length 28
CPU smoke test:  python benchmarks/forward_ceiling.py --device cpu --rows 8 --length 16 --steps 2
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import harness
import numpy as np
import torch

from bellm_st.api import DEFAULT_BIDIRECTIONAL_LAYERS, DEFAULT_POOLING
from bellm_st.fast.bulk import EQUAL_LENGTH_ROWS
from bellm_st.fast.kernels import compile_decoder_layers, uncompile_decoder_layers
from bellm_st.module import BeLLMEncoder


def arguments():
    parser = harness.base_arguments(__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    harness.add_dtype_argument(parser)
    parser.add_argument("--layers", type=int, default=DEFAULT_BIDIRECTIONAL_LAYERS)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--length", type=int, default=28, help="tokens per row (the benchmark sentences average ~28)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--variants", default="eager,eager-mask,compile",
                        help="eager (no mask, as encode_bulk runs), eager-mask (all-ones mask given), compile "
                             "(whole model, static shape), compile-max-autotune, compile-layers (each decoder layer, "
                             "dynamic shapes, as encode --compile runs)")
    parser.add_argument("--profile", action="store_true", help="print the top kernels of the eager variant")
    parser.add_argument("--peak-tflops", type=float, default=None)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    device = torch.device(args.device)
    dtype = harness.parse_dtype(args.dtype, device)
    peak = args.peak_tflops or (harness.H100_BF16_DENSE_TFLOPS if device.type == "cuda" else None)
    warnings.filterwarnings("ignore", category=UserWarning)
    from sentence_transformers import SentenceTransformer
    from torch.nn.attention import SDPBackend, sdpa_kernel

    path = harness.resolve_base(args.base)
    encoder = BeLLMEncoder(path, bidirectional_layers=args.layers, pooling=DEFAULT_POOLING,
                           model_kwargs={"dtype": dtype, "attn_implementation": "sdpa"})
    model = SentenceTransformer(modules=[encoder], device=str(device)).eval()
    generator = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(10, encoder.tokenizer.vocab_size - 10, (args.rows, args.length), generator=generator)
    base_features = {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device)}
    parameters = harness.non_embedding_parameters(encoder.auto_model)
    shape = harness.decoder_shape(encoder.auto_model.config)
    flops = harness.forward_flops(parameters, shape, np.full(args.rows, args.length))
    result: dict[str, Any] = {"benchmark": "forward_ceiling", "environment": harness.environment(),
                              "arguments": vars(args), "dtype": str(dtype), "variants": {}}
    rows = []
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

    def forward(network, padding_free: bool) -> torch.Tensor:
        features = dict(base_features, batch_layout=EQUAL_LENGTH_ROWS) if padding_free else dict(base_features)
        return network(features)["sentence_embedding"]

    reference = None
    for name in args.variants.split(","):
        with harness.recorded_failure(result, name):
            network, padding_free = model, name != "eager-mask"
            started = time.perf_counter()
            whole_model = name in ("compile", "compile-max-autotune")
            if name == "compile-layers":
                compile_decoder_layers(encoder.decoder)
            if whole_model:
                mode = "max-autotune-no-cudagraphs" if name == "compile-max-autotune" else None
                network = SentenceTransformer(modules=[encoder], device=str(device)).eval()
                compiled = torch.compile(encoder.auto_model, dynamic=False, mode=mode)
                original = encoder.auto_model
                encoder.auto_model = compiled
            try:
                with torch.inference_mode(), sdpa_kernel(backends):
                    output = forward(network, padding_free)  # warm-up (compiles)
                    harness.synchronize(device)
                    warmup_seconds = time.perf_counter() - started
                    forward(network, padding_free)
                    harness.synchronize(device)
                    started = time.perf_counter()
                    for _ in range(args.steps):
                        forward(network, padding_free)
                    harness.synchronize(device)
                    seconds = (time.perf_counter() - started) / args.steps
                    if args.profile and name == "eager":
                        result["profile_top_kernels"] = harness.profile_top_ops(
                            lambda: forward(network, padding_free), device, steps=2, rows=20)
            finally:
                if whole_model:
                    encoder.auto_model = original
                uncompile_decoder_layers(encoder.decoder)
            output = output.float().cpu().numpy()
            if reference is None:
                reference = output
            row = {"variant": name, "sentences_per_s": args.rows / seconds, "tokens_per_s": args.rows * args.length / seconds,
                   "tflops": flops / seconds / 1e12, "pct_peak": 100 * flops / seconds / 1e12 / peak if peak else None,
                   "warmup_seconds": warmup_seconds,
                   "cosine_to_first_min": float(harness.cosine_rows(output, reference).min())}
            result["variants"][name] = row
            rows.append(row)
            print(f"{name}: {row['sentences_per_s']:,.0f} sentences/s (warm-up {warmup_seconds:.1f} s)", flush=True)
    harness.print_table(rows, ["variant", "sentences_per_s", "tokens_per_s", "tflops", "pct_peak", "warmup_seconds",
                               "cosine_to_first_min"],
                        title=f"forward only, {args.rows} x {args.length} tokens, k={args.layers}, {dtype}")
    harness.write_result("forward_ceiling", result, args.out)


if __name__ == "__main__":
    main()
