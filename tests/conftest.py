"""Fixtures on the tiny random decoders and tokenizer of :mod:`bellm_st.testing` (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels (bellm_st.fast.packed_attention) then run in Triton's interpreter on CPU tensors;
    # it must be chosen before the first kernel is defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")
from transformers import PreTrainedTokenizerFast

from bellm_st.testing import build_tiny_tokenizer
from bellm_st.testing.fixtures import tiny_model_dir, tiny_onnx_dir  # noqa: F401 (pytest fixtures)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_model(tiny_model_dir):
    """A BeLLM SentenceTransformer on the tiny llama (k=2, last-token pooling), on CPU."""
    import bellm_st

    return bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu")
