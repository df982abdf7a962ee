"""What the bi-directional patch costs per forward pass: k layers against k=0, on one padded batch.

End-to-end encoding (``encode_throughput.py``) answers the same question, but on a shared host
its run-to-run noise (±20% between repeats of one variant) hides a few per cent. Here one
padded batch of real sentences is embedded again and again, the two settings alternating round
by round, so drift hits both alike; the overhead is the median of the per-round ratios. The
masks the patched layers use are also timed alone: the library's (``bidirectional_from_causal``,
built from the model's own causal mask) against transformers' builder plus the per-text
padding-only builder (what the patch used before packed rows needed the per-text restriction).

GPU:  python benchmarks/patch_overhead.py --base smollm2-135m --data ../shared/data/sts/stsb-dev.tsv
CPU smoke test:  python benchmarks/patch_overhead.py --device cpu --base <tiny model> --layers 2 --rows 8 --rounds 2
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import harness
import numpy as np
import torch
from transformers import masking_utils

from bellm_st.api import DEFAULT_BIDIRECTIONAL_LAYERS, DEFAULT_POOLING
from bellm_st.bidirectional import bidirectional_from_causal, find_decoder_layers
from bellm_st.module import BeLLMEncoder


def arguments():
    parser = harness.base_arguments(__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    harness.add_dtype_argument(parser)
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--layers", type=int, default=DEFAULT_BIDIRECTIONAL_LAYERS)
    parser.add_argument("--rows", type=int, default=256, help="sentences per batch (encode's default batch is 32; ours 256)")
    parser.add_argument("--rounds", type=int, default=20, help="alternations of k=0 and k")
    parser.add_argument("--steps", type=int, default=20, help="forward passes per setting per round")
    parser.add_argument("--mask-steps", type=int, default=200, help="mask builds timed per way of building it")
    return parser.parse_args()


def capture_incoming_mask(encoder: BeLLMEncoder, features: dict[str, torch.Tensor]) -> Any:
    """The causal mask transformers hands to the first decoder layer for this batch."""
    seen = {}

    def grab(module, args, kwargs):
        seen["mask"] = kwargs["attention_mask"]

    handle = find_decoder_layers(encoder.decoder)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        encoder(dict(features))
    finally:
        handle.remove()
    return seen["mask"]


def main() -> None:
    args = arguments()
    device = torch.device(args.device)
    dtype = harness.parse_dtype(args.dtype, device)
    warnings.filterwarnings("ignore", category=UserWarning)
    path = harness.resolve_base(args.base)
    encoder = BeLLMEncoder(path, bidirectional_layers=args.layers, pooling=DEFAULT_POOLING,
                           model_kwargs={"dtype": dtype, "attn_implementation": args.attn}).to(device).eval()
    sentences = harness.load_sentences(args.data, args.rows, args.words, args.seed)
    features = {key: value.to(device) for key, value in encoder.preprocess(sentences).items()}
    lengths = features["attention_mask"].sum(1)
    padding = 1 - float(lengths.sum()) / features["attention_mask"].numel()
    result: dict[str, Any] = {"benchmark": "patch_overhead", "environment": harness.environment(), "arguments": vars(args),
                              "dtype": str(dtype), "batch_shape": list(features["input_ids"].shape),
                              "padding_fraction": padding}
    print(f"batch {tuple(features['input_ids'].shape)}, {padding:.1%} padding, {dtype}, {args.attn}", flush=True)

    def forwards() -> None:
        for _ in range(args.steps):
            encoder(dict(features))

    seconds: dict[int, list[float]] = {0: [], args.layers: []}
    with torch.inference_mode():
        for layers in seconds:  # warm-up of both settings
            encoder.bidirectional_layers = layers
            forwards()
        for round_number in range(args.rounds):  # the order alternates, so a trend within rounds cancels
            for layers in (list(seconds) if round_number % 2 == 0 else list(seconds)[::-1]):
                encoder.bidirectional_layers = layers
                elapsed, _ = harness.timed(forwards, device)
                seconds[layers].append(elapsed / args.steps)
        ratios = np.array(seconds[args.layers]) / np.array(seconds[0])
        if device.type == "cuda":  # kernel time does not depend on how busy the host is
            result["kernel_ms_per_forward"] = {}
            for layers in seconds:
                encoder.bidirectional_layers = layers
                profiled = harness.device_busy_profile(forwards, device)
                result["kernel_ms_per_forward"][f"k={layers}"] = profiled["kernel_ms"] / args.steps
            print(f"GPU kernel ms per forward: {result['kernel_ms_per_forward']}", flush=True)
        result["forward_ms"] = {f"k={layers}": 1000 * float(np.median(values)) for layers, values in seconds.items()}
        result["overhead_pct_median"] = 100 * (float(np.median(ratios)) - 1)
        result["overhead_pct_quartiles"] = [100 * (float(q) - 1) for q in np.percentile(ratios, [25, 75])]
        result["overhead_pct_rounds"] = [round(100 * (float(ratio) - 1), 2) for ratio in ratios]

        encoder.bidirectional_layers = args.layers
        incoming = capture_incoming_mask(encoder, features)
        hidden = torch.zeros((*features["input_ids"].shape, encoder.decoder.config.hidden_size), dtype=dtype, device=device)
        rows, length = features["input_ids"].shape

        padding = features["attention_mask"].bool()

        def through_transformers() -> Any:
            return masking_utils.create_bidirectional_mask(config=encoder.decoder.config, inputs_embeds=hidden,
                                                           attention_mask=padding)

        builders = {"from_causal_mask (library)": lambda: bidirectional_from_causal(incoming),
                    "transformers' padding-only builder": through_transformers}
        result["mask_ms"] = {}
        for name, build in builders.items():
            build()
            harness.synchronize(device)
            started = time.perf_counter()
            for _ in range(args.mask_steps):
                build()
            harness.synchronize(device)
            result["mask_ms"][name] = 1000 * (time.perf_counter() - started) / args.mask_steps
        same, reference = builders["from_causal_mask (library)"](), through_transformers()
        # transformers gives no mask for a batch without padding; there is nothing to compare then
        result["masks_equal"] = None if reference is None else bool(
            torch.equal(same.expand(rows, *same.shape[1:]), reference.expand(rows, *same.shape[1:])))

    print(f"forward ms per batch: {result['forward_ms']}")
    print(f"patch overhead k={args.layers} vs k=0: {result['overhead_pct_median']:+.2f}% median of {args.rounds} rounds "
          f"(quartiles {result['overhead_pct_quartiles'][0]:+.2f}%, {result['overhead_pct_quartiles'][1]:+.2f}%)")
    print(f"mask build ms: {result['mask_ms']}; equal: {result['masks_equal']}")
    harness.write_result("patch_overhead", result, args.out)


if __name__ == "__main__":
    main()
