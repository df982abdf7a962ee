"""Attention kernels for flat rows of short texts, side by side: time per call and agreement.

A flat batch (``bellm_st.fast.flat``) holds thousands of sentences end to end; each token attends
to its own text only, causally in the lower layers and both ways in the patched ones. Compared
on one such row, with the token lengths of real sentences under the BeLLM prompt:

- ``flash-varlen``: PyTorch's variable-length flash kernel (what flat batches used so far);
- ``packed MxN/w``: ``bellm_st.fast.packed_attention`` with M queries per program, N keys per
  step and w warps (several texts share a tile);
- ``efficient-varlen``: PyTorch's memory-efficient kernel with text boundaries (64-row tiles).

Each kernel's output is compared with the flash kernel's (max abs difference, bf16).

GPU:  python benchmarks/attention_kernels.py --base smollm2-135m --data ../shared/data/sts/stsb-dev.tsv
"""

from __future__ import annotations

import itertools
from typing import Any

import harness
import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer

from bellm_st.fast.packed_attention import packed_attention
from bellm_st.prompts import DEFAULT_TEMPLATE
from bellm_st.fast.flat import _VARLEN_KERNEL, _kernel_attention


def arguments():
    parser = harness.base_arguments(__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=4096, help="texts in the flat row (encode_bulk's GPU batch)")
    parser.add_argument("--steps", type=int, default=50, help="calls timed per kernel and direction")
    parser.add_argument("--lengths", default=None, help="a .npy of token lengths to use instead of tokenising (--base)")
    parser.add_argument("--shape", default=None, help="heads,key heads,head dim instead of --base's config, e.g. 9,3,64")
    parser.add_argument("--length-scale", type=int, default=1, help="multiply every length (longer texts)")
    parser.add_argument("--tiles", default="64x32x4,64x64x4,128x32x4,128x64x8,32x32x2,64x16x4",
                        help="packed-kernel tiles to try: queries x keys x warps")
    return parser.parse_args()


def token_lengths(base: str, data: str, count: int, words: int, seed: int) -> np.ndarray:
    """Token lengths of ``count`` real sentences under the default prompt."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    sentences = harness.load_sentences(data, count, words, seed)
    rendered = [DEFAULT_TEMPLATE.format(text=sentence) for sentence in sentences]
    return np.array([len(ids) for ids in tokenizer(rendered)["input_ids"]])


def flash_varlen(query, key, value, bounds, longest, scale, causal):
    """The flat path's kernel call as the library makes it, on (tokens, heads, dim) tensors."""
    window = (-1, 0) if causal else (-1, -1)
    as_module_input = [tensor.transpose(0, 1)[None] for tensor in (query, key, value)]
    return _kernel_attention(_VARLEN_KERNEL, *as_module_input, bounds, longest, window, scale)[0]


def efficient_varlen(query, key, value, bounds, longest, scale, causal):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    output = torch.ops.aten._efficient_attention_forward(
        query[None], key[None], value[None], None, bounds, bounds, longest, longest, 0.0, int(causal), False,
        scale=scale)[0]
    return output[0]


def time_calls(call, steps: int) -> float:
    """Median milliseconds of one call, each timed with CUDA events."""
    for _ in range(3):
        call()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def main() -> None:
    args = arguments()
    base = None if args.lengths and args.shape else harness.resolve_base(args.base)
    if args.shape:
        heads, kv_heads, head_dim = (int(part) for part in args.shape.split(","))
    else:
        config = AutoConfig.from_pretrained(base)
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if args.lengths:
        lengths = np.resize(np.load(args.lengths), args.texts).astype(np.int64)
    else:
        lengths = token_lengths(base, args.data, args.texts, args.words, args.seed)
    lengths = lengths * args.length_scale
    lengths = lengths[: max(1, len(lengths) // args.length_scale)]  # about the same tokens per row
    tokens = int(lengths.sum())
    device = torch.device("cuda")
    generator = torch.Generator(device).manual_seed(args.seed)
    query = torch.randn(tokens, heads, head_dim, device=device, dtype=torch.bfloat16, generator=generator)
    key = torch.randn(tokens, kv_heads, head_dim, device=device, dtype=torch.bfloat16, generator=generator)
    value = torch.randn(tokens, kv_heads, head_dim, device=device, dtype=torch.bfloat16, generator=generator)
    bounds = torch.tensor([0, *itertools.accumulate(lengths.tolist())], device=device, dtype=torch.int32)
    text_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=device, dtype=torch.int32),
                                            torch.from_numpy(lengths).to(device))
    longest, scale = int(lengths.max()), head_dim ** -0.5
    print(f"{len(lengths)} texts, {tokens} tokens (mean {lengths.mean():.1f}, max {longest}); "
          f"{heads} heads, {kv_heads} key heads, dim {head_dim}")

    kernels: dict[str, Any] = {
        "flash-varlen": lambda causal: flash_varlen(query, key, value, bounds, longest, scale, causal),
        "efficient-varlen": lambda causal: efficient_varlen(query, key, value, bounds, longest, scale, causal),
    }
    for tile in args.tiles.split(","):
        m, n, w = (int(part) for part in tile.split("x"))
        kernels[f"packed {tile}"] = (lambda m, n, w: lambda causal: packed_attention(
            query, key, value, text_of_token, bounds, scale, (-1, 0) if causal else (-1, -1), tiles=(m, n, w)))(m, n, w)

    rows, results = [], {"texts": len(lengths), "tokens": tokens, "mean_length": float(lengths.mean()),
                         "max_length": longest, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
                         "kernels": {}}
    references = {causal: kernels["flash-varlen"](causal) for causal in (True, False)}
    for name, kernel in kernels.items():
        with harness.recorded_failure(results, name):
            row: dict[str, Any] = {"kernel": name}
            for causal in (True, False):
                direction = "causal" if causal else "both ways"
                difference = (kernel(causal).float() - references[causal].float()).abs().max().item()
                row[f"{direction} ms"] = time_calls(lambda: kernel(causal), args.steps)
                row[f"{direction} max diff"] = difference
            rows.append(row)
            results["kernels"][name] = row
    harness.print_table(rows, ["kernel", "causal ms", "causal max diff", "both ways ms", "both ways max diff"],
                        title="attention on one flat row (median ms per call)")
    results["environment"] = harness.environment()
    results["arguments"] = vars(args)
    harness.write_result("attention_kernels", results, args.out)


if __name__ == "__main__":
    main()
