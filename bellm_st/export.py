"""Turning a trained model into something to hand over: a standalone folder, or a shipped adapter.

- :func:`export_merged` writes a sentence-transformers folder with the LoRA adapter folded into
  the weights (no peft needed, no adapter overhead) that carries the method's own code, so it
  loads with ``SentenceTransformer(folder, trust_remote_code=True)`` where bellm-st is not
  installed, as custom models on the Hugging Face hub do; with ``onnx=True`` it also holds the
  backbone's ONNX graph (``onnx/model.onnx``), which ``backend="onnx"`` runs in ONNX Runtime.
- :func:`package_shipped` copies just the adapter and the BeLLM settings into
  ``bellm_st/models/<name>/`` (the layout :func:`bellm_st.load` reads for a shipped name), so the
  package ships megabytes instead of a full checkpoint.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
from pathlib import Path

import bellm_st
from bellm_st.loading import EXPORTED_CLASS_REF
from bellm_st.model import encoder_of
from bellm_st.module import ADAPTER_FOLDER, CONFIG_FILE, BeLLMEncoder
from bellm_st.shipped import SHIPPED_ROOT

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
PACKAGE_ROOT = Path(bellm_st.__file__).parent
CARD_FILE = "README.md"
USAGE_TITLE = "## Usage (without bellm-st)"
_CARD_CONSTRUCTOR = re.compile(r'SentenceTransformer\("([^"]*)"\)')
_CARD_USAGE_HEADING = "\n## Usage\n"
_PACKAGE_IMPORT = re.compile(r"^(\s*)from bellm_st\.(\w+) import ", flags=re.MULTILINE)


def package_imports(source: str) -> list[str]:
    """The ``bellm_st`` modules a file's source imports by absolute name (relative imports aside)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [name for name in names if name.split(".")[0] == "bellm_st"]


def method_files() -> list[Path]:
    """The files of the method: ``module.py`` and every ``bellm_st`` file it imports, directly or not.

    These are the files an exported folder carries; ``tests/test_layout.py`` checks that they
    reach nothing of ``bellm_st.fast``, training or serving.
    """
    found: list[Path] = []
    waiting = [PACKAGE_ROOT / "module.py"]
    while waiting:
        path = waiting.pop()
        if path in found:
            continue
        found.append(path)
        for name in package_imports(path.read_text(encoding="utf-8")):
            if name.count(".") != 1:
                raise ValueError(f"{path.name} imports {name}; the method files import only bellm_st.<file>")
            waiting.append(PACKAGE_ROOT / f"{name.split('.')[1]}.py")
    return sorted(found)


def standalone_source(path: Path) -> str:
    """A method file as it sits in an exported folder: its ``bellm_st`` imports made relative."""
    source = _PACKAGE_IMPORT.sub(r"\1from .\2 import ", path.read_text(encoding="utf-8"))
    if package_imports(source):
        raise ValueError(f"{path.name} imports bellm_st in a form an exported folder cannot carry; "
                         "write it as `from bellm_st.<file> import name`")
    return source


def write_method_code(folder: str | os.PathLike) -> list[Path]:
    """Copy the method's files into a saved BeLLM folder and point its ``modules.json`` at the copy.

    sentence-transformers then imports the encoder class from the folder (``trust_remote_code``)
    instead of from an installed bellm-st; :func:`bellm_st.load` maps the same name back to the
    installed class, so nothing from the folder runs there.
    """
    folder = Path(folder)
    written = []
    for path in method_files():
        target = folder / path.name
        target.write_text(standalone_source(path), encoding="utf-8")
        written.append(target)
    modules_file = folder / "modules.json"
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    installed_ref = f"{BeLLMEncoder.__module__}.{BeLLMEncoder.__name__}"
    for entry in modules:
        if entry["type"] == installed_ref:
            entry["type"] = EXPORTED_CLASS_REF
    modules_file.write_text(json.dumps(modules, indent=2), encoding="utf-8")
    return written


def usage_section(name: str, onnx: bool = False) -> str:
    """The model card's usage text for a folder or hub repository called ``name`` (``onnx``: it holds the graph)."""
    files = ", ".join(f"`{path.name}`" for path in method_files())
    onnx_lines = [
        "",
        "On a CPU, ONNX Runtime runs the graph in `onnx/` (`pip install onnxruntime`), giving the same vectors faster:",
        "",
        "```python",
        f'model = SentenceTransformer("{name}", backend="onnx", trust_remote_code=True)',
        "```",
    ]
    return "\n".join([
        USAGE_TITLE,
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{name}", trust_remote_code=True)',
        'embeddings = model.encode(["A man is playing a guitar.", "Someone plays an instrument."])',
        "```",
        *(onnx_lines if onnx else []),
        "",
        "Needs sentence-transformers, transformers and torch, not bellm-st: the encoder's code travels in",
        f"this folder, copied from bellm-st {bellm_st.__version__} ({files}),",
        "and `trust_remote_code=True` lets sentence-transformers import it. With bellm-st installed,",
        "`bellm_st.load(folder)` loads the same folder with the installed code instead and runs nothing from it.",
        "",
    ])


def add_usage_section(folder: str | os.PathLike, name: str, onnx: bool = False) -> Path:
    """Put the usage section before the usage part of the card sentence-transformers wrote (or start a card).

    That card's own example calls ``SentenceTransformer(model_id)``, which cannot load this
    folder's code, so it gets ``trust_remote_code=True`` as well.
    """
    path = Path(folder) / CARD_FILE
    card = path.read_text(encoding="utf-8") if path.exists() else ""
    if USAGE_TITLE not in card:
        card = _CARD_CONSTRUCTOR.sub(r'SentenceTransformer("\1", trust_remote_code=True)', card)
        place = card.find(_CARD_USAGE_HEADING)
        before, after = (card, "") if place < 0 else (card[:place], card[place:])
        card = before.rstrip() + "\n\n" + usage_section(name, onnx) + after
        path.write_text(card.lstrip(), encoding="utf-8")
    return path


def require_new_folder(output_dir: str | os.PathLike) -> Path:
    """Refuse to write an export over anything: an existing file, or a folder that already holds files.

    Exports write many files (weights, tokenizer, code, card); mixed into a folder that had other
    files, or written over a model folder, they would lose the user's data without a word.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"{output_dir} already exists and is not empty; name a new folder (nothing was written)")
    return output_dir


def export_merged(
    name_or_path: str,
    output_dir: str | os.PathLike,
    device: str = "cpu",
    trust_remote_code: bool = False,
    onnx: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Save a shipped model, base or trained folder as a standalone folder with the adapter merged.

    The folder loads with ``SentenceTransformer(output_dir, trust_remote_code=True)`` without
    bellm-st (the method's code is in it; see the model card's usage section) and with
    ``bellm_st.load(output_dir)`` where bellm-st is installed; it needs no peft. ``onnx=True``
    adds the ONNX graph (fp32, exported on CPU) for ``backend="onnx"``.
    ``trust_remote_code`` and ``cache_dir`` are :func:`bellm_st.load`'s. ``output_dir`` must be new or empty.
    """
    from bellm_st.api import load

    output_dir = require_new_folder(output_dir)
    if onnx:
        from bellm_st.fast.onnx_export import export_onnx, require_extra

        require_extra("onnxscript")  # before minutes of loading
        if device != "cpu":
            raise ValueError(f"device={device!r}: the ONNX graph is exported from the fp32 model on CPU; use 'cpu'")
    model = load(name_or_path, device=device, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    encoder_of(model).merge_adapter()
    model.save(str(output_dir))
    if onnx:
        export_onnx(model, output_dir)
    write_method_code(output_dir)
    add_usage_section(output_dir, output_dir.name, onnx)
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
    recipe_file = model_dir / "recipe.json"
    recipe = json.loads(recipe_file.read_text(encoding="utf-8")) if recipe_file.exists() else {}
    if base is None:
        base = recipe.get("base")
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
    # A pruned model's saved backbone has its N layers only; the shipped layout rebuilds the full
    # base, so it must say to keep the first N (the adapter covers just those).
    keep_layers = recipe.get("keep_layers")
    shipped = {**settings, "base": base, **({"keep_layers": keep_layers} if keep_layers else {}),
               **({"prompts": prompts} if prompts else {})}
    (target / CONFIG_FILE).write_text(json.dumps(shipped, indent=2) + "\n", encoding="utf-8")
    return target
