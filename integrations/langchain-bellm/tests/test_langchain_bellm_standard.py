"""LangChain's standard embeddings suites (langchain-tests, pinned in the test extra).

The unit suite runs on the tiny random model; the integration suite on the shipped default model
(SmolLM2-135M, offline), the one users get from ``BeLLMEmbeddings()``.
"""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_bellm import BeLLMEmbeddings

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
