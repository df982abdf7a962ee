"""What every benchmark script shares: sentences, models, timing, FLOPs and where results go.

Benchmarks print figures and write them as JSON; they never assert on time. Each result file
records the machine, the library versions and the exact command, so a figure can be reproduced
and compared only with figures taken the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent
if str(REPOSITORY) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPOSITORY))

import numpy as np
import torch

from bellm_st.api import DEFAULT_BASE, INFERENCE_DTYPES, inference_dtype

DEFAULT_SENTENCES_TSV = REPOSITORY.parent / "shared" / "data" / "sts" / "stsb-dev.tsv"
DEFAULT_TRIPLETS_TSV = REPOSITORY.parent / "shared" / "data" / "nli" / "triplets.tsv"
H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM (and H200) dense bf16 tensor-core peak
FALLBACK_WORDS = (
    "a man woman child dog cat plays reads walks runs eats the small large red blue old young near over under "
    "park street kitchen guitar piano ball book city river house quickly slowly happily today"
).split()


# -- command line ------------------------------------------------------------------------------
def base_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--base", default=DEFAULT_BASE, help="shipped base name or a local checkpoint folder")
    parser.add_argument("--data", default=str(DEFAULT_SENTENCES_TSV), help="TSV whose text columns give the sentences")
    parser.add_argument("--words", type=int, default=16, help="mean words per sentence (sentences are joined/cut to it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for the JSON result (default: $OUT)")
    return parser


def resolve_base(base: str) -> str:
    """A local checkpoint folder for ``base`` (a shipped name is converted once and cached)."""
    if os.path.isdir(os.path.expanduser(base)):
        return os.path.expanduser(base)
    from bellm_st.bases import base_checkpoint

    return str(base_checkpoint(base))


def add_dtype_argument(parser: argparse.ArgumentParser, what: str = "the weights") -> None:
    """``--dtype`` as ``bellm-st encode`` reads it, so a figure is taken in the precision users get by default."""
    parser.add_argument("--dtype", default="auto",
                        help=f"precision of {what}: auto (bf16 on a GPU that computes it natively, else fp32), "
                             f"{', '.join(INFERENCE_DTYPES)}")


def parse_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype ``--dtype`` names on ``device`` (``auto``: bellm_st.api.has_native_bf16 decides)."""
    try:
        return inference_dtype(name, device)
    except ValueError as error:
        raise SystemExit(str(error)) from None


# -- sentences ---------------------------------------------------------------------------------
def _text_columns(path: Path) -> list[str]:
    """Every cell of ``path`` (TSV, header, no quoting) that looks like a sentence."""
    texts = []
    with open(path, encoding="utf-8") as handle:
        next(handle, None)
        for line in handle:
            for cell in line.rstrip("\n").split("\t"):
                if len(cell.split()) >= 3:
                    texts.append(cell)
    return texts


def load_sentences(path: str | None, count: int, mean_words: int, seed: int) -> list[str]:
    """``count`` real sentences of about ``mean_words`` words (uniform within +-4).

    Sentences from the TSV are joined to the next one or cut at a word to reach each drawn
    length, so token statistics stay those of real text. Without the file, words are drawn from
    a small built-in list (the script still runs anywhere).
    """
    rng = random.Random(seed)
    pool = _text_columns(Path(path)) if path and Path(path).exists() else []
    if not pool:
        warnings.warn(f"no sentences read from {path!r}; using synthetic sentences", stacklevel=2)
    words = [word for sentence in pool for word in sentence.split()]
    sentences, position = [], rng.randrange(len(words)) if words else 0
    for _ in range(count):
        length = max(1, rng.randint(mean_words - 4, mean_words + 4))
        if words:
            chunk = [words[(position + offset) % len(words)] for offset in range(length)]
            position = (position + length) % len(words)
        else:
            chunk = rng.choices(FALLBACK_WORDS, k=length)
        sentences.append(" ".join(chunk))
    return sentences


def load_triplets(path: str | None, count: int, mean_words: int, seed: int) -> list[tuple[str, str, str]]:
    """(anchor, positive, hard negative) triplets from an NLI triplets TSV, repeated to ``count``, or synthetic."""
    rows: list[tuple[str, str, str]] = []
    if path and Path(path).exists():
        with open(path, encoding="utf-8") as handle:
            header = next(handle).rstrip("\n").split("\t")
            columns = [header.index(name) for name in ("premise", "entailment", "contradiction")] \
                if "premise" in header else [0, 1, 2]
            for line in handle:
                cells = line.rstrip("\n").split("\t")
                if len(cells) > max(columns):
                    rows.append(tuple(cells[index] for index in columns))  # type: ignore[arg-type]
    if not rows:
        warnings.warn(f"no triplets read from {path!r}; using synthetic triplets", stacklevel=2)
        sentences = load_sentences(None, 3 * min(count, 3000), mean_words, seed)
        rows = [tuple(sentences[index : index + 3]) for index in range(0, len(sentences) - 2, 3)]  # type: ignore[misc]
    random.Random(seed).shuffle(rows)
    return [rows[index % len(rows)] for index in range(count)]


# -- timing ------------------------------------------------------------------------------------
def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], device: torch.device | str) -> tuple[float, Any]:
    """Seconds ``function`` takes, with the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


def profile_top_ops(step: Callable[[], Any], device: torch.device, steps: int, rows: int = 25) -> list[dict[str, Any]]:
    """Run ``step`` ``steps`` times under torch.profiler; print and return the ops with the most self time.

    Device time on a GPU, CPU time otherwise, per step in milliseconds.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    sort_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort_key, row_limit=rows, max_name_column_width=70), flush=True)
    events = sorted(profiler.key_averages(), key=lambda event: getattr(event, sort_key, 0), reverse=True)[:rows]
    return [{"name": event.key, "calls": event.count, "self_ms": getattr(event, sort_key, 0) / 1000 / steps}
            for event in events]


def device_busy_profile(step: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Run ``step`` once under torch.profiler: wall time, the GPU's kernel time and the host's waits.

    When the kernel time is well below the wall time the device idles, and the counts of
    synchronising calls and device-to-host copies say whether the host made it wait.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        wall = time.perf_counter() - started
    kernel_us = sum(event.self_device_time_total for event in profiler.key_averages()
                    if event.device_type == torch.autograd.DeviceType.CUDA)
    waits = {event.key: event.count for event in profiler.key_averages()
             if any(word in event.key for word in ("Synchronize", "cudaMemcpy", "aten::item", "aten::_local_scalar_dense"))}
    return {"wall_ms": 1000 * wall, "kernel_ms": kernel_us / 1000, "busy_fraction": kernel_us / 1e6 / wall,
            "host_waits": waits}


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# -- model arithmetic --------------------------------------------------------------------------
def decoder_shape(config: Any) -> dict[str, int]:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"layers": config.num_hidden_layers, "attention_width": heads * head_dim, "hidden": config.hidden_size}


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters that multiply every token (the embedding table is a lookup, not a matmul)."""
    return sum(
        parameter.numel()
        for name, parameter in model.named_parameters()
        if "embed_tokens" not in name and "lora_" not in name
    )


def forward_flops(parameters: int, shape: dict[str, int], lengths: np.ndarray) -> float:
    """Model FLOPs of one forward pass over sequences of ``lengths`` real tokens (padding not counted).

    2 FLOPs per weight per token for the matmuls, plus 4*T*width per token per layer for
    attention scores and the weighted sum over all T tokens (bi-directional count).
    """
    lengths = lengths.astype(np.float64)
    return float(2 * parameters * lengths.sum() + 4 * shape["layers"] * shape["attention_width"] * (lengths**2).sum())


# -- environment and results -------------------------------------------------------------------
def _git_commit() -> str | None:
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    import importlib.metadata

    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(distribution)
    return None


def environment() -> dict[str, Any]:
    """Machine, versions and command: what a figure needs to be reproduced."""
    info: dict[str, Any] = {
        "command": " ".join(shlex.quote(argument) for argument in [Path(sys.executable).name, *sys.argv]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": {name: _version(name) for name in
                     ("torch", "transformers", "sentence-transformers", "peft", "tokenizers", "numpy", "bellm-st")},
        "env": {name: os.environ.get(name) for name in
                ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "TOKENIZERS_PARALLELISM", "CUDA_VISIBLE_DEVICES", "WORLD_SIZE")},
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


def write_result(name: str, result: dict[str, Any], out: str | None) -> Path | None:
    """Write ``result`` as ``<out>/<name>.json`` (nothing when no folder is given)."""
    if not out:
        return None
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(f"wrote {path}")
    return path


def print_table(rows: list[dict[str, Any]], columns: Sequence[str], title: str = "") -> None:
    """A plain fixed-width table (also valid as a Markdown table)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        return "" if value is None else str(value)

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[index]) for line in cells)) for index, column in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("| " + " | ".join(column.ljust(width) for column, width in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for line in cells:
        print("| " + " | ".join(value.rjust(width) for value, width in zip(line, widths)) + " |")


@contextlib.contextmanager
def recorded_failure(results: dict[str, Any], key: str) -> Iterator[None]:
    """Run one measurement; a failure is recorded under ``errors`` and the script goes on.

    GPU time is scarce: one broken variant must not cost the other figures.
    """
    try:
        yield
    except Exception as error:  # noqa: BLE001 - recorded, printed, and the run continues
        message = f"{type(error).__name__}: {error}"
        results.setdefault("errors", {})[key] = message
        print(f"[{key}] FAILED: {message}", file=sys.stderr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def cosine_rows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    return (first * second).sum(1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))
