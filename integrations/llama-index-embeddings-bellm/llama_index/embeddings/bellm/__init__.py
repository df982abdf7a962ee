"""LlamaIndex integration for bellm-st: ``BeLLMEmbedding``."""

from llama_index.embeddings.bellm.base import BeLLMEmbedding

__all__ = ["BeLLMEmbedding"]
