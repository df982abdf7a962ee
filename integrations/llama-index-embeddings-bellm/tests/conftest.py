"""Tiny random BeLLM models for the LlamaIndex adapter tests (no downloads).

The tiny llama checkpoint and tokenizer come from the core test fixtures, so every test of
bellm-st and its integrations runs on the same tiny model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import bellm_st

_CORE_CONFTEST = Path(__file__).resolve().parents[3] / "tests" / "conftest.py"
_spec = importlib.util.spec_from_file_location("bellm_st_core_fixtures", _CORE_CONFTEST)
_core = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_core)

tiny_tokenizer = _core.tiny_tokenizer
tiny_model_dir = _core.tiny_model_dir


@pytest.fixture(scope="session")
def tiny_bellm(tiny_model_dir):
    """A BeLLM SentenceTransformer on the tiny llama, shared by the session: do not modify it."""
    return bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu")


@pytest.fixture(scope="session")
def tiny_bellm_dir(tiny_bellm, tmp_path_factory) -> str:
    """The tiny BeLLM model saved to a folder, loadable by ``model_name``."""
    path = tmp_path_factory.mktemp("tiny-bellm")
    tiny_bellm.save(str(path))
    return str(path)
