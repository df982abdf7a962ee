"""The FastAPI application: OpenAI-compatible embeddings in front of the dynamic batcher.

request -> lifetime (client disconnect, shutdown grace) -> guard (auth, size, body deadline) ->
schema -> limits -> token count (thread) -> batcher (model thread) -> dimensions / encoding ->
response. Nothing on that path blocks the event loop.

Paths are matched exactly: ``/v1/embeddings/`` is a 404 that names ``/v1/embeddings``, not a
redirect (Starlette would build the redirect's address from the client's ``Host`` header).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Response
from sentence_transformers import SentenceTransformer

import bellm_st
from bellm_st.serving.batcher import DynamicBatcher, QueueFullError, ShuttingDownError
from bellm_st.serving.embedder import Embedder
from bellm_st.serving.errors import APIError, install_error_handlers
from bellm_st.serving.guards import RequestGuard
from bellm_st.serving.lifetime import RequestLifetime, Shutdown
from bellm_st.serving.limits import texts_from_input
from bellm_st.serving.responses import embedding_response, shorten
from bellm_st.serving.schemas import (
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    NativeEmbeddingRequest,
)
from bellm_st.serving.settings import ServerSettings

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Bad input: wrong types, empty or blank texts, too many or too long texts, bad dimensions"),
        (401, "Missing or wrong API key"),
        (408, "Request body not complete within the body timeout"),
        (413, "Request body over the size limit"),
        (429, "Queue full; retry later"),
        (503, "Queue full (when so configured), or shutting down (also for requests the grace period cannot wait for)"),
    )
}


def create_app(model: SentenceTransformer | Embedder, settings: ServerSettings | None = None) -> FastAPI:
    """An app serving ``model`` (a SentenceTransformer); run it with any ASGI
    server (``bellm-st serve`` uses uvicorn)."""
    settings = settings or ServerSettings()
    embedder = model if isinstance(model, Embedder) else Embedder(model)
    batcher = DynamicBatcher(
        embedder,
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=settings.max_batch_tokens,
        max_queue_items=settings.max_queue_items,
        batch_wait_seconds=settings.batch_wait_seconds,
    )
    shutdown = Shutdown(settings.graceful_shutdown_seconds)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn has already let in-flight requests finish; this drains anything still queued.
        await batcher.close()

    app = FastAPI(
        title="bellm-st embeddings",
        version=bellm_st.__version__,
        description="OpenAI-compatible sentence embeddings from a BeLLM (or any sentence-transformers) model.",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.embedder = embedder
    app.state.batcher = batcher
    app.state.shutdown = shutdown  # the ASGI server calls app.state.shutdown.begin() when it stops accepting
    app.add_middleware(
        RequestGuard,
        api_key=settings.api_key,
        max_payload_bytes=settings.max_payload_bytes,
        body_timeout_seconds=settings.request_body_timeout_seconds,
    )
    app.add_middleware(RequestLifetime, shutdown=shutdown)  # added last: the outermost
    install_error_handlers(app)

    def prepare(raw_input: Any) -> tuple[list[str], list[int]]:
        texts = texts_from_input(raw_input, settings)
        return texts, embedder.count_tokens(texts)

    def respond(vectors: np.ndarray, token_counts: list[int], request: EmbeddingRequest) -> bytes:
        answer = embedding_response(
            shorten(vectors, request.dimensions), token_counts, settings.model_id, request.encoding_format
        )
        return answer.model_dump_json().encode()

    async def embed(request: EmbeddingRequest, prompt_name: str | None) -> Response:
        if request.dimensions is not None and request.dimensions > embedder.dimension:
            raise APIError(
                400,
                f"dimensions={request.dimensions} but the model's vectors have {embedder.dimension}; "
                f"use 1..{embedder.dimension} or leave it out",
                param="dimensions",
                code="invalid_dimensions",
            )
        if prompt_name is not None and prompt_name not in embedder.prompt_names:
            raise APIError(
                400,
                f"prompt_name={prompt_name!r} is not a prompt of this model; use one of "
                f"{', '.join(embedder.prompt_names)} or leave it out",
                param="prompt_name",
                code="unknown_prompt",
            )
        texts, token_counts = await asyncio.to_thread(prepare, request.input)
        try:
            vectors = await batcher.embed(texts, token_counts, prompt_name)
        except QueueFullError as error:
            raise APIError(
                settings.queue_full_status, str(error), code="queue_full", headers={"Retry-After": "1"}
            ) from None
        except ShuttingDownError as error:
            raise APIError(503, str(error), code="shutting_down") from None
        # Serialising thousands of vectors takes a while: off the event loop too.
        body = await asyncio.to_thread(respond, vectors, token_counts, request)
        return Response(body, media_type="application/json")

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
    async def openai_embeddings(request: EmbeddingRequest) -> Response:
        """Embed texts the OpenAI way; vectors are L2-normalised."""
        return await embed(request, prompt_name=None)

    @app.post("/embed", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
    async def native_embeddings(request: NativeEmbeddingRequest) -> Response:
        """Embed texts with one of the model's named prompts (``query``, ``document``...)."""
        return await embed(request, prompt_name=request.prompt_name)

    @app.get("/v1/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_id, created=created)])

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health(response: Response) -> Health:
        """Liveness and queue depth; 503 once shutdown has begun. Needs no API key."""
        stopping = shutdown.begun or batcher.closing
        if stopping:
            response.status_code = 503
        return Health(
            status="shutting_down" if stopping else "ok",
            model=settings.model_id,
            queued_items=batcher.queued_items,
            max_queue_items=settings.max_queue_items,
        )

    return app
