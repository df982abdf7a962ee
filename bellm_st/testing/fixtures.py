"""pytest fixtures on the tiny models of :mod:`bellm_st.testing`, for bellm-st's tests and the integration packages'.

A separate module because it imports pytest, which only test runs have. A ``conftest.py`` imports
the fixtures it wants: ``from bellm_st.testing.fixtures import tiny_model_dir``.
"""

from __future__ import annotations

import pytest
from sentence_transformers import SentenceTransformer

from bellm_st.api import build
from bellm_st.testing import save_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A saved tiny llama checkpoint + tokenizer, loadable by path like any real model."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bellm(tiny_model_dir) -> SentenceTransformer:
    """A BeLLM SentenceTransformer on the tiny llama (k=2), on CPU, shared by the session: do not modify it."""
    return build(tiny_model_dir, bidirectional_layers=2, device="cpu")


@pytest.fixture(scope="session")
def tiny_bellm_dir(tiny_bellm, tmp_path_factory) -> str:
    """The tiny BeLLM model saved to a folder, loadable by name like any saved model."""
    path = tmp_path_factory.mktemp("tiny-bellm")
    tiny_bellm.save(str(path))
    return str(path)


ONNX_QUERY_TEMPLATE = 'Find documents about {text} now, in one word:"'


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_model_dir, tmp_path_factory) -> str:
    """A tiny BeLLM model (k=2, mean pooling, a ``query`` prompt) as ``bellm-st export --onnx`` writes it:
    weights, the method's code and ``onnx/model.onnx``. Exported once per session (tens of seconds); do not
    modify it."""
    from bellm_st.export import export_merged

    saved = tmp_path_factory.mktemp("tiny-bellm-torch")
    build(tiny_model_dir, bidirectional_layers=2, pooling="mean", query_template=ONNX_QUERY_TEMPLATE,
          device="cpu").save(str(saved))
    return str(export_merged(str(saved), tmp_path_factory.mktemp("tiny-bellm-onnx") / "tiny-bellm-onnx", onnx=True))
