"""Fixtures: the tiny BeLLM model and a real server (default limits) on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import bellm_st
from bellm_st.serving import ServerSettings

from .serving_support import MODEL_ID, QUERY_TEMPLATE, LiveServer, live_server


@pytest.fixture(scope="session")
def served_model(tiny_model_dir):
    """The tiny BeLLM model with a real ``query`` prompt, so ``prompt_name`` changes vectors."""
    return bellm_st.build(tiny_model_dir, bidirectional_layers=2, query_template=QUERY_TEMPLATE, device="cpu")


@pytest.fixture(scope="session")
def server(served_model) -> Iterator[LiveServer]:
    """A server with default limits and no authentication."""
    with live_server(served_model, ServerSettings(model_id=MODEL_ID)) as running:
        yield running
