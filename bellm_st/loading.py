"""Loading a saved model folder (or hub repository) without running code that came with it, and
failing in one line on a folder that cannot load.

A folder names its module classes in ``modules.json``; sentence-transformers imports them, and
with ``trust_remote_code=True`` also runs a ``<module>.py`` shipped in the folder and forwards the
flag to transformers, which then runs the ``auto_map`` code of ``config.json``. So without the
caller's explicit ``trust_remote_code=True``:

- only classes of the installed ``sentence_transformers`` and ``bellm_st`` packages load; both are
  taken from the installed packages, never from files in the folder (a folder written by
  ``bellm-st export`` names its own copy of the encoder, :data:`EXPORTED_CLASS_REF`, which loads
  as the installed ``BeLLMEncoder`` here, trusted or not);
- transformers gets ``trust_remote_code=False`` (no ``auto_map`` code, and never its terminal
  prompt) and ``use_safetensors=True``; a checkpoint whose ``auto_map`` names a model or tokenizer
  transformers has no class of its own for is refused, naming the file;
- a folder whose weights exist only as pickle files (``.bin``, ``.pt`` ...) is refused, symbolic
  links followed: unpickling can run code, and safetensors cannot.

Whatever the trust, a damaged ``.safetensors`` file is refused naming it, and what transformers,
safetensors or torch raise on weights that do not fit (:func:`one_line_load_errors`) becomes a
one-line ``ValueError``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError, safe_open
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Module
from sentence_transformers.util import import_from_string, load_file_path

from bellm_st.config import read_json
from bellm_st.model import BeLLMSentenceTransformer
from bellm_st.module import BeLLMEncoder

TRUSTED_PACKAGES = ("sentence_transformers", "bellm_st")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
EXPORTED_CLASS_REF = "module.BeLLMEncoder"  # the encoder's copy in a folder written by `bellm-st export`
TRUST_FIX = "pass trust_remote_code=True (on the command line: --trust-remote-code)"
# What loading a folder raises on weights it cannot use: damaged files, tensors of the wrong shape,
# pickles torch.load(weights_only=True) refuses, module classes that do not exist.
LOAD_ERRORS = (SafetensorError, RuntimeError, pickle.UnpicklingError, ImportError)
REPORT_LOGGER = "transformers.modeling_utils"  # where transformers logs its load report
_TERMINAL_STYLE = re.compile(r"\x1b\[[0-9;]*m")


def installed_module_class(class_ref: str, source: str) -> type[Module]:
    """The class a ``modules.json`` type names, from an installed trusted package, or an error naming the flag."""
    if class_ref.split(".", 1)[0] not in TRUSTED_PACKAGES:
        raise ValueError(
            f"{source} names the module class {class_ref!r}, which is not part of sentence-transformers or "
            f"bellm-st; loading it would run code from the model. If you trust {source}, {TRUST_FIX}"
        )
    try:
        module_class = import_from_string(class_ref)  # both packages are imported already: never from the folder
    except ImportError:
        raise ValueError(
            f"{source} names the module class {class_ref!r} in modules.json, which the installed "
            f"{class_ref.split('.', 1)[0]} does not have; fix modules.json (a BeLLM model names "
            f"{BeLLMEncoder.__module__}.{BeLLMEncoder.__name__})"
        ) from None
    if not (isinstance(module_class, type) and issubclass(module_class, Module)):
        raise ValueError(f"{source} names {class_ref!r} in modules.json, which is not a sentence-transformers module")
    return module_class


def module_class_refs(modules_file: str, source: str) -> list[str]:
    """The class names a ``modules.json`` lists, or an error saying what the file should hold."""
    entries = read_json(modules_file)
    if not isinstance(entries, list) or not all(isinstance(entry, dict) and isinstance(entry.get("type"), str)
                                                for entry in entries):
        raise ValueError(
            f"{source}: modules.json must be a JSON array of modules, each with a \"type\" (a class name); "
            "fix it, or save the model again"
        )
    return [entry["type"] for entry in entries]


def folders_within(folder: Path) -> Iterator[tuple[Path, list[str]]]:
    """Each folder in ``folder`` with its file names, symbolic links followed and each real folder seen once."""
    seen: set[str] = set()
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        yield Path(directory), files


def check_weight_files(folder: Path, trust_remote_code: bool) -> None:
    """Refuse a folder holding a damaged ``.safetensors`` file or, untrusted, a sub-folder whose weights are
    pickle files with no safetensors beside them."""
    for directory, files in folders_within(folder):
        pickles = sorted(name for name in files if name.endswith(PICKLE_SUFFIXES))
        safetensors = sorted(name for name in files if name.endswith(".safetensors"))
        if pickles and not safetensors and not trust_remote_code:
            raise ValueError(
                f"{directory / pickles[0]} holds weights as a pickle, and unpickling can run code; convert it "
                f"to safetensors, or if you trust {folder}, {TRUST_FIX}"
            )
        for name in safetensors:
            try:
                with safe_open(directory / name, framework="pt"):
                    pass
            except (SafetensorError, OSError) as error:
                raise ValueError(
                    f"{directory / name} is not a readable safetensors file ({error}); it is truncated or damaged: "
                    "copy it again, or save the model again"
                ) from None


def _json_object(path: Path) -> dict[str, Any]:
    """A transformers config file's content; none (a missing file, or not an object) is left to transformers."""
    content = read_json(path) if path.is_file() else {}
    return content if isinstance(content, dict) else {}


def refuse_custom_code(checkpoint: str, trust_remote_code: bool) -> None:
    """Refuse a local checkpoint whose ``auto_map`` names a model or tokenizer that transformers has no class
    of its own for: loading it would run the folder's code (untrusted, transformers would otherwise ask on
    the terminal or fail with a message of several lines). Where transformers has the class, it is used
    and the folder's code ignored, as transformers itself does."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES, tokenizer_class_from_name

    if trust_remote_code or not os.path.isdir(checkpoint):
        return
    folder = Path(checkpoint)
    config = _json_object(folder / "config.json")
    model_type = config.get("model_type")
    tokenizer_config = _json_object(folder / "tokenizer_config.json")
    tokenizer_class = tokenizer_config.get("tokenizer_class")
    if isinstance(tokenizer_class, str):
        base_name = tokenizer_class.removesuffix("Fast")
        tokenizer_known = any(tokenizer_class_from_name(name) is not None for name in (base_name, base_name + "Fast"))
    else:
        tokenizer_known = model_type in TOKENIZER_MAPPING_NAMES
    for file, content, known in (("config.json", config, model_type in CONFIG_MAPPING_NAMES),
                                 ("tokenizer_config.json", tokenizer_config, tokenizer_known)):
        if content.get("auto_map") and not known:
            raise ValueError(
                f"{folder / file} has an auto_map naming code of the folder's own ({json.dumps(content['auto_map'])}), "
                f"and transformers has no class of its own for it; loading it would run that code. "
                f"If you trust {folder}, {TRUST_FIX}"
            )


class _HeldReports(logging.Filter):
    """Holds back transformers' load report (a table of many lines) while a folder loads."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName == "log_state_dict_report":
            self.records.append(record)
            return False
        return True

    def mismatched_tensors(self) -> list[str]:
        """The tensors the held reports list with a shape other than the model's, with their shapes."""
        found = []
        for record in self.records:
            for line in _TERMINAL_STYLE.sub("", record.getMessage()).splitlines():
                cells = [cell.strip() for cell in line.split("|")]
                if len(cells) >= 2 and cells[1] == "MISMATCH":
                    details = next((cell for cell in cells[2:] if "ckpt:" in cell), "")
                    found.append(f"{cells[0]} ({details[details.index('ckpt:'):]})" if details else cells[0])
        return found


@contextlib.contextmanager
def one_line_load_errors(name_or_path: str) -> Iterator[None]:
    """Turn what transformers, safetensors and torch raise on a folder they cannot load into a one-line
    ``ValueError`` naming it.

    On weights of the wrong shape transformers logs a report of many lines, then raises an error
    pointing at it; the report is held back while loading, shown as usual after a load that
    succeeds, and summarised into the error (the tensors and their shapes) after one that fails.
    """
    held = _HeldReports()
    report_logger = logging.getLogger(REPORT_LOGGER)
    report_logger.addFilter(held)
    try:
        yield
    except LOAD_ERRORS as error:
        mismatched = held.mismatched_tensors()
        if mismatched:
            held.records.clear()
            problem = (f"its weights do not fit its config.json: {'; '.join(mismatched)}; restore the files it was "
                       "saved with, or save the model again")
        elif isinstance(error, pickle.UnpicklingError):  # torch's own message suggests weights_only=False
            problem = ("a pickle weights file holds more than tensors, so torch.load(weights_only=True) refused it "
                       "(unpickling it could run code); convert the weights to safetensors where you trust them")
        else:
            problem = " ".join(str(error).split())
        raise ValueError(f"could not load {name_or_path}: {problem}") from error
    finally:
        report_logger.removeFilter(held)
        for record in held.records:
            report_logger.handle(record)


def load_saved(
    name_or_path: str,
    *,
    device: str,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
    backend: str = "torch",
    model_kwargs: dict[str, Any] | None = None,
) -> SentenceTransformer:
    """Load a saved sentence-transformers / BeLLM folder or hub repository, running no code from it unless trusted.

    ``backend`` and ``model_kwargs`` are sentence-transformers' own, handed to the folder's modules."""
    cache_folder = None if cache_dir is None else str(cache_dir)
    if not os.path.exists(name_or_path):
        try:
            validate_repo_id(name_or_path)
        except HFValidationError:
            raise FileNotFoundError(
                f"no model folder at {name_or_path!r}; give a saved model folder, a shipped name or a hub id"
            ) from None
    else:
        check_weight_files(Path(name_or_path), trust_remote_code)
        refuse_custom_code(name_or_path, trust_remote_code)
    modules_file = load_file_path(name_or_path, "modules.json", cache_folder=cache_folder)
    class_refs = [] if modules_file is None else module_class_refs(modules_file, name_or_path)
    # bellm_st classes always come from the installed package; others of an untrusted folder are refused.
    module_classes = {
        ref: BeLLMEncoder if ref == EXPORTED_CLASS_REF else installed_module_class(ref, name_or_path)
        for ref in class_refs
        if not trust_remote_code or ref.startswith("bellm_st.") or ref == EXPORTED_CLASS_REF
    }
    model_kwargs = {**(model_kwargs or {}), **({} if trust_remote_code else {"use_safetensors": True})}
    bellm_folder = any(ref.startswith("bellm_st.") or ref == EXPORTED_CLASS_REF for ref in class_refs)
    model_class = BeLLMSentenceTransformer if bellm_folder else SentenceTransformer
    # The only way sentence-transformers offers to hand over classes instead of importing them by name (its
    # trainer reloads checkpoints the same way); the version range in pyproject keeps it available.
    return model_class._load_with_module_classes(
        name_or_path,
        module_classes,
        device=device,
        trust_remote_code=trust_remote_code,
        cache_folder=cache_folder,
        model_kwargs=model_kwargs,
        backend=backend,
    )
