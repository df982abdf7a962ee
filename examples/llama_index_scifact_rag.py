"""RAG retrieval on SciFact with LlamaIndex: BeLLMEmbedding + a FAISS vector store.

    python examples/llama_index_scifact_rag.py                # default subset, a few minutes on CPU
    python examples/llama_index_scifact_rag.py --limit-queries 0 --limit-corpus 0  # everything
    python examples/llama_index_scifact_rag.py --hybrid       # also BM25 and each model fused with it

Builds a ``VectorStoreIndex`` over the abstracts (one node each, no re-chunking) in FAISS through
``BeLLMEmbedding``, retrieves the top 10 for each claim, and prints nDCG@10 beside
all-MiniLM-L6-v2 through the same pipeline. With ``--hybrid`` each model's vector retriever is
also fused with LlamaIndex's BM25 retriever by reciprocal rank fusion (``QueryFusionRetriever``
with the original query only: no LLM writes queries), and BM25 alone is scored too.
"""

from __future__ import annotations

import argparse

import faiss
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.retrievers.fusion_retriever import FUSION_MODES
from llama_index.core.schema import TextNode
from llama_index.retrievers.bm25 import BM25Retriever
from llama_index.vector_stores.faiss import FaissVectorStore
from scifact_rag import TOP_K, Rankings, Subset, run_comparison
from sentence_transformers import SentenceTransformer
from tqdm import tqdm

from llama_index.embeddings.bellm import BeLLMEmbedding


# Candidates each retriever hands to the fusion, from which the top 10 are kept.
FUSION_CANDIDATES = 50


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
    """BM25 alone (``model`` None), or BM25 and the model's vector retriever fused by reciprocal rank."""
    bm25 = BM25Retriever.from_defaults(nodes=nodes(subset), similarity_top_k=FUSION_CANDIDATES if model else TOP_K)
    if model is None:
        return retrieve_all(bm25, subset)
    dense = build_index(model, subset, args).as_retriever(similarity_top_k=FUSION_CANDIDATES)
    fused = QueryFusionRetriever(
        [dense, bm25], llm=MockLLM(), mode=FUSION_MODES.RECIPROCAL_RANK, similarity_top_k=TOP_K,
        num_queries=1, use_async=False,
    )
    return retrieve_all(fused, subset)


if __name__ == "__main__":
    run_comparison("LlamaIndex + FAISS", index_and_retrieve, hybrid=fuse_with_bm25)
