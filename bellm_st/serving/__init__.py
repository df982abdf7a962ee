"""OpenAI-compatible embeddings server: ``create_app(model, settings)`` or ``bellm-st serve``.

Names load on first use, so ``bellm_st.serving.settings`` (the defaults the CLI shows) imports
without the server's extra (FastAPI, uvicorn) installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bellm_st.serving.app import create_app
    from bellm_st.serving.embedder import Embedder
    from bellm_st.serving.server import serve, uvicorn_server
    from bellm_st.serving.settings import ServerSettings

_HOMES = {
    "Embedder": "bellm_st.serving.embedder",
    "ServerSettings": "bellm_st.serving.settings",
    "create_app": "bellm_st.serving.app",
    "serve": "bellm_st.serving.server",
    "uvicorn_server": "bellm_st.serving.server",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'bellm_st.serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
