"""Trained BeLLM models that ship inside the package as small LoRA adapters.

A shipped model is a folder under ``bellm_st/models/<name>/`` holding ``bellm_config.json``
(BeLLM settings plus the base name) and ``adapter/`` (a peft LoRA adapter). Loading converts the
base once (see :mod:`bellm_st.bases`), applies the adapter and merges it for fast inference.
"""

from __future__ import annotations

import json
import os
import warnings
from importlib import resources
from pathlib import Path

from sentence_transformers import SentenceTransformer

SHIPPED_ROOT = Path(str(resources.files("bellm_st") / "models"))


def _shipped_names() -> tuple[str, ...]:
    if not SHIPPED_ROOT.is_dir():
        return ()
    return tuple(sorted(p.name for p in SHIPPED_ROOT.iterdir() if (p / "bellm_config.json").exists()))


SHIPPED_MODELS: tuple[str, ...] = _shipped_names()


def load_shipped(name: str, device: str, cache_dir: str | os.PathLike | None = None) -> SentenceTransformer:
    """Build the base, apply the shipped adapter, merge it, and wrap it as a SentenceTransformer."""
    from peft import PeftModel
    from transformers import AutoModel

    from bellm_st.bases import base_checkpoint
    from bellm_st.model import BeLLMSentenceTransformer
    from bellm_st.module import BeLLMEncoder

    if name not in SHIPPED_MODELS:
        raise ValueError(f"unknown shipped model {name!r}; available: {', '.join(SHIPPED_MODELS) or 'none'}")
    folder = SHIPPED_ROOT / name
    settings = json.loads((folder / "bellm_config.json").read_text(encoding="utf-8"))
    base = settings.pop("base")
    prompts = settings.pop("prompts", {})
    checkpoint = base_checkpoint(base, cache_dir)
    with warnings.catch_warnings():  # peft calls a transformers property deprecated in 5.x; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        backbone = PeftModel.from_pretrained(AutoModel.from_pretrained(checkpoint), str(folder / "adapter"))
    encoder = BeLLMEncoder(checkpoint, backbone=backbone.merge_and_unload(), **settings)
    model = BeLLMSentenceTransformer(modules=[encoder], device=device, prompts=prompts)
    model.model_card_data.tags = ["bellm", "bidirectional-decoder", name]
    return model
