"""Hybrid retrieval for LangChain: BM25 and a vector store fused by LangChain's ``EnsembleRetriever``.

LangChain has the fusion (``EnsembleRetriever``: weighted reciprocal rank fusion, in
``langchain-classic``) and vector-store retrievers; it has no BM25 retriever over bm25s
(``langchain-community``'s runs rank_bm25). This module adds that retriever,
:class:`BM25SRetriever`, and :class:`BeLLMHybridRetriever`, which wires the three together with
bellm-st's fusion defaults, a result count ``k`` and clear errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore
from pydantic import ConfigDict, Field, PrivateAttr, model_validator
from typing_extensions import Self

from bellm_st.bm25 import BM25Index
from bellm_st.fusion import DEFAULT_RRF_K, FUSION_CANDIDATES, check_rrf_k, resolve_weights
from bellm_st.inputs import validate_text

try:
    from langchain_classic.retrievers import EnsembleRetriever
except ImportError as error:  # the hybrid extra is not installed
    raise ImportError(
        f"hybrid retrieval needs langchain-classic: pip install 'langchain-bellm[hybrid]' ({error})"
    ) from error

DEFAULT_K = 4  # LangChain's own default number of results (vector store retrievers)


def _check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name}={k!r} must be an integer of at least 1: the number of documents to return")
    return k


class BM25SRetriever(BaseRetriever):
    """BM25 over fixed documents (bm25s, English stemmer and stop words: :mod:`bellm_st.bm25`).

    Returns the ``k`` best-scoring documents, fewer when fewer share a word with the query;
    ``invoke(query, k=...)`` overrides ``k`` for one call. Async calls run in a worker thread.

    .. code-block:: python

        retriever = BM25SRetriever.from_documents(documents, k=5)
        retriever.invoke("insulin resistance")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    documents: list[Document] = Field(repr=False)
    k: int = DEFAULT_K

    _index: BM25Index = PrivateAttr()

    @model_validator(mode="after")
    def _build_index(self) -> Self:
        _check_k(self.k)
        texts = [document.page_content for document in self.documents]
        self._index = BM25Index(texts, where="page_content of documents")
        return self

    @classmethod
    def from_documents(cls, documents: Sequence[Document], *, k: int = DEFAULT_K, **kwargs: Any) -> Self:
        """Index ``documents`` (their ``page_content``)."""
        return cls(documents=list(documents), k=k, **kwargs)

    def _search(self, query: str, k: int | None) -> list[Document]:
        hits = self._index.search_one(query, _check_k(self.k if k is None else k))
        return [self.documents[position] for position, _ in hits]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        return self._search(query, k)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        return await asyncio.to_thread(self._search, query, k)


class BeLLMHybridRetriever(BaseRetriever):
    """BM25 and dense (embedding) retrieval fused by weighted reciprocal rank fusion.

    Build it with :meth:`from_documents`. Each query goes to :class:`BM25SRetriever` and to the
    vector store's retriever (``candidates`` documents each); LangChain's ``EnsembleRetriever``
    fuses them (``weights`` -> its ``weights``, ``rrf_k`` -> its ``c``, BM25 first, so ties go
    to the lexical match) and the first ``k`` are returned. Documents are matched across the two
    rankings by ``page_content``, as ``EnsembleRetriever`` does. A ranking of weight 0 is not
    queried. The defaults (``bellm_st.fusion``) weight BM25 above the dense ranking, so that a
    weak embedding model cannot pull BM25 down; docs/RESULTS.md has the measurements.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    ensemble: EnsembleRetriever
    weights: dict[str, float]
    rrf_k: int = DEFAULT_RRF_K
    k: int = DEFAULT_K

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[Document],
        *,
        embeddings: Embeddings | None = None,
        vector_store: VectorStore | None = None,
        weights: Mapping[str, float] | None = None,
        rrf_k: int = DEFAULT_RRF_K,
        k: int = DEFAULT_K,
        candidates: int = FUSION_CANDIDATES,
    ) -> Self:
        """A hybrid retriever over ``documents``.

        The dense side is ``vector_store`` if given (it must already hold these documents;
        LangChain offers no way to list a store's documents, so BM25 needs them here), else an
        ``InMemoryVectorStore`` of ``documents`` embedded with ``embeddings`` (default:
        :class:`~langchain_bellm.BeLLMEmbeddings` with the shipped default model).
        ``weights`` maps ``bm25`` and ``dense`` to their weights (missing ones keep the default);
        ``rrf_k`` is the constant added to each rank; ``k`` the number of documents returned.
        """
        resolved = resolve_weights(weights)
        check_rrf_k(rrf_k)
        _check_k(k)
        _check_k(candidates, "candidates")
        if embeddings is not None and vector_store is not None:
            raise ValueError(
                "pass embeddings (to index the documents in memory) or vector_store (which holds them already), "
                "not both"
            )
        documents = list(documents)
        if not documents and (resolved["bm25"] > 0 or vector_store is None):
            raise ValueError("documents is empty; give at least one document to retrieve from")
        retrievers: list[BaseRetriever] = []
        used: list[float] = []
        if resolved["bm25"] > 0:
            retrievers.append(BM25SRetriever.from_documents(documents, k=candidates))
            used.append(resolved["bm25"])
        if resolved["dense"] > 0:
            if vector_store is None:
                if embeddings is None:
                    from langchain_bellm.embeddings import BeLLMEmbeddings

                    embeddings = BeLLMEmbeddings()
                vector_store = InMemoryVectorStore.from_documents(documents, embeddings)
            retrievers.append(vector_store.as_retriever(search_kwargs={"k": candidates}))
            used.append(resolved["dense"])
        ensemble = EnsembleRetriever(retrievers=retrievers, weights=used, c=rrf_k)
        return cls(ensemble=ensemble, weights=resolved, rrf_k=rrf_k, k=k)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        validate_text(query, where="query")
        count = _check_k(self.k if k is None else k)
        return self.ensemble.invoke(query, config={"callbacks": run_manager.get_child()})[:count]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        validate_text(query, where="query")
        count = _check_k(self.k if k is None else k)
        return (await self.ensemble.ainvoke(query, config={"callbacks": run_manager.get_child()}))[:count]
