"""Model folders that must not load, each with one defect, and the error each must give: for tests of
every loading path (``bellm_st.load``, the command line, the server, the framework integrations).

Each kind starts from a folder that loads (a saved tiny BeLLM model, or :func:`write_adapter_folder`)
and changes one thing. Kinds whose folder carries code leave a marker file behind if that code
ever runs, so a test can assert that nothing ran.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from bellm_st.testing import tiny_backbone

CONFIG = "bellm_config.json"
PICKLE_MESSAGE = r"adapter_model\.bin holds weights as a pickle, and unpickling can run code; convert it to safetensors"
AUTO_MAP_MESSAGE = r"has an auto_map naming code of the folder's own .* trust_remote_code=True"


@dataclass(frozen=True)
class BadFolder:
    path: Path
    message: str  # a regular expression the one-line error matches
    marker: Path  # exists only if code from the folder ran


def write_adapter_folder(saved_bellm: str | Path, base: str | Path, target: Path) -> Path:
    """A folder in the shipped layout (``bellm_config.json`` naming ``base``, a LoRA ``adapter/``) with the
    settings of the saved BeLLM model ``saved_bellm``; it loads with ``bellm_st.load(target)``."""
    target.mkdir(parents=True)
    lora = get_peft_model(tiny_backbone(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(str(target / "adapter"))
    settings = json.loads((Path(saved_bellm) / CONFIG).read_text(encoding="utf-8"))
    (target / CONFIG).write_text(json.dumps({**settings, "base": str(base)}), encoding="utf-8")
    return target


def _edit_json(path: Path, change: Callable[[dict], object]) -> None:
    content = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(change(content)), encoding="utf-8")


def _code_file(folder: Path, marker: Path) -> None:
    """A model and a tokenizer module that leave ``marker`` behind when imported."""
    (folder / "custom_modeling.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast\n\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n\n"
        "class CustomModel(LlamaModel):\n    config_class = CustomConfig\n\n"
        "class CustomTokenizer(PreTrainedTokenizerFast):\n    pass\n",
        encoding="utf-8",
    )


def _custom_model_base(base: Path, marker: Path) -> None:
    _code_file(base, marker)
    _edit_json(base / "config.json", lambda config: {
        **config, "model_type": "custom_llama",
        "auto_map": {"AutoConfig": "custom_modeling.CustomConfig", "AutoModel": "custom_modeling.CustomModel"},
    })


def _custom_tokenizer_base(base: Path, marker: Path) -> None:
    _code_file(base, marker)
    _edit_json(base / "tokenizer_config.json", lambda config: {
        **config, "tokenizer_class": "CustomTokenizer",
        "auto_map": {"AutoTokenizer": [None, "custom_modeling.CustomTokenizer"]},
    })


class _LeavesMarker:
    """Unpickled, it calls ``open(marker, 'w')``: what a malicious pickle does, made harmless."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _pickle_adapter(adapter: Path) -> None:
    """The adapter's weights as ``adapter_model.bin`` only (what peft writes with safe_serialization=False)."""
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(weights, adapter / "adapter_model.bin")


def _damage_weights(folder: Path, damage: Callable[[bytes], bytes]) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))


def _wrong_shape(folder: Path) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    weights["layers.0.self_attn.q_proj.weight"] = torch.zeros(3, 5)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


SAVED_FOLDER_DEFECTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated-safetensors": (
        lambda folder: _damage_weights(folder, lambda data: data[: len(data) // 2]),
        r"model\.safetensors is not a readable safetensors file \(.*incomplete metadata.*\); "
        r"it is truncated or damaged",
    ),
    "empty-safetensors": (
        lambda folder: _damage_weights(folder, lambda data: b""),
        r"model\.safetensors is not a readable safetensors file \(.*header too small\)",
    ),
    "absurd-safetensors-header": (
        lambda folder: _damage_weights(folder, lambda data: (10**15).to_bytes(8, "little") + data[8:]),
        r"model\.safetensors is not a readable safetensors file \(.*header too large\)",
    ),
    "tensor-of-the-wrong-shape": (
        _wrong_shape,
        r"its weights do not fit its config\.json: layers\.0\.self_attn\.q_proj\.weight "
        r"\(ckpt: torch\.Size\(\[3, 5\]\) vs model:torch\.Size\(\[32, 32\]\)\); restore the files",
    ),
    "module-class-that-does-not-exist": (
        lambda folder: _edit_json(folder / "modules.json", lambda modules: [
            {**modules[0], "type": "bellm_st.module.NoSuchEncoder"}
        ]),
        r"'bellm_st\.module\.NoSuchEncoder' in modules\.json, which the installed bellm_st does not have; "
        r"fix modules\.json",
    ),
    "config-string-for-a-boolean": (
        lambda folder: _edit_json(folder / CONFIG, lambda settings: {**settings, "normalize": "false"}),
        r'bellm_config\.json has "normalize": "false", which is not true or false .*; fix the file',
    ),
    "config-json-array": (
        lambda folder: (folder / CONFIG).write_text("[16, \"mean\"]", encoding="utf-8"),
        r"bellm_config\.json holds a JSON array where an object of settings belongs; fix the file",
    ),
    "config-empty-object": (
        lambda folder: (folder / CONFIG).write_text("{}", encoding="utf-8"),
        r'bellm_config\.json lacks "bidirectional_layers" \(an int k .*; fix the file',
    ),
}

ADAPTER_FOLDER_DEFECTS = (
    "base-with-custom-model-code", "base-with-custom-tokenizer-code", "adapter-pickle-only",
    "adapter-symlink-to-pickles", "adapter-malicious-pickle", "adapter-config-unknown-key",
)
BAD_FOLDER_KINDS: tuple[str, ...] = (*SAVED_FOLDER_DEFECTS, *ADAPTER_FOLDER_DEFECTS)
CODE_RUNNING_KINDS = ("base-with-custom-model-code", "base-with-custom-tokenizer-code")


def make_bad_folder(kind: str, saved_bellm: str | Path, checkpoint: str | Path, work_dir: Path) -> BadFolder:
    """A folder under ``work_dir`` with the defect ``kind`` (one of :data:`BAD_FOLDER_KINDS`), made from the
    saved BeLLM model ``saved_bellm`` or an adapter folder on the tiny ``checkpoint``."""
    marker = work_dir / "code-ran"
    folder = work_dir / kind
    if kind in SAVED_FOLDER_DEFECTS:
        shutil.copytree(saved_bellm, folder)
        defect, message = SAVED_FOLDER_DEFECTS[kind]
        defect(folder)
        return BadFolder(folder, message, marker)
    base = Path(checkpoint)
    if kind in CODE_RUNNING_KINDS:
        base = Path(shutil.copytree(checkpoint, work_dir / "base"))
        (_custom_model_base if kind == "base-with-custom-model-code" else _custom_tokenizer_base)(base, marker)
    write_adapter_folder(saved_bellm, base, folder)
    adapter = folder / "adapter"
    if kind == "base-with-custom-model-code":
        return BadFolder(folder, r"base/config\.json " + AUTO_MAP_MESSAGE, marker)
    if kind == "base-with-custom-tokenizer-code":
        return BadFolder(folder, r"base/tokenizer_config\.json " + AUTO_MAP_MESSAGE, marker)
    if kind == "adapter-pickle-only":
        _pickle_adapter(adapter)
        return BadFolder(folder, r"adapter/" + PICKLE_MESSAGE, marker)
    if kind == "adapter-symlink-to-pickles":
        elsewhere = work_dir / "pickled-adapter"
        adapter.rename(elsewhere)
        _pickle_adapter(elsewhere)
        adapter.symlink_to(elsewhere, target_is_directory=True)
        return BadFolder(folder, r"adapter/" + PICKLE_MESSAGE, marker)
    if kind == "adapter-malicious-pickle":
        (adapter / "adapter_model.safetensors").unlink()
        (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_LeavesMarker(marker)))
        return BadFolder(folder, r"adapter/" + PICKLE_MESSAGE, marker)
    if kind == "adapter-config-unknown-key":
        _edit_json(folder / CONFIG, lambda settings: {**settings, "pooling_mode": "mean"})
        message = r'bellm_config\.json has the unknown key "pooling_mode"; fix the file \(its keys: '
        return BadFolder(folder, message, marker)
    raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(BAD_FOLDER_KINDS)}")
