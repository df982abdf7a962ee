"""Run the embeddings app with uvicorn: the one place that knows about the ASGI server."""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections.abc import Callable

import uvicorn
from sentence_transformers import SentenceTransformer

from bellm_st.serving.app import create_app
from bellm_st.serving.embedder import Embedder
from bellm_st.serving.settings import ServerSettings


# uvicorn's own deadline comes this long after the app's: by then the app has answered every
# request the grace period could not wait for (503), so uvicorn's plain-text 500 never goes out.
UVICORN_DEADLINE_AFTER_GRACE_SECONDS = 1.0


class _GracefulServer(uvicorn.Server):
    """uvicorn that tells the app when shutdown begins (ASGI has no message for that moment)."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]):
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.on_shutdown()
        await super().shutdown(sockets)


def uvicorn_server(
    model: SentenceTransformer | Embedder,
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> uvicorn.Server:
    """A configured uvicorn server; on SIGINT/SIGTERM it stops accepting, finishes in-flight requests
    (up to ``settings.graceful_shutdown_seconds``, then answers the rest 503) and drains the batcher."""
    app = create_app(model, settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds + UVICORN_DEADLINE_AFTER_GRACE_SECONDS,
        server_header=False,
    )
    return _GracefulServer(config, on_shutdown=app.state.shutdown.begin)


def serve(
    model: SentenceTransformer | Embedder,
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Serve ``model`` until SIGINT or SIGTERM; after a graceful stop on SIGTERM the process exits 0, as servers do."""
    server = uvicorn_server(model, settings, host=host, port=port, log_level=log_level)
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        server.run()
        return
    # uvicorn handles SIGTERM, shuts down, then raises the signal again for the handler it found:
    # this one ends the process with 0 instead of the default's 143.
    previous = signal.signal(signal.SIGTERM, _exit_after_graceful_stop)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_after_graceful_stop(signum: int, frame: object) -> None:
    sys.exit(0)

