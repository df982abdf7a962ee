"""LangChain ``Embeddings`` backed by a BeLLM sentence encoder."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from sentence_transformers import SentenceTransformer
from typing_extensions import Self

from bellm_st.api import ENCODE_BATCH_SIZE
from bellm_st.inputs import validate_text
from bellm_st.integration import Role, check_template, embed, resolve_model


class BeLLMEmbeddings(BaseModel, Embeddings):
    """BeLLM sentence embeddings (a decoder with bi-directional last layers) for LangChain.

    Setup:
        ``pip install -e integrations/langchain-bellm`` (``make setup`` does it).

    Key init args:
        model_name: a shipped model or base name (``smollm2-135m``), or a saved model folder;
            default: the shipped default model. Loaded once per process and ``device``.
        model: an already-built ``SentenceTransformer`` to use instead of ``model_name``.
        query_template / document_template: a full template with ``{text}`` or a plain prefix
            for queries / documents; default: the model's own ``query``/``document`` prompts.
        batch_size: texts per forward pass. normalize: L2-normalise vectors (default True).
        device: ``cpu``, ``cuda``...; default: CUDA when available.
        backend: ``torch``, or ``onnx`` for ONNX Runtime on a CPU (a folder's ``onnx/model.onnx``; a
            shipped model is exported once, on first use), the same vectors faster.
        trust_remote_code: load a ``model_name`` folder that names module classes outside
            sentence-transformers and bellm-st, or holds only pickle weights (runs its code).
        show_progress: show a progress bar while embedding documents.

    Instantiate:
        .. code-block:: python

            from langchain_bellm import BeLLMEmbeddings

            embeddings = BeLLMEmbeddings(query_template='This claim: "{text}" is supported by the word:"')
            embeddings = BeLLMEmbeddings(backend="onnx")  # on a CPU

    Embed:
        .. code-block:: python

            embeddings.embed_query("What causes tides?")
            embeddings.embed_documents(["The moon's gravity.", "Wind."])
            await embeddings.aembed_query("What causes tides?")  # runs in a worker thread

    Bad input (``None``, non-strings, empty lists, blank strings) raises ``TypeError`` or
    ``ValueError`` naming the item, as everywhere in bellm-st. Texts are embedded exactly as
    given; only what exceeds the model's ``max_seq_length`` is truncated, with a warning.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    model_name: str | None = None
    model: SentenceTransformer | None = Field(default=None, exclude=True, repr=False)
    query_template: str | None = None
    document_template: str | None = None
    batch_size: int = Field(default=ENCODE_BATCH_SIZE, gt=0)
    normalize: bool = True
    device: str | None = None
    backend: str = "torch"
    trust_remote_code: bool = False
    show_progress: bool = False

    _model: SentenceTransformer = PrivateAttr()

    @model_validator(mode="after")
    def _load_model(self) -> Self:
        self.model_name, self._model = resolve_model(
            self.model_name, self.model, self.device, self.trust_remote_code, self.backend
        )
        check_template(self._model, self.query_template, "query")
        check_template(self._model, self.document_template, "document")
        return self

    def _embed(self, texts: Any, role: Role, where: str, show_progress: bool = False) -> list[list[float]]:
        template = self.query_template if role == "query" else self.document_template
        return embed(
            self._model,
            texts,
            role=role,
            template=template,
            batch_size=self.batch_size,
            normalize=self.normalize,
            show_progress=show_progress,
            where=where,
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents with the document template."""
        return self._embed(texts, "document", "texts", show_progress=self.show_progress)

    def embed_query(self, text: str) -> list[float]:
        """Embed one query with the query template."""
        return self._embed([validate_text(text, where="text")], "query", "text")[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents in a worker thread, leaving the event loop free."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Embed one query in a worker thread, leaving the event loop free."""
        return await asyncio.to_thread(self.embed_query, text)
