"""Tiny random BeLLM models for the LangChain adapter tests (no downloads).

The tiny llama comes from :mod:`bellm_st.testing`, so this package tests on its own with only
bellm-st installed, on the same tiny model as bellm-st's own tests.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built or shipped; nothing to download

import pytest

import bellm_st
from bellm_st.testing import save_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A saved tiny llama checkpoint + tokenizer, loadable by path like any real model."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


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
