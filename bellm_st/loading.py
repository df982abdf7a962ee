"""Loading a saved model folder (or hub repository) without running code that came with it.

A folder names its module classes in ``modules.json``; sentence-transformers imports them, and
with ``trust_remote_code=True`` also runs a ``<module>.py`` shipped in the folder and forwards the
flag to transformers, which then runs the ``auto_map`` code of ``config.json``. So without the
caller's explicit ``trust_remote_code=True``:

- only classes of the installed ``sentence_transformers`` and ``bellm_st`` packages load; both are
  taken from the installed packages, never from files in the folder (a folder written by
  ``bellm-st export`` names its own copy of the encoder, :data:`EXPORTED_CLASS_REF`, which loads
  as the installed ``BeLLMEncoder`` here, trusted or not);
- transformers gets ``trust_remote_code=False`` (no ``auto_map`` code) and ``use_safetensors=True``;
- a folder whose weights exist only as pickle files (``.bin``, ``.pt`` ...) is refused: unpickling
  can run code, and safetensors cannot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Module
from sentence_transformers.util import import_from_string, load_file_path

from bellm_st.model import BeLLMSentenceTransformer
from bellm_st.module import BeLLMEncoder

TRUSTED_PACKAGES = ("sentence_transformers", "bellm_st")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
EXPORTED_CLASS_REF = "module.BeLLMEncoder"  # the encoder's copy in a folder written by `bellm-st export`
TRUST_FIX = "pass trust_remote_code=True (on the command line: --trust-remote-code)"


def installed_module_class(class_ref: str, source: str) -> type[Module]:
    """The class a ``modules.json`` type names, from an installed trusted package, or an error naming the flag."""
    if class_ref.split(".", 1)[0] not in TRUSTED_PACKAGES:
        raise ValueError(
            f"{source} names the module class {class_ref!r}, which is not part of sentence-transformers or "
            f"bellm-st; loading it would run code from the model. If you trust {source}, {TRUST_FIX}"
        )
    module_class = import_from_string(class_ref)  # both packages are imported already: never from the folder
    if not (isinstance(module_class, type) and issubclass(module_class, Module)):
        raise ValueError(f"{source} names {class_ref!r} in modules.json, which is not a sentence-transformers module")
    return module_class


def refuse_pickle_only_weights(folder: Path) -> None:
    """Refuse a folder with a sub-folder whose weights are pickle files with no safetensors beside them."""
    for directory, _, files in os.walk(folder):
        pickles = sorted(name for name in files if name.endswith(PICKLE_SUFFIXES))
        if pickles and not any(name.endswith(".safetensors") for name in files):
            raise ValueError(
                f"{Path(directory) / pickles[0]} holds weights as a pickle, and unpickling can run code; convert it "
                f"to safetensors, or if you trust {folder}, {TRUST_FIX}"
            )


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
    elif not trust_remote_code:
        refuse_pickle_only_weights(Path(name_or_path))
    modules_file = load_file_path(name_or_path, "modules.json", cache_folder=cache_folder)
    class_refs = [] if modules_file is None else [entry["type"] for entry in json.loads(Path(modules_file).read_text())]
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
