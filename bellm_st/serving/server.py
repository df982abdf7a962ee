"""Run the embeddings app with uvicorn: the one place that knows about the ASGI server."""

from __future__ import annotations

import uvicorn

from bellm_st.serving.app import create_app
from bellm_st.serving.embedder import Embedder, ServedModel
from bellm_st.serving.settings import ServerSettings


def uvicorn_server(
    model: ServedModel | Embedder,
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> uvicorn.Server:
    """A configured uvicorn server; on SIGINT/SIGTERM it stops accepting, finishes in-flight requests
    (up to ``settings.graceful_shutdown_seconds``) and then drains the batcher."""
    config = uvicorn.Config(
        create_app(model, settings),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        server_header=False,
    )
    return uvicorn.Server(config)


def serve(
    model: ServedModel | Embedder,
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Serve ``model`` until interrupted."""
    uvicorn_server(model, settings, host=host, port=port, log_level=log_level).run()

