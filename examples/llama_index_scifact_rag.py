"""RAG retrieval on SciFact with LlamaIndex: BeLLMEmbedding + a FAISS vector store.

    python examples/llama_index_scifact_rag.py                # default subset, a few minutes on CPU
    python examples/llama_index_scifact_rag.py --limit-queries 0 --limit-corpus 0  # everything
    python examples/llama_index_scifact_rag.py --dense-only   # without the BM25 and fused rows

Builds a ``VectorStoreIndex`` over the abstracts (one node each, no re-chunking) in FAISS through
``BeLLMEmbedding``, retrieves the top 10 for each claim, and prints nDCG@10 beside
all-MiniLM-L6-v2 through the same pipeline. Each model's index is also fused with LlamaIndex's
BM25 retriever by weighted reciprocal rank fusion (``hybrid_retriever``: ``QueryFusionRetriever``
with the original query only, no LLM writes queries), and BM25 alone is scored too.
"""

from __future__ import annotations

import argparse

import faiss
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode
from llama_index.vector_stores.faiss import FaissVectorStore
from scifact_rag import TOP_K, Rankings, Subset, run_comparison
from sentence_transformers import SentenceTransformer
from tqdm import tqdm

from llama_index.embeddings.bellm import BeLLMEmbedding, hybrid_retriever

_indexes: dict[tuple[int, int], VectorStoreIndex] = {}  # (model, subset) -> index


def build_index(model: SentenceTransformer, subset: Subset, args: argparse.Namespace) -> VectorStoreIndex:
    """The model's FAISS index of the subset, built once: the hybrid rows reuse it (encoding is nearly all the time)."""
    key = (id(model), id(subset))
    if key not in _indexes:
        embedding = BeLLMEmbedding(model=model, embed_batch_size=args.batch_size)
        vector_store = FaissVectorStore(faiss_index=faiss.IndexFlatIP(model.get_embedding_dimension()))  # cosine
        _indexes[key] = VectorStoreIndex(
            nodes(subset),
            storage_context=StorageContext.from_defaults(vector_store=vector_store),
            embed_model=embedding,
            show_progress=True,
        )
    return _indexes[key]


def nodes(subset: Subset) -> list[TextNode]:
    return [TextNode(text=text, id_=doc_id) for doc_id, text in subset.corpus.items()]


def retrieve_all(retriever, subset: Subset) -> Rankings:
    return {
        query_id: [hit.node.node_id for hit in retriever.retrieve(claim)]
        for query_id, claim in tqdm(subset.queries.items(), desc="Retrieving", unit="claim")
    }


def index_and_retrieve(model: SentenceTransformer, subset: Subset, args: argparse.Namespace) -> Rankings:
    return retrieve_all(build_index(model, subset, args).as_retriever(similarity_top_k=TOP_K), subset)


def fuse_with_bm25(model: SentenceTransformer | None, subset: Subset, args: argparse.Namespace) -> Rankings:
    """BM25 alone (``model`` None), or BM25 and the model's index fused by weighted reciprocal rank."""
    if model is None:
        retriever = hybrid_retriever(nodes=nodes(subset), weights={"dense": 0}, similarity_top_k=TOP_K)
    else:
        retriever = hybrid_retriever(build_index(model, subset, args), weights=args.weights, rrf_k=args.rrf_k,
                                     similarity_top_k=TOP_K)
    return retrieve_all(retriever, subset)


if __name__ == "__main__":
    run_comparison("LlamaIndex + FAISS", index_and_retrieve, hybrid=fuse_with_bm25)
