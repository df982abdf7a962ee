"""Turning a trained model into something to hand over: a merged folder, or a shipped adapter.

- :func:`export_merged` writes a plain sentence-transformers folder with the LoRA adapter folded
  into the weights: no peft needed to load it, and no adapter overhead at inference.
- :func:`package_shipped` copies just the adapter and the BeLLM settings into
  ``bellm_st/models/<name>/`` (the layout :func:`bellm_st.shipped.load_shipped` reads), so the
  package ships megabytes instead of a full checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


from bellm_st.module import ADAPTER_FOLDER, CONFIG_FILE, encoder_of
from bellm_st.shipped import SHIPPED_ROOT

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def export_merged(
    name_or_path: str, output_dir: str | os.PathLike, device: str = "cpu", trust_remote_code: bool = False
) -> Path:
    """Save a shipped model, base or trained folder as a standalone folder with the adapter merged.

    The folder loads with ``bellm_st.load(output_dir)`` wherever bellm-st is installed (the BeLLM
    module's code), and needs no peft. ``trust_remote_code`` is :func:`bellm_st.load`'s.
    """
    from bellm_st.api import load_default_or

    model = load_default_or(name_or_path, device=device, trust_remote_code=trust_remote_code)
    encoder_of(model).merge_adapter()
    output_dir = Path(output_dir)
    model.save(str(output_dir))
    return output_dir


def package_shipped(
    model_dir: str | os.PathLike,
    name: str,
    base: str | None = None,
    prompts: dict[str, str] | None = None,
    models_root: str | os.PathLike = SHIPPED_ROOT,
) -> Path:
    """Copy a trained model's adapter and BeLLM settings into ``models_root/<name>/`` as a shipped model.

    ``base`` must name a shipped base (``smollm2-135m``...) so users can rebuild the backbone
    offline; it defaults to the base in the model's ``recipe.json``. ``prompts`` defaults to the
    model's own query/document prompts.
    """
    from bellm_st.bases import SHIPPED_BASES

    model_dir = Path(model_dir)
    adapter = model_dir / ADAPTER_FOLDER
    missing = [file for file in ADAPTER_FILES if not (adapter / file).exists()]
    if missing:
        raise FileNotFoundError(
            f"{adapter} lacks {', '.join(missing)}; package a model trained with LoRA (bellm-st train writes adapter/)"
        )
    if base is None:
        recipe = model_dir / "recipe.json"
        base = json.loads(recipe.read_text(encoding="utf-8"))["base"] if recipe.exists() else None
    if base not in SHIPPED_BASES:
        raise ValueError(f"base={base!r} is not a shipped base; pass one of {', '.join(SHIPPED_BASES)}")
    settings = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    if prompts is None:
        st_config = model_dir / "config_sentence_transformers.json"
        saved = json.loads(st_config.read_text(encoding="utf-8")).get("prompts", {}) if st_config.exists() else {}
        prompts = {key: value for key, value in saved.items() if value}
    target = Path(models_root) / name
    (target / ADAPTER_FOLDER).mkdir(parents=True, exist_ok=True)
    for file in ADAPTER_FILES:
        shutil.copy2(adapter / file, target / ADAPTER_FOLDER / file)
    adapter_config = target / ADAPTER_FOLDER / "adapter_config.json"
    config = json.loads(adapter_config.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base  # not a path on the training machine
    adapter_config.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    shipped = {**settings, "base": base, **({"prompts": prompts} if prompts else {})}
    (target / CONFIG_FILE).write_text(json.dumps(shipped, indent=2) + "\n", encoding="utf-8")
    return target
