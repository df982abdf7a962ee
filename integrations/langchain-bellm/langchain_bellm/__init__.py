"""LangChain integration for bellm-st: ``BeLLMEmbeddings``."""

from langchain_bellm.embeddings import BeLLMEmbeddings

__all__ = ["BeLLMEmbeddings"]
