"""RAG retrieval on SciFact with LlamaIndex: BeLLMEmbedding + a FAISS vector store.

    python examples/llama_index_scifact_rag.py                # default subset, a few minutes on CPU
    python examples/llama_index_scifact_rag.py --limit-queries 0 --limit-corpus 0  # everything

Builds a ``VectorStoreIndex`` over the abstracts (one node each, no re-chunking) in FAISS through
``BeLLMEmbedding``, retrieves the top 10 for each claim, and prints nDCG@10 beside
all-MiniLM-L6-v2 through the same pipeline.
"""

from __future__ import annotations

import argparse

import faiss
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode
from llama_index.vector_stores.faiss import FaissVectorStore
from scifact_rag import TOP_K, Subset, run_comparison
from sentence_transformers import SentenceTransformer
from tqdm import tqdm

from llama_index.embeddings.bellm import BeLLMEmbedding


def index_and_retrieve(model: SentenceTransformer, subset: Subset, args: argparse.Namespace) -> dict[str, list[str]]:
    embedding = BeLLMEmbedding(model=model, embed_batch_size=args.batch_size)
    vector_store = FaissVectorStore(faiss_index=faiss.IndexFlatIP(model.get_embedding_dimension()))  # cosine
    index = VectorStoreIndex(
        [TextNode(text=text, id_=doc_id) for doc_id, text in subset.corpus.items()],
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=embedding,
        show_progress=True,
    )
    retriever = index.as_retriever(similarity_top_k=TOP_K)
    return {
        query_id: [hit.node.node_id for hit in retriever.retrieve(claim)]
        for query_id, claim in tqdm(subset.queries.items(), desc="Retrieving", unit="claim")
    }


if __name__ == "__main__":
    run_comparison("LlamaIndex + FAISS", index_and_retrieve)
