"""Fixtures: the tiny BeLLM model, a real server (default limits) on loopback, a CLI that records what it would serve."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import bellm_st
import bellm_st.cli
import bellm_st.serving
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


@pytest.fixture()
def captured(monkeypatch, served_model):
    """Record what ``serve`` would load and run, instead of loading a model and listening."""
    calls = {}

    def load_model(model, device, trust_remote_code, backend="torch"):
        calls["model_argument"], calls["device"], calls["trust_remote_code"] = model, device, trust_remote_code
        calls["backend"] = backend
        return served_model

    def serve(model, settings, *, host, port, log_level):
        calls.update(model=model, settings=settings, host=host, port=port)

    monkeypatch.setattr(bellm_st.cli, "_load_model", load_model)
    monkeypatch.setattr(bellm_st.serving, "serve", serve)
    return calls
