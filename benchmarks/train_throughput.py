"""LoRA training throughput of ``bellm_st.training.train``: triplets/s, tokens/s, model TFLOP/s and peak memory.

What is timed is the training users run: a :class:`bellm_st.training.Recipe` handed to
``bellm_st.training.train``, which runs sentence-transformers' ``SentenceTransformerTrainer``
with the recipe's objective (contrastive + angle), LoRA adapters, data loader, packing and
precision (bf16 on GPUs that compute it natively). A trainer callback drains the device after
the warm-up steps and after the last step and times the steps in between; a forward pre-hook on
the encoder counts the tokens those steps embed (for tokens/s, FLOPs and the padding share).

Variants change one recipe field each and run one after the other in the same process:
``k<layers>`` (bi-directional layers), ``-gc`` (gradient checkpointing), ``-compile`` (each
decoder layer compiled, ``compile_layers``), ``-nodrop`` (LoRA dropout 0), ``-padded`` (packing
off: ``packing_row_length=0``; packing is the recipe's default). Everything else is the recipe's
default, so a figure is what ``bellm-st train`` gives with the same options.

Under torchrun the trainer trains data-parallel (one process per GPU); the reported triplets/s
is the global figure. Pass the one-GPU JSON with --baseline to print scaling efficiency.

One GPU:   python benchmarks/train_throughput.py --base smollm2-135m --triplets ../shared/data/nli/triplets.tsv
Two GPUs:  torchrun --nproc_per_node 2 benchmarks/train_throughput.py --base ... --baseline $OUT/train_throughput_1gpu.json
CPU smoke: python benchmarks/train_throughput.py --base <tiny folder> --device cpu --variants k2,k2-padded \
           --batch-sizes 4 --steps 2 --warmup-steps 1
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
import warnings
from typing import Any

import harness
import torch
from datasets import Dataset
from torch import distributed
from transformers import TrainerCallback

from bellm_st.api import DEFAULT_BIDIRECTIONAL_LAYERS
from bellm_st.model import encoder_of
from bellm_st.training import DataSource, Recipe, train

TRIPLETS_SOURCE = "benchmark-triplets"  # the in-memory training set's name in the recipe
VARIANT_OPTIONS = ("gc", "compile", "nodrop", "padded")


def arguments():
    parser = harness.base_arguments(__doc__.split("\n")[0])
    parser.add_argument("--triplets", default=str(harness.DEFAULT_TRIPLETS_TSV), help="NLI triplets TSV")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default=f"k{DEFAULT_BIDIRECTIONAL_LAYERS},k{DEFAULT_BIDIRECTIONAL_LAYERS}-padded,"
                                              f"k{DEFAULT_BIDIRECTIONAL_LAYERS}-gc,k0",
                        help="comma list of k<layers>[-gc][-compile][-nodrop][-padded]: bi-directional layers, "
                             "gradient checkpointing, compiled decoder layers, LoRA dropout 0, packing off")
    parser.add_argument("--batch-sizes", default="256", help="triplets per step (per GPU), comma list")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (at least 1)")
    parser.add_argument("--recipe", default=None,
                        help="recipe.json to start from (default: the Recipe defaults); variants change it")
    parser.add_argument("--baseline", default=None, help="JSON of a one-GPU run, for scaling efficiency")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--name", default=None, help="result file name (default train_throughput_<N>gpu)")
    args = parser.parse_args()
    if args.warmup_steps < 1 or args.steps < 1:
        parser.error("--warmup-steps and --steps must be at least 1 (compiling and data-loader start-up are not timed)")
    return args


def variant_changes(name: str) -> dict[str, Any]:
    """The recipe fields a variant name sets."""
    parts = name.split("-")
    if not parts[0].startswith("k") or not parts[0][1:].isdigit() or not set(parts[1:]) <= set(VARIANT_OPTIONS):
        raise SystemExit(f"variant {name!r} must look like k16, k16-gc, k0-padded, k16-compile-nodrop")
    changes: dict[str, Any] = {"bidirectional_layers": int(parts[0][1:]),
                               "gradient_checkpointing": "gc" in parts, "compile_layers": "compile" in parts}
    if "nodrop" in parts:
        changes["lora_dropout"] = 0.0
    if "padded" in parts:
        changes["packing_row_length"] = 0
    return changes


class StepTimer(TrainerCallback):
    """Times the trainer's steps after the warm-up, with the device drained at both ends.

    The clock starts when warm-up step ``warmup_steps`` ends and stops when the last step ends,
    so the timed span holds whole steps: loading their batches, forward, backward and optimizer
    step. While it runs, a forward pre-hook on the encoder keeps each text's token count (real
    tokens) and each batch's size (tokens the backbone computes, padding included), as device
    tensors, so counting adds no wait for the GPU.
    """

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps
        self.seconds: float | None = None
        self.text_lengths: list[torch.Tensor] = []
        self.computed_tokens = 0
        self.losses: list[float] = []
        self.peak_memory_gib: float | None = None
        self._start: float | None = None
        self._hook = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        encoder = encoder_of(model)
        self.device = args.device
        self.parameters = harness.non_embedding_parameters(encoder.decoder)
        self.shape = harness.decoder_shape(encoder.decoder.config)
        self.trainable_parameters = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
        self._hook = encoder.register_forward_pre_hook(self._count)
        return control

    def _count(self, module, inputs) -> None:
        if self._start is None or self.seconds is not None:
            return
        features = inputs[0]
        self.text_lengths.append(features["attention_mask"].sum(1))
        self.computed_tokens += features["input_ids"].numel()

    def _drain(self) -> None:
        harness.synchronize(self.device)
        if distributed.is_initialized():
            distributed.barrier()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup_steps:
            self._drain()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self._start = time.perf_counter()
        elif state.global_step == state.max_steps and self._start is not None:
            self._drain()
            self.seconds = time.perf_counter() - self._start
            if self.device.type == "cuda":
                self.peak_memory_gib = torch.cuda.max_memory_allocated(self.device) / 2**30
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
        return control


def triplet_dataset(triplets: list[tuple[str, str, str]]) -> Dataset:
    anchors, positives, negatives = zip(*triplets)
    return Dataset.from_dict({"anchor": list(anchors), "positive": list(positives), "negative": list(negatives)})


def run_variant(name: str, batch_size: int, recipe: Recipe, dataset: Dataset, args, world: int) -> dict[str, Any]:
    recipe = recipe.with_changes(**variant_changes(name), batch_size=batch_size,
                                 max_steps=args.warmup_steps + args.steps)
    timer = StepTimer(args.warmup_steps)
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as output_dir:
        outcome = train(recipe, output_dir, device="cpu" if args.device == "cpu" else None, callbacks=[timer],
                        in_memory={TRIPLETS_SOURCE: dataset})
    if timer.seconds is None:
        raise RuntimeError(f"the trainer stopped at step {outcome.global_step} before the timed steps ended")
    text_lengths = torch.cat(timer.text_lengths).cpu().numpy()
    # frozen backbone: forward (2N) + gradients w.r.t. activations (2N); LoRA and recomputation not counted
    flops = 2 * harness.forward_flops(timer.parameters, timer.shape, text_lengths) * world
    seconds = timer.seconds
    peak = args.peak_tflops or (harness.H100_BF16_DENSE_TFLOPS if args.device == "cuda" else None)
    row = {
        "variant": name, "batch_size_per_device": batch_size, "devices": world, "steps": args.steps,
        "seconds": seconds,
        "triplets_per_s": world * batch_size * args.steps / seconds,
        "sequences_per_s": 3 * world * batch_size * args.steps / seconds,
        "tokens_per_s": world * float(text_lengths.sum()) / seconds,
        "model_tflops": flops / seconds / 1e12,
        "pct_peak": 100 * flops / seconds / 1e12 / (peak * world) if peak else None,
        "peak_memory_gib": timer.peak_memory_gib,
        "trainable_parameters": timer.trainable_parameters,
        "padding_fraction": 1 - float(text_lengths.sum()) / timer.computed_tokens,
        "logged_losses": timer.losses,
        "training_loss": outcome.training_loss,
        "finite": all(map(_finite, [*timer.losses, outcome.training_loss])),
        "recipe": recipe.to_dict(),
    }
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def main() -> None:
    args = arguments()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    is_main = int(os.environ.get("RANK", "0")) == 0
    warnings.filterwarnings("ignore", category=UserWarning)
    base = harness.resolve_base(args.base)
    recipe = Recipe.load(args.recipe) if args.recipe else Recipe()
    recipe = dataclasses.replace(recipe, base=base, init_model=None, train_data=[DataSource(TRIPLETS_SOURCE, "triplets")],
                                 dev_data=[], eval_retrieval=None, seed=args.seed, save_steps=10**9)
    batch_sizes = [int(value) for value in args.batch_sizes.split(",")]
    steps_needed = (args.warmup_steps + args.steps) * max(batch_sizes) * world
    triplets = harness.load_triplets(args.triplets, min(steps_needed, 200_000), args.words, args.seed)
    dataset = triplet_dataset(triplets)
    result: dict[str, Any] = {"benchmark": "train_throughput", "timed": "bellm_st.training.train",
                              "environment": harness.environment(), "arguments": vars(args), "world_size": world,
                              "variants": {}}
    rows = []
    for batch_size in batch_sizes:
        for name in args.variants.split(","):
            key = f"{name} b{batch_size}"
            with harness.recorded_failure(result, key):
                row = run_variant(name, batch_size, recipe, dataset, args, world)
                result["variants"][key] = row
                rows.append(row)
                if is_main:
                    print(f"{key}: {row['triplets_per_s']:,.1f} triplets/s, peak {row['peak_memory_gib']} GiB", flush=True)
    if args.baseline and is_main:
        with harness.recorded_failure(result, "baseline"):
            with open(args.baseline, encoding="utf-8") as baseline:
                result["scaling"] = scaling(json.load(baseline), result)
    if is_main:
        harness.print_table(rows, ["variant", "batch_size_per_device", "devices", "triplets_per_s", "tokens_per_s",
                                   "model_tflops", "pct_peak", "peak_memory_gib", "padding_fraction", "training_loss"],
                            title=f"LoRA r={recipe.lora_r} training throughput through bellm_st.training.train")
        if "scaling" in result:
            print("\nscaling vs one device:", result["scaling"])
        harness.write_result(args.name or f"train_throughput_{world}gpu", result, args.out)


def scaling(single: dict[str, Any], several: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Throughput with N devices over one device's, per variant present in both runs."""
    found = {}
    for key, row in several["variants"].items():
        if key in single.get("variants", {}):
            speedup = row["triplets_per_s"] / single["variants"][key]["triplets_per_s"]
            found[key] = {"speedup": speedup, "efficiency": speedup / several["world_size"]}
    return found


if __name__ == "__main__":
    main()
