"""LangChain's standard suites (langchain-tests, pinned in the test extra).

The embeddings unit suite runs on the tiny random model; the embeddings integration suite on the
shipped default model (SmolLM2-135M, offline), the one users get from ``BeLLMEmbeddings()``. The
retriever suite (langchain-tests has no unit suite for retrievers) runs both retrievers on a tiny
corpus, the hybrid one with the tiny model.
"""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, RetrieversIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_bellm import BeLLMEmbeddings, BeLLMHybridRetriever, BM25SRetriever

# The suites mix sync and async tests; this marks the async ones' loop and silences
# pytest-asyncio's note on the sync ones, without switching the whole repository to auto mode.
ASYNC_SUITE_MARKS = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:.*is marked with '@pytest.mark.asyncio' but it is not an async function"),
]


class TestBeLLMEmbeddingsUnit(EmbeddingsUnitTests):
    @pytest.fixture(autouse=True)
    def _tiny_model(self, tiny_bellm):
        self.tiny_bellm = tiny_bellm

    @property
    def embeddings_class(self) -> type[BeLLMEmbeddings]:
        return BeLLMEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": self.tiny_bellm}


class TestBeLLMEmbeddingsIntegration(EmbeddingsIntegrationTests):
    pytestmark = ASYNC_SUITE_MARKS

    @property
    def embeddings_class(self) -> type[BeLLMEmbeddings]:
        return BeLLMEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"device": "cpu"}


# Every document holds "frog", so BM25 alone can return three of them.
FROG_DOCUMENTS = [
    Document(page_content=text)
    for text in (
        "Frogs lay their eggs in ponds.",
        "A frog was seen near the river.",
        "The frog population fell after the drought.",
        "Tree frogs climb with sticky toe pads.",
        "The stock market fell sharply today.",
    )
]


class TestBM25SRetrieverStandard(RetrieversIntegrationTests):
    pytestmark = ASYNC_SUITE_MARKS

    @property
    def retriever_constructor(self) -> type[BM25SRetriever]:
        return BM25SRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"documents": FROG_DOCUMENTS}

    @property
    def retriever_query_example(self) -> str:
        return "where do frogs live"


class TestBeLLMHybridRetrieverStandard(RetrieversIntegrationTests):
    pytestmark = ASYNC_SUITE_MARKS

    @pytest.fixture(autouse=True)
    def _tiny_model(self, tiny_bellm):
        self.tiny_bellm = tiny_bellm

    @property
    def retriever_constructor(self):
        return BeLLMHybridRetriever.from_documents  # its one constructor

    @property
    def retriever_constructor_params(self) -> dict:
        return {"documents": FROG_DOCUMENTS, "embeddings": BeLLMEmbeddings(model=self.tiny_bellm)}

    @property
    def retriever_query_example(self) -> str:
        return "where do frogs live"
