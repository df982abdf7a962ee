"""RAG retrieval on SciFact with LangChain: BeLLMEmbeddings + a Chroma vector store (embedded, in memory).

    python examples/langchain_scifact_rag.py                  # default subset, minutes on CPU
    python examples/langchain_scifact_rag.py --limit-queries 0 --limit-corpus 0   # everything
    python examples/langchain_scifact_rag.py --dense-only     # without the BM25 and fused rows

Indexes the abstracts in Chroma through ``BeLLMEmbeddings``, retrieves the top 10 for each claim
with a LangChain retriever, and prints nDCG@10 beside all-MiniLM-L6-v2 through the same pipeline.
Each model's Chroma store is also fused with BM25 (``BeLLMHybridRetriever``: LangChain's
``EnsembleRetriever`` over ``BM25SRetriever`` and the store), and BM25 alone is scored too.
"""

from __future__ import annotations

import argparse

from chromadb.config import Settings
from langchain_chroma import Chroma
from langchain_core.documents import Document
from scifact_rag import TOP_K, Rankings, Subset, run_comparison
from sentence_transformers import SentenceTransformer
from tqdm import tqdm

from langchain_bellm import BeLLMEmbeddings, BeLLMHybridRetriever

_stores: dict[tuple[int, int], Chroma] = {}  # (model, subset) -> store


def build_store(model: SentenceTransformer, subset: Subset, args: argparse.Namespace) -> Chroma:
    """The model's Chroma store of the subset, built once: the fused rows reuse it (encoding is nearly all the time)."""
    key = (id(model), id(subset))
    if key not in _stores:
        _stores[key] = Chroma.from_texts(
            list(subset.corpus.values()),
            BeLLMEmbeddings(model=model, batch_size=args.batch_size, show_progress=True),
            ids=list(subset.corpus),
            collection_name=f"scifact-{id(model)}-{id(subset)}",
            collection_metadata={"hnsw:space": "cosine"},
            client_settings=Settings(anonymized_telemetry=False),  # offline: nothing to report to
        )
    return _stores[key]


def documents(subset: Subset) -> list[Document]:
    return [Document(id=doc_id, page_content=text) for doc_id, text in subset.corpus.items()]


def retrieve_all(retriever, subset: Subset) -> Rankings:
    return {
        query_id: [document.id for document in retriever.invoke(claim)]
        for query_id, claim in tqdm(subset.queries.items(), desc="Retrieving", unit="claim")
    }


def index_and_retrieve(model: SentenceTransformer, subset: Subset, args: argparse.Namespace) -> Rankings:
    return retrieve_all(build_store(model, subset, args).as_retriever(search_kwargs={"k": TOP_K}), subset)


def fuse_with_bm25(model: SentenceTransformer | None, subset: Subset, args: argparse.Namespace) -> Rankings:
    """BM25 alone (``model`` None), or BM25 and the model's store fused by weighted reciprocal rank."""
    if model is None:
        retriever = BeLLMHybridRetriever.from_documents(documents(subset), weights={"dense": 0}, k=TOP_K)
    else:
        store = build_store(model, subset, args)
        retriever = BeLLMHybridRetriever.from_documents(documents(subset), vector_store=store, weights=args.weights,
                                                        rrf_k=args.rrf_k, k=TOP_K)
    return retrieve_all(retriever, subset)


if __name__ == "__main__":
    run_comparison("LangChain + Chroma", index_and_retrieve, hybrid=fuse_with_bm25)
