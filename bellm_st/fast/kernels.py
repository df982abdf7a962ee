"""Attention-kernel choices that keep BeLLM fast on GPUs.

PyTorch may route scaled-dot-product attention to cuDNN on recent NVIDIA GPUs. cuDNN builds an
execution plan for every new batch shape, and our batches change shape all the time (bulk
encoding batches by exact token length; training pads each batch to its own longest text), so
the plan building costs more than the attention: bulk encoding and LoRA training both ran far
slower with cuDNN (figures in docs/BENCHMARKS.md, "SDPA kept off cuDNN"). Flash and
memory-efficient attention need no per-shape set-up.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from bellm_st.bidirectional import find_decoder_layers
from bellm_st.model import bellm_encoder

ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_without_cudnn() -> AbstractContextManager:
    """SDPA restricted to flash, memory-efficient and math kernels while the block runs.

    The setting is process-wide while active (PyTorch keeps it in global flags), so enter it
    once around a whole job, not per thread.
    """
    return sdpa_kernel(ATTENTION_BACKENDS)


def compile_decoder_layers(backbone: nn.Module, dynamic: bool = True) -> int:
    """Compile each decoder layer's ``forward`` with ``torch.compile`` (regional compilation); returns the count.

    Why per layer rather than the whole model: the layers share one code path, so torch compiles
    one graph for all of them (one more for the bi-directional ones) in seconds instead of
    minutes, and with ``dynamic=True`` that graph serves every batch shape, so bulk encoding's
    many exact-length batches do not each trigger a compilation. The fusion it buys matters for
    small models: with a hidden size of 576, element-wise kernels (norms, rotary embeddings,
    activations) take most of an eager forward pass. Only ``forward`` is compiled: the
    bi-directional pre-hooks stay eager and build the mask once per pass, as without compiling.
    """
    layers = find_decoder_layers(backbone)
    for layer in layers:
        replaced = vars(layer).get("forward")  # an instance forward set by someone else (accelerate), or None
        if getattr(replaced, "_bellm_compiled", False):
            continue
        compiled = torch.compile(layer.forward, dynamic=dynamic)
        compiled._bellm_compiled = True
        compiled._bellm_replaced = replaced
        layer.forward = compiled
    return len(layers)


def compile_model_layers(model: nn.Module) -> None:
    """:func:`compile_decoder_layers` on a BeLLM sentence-transformers model (the command line's ``--compile``).

    Other models are refused with a ``ValueError`` naming their first module: only BeLLM models
    expose one decoder whose layers share a code path.
    """
    encoder = bellm_encoder(model)
    if encoder is None:
        raise ValueError(f"compiling layers works on BeLLM models; this one starts with {type(model[0]).__name__}")
    compile_decoder_layers(encoder.decoder)


def uncompile_decoder_layers(backbone: nn.Module) -> None:
    """Undo :func:`compile_decoder_layers`: the layers run eagerly again (and the model pickles again).

    Only our compiled forwards are removed; a forward someone else had set comes back.
    """
    for layer in find_decoder_layers(backbone):
        compiled = vars(layer).get("forward")
        if not getattr(compiled, "_bellm_compiled", False):
            continue
        if compiled._bellm_replaced is None:
            del layer.forward
        else:
            layer.forward = compiled._bellm_replaced
