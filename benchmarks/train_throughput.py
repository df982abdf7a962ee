"""LoRA training throughput: triplets/s, tokens/s, model TFLOP/s and peak memory, for one or many GPUs.

Each step embeds (anchor, positive, hard negative) triplets in ONE forward pass (all three
columns tokenised and padded together, tokenised ahead in a background thread), computes the
in-batch contrastive loss (MultipleNegativesRankingLoss: the positive must beat every other
positive and every hard negative, scale 20, cosine), back-propagates into LoRA adapters (r=16 on
every linear layer of a frozen bf16 backbone) and steps a fused AdamW. Variants (k, gradient
checkpointing, batch size) run one after the other in the same process.

Under torchrun each process drives one GPU with DistributedDataParallel; the loss uses each
GPU's own batch as negatives and the reported triplets/s is the global figure. Pass the
one-GPU JSON with --baseline to print scaling efficiency.

One GPU:   python benchmarks/train_throughput.py --base ~/w/smollm2-135m --triplets .stage/c/nli/triplets.tsv
Two GPUs:  torchrun --nproc_per_node 2 benchmarks/train_throughput.py --base ... --baseline $OUT/train_throughput_1gpu.json
CPU smoke: python benchmarks/train_throughput.py --device cpu --batch-sizes 4 --steps 2 --warmup-steps 1
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
import warnings
from typing import Any

import harness
import numpy as np
import torch
from peft.helpers import disable_input_dtype_casting
from torch import distributed
from torch.nn import functional

from bellm_st.api import DEFAULT_BIDIRECTIONAL_LAYERS, DEFAULT_POOLING, has_native_bf16
from bellm_st.fast.kernels import attention_without_cudnn, compile_decoder_layers
from bellm_st.module import BeLLMEncoder
from bellm_st.fast.packing import DEFAULT_ROW_LENGTH, PackedRows, merge_packed

LOSS_SCALE = 20.0


def arguments():
    parser = harness.base_arguments(__doc__.split("\n")[0])
    parser.add_argument("--triplets", default=str(harness.DEFAULT_TRIPLETS_TSV), help="NLI triplets TSV")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    harness.add_dtype_argument(parser, "the frozen backbone")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--pooling", default=DEFAULT_POOLING)
    parser.add_argument("--variants", default=f"k{DEFAULT_BIDIRECTIONAL_LAYERS},k{DEFAULT_BIDIRECTIONAL_LAYERS}-gc,k0",
                        help="comma list of k<layers>[-gc][-compile][-rcompile][-nodrop][-sorted][-static][-packed][-nocast]: "
                             "bi-directional layers, gradient checkpointing, torch.compile of the model or of each layer, "
                             "LoRA dropout 0, the step's sequences in 4 length-sorted chunks, one padded shape, texts "
                             "packed into rows (no padding), LoRA inputs left in bf16 (peft's input casting off)")
    parser.add_argument("--packing-row-length", type=int, default=DEFAULT_ROW_LENGTH, help="row length of -packed variants")
    parser.add_argument("--profile", action="store_true",
                        help="profile 3 steps of the first variant and print the top CUDA kernels")
    parser.add_argument("--cudnn-attention", action="store_true",
                        help="let SDPA use cuDNN (bellm-st turns it off: it re-plans for every batch shape)")
    parser.add_argument("--static-length", type=int, default=64,
                        help="-static variants pad every sequence to this many tokens (one shape: compiles once)")
    parser.add_argument("--batch-sizes", default="256", help="triplets per step (per GPU), comma list")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--baseline", default=None, help="JSON of a one-GPU run, for scaling efficiency")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--name", default=None, help="result file name (default train_throughput_<N>gpu)")
    return parser.parse_args()


def parse_variant(name: str) -> dict[str, Any]:
    parts = name.split("-")
    options = {"gc", "compile", "rcompile", "nodrop", "sorted", "static", "packed", "nocast"}
    if not parts[0].startswith("k") or not parts[0][1:].isdigit() or not set(parts[1:]) <= options:
        raise SystemExit(f"variant {name!r} must look like k2, k2-gc, k0-compile, k16-nodrop-sorted")
    if "packed" in parts and ({"sorted", "static"} & set(parts)):
        raise SystemExit(f"variant {name!r}: -packed has no padding to sort or fix; leave out -sorted and -static")
    return {"layers": int(parts[0][1:]), "checkpointing": "gc" in parts, "compile": "compile" in parts,
            "dropout": 0.0 if "nodrop" in parts else None, "sorted_chunks": 4 if "sorted" in parts else 1,
            "static": "static" in parts, "packed": "packed" in parts, "nocast": "nocast" in parts,
            "compile_layers": "rcompile" in parts}


def build_model(path: str, variant: dict[str, Any], args, device: torch.device, dtype: torch.dtype):
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer

    encoder = BeLLMEncoder(path, bidirectional_layers=variant["layers"], pooling=args.pooling,
                           model_kwargs={"dtype": dtype, "attn_implementation": args.attn},
                           batch_layout=PackedRows(args.packing_row_length) if variant["packed"] else None)
    if variant["checkpointing"]:
        encoder.decoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    dropout = args.lora_dropout if variant["dropout"] is None else variant["dropout"]
    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=dropout,
                        target_modules="all-linear", bias="none")
    encoder.auto_model = get_peft_model(encoder.auto_model, config)
    model = SentenceTransformer(modules=[encoder], device=str(device))
    model.train()
    if variant["compile"]:
        encoder.auto_model.compile(dynamic=not variant["static"])
    if variant["compile_layers"]:
        compile_decoder_layers(encoder.decoder, dynamic=not variant["static"])
    return model


class Prefetcher(threading.Thread):
    """Tokenises the next steps' triplets (all three columns in one padded batch) while the GPU trains."""

    def __init__(self, model, triplets: list[tuple[str, str, str]], batch_size: int, steps: int, pin: bool,
                 chunks: int = 1, static_length: int | None = None):
        super().__init__(daemon=True)
        self.model, self.triplets, self.batch_size, self.steps, self.pin = model, triplets, batch_size, steps, pin
        self.chunks = chunks
        self.static_length = static_length
        self.ready: queue.Queue = queue.Queue(maxsize=4)

    def run(self) -> None:
        try:
            for step in range(self.steps):
                start = (step * self.batch_size) % len(self.triplets)
                batch = [self.triplets[(start + offset) % len(self.triplets)] for offset in range(self.batch_size)]
                columns = [text for column in zip(*batch) for text in column]  # anchors, positives, negatives
                if self.model[0].batch_layout is not None:  # as bellm-st train: each column packed, then merged
                    parts = [self.model.preprocess(list(column)) for column in zip(*batch)]
                    features = [merge_packed(parts, self.model[0].tokenizer.pad_token_id)]
                    order = None
                elif self.chunks == 1:
                    features = [self.model.preprocess(columns)]
                    order = None
                else:  # length-sorted chunks, each padded to its own longest: less padding, more passes
                    lengths = self.model.preprocess(columns)["attention_mask"].sum(1).numpy()
                    order = np.argsort(lengths, kind="stable")
                    features = [self.model.preprocess([columns[index] for index in part])
                                for part in np.array_split(order, self.chunks)]
                if self.static_length:
                    features = [pad_to(part, self.static_length, self.model.tokenizer) for part in features]
                if self.pin:
                    features = [{key: value.pin_memory() for key, value in part.items()} for part in features]
                self.ready.put((features, order))
        except BaseException as error:  # noqa: BLE001 - re-raised in the training loop's thread
            self.ready.put(error)

    def next(self) -> tuple[list[dict[str, torch.Tensor]], np.ndarray | None]:
        item = self.ready.get()
        if isinstance(item, BaseException):
            raise item
        return item


def pad_to(features: dict[str, torch.Tensor], length: int, tokenizer) -> dict[str, torch.Tensor]:
    """Pad (or cut) every tensor to ``length`` tokens on the tokenizer's padding side."""
    padded = {}
    for key, value in features.items():
        value = value[:, :length] if tokenizer.padding_side == "right" else value[:, -length:]
        fill = tokenizer.pad_token_id if key == "input_ids" else 0
        extra = torch.full((value.shape[0], length - value.shape[1]), fill, dtype=value.dtype)
        padded[key] = torch.cat([value, extra] if tokenizer.padding_side == "right" else [extra, value], dim=1)
    return padded


def contrastive_loss(embeddings: torch.Tensor, batch_size: int) -> torch.Tensor:
    """In-batch negatives plus hard negatives: row i of the anchors must pick candidate i among 2B."""
    embeddings = functional.normalize(embeddings.float(), dim=-1)
    anchors, candidates = embeddings[:batch_size], embeddings[batch_size:]
    scores = anchors @ candidates.T * LOSS_SCALE
    return functional.cross_entropy(scores, torch.arange(batch_size, device=scores.device))


def to_device(parts: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{key: value.to(device, non_blocking=True) for key, value in part.items()} for part in parts]


def run_variant(
    name: str, batch_size: int, path: str, triplets, args, device, dtype, world: int, profiling: bool = False
) -> dict[str, Any]:
    variant = parse_variant(name)
    if world > 1 and variant["sorted_chunks"] > 1:
        raise SystemExit("the -sorted variant runs several forwards per step, which DDP does not allow; use one GPU")
    model = build_model(path, variant, args, device, dtype)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    network = model
    if world > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=has_native_bf16(device))
    rank = distributed.get_rank() if world > 1 else 0
    shard = triplets[rank::world] if world > 1 else triplets
    total_steps = args.warmup_steps + args.steps
    total_steps += 3 if profiling else 0
    prefetcher = Prefetcher(model, shard, batch_size, total_steps, pin=device.type == "cuda",
                            chunks=variant["sorted_chunks"], static_length=args.static_length if variant["static"] else None)
    prefetcher.start()
    lengths, losses, padded = [], [], []
    start = None

    def train_step(parts, order):
        with disable_input_dtype_casting(model[0].auto_model, active=variant["nocast"]):
            with autocast:
                embeddings = torch.cat([network(part)["sentence_embedding"] for part in parts])
                if order is not None:
                    embeddings = embeddings[torch.from_numpy(np.argsort(order)).to(device)]
                loss = contrastive_loss(embeddings, batch_size)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for step in range(total_steps - (3 if profiling else 0)):
        if step == args.warmup_steps:
            harness.synchronize(device)
            if world > 1:
                distributed.barrier()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
        parts, order = prefetcher.next()
        parts = to_device(parts, device)
        if step >= args.warmup_steps:
            lengths.extend(part["attention_mask"].sum(1) for part in parts)
            padded.append(sum(part["input_ids"].numel() for part in parts))
        losses.append(train_step(parts, order).detach())
    harness.synchronize(device)
    if world > 1:
        distributed.barrier()
    seconds = time.perf_counter() - start
    kernels = None
    if profiling:
        def profiled_step():
            parts, order = prefetcher.next()
            train_step(to_device(parts, device), order)

        kernels = harness.profile_top_ops(profiled_step, device, steps=3)
    prefetcher.join()
    token_lengths = torch.cat(lengths).cpu().numpy()
    parameters = harness.non_embedding_parameters(model[0].decoder)
    shape = harness.decoder_shape(model[0].decoder.config)
    # frozen backbone: forward (2N) + gradients w.r.t. activations (2N); LoRA and recomputation not counted
    flops = 2 * harness.forward_flops(parameters, shape, token_lengths) * world
    peak = args.peak_tflops or (harness.H100_BF16_DENSE_TFLOPS if device.type == "cuda" else None)
    loss_values = torch.stack(losses).float().cpu().numpy()
    row = {
        "variant": name, "batch_size_per_device": batch_size, "devices": world, "steps": args.steps,
        "seconds": seconds,
        "triplets_per_s": world * batch_size * args.steps / seconds,
        "sequences_per_s": 3 * world * batch_size * args.steps / seconds,
        "tokens_per_s": world * float(token_lengths.sum()) / seconds,
        "model_tflops": flops / seconds / 1e12,
        "pct_peak": 100 * flops / seconds / 1e12 / (peak * world) if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "trainable_parameters": sum(parameter.numel() for parameter in trainable),
        "loss_first": float(loss_values[0]), "loss_last": float(loss_values[-1]),
        "finite": bool(np.isfinite(loss_values).all()),
        "padding_fraction": 1 - float(token_lengths.sum()) / sum(padded),
    }
    if kernels is not None:
        row["profile_top_kernels"] = kernels
    del network, model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    args = arguments()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(args.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        distributed.init_process_group("nccl")
    elif world > 1:  # CPU processes (a smoke test of the DDP code path)
        distributed.init_process_group("gloo")
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    is_main = not distributed.is_initialized() or distributed.get_rank() == 0
    dtype = harness.parse_dtype(args.dtype, device)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.manual_seed(args.seed)
    path = harness.resolve_base(args.base)
    batch_sizes = [int(value) for value in args.batch_sizes.split(",")]
    steps_needed = (args.warmup_steps + args.steps) * max(batch_sizes) * world
    triplets = harness.load_triplets(args.triplets, min(steps_needed, 200_000), args.words, args.seed)
    result: dict[str, Any] = {"benchmark": "train_throughput", "environment": harness.environment(),
                              "arguments": vars(args), "dtype": str(dtype), "world_size": world, "variants": {}}
    rows = []
    # As bellm-st train does. A `with` block: a context manager entered by hand and dropped is
    # finalised at once, which silently restored cuDNN in earlier versions of this script.
    with contextlib.nullcontext() if args.cudnn_attention else attention_without_cudnn():
        for batch_size in batch_sizes:
            for name in args.variants.split(","):
                key = f"{name} b{batch_size}"
                with harness.recorded_failure(result, key):
                    row = run_variant(name, batch_size, path, triplets, args, device, dtype, world,
                                      profiling=args.profile and not rows and not result.get("errors"))
                    result["variants"][key] = row
                    rows.append(row)
                    if is_main:
                        print(f"{key}: {row['triplets_per_s']:,.0f} triplets/s, peak {row['peak_memory_gib']} GiB",
                              flush=True)
    if args.baseline and is_main:
        with harness.recorded_failure(result, "baseline"):
            with open(args.baseline, encoding="utf-8") as baseline:
                result["scaling"] = scaling(json.load(baseline), result)
    if is_main:
        harness.print_table(rows, ["variant", "batch_size_per_device", "devices", "triplets_per_s", "tokens_per_s",
                                   "model_tflops", "pct_peak", "peak_memory_gib", "loss_last"],
                            title=f"LoRA r={args.rank} training throughput ({dtype} backbone"
                                  f"{', bf16 autocast' if has_native_bf16(device) else ''})")
        if "scaling" in result:
            print("\nscaling vs one device:", result["scaling"])
        harness.write_result(args.name or f"train_throughput_{world}gpu", result, args.out)
    if distributed.is_initialized():
        distributed.destroy_process_group()


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
