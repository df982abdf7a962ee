"""Encoding a large collection on several GPUs, one process per GPU.

Why processes rather than :func:`bellm_st.bulk.encode_bulk` over replicas: in one process a
tokeniser thread and one kernel-launching thread per GPU share one interpreter lock. On two
H200s one compiled replica encoded 48,877 sentences/s and two reached only 63,790/s (1.31x),
though the host side alone managed 127,778/s (docs/BENCHMARKS.md). Here each GPU gets its own
process, which loads the model, tokenises its share of the texts and runs ``encode_bulk`` alone.
Each process pays the start-up (imports, loading, compiling: tens of seconds), so this can pay
off only for collections that keep every GPU busy for longer than that. Tested with two CPU
processes; its speed on GPUs has not been measured yet.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch

from bellm_st.inputs import validate_texts


def encode_on_devices(
    model: str | None,
    texts: Sequence[str],
    devices: Sequence[str],
    *,
    dtype: torch.dtype | None = None,
    compile_layers: bool = False,
    batch_size: int = 4096,
    max_batch_tokens: int = 131_072,
    prompt_name: str | None = None,
    normalize_embeddings: bool = False,
    trust_remote_code: bool = False,
) -> np.ndarray:
    """Embed ``texts`` with one process per device; float32 vectors in the order of ``texts``.

    ``model`` is what :func:`bellm_st.api.load_default_or` takes (a shipped name, a saved folder,
    or ``None`` for the default model; ``trust_remote_code`` as there): each process loads its own copy, casts it to ``dtype``
    (``None`` keeps the loaded precision), optionally compiles its decoder layers, and encodes
    one contiguous share of the texts with :func:`bellm_st.bulk.encode_bulk`. An error in any
    process is raised here.
    """
    texts = validate_texts(texts, where="texts")
    devices = _checked_devices(devices)
    shares = [share for share in np.array_split(np.arange(len(texts)), len(devices)) if len(share)]
    options = {"dtype": dtype, "compile_layers": compile_layers, "batch_size": batch_size,
               "max_batch_tokens": max_batch_tokens, "prompt_name": prompt_name,
               "normalize_embeddings": normalize_embeddings, "trust_remote_code": trust_remote_code}
    jobs = [(model, [texts[index] for index in share], device, options) for share, device in zip(shares, devices)]
    # spawn: a forked child of a process that already touched CUDA cannot use it. An executor's
    # workers, unlike a Pool's, are not daemons, so they may start multiprocessing children of
    # their own (a daemon may not).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=context) as executor:
        parts = list(executor.map(_encode_share, *zip(*jobs)))
    return np.concatenate(parts)


def _checked_devices(devices: Sequence[str]) -> list[str]:
    if isinstance(devices, str) or not len(devices):
        raise ValueError(f"devices must be a non-empty list such as ['cuda:0', 'cuda:1'], got {devices!r}")
    checked = []
    for device in devices:
        try:
            checked.append(str(torch.device(device)))
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device {device!r} is not a torch device name such as 'cuda:1': {error}") from None
    return checked


def _encode_share(model: str | None, texts: list[str], device: str, options: dict[str, Any]) -> np.ndarray:
    """One process's work: load, cast, compile, encode (runs in the child)."""
    from bellm_st.api import load_default_or
    from bellm_st.bulk import encode_bulk
    from bellm_st.kernels import compile_model_layers

    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
    encoder = load_default_or(model, device=device, trust_remote_code=options["trust_remote_code"])
    if options["dtype"] is not None:
        encoder.to(options["dtype"])
    if options["compile_layers"]:
        compile_model_layers(encoder)
    return encode_bulk(encoder, texts, batch_size=options["batch_size"], max_batch_tokens=options["max_batch_tokens"],
                       prompt_name=options["prompt_name"], normalize_embeddings=options["normalize_embeddings"])
