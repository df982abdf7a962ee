"""OpenAI-compatible embeddings server: ``create_app(model, settings)`` or ``bellm-st serve``."""

from bellm_st.serving.app import create_app
from bellm_st.serving.embedder import Embedder
from bellm_st.serving.server import serve, uvicorn_server
from bellm_st.serving.settings import ServerSettings

__all__ = ["Embedder", "ServerSettings", "create_app", "serve", "uvicorn_server"]
