"""RAG retrieval on SciFact with LangChain: BeLLMEmbeddings + a Chroma vector store (embedded, in memory).

    python examples/langchain_scifact_rag.py                  # default subset, minutes on CPU
    python examples/langchain_scifact_rag.py --limit-queries 0 --limit-corpus 0   # everything

Indexes the abstracts in Chroma through ``BeLLMEmbeddings``, retrieves the top 10 for each claim
with a LangChain retriever, and prints nDCG@10 beside all-MiniLM-L6-v2 through the same pipeline.
"""

from __future__ import annotations

import argparse

from chromadb.config import Settings
from langchain_chroma import Chroma
from scifact_rag import TOP_K, Subset, run_comparison
from sentence_transformers import SentenceTransformer
from tqdm import tqdm

from langchain_bellm import BeLLMEmbeddings


def index_and_retrieve(model: SentenceTransformer, subset: Subset, args: argparse.Namespace) -> dict[str, list[str]]:
    embeddings = BeLLMEmbeddings(model=model, batch_size=args.batch_size, show_progress=True)
    store = Chroma.from_texts(
        list(subset.corpus.values()),
        embeddings,
        ids=list(subset.corpus),
        collection_name=f"scifact-{id(model)}",
        collection_metadata={"hnsw:space": "cosine"},
        client_settings=Settings(anonymized_telemetry=False),  # offline: nothing to report to
    )
    retriever = store.as_retriever(search_kwargs={"k": TOP_K})
    return {
        query_id: [document.id for document in retriever.invoke(claim)]
        for query_id, claim in tqdm(subset.queries.items(), desc="Retrieving", unit="claim")
    }


if __name__ == "__main__":
    run_comparison("LangChain + Chroma", index_and_retrieve)
