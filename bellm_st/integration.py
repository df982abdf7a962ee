"""What the framework integrations (LangChain, LlamaIndex) share.

Each framework creates embedding objects freely (one per index, per chain, per request), so the
model behind them is loaded once per process and shared: :func:`shared_model` keeps one model per
``(model_name, device, trust_remote_code, backend)``. A tokenizer and a module in eval mode are not safe to drive from two
threads at once (fast tokenizers raise "Already borrowed"), so :func:`embed` holds one lock per
model while it encodes; the frameworks' async methods run it in a worker thread.
"""

from __future__ import annotations

import threading
import weakref
from typing import Literal

import torch
from sentence_transformers import SentenceTransformer

from bellm_st import api
from bellm_st.inputs import validate_texts
from bellm_st.model import bellm_encoder
from bellm_st.module import check_backend
from bellm_st.prompts import TEXT_SLOT, Template

Role = Literal["query", "document"]

_models: dict[tuple[str, str, bool, str], SentenceTransformer] = {}
_models_lock = threading.Lock()
_encode_locks: weakref.WeakKeyDictionary[SentenceTransformer, threading.Lock] = weakref.WeakKeyDictionary()
_encode_locks_lock = threading.Lock()


def shared_model(
    model_name: str | None = None, device: str | None = None, trust_remote_code: bool = False, backend: str = "torch"
) -> SentenceTransformer:
    """The model for ``(model_name, device, trust_remote_code, backend)``, loaded on first use and reused after.

    ``model_name`` is anything :func:`bellm_st.load` accepts (a shipped model or base name, a
    saved folder); ``None`` means the shipped default. ``trust_remote_code`` is part
    of the key, so a folder refused without it is never served from a trusted load. ``backend="onnx"``
    runs the exported graph in ONNX Runtime on the CPU (see :func:`bellm_st.load`).
    """
    check_backend(backend)
    default_device = "cpu" if backend == "onnx" else api.default_device()
    key = (model_name or api.default_model_name(), device or default_device, trust_remote_code, backend)
    with _models_lock:
        if key not in _models:
            _models[key] = api.load(key[0], device=key[1], trust_remote_code=trust_remote_code, backend=backend)
        return _models[key]


def clear_shared_models() -> None:
    """Forget every shared model (frees their memory once no embedding object holds them)."""
    with _models_lock:
        _models.clear()


def resolve_model(
    model_name: str | None,
    model: SentenceTransformer | None,
    device: str | None,
    trust_remote_code: bool = False,
    backend: str = "torch",
) -> tuple[str | None, SentenceTransformer]:
    """The model an integration was asked for, and its name: the given object, else the shared one.

    Without a ``model`` object an unset name becomes the shipped default's, so users can see
    which model they got.
    """
    if model is None:
        model_name = model_name or api.default_model_name()
        return model_name, shared_model(model_name, device, trust_remote_code, backend)
    if not isinstance(model, SentenceTransformer):
        raise TypeError(f"model must be a SentenceTransformer, got {type(model).__name__}; or pass model_name=")
    if backend != "torch":
        raise ValueError(f"backend={backend!r} applies to model_name; a given model runs as it was loaded "
                         f"(bellm_st.load(name, backend={backend!r})); drop backend or model")
    if device is not None:
        wanted = torch.device(device)
        if wanted.type != model.device.type or (wanted.index is not None and wanted.index != model.device.index):
            raise ValueError(
                f"device={device!r} but the given model is on {model.device}; "
                f"move it first with model.to({device!r}), or leave device unset"
            )
    return model_name, model


def check_template(model: SentenceTransformer, template: str | None, role: Role) -> None:
    """Refuse a full ``{text}`` template that the model would silently treat as a literal prefix.

    Only a BeLLM encoder places the text inside a template; any other sentence-transformers model
    prepends a prompt, so ``{text}`` would be embedded as written.
    """
    if template is None or TEXT_SLOT not in template:
        return
    Template.parse(template)
    if bellm_encoder(model) is None:
        raise ValueError(
            f"{role}_template {template!r} is a full template with {TEXT_SLOT}, but this model is not a BeLLM "
            f"encoder and would embed {TEXT_SLOT} literally; pass a plain prefix such as 'query: ' instead"
        )


def encode_lock(model: SentenceTransformer) -> threading.Lock:
    """The one lock every integration takes before encoding with ``model``."""
    with _encode_locks_lock:
        lock = _encode_locks.get(model)
        if lock is None:
            lock = _encode_locks[model] = threading.Lock()
        return lock


def embed(
    model: SentenceTransformer,
    texts: list[str],
    *,
    role: Role,
    template: str | None = None,
    batch_size: int = api.ENCODE_BATCH_SIZE,
    normalize: bool = True,
    show_progress: bool = False,
    where: str = "texts",
) -> list[list[float]]:
    """Embed ``texts`` as queries or documents and return plain Python floats, as frameworks expect.

    ``template`` is passed as the encode prompt: a full template (with ``{text}``) replaces the
    model's, a plain prefix goes in front of the text; ``None`` uses the model's own ``query`` or
    ``document`` prompt when it has one. Texts are never altered (no newline stripping, no
    lower-casing); only the model truncates what exceeds its ``max_seq_length``, with a warning.
    """
    texts = validate_texts(texts, where=where)
    check_template(model, template, role)
    encode = model.encode_query if role == "query" else model.encode_document
    with encode_lock(model):
        vectors = encode(
            texts,
            prompt=template,
            batch_size=batch_size,
            normalize_embeddings=normalize,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
    return vectors.tolist()
