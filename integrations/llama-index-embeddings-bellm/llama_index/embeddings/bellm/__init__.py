"""LlamaIndex integration for bellm-st: ``BeLLMEmbedding``, and ``hybrid_retriever`` (BM25 fused with a
vector index)."""

from llama_index.embeddings.bellm.base import BeLLMEmbedding
from llama_index.embeddings.bellm.hybrid import WeightedReciprocalRankRetriever, hybrid_retriever

__all__ = ["BeLLMEmbedding", "WeightedReciprocalRankRetriever", "hybrid_retriever"]
