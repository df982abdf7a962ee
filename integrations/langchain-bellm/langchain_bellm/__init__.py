"""LangChain integration for bellm-st: ``BeLLMEmbeddings``, and hybrid retrieval (``BeLLMHybridRetriever``,
``BM25SRetriever``) with the ``hybrid`` extra."""

from typing import Any

from langchain_bellm.embeddings import BeLLMEmbeddings

__all__ = ["BM25SRetriever", "BeLLMEmbeddings", "BeLLMHybridRetriever"]


def __getattr__(name: str) -> Any:
    # The retrievers need the hybrid extra (bm25s, PyStemmer, langchain-classic); embeddings alone do not.
    if name in ("BM25SRetriever", "BeLLMHybridRetriever"):
        from langchain_bellm import retrievers

        return getattr(retrievers, name)
    raise AttributeError(f"module 'langchain_bellm' has no attribute {name!r}")
