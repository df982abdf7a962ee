"""LlamaIndex ``BaseEmbedding`` backed by a BeLLM sentence encoder."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from sentence_transformers import SentenceTransformer

from bellm_st.inputs import validate_text, validate_texts
from bellm_st.integration import Role, check_template, embed, resolve_model

DEFAULT_EMBED_BATCH_SIZE = 32


class BeLLMEmbedding(BaseEmbedding):
    """BeLLM sentence embeddings (a decoder with bi-directional last layers) for LlamaIndex.

    ``model_name`` is a shipped model or base name (``smollm2-135m``) or a saved model folder
    (default: the shipped default model), loaded once per process and ``device``; ``model`` is an already-built ``SentenceTransformer``
    to use instead; ``trust_remote_code=True`` loads a folder whose own code or pickle weights
    would run (see bellm_st.loading); ``backend="onnx"`` runs the exported graph in ONNX Runtime on a CPU
    (a folder's ``onnx/model.onnx``; a shipped model is exported once, on first use). ``query_template``/``document_template`` are a full template with ``{text}``
    or a plain prefix (default: the model's own ``query``/``document`` prompts). Texts go to the
    model in batches of ``embed_batch_size``; callbacks and instrumentation events fire as for any
    LlamaIndex embedding.

    Bad input (``None``, non-strings, blank strings) raises ``TypeError`` or ``ValueError`` naming
    the item, as everywhere in bellm-st. An empty batch returns ``[]``: LlamaIndex itself asks for
    one when every node already carries an embedding.

    Example:
        .. code-block:: python

            from llama_index.core import Settings
            from llama_index.embeddings.bellm import BeLLMEmbedding

            Settings.embed_model = BeLLMEmbedding(device="cpu")
            Settings.embed_model = BeLLMEmbedding(backend="onnx")  # the CPU fast path
    """

    model_name: str | None = Field(default=None, description="Shipped model or base name, or a saved model folder.")
    query_template: str | None = Field(default=None, description="Template ({text}) or prefix for queries.")
    document_template: str | None = Field(default=None, description="Template ({text}) or prefix for documents.")
    normalize: bool = Field(default=True, description="L2-normalise the embeddings.")
    device: str | None = Field(default=None, description="Device to load the model on; default CUDA when available.")
    backend: str = Field(default="torch", description="torch, or onnx: ONNX Runtime on a CPU runs the exported graph.")
    trust_remote_code: bool = Field(
        default=False, description="Load a model_name folder whose own code or pickle weights would run."
    )

    _model: SentenceTransformer = PrivateAttr()

    def __init__(
        self,
        model_name: str | None = None,
        *,
        model: SentenceTransformer | None = None,
        query_template: str | None = None,
        document_template: str | None = None,
        embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
        normalize: bool = True,
        device: str | None = None,
        backend: str = "torch",
        trust_remote_code: bool = False,
        callback_manager: CallbackManager | None = None,
        **kwargs: Any,
    ) -> None:
        model_name, resolved_model = resolve_model(model_name, model, device, trust_remote_code, backend)
        super().__init__(
            model_name=model_name,
            query_template=query_template,
            document_template=document_template,
            embed_batch_size=embed_batch_size,
            normalize=normalize,
            device=device,
            backend=backend,
            trust_remote_code=trust_remote_code,
            callback_manager=callback_manager,
            **kwargs,
        )
        self._model = resolved_model
        check_template(self._model, query_template, "query")
        check_template(self._model, document_template, "document")

    @classmethod
    def class_name(cls) -> str:
        return "BeLLMEmbedding"

    def _embed(self, texts: list[str], role: Role, where: str) -> list[Embedding]:
        return embed(
            self._model,
            texts,
            role=role,
            template=self.query_template if role == "query" else self.document_template,
            batch_size=self.embed_batch_size,
            normalize=self.normalize,
            where=where,
        )

    # -- the hooks BaseEmbedding calls inside its callback/instrumentation events ---------------
    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([validate_text(query, where="query")], "query", "query")[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([validate_text(text, where="text")], "document", "text")[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts, "document", "texts")

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    # -- whole-list validation, so an error names the position in the caller's list -----------
    def get_text_embedding_batch(self, texts: list[str], show_progress: bool = False, **kwargs: Any) -> list[Embedding]:
        _validate_batch(texts)
        return super().get_text_embedding_batch(texts, show_progress=show_progress, **kwargs)

    async def aget_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        _validate_batch(texts)
        return await super().aget_text_embedding_batch(texts, show_progress=show_progress, **kwargs)


def _validate_batch(texts: Any) -> None:
    """Check a whole batch before LlamaIndex splits it; an empty one is LlamaIndex's own no-op."""
    if isinstance(texts, Sequence) and not isinstance(texts, (str, bytes)) and len(texts) == 0:
        return
    validate_texts(texts, where="texts")
