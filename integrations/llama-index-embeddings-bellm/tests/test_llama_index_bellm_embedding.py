"""BeLLMEmbedding: sync, batched and async paths, callbacks, bad input, sharing, threads, retrieval."""

from __future__ import annotations

import asyncio
import copy
import threading
import time

import numpy as np
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.schema import TextNode
from sentence_transformers import SentenceTransformer

from bellm_st.api import default_model_name
from bellm_st.integration import clear_shared_models
from bellm_st.testing.bad_folders import BAD_FOLDER_KINDS, make_bad_folder
from llama_index.embeddings.bellm import BeLLMEmbedding

TEXTS = [
    "A man is playing a guitar.",
    "The stock market fell sharply today.",
    "Scientists discovered a new species of frog.",
    "A woman is slicing an onion in the kitchen.",
    "Children are playing football in the park.",
]
QUERY_TEMPLATE = 'This question: "{text}" means in one word:"'


@pytest.fixture()
def encode_calls(tiny_bellm, monkeypatch) -> list[dict]:
    """Records the keyword arguments and batch of every encode call on the tiny model."""
    calls = []
    original = tiny_bellm.encode

    def spy(inputs, **kwargs):
        calls.append({"inputs": list(inputs), **kwargs})
        return original(inputs, **kwargs)

    monkeypatch.setattr(tiny_bellm, "encode", spy)
    return calls


def test_is_a_llama_index_embedding():
    assert issubclass(BeLLMEmbedding, BaseEmbedding)
    assert BeLLMEmbedding.class_name() == "BeLLMEmbedding"


def test_query_and_text_embeddings_use_their_own_templates(tiny_bellm):
    embedding = BeLLMEmbedding(model=tiny_bellm, query_template=QUERY_TEMPLATE, document_template="passage: ")
    query = embedding.get_query_embedding(TEXTS[0])
    text = embedding.get_text_embedding(TEXTS[0])

    assert isinstance(query[0], float) and isinstance(text[0], float)
    np.testing.assert_allclose(
        query, tiny_bellm.encode(TEXTS[0], prompt=QUERY_TEMPLATE, normalize_embeddings=True), atol=1e-6
    )
    np.testing.assert_allclose(text, tiny_bellm.encode(TEXTS[0], prompt="passage: ", normalize_embeddings=True), atol=1e-6)
    assert not np.allclose(query, text, atol=1e-3)


def test_a_models_own_query_and_document_prompts_are_used_without_templates(tiny_bellm):
    """An adapted model carries its prompts (bellm-st adapt saves them); the adapter needs no templates."""
    model = copy.copy(tiny_bellm)  # the fixture's prompts stay as they are
    model.prompts = {"query": QUERY_TEMPLATE, "document": "passage: "}
    embedding = BeLLMEmbedding(model=model)
    np.testing.assert_allclose(embedding.get_query_embedding(TEXTS[0]),
                               tiny_bellm.encode(TEXTS[0], prompt=QUERY_TEMPLATE, normalize_embeddings=True), atol=1e-6)
    np.testing.assert_allclose(embedding.get_text_embedding_batch(TEXTS),
                               tiny_bellm.encode(TEXTS, prompt="passage: ", normalize_embeddings=True), atol=1e-6)


def test_normalize_option(tiny_bellm):
    raw = BeLLMEmbedding(model=tiny_bellm, normalize=False).get_text_embedding(TEXTS[1])
    normalized = BeLLMEmbedding(model=tiny_bellm).get_text_embedding(TEXTS[1])
    np.testing.assert_allclose(np.linalg.norm(normalized), 1.0, atol=1e-5)
    np.testing.assert_allclose(raw, tiny_bellm.encode(TEXTS[1]), atol=1e-6)


def test_batches_follow_embed_batch_size_and_fire_one_callback_each(tiny_bellm, encode_calls):
    handler = LlamaDebugHandler()
    embedding = BeLLMEmbedding(model=tiny_bellm, embed_batch_size=2, callback_manager=CallbackManager([handler]))
    vectors = embedding.get_text_embedding_batch(TEXTS)

    assert [call["inputs"] for call in encode_calls] == [TEXTS[0:2], TEXTS[2:4], TEXTS[4:]]
    assert all(call["batch_size"] == 2 for call in encode_calls)
    assert len(handler.get_event_pairs(CBEventType.EMBEDDING)) == 3
    np.testing.assert_allclose(vectors, tiny_bellm.encode(TEXTS, normalize_embeddings=True), atol=1e-6)


def test_query_and_single_text_fire_callbacks(tiny_bellm):
    handler = LlamaDebugHandler()
    embedding = BeLLMEmbedding(model=tiny_bellm, callback_manager=CallbackManager([handler]))
    embedding.get_query_embedding("hello")
    embedding.get_text_embedding("world")
    asyncio.run(embedding.aget_query_embedding("hello again"))
    pairs = handler.get_event_pairs(CBEventType.EMBEDDING)
    assert len(pairs) == 3
    assert pairs[0][1].payload["chunks"] == ["hello"]


def test_async_paths_match_sync(tiny_bellm):
    embedding = BeLLMEmbedding(model=tiny_bellm, query_template=QUERY_TEMPLATE, embed_batch_size=2)

    async def all_async():
        return await asyncio.gather(
            embedding.aget_query_embedding(TEXTS[0]),
            embedding.aget_text_embedding(TEXTS[0]),
            embedding.aget_text_embedding_batch(TEXTS),
        )

    query, text, batch = asyncio.run(all_async())
    np.testing.assert_allclose(query, embedding.get_query_embedding(TEXTS[0]), atol=1e-6)
    np.testing.assert_allclose(text, embedding.get_text_embedding(TEXTS[0]), atol=1e-6)
    np.testing.assert_allclose(batch, embedding.get_text_embedding_batch(TEXTS), atol=1e-6)


@pytest.mark.asyncio
async def test_async_paths_leave_the_event_loop_free(tiny_bellm, monkeypatch):
    embedding = BeLLMEmbedding(model=tiny_bellm)
    original = tiny_bellm.encode

    def slow_encode(*args, **kwargs):
        time.sleep(0.2)
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_bellm, "encode", slow_encode)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    await embedding.aget_query_embedding("hello")
    await embedding.aget_text_embedding("world")
    await embedding.aget_text_embedding_batch(TEXTS)
    ticking.cancel()
    assert ticks >= 20  # about 0.6 s of encoding in worker threads; a blocked loop would not tick


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        (None, TypeError, "texts must be a list of strings, got NoneType"),
        ("one string", TypeError, r"wrap a single text in a list"),
        (["a", "b", "c", None], TypeError, r"texts\[3\] is NoneType"),  # position in the whole list, not its batch
        (["a", "b", "c", 4.5], TypeError, r"texts\[3\] is float"),
        (["a", "b", "", "d"], ValueError, r"texts\[2\] is empty"),
    ],
)
def test_bad_batches_get_the_core_errors(tiny_bellm, encode_calls, texts, error, message):
    embedding = BeLLMEmbedding(model=tiny_bellm, embed_batch_size=2)
    with pytest.raises(error, match=message):
        embedding.get_text_embedding_batch(texts)
    with pytest.raises(error, match=message):
        asyncio.run(embedding.aget_text_embedding_batch(texts))
    assert encode_calls == []  # rejected before any batch reached the model


@pytest.mark.parametrize(
    ("method", "value", "error", "message"),
    [
        ("get_query_embedding", None, TypeError, r"^query is NoneType"),
        ("get_query_embedding", "  ", ValueError, r"^query is only whitespace"),
        ("get_text_embedding", 12, TypeError, r"^text is int"),
        ("get_text_embedding", "", ValueError, r"^text is empty"),
        ("aget_query_embedding", ["a list"], TypeError, r"^query is list"),
        ("aget_text_embedding", "", ValueError, r"^text is empty"),
    ],
)
def test_bad_single_texts_get_the_core_errors(tiny_bellm, method, value, error, message):
    result = getattr(BeLLMEmbedding(model=tiny_bellm), method)
    with pytest.raises(error, match=message):
        outcome = result(value)
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)


def test_empty_batch_is_llama_index_no_op_and_pre_embedded_nodes_index_without_the_model(tiny_bellm, encode_calls):
    embedding = BeLLMEmbedding(model=tiny_bellm)
    assert embedding.get_text_embedding_batch([]) == []
    node = TextNode(text="already embedded", id_="pre", embedding=embedding.get_text_embedding("already embedded"))
    encode_calls.clear()
    index = VectorStoreIndex([node], embed_model=embedding)
    assert encode_calls == []
    assert index.as_retriever(similarity_top_k=1).retrieve("already embedded")[0].node.node_id == "pre"


def test_full_template_on_a_model_that_is_not_bellm_is_refused(tiny_model_dir):
    plain = SentenceTransformer(tiny_model_dir, device="cpu")
    with pytest.raises(ValueError, match="not a BeLLM encoder"):
        BeLLMEmbedding(model=plain, document_template="Passage: {text}")


def test_a_named_model_loads_once_and_is_shared(tiny_bellm_dir):
    clear_shared_models()
    first = BeLLMEmbedding(tiny_bellm_dir, device="cpu")
    second = BeLLMEmbedding(model_name=tiny_bellm_dir, device="cpu", embed_batch_size=4)
    assert first._model is second._model
    assert first.model_name == tiny_bellm_dir
    assert len(second.get_text_embedding("hello")) == 32
    clear_shared_models()


def test_concurrent_calls_from_threads_are_serialised_and_correct(tiny_bellm, monkeypatch):
    embedding = BeLLMEmbedding(model=tiny_bellm, embed_batch_size=2)
    expected = embedding.get_text_embedding_batch(TEXTS)
    active, most_active = 0, 0
    counter_lock = threading.Lock()
    original = tiny_bellm.encode

    def tracking_encode(*args, **kwargs):
        nonlocal active, most_active
        with counter_lock:
            active += 1
            most_active = max(most_active, active)
        time.sleep(0.005)
        try:
            return original(*args, **kwargs)
        finally:
            with counter_lock:
                active -= 1

    monkeypatch.setattr(tiny_bellm, "encode", tracking_encode)
    results, errors = [], []

    def worker():
        try:
            for _ in range(2):
                results.append(embedding.get_text_embedding_batch(TEXTS))
        except Exception as error:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and most_active == 1 and len(results) == 12
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-6)


def test_vector_store_index_retrieves_the_expected_document_with_the_default_model():
    documents = {
        "tides": "The gravitational pull of the moon causes the ocean tides to rise and fall twice a day.",
        "insulin": "Insulin is a hormone made by the pancreas that lets cells absorb glucose from the blood.",
        "volcano": "Volcanic eruptions release lava, ash and gases from magma chambers deep below the surface.",
        "stocks": "Share prices fell sharply on Wall Street after the interest rate announcement.",
        "photosynthesis": "Plants convert sunlight, water and carbon dioxide into sugar and oxygen through photosynthesis.",
    }
    embedding = BeLLMEmbedding(device="cpu")  # the shipped default model, offline
    assert embedding.model_name == default_model_name()
    index = VectorStoreIndex([TextNode(text=text, id_=key) for key, text in documents.items()], embed_model=embedding)
    retriever = index.as_retriever(similarity_top_k=1)
    assert retriever.retrieve("How do plants make food from light?")[0].node.node_id == "photosynthesis"
    assert retriever.retrieve("Which organ makes the hormone that controls blood sugar?")[0].node.node_id == "insulin"


def folder_with_foreign_code(tiny_bellm_dir, tmp_path):
    """The saved tiny model plus a module class outside sentence-transformers and bellm-st, whose file
    leaves a marker when imported."""
    import json
    import shutil
    from pathlib import Path

    folder = Path(shutil.copytree(tiny_bellm_dir, tmp_path / "model"))
    marker = tmp_path / "ran"
    (folder / "evilmod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport torch\n\nclass Evil(torch.nn.Module):\n"
        "    @classmethod\n    def load(cls, *args, **kwargs):\n        return cls()\n\n"
        "    def forward(self, features, **kwargs):\n        return features\n"
    )
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": "evil", "path": "evil", "type": "evilmod.Evil"})
    (folder / "modules.json").write_text(json.dumps(modules))
    return str(folder), marker


def test_a_folder_with_foreign_code_is_refused_unless_trusted(tiny_bellm_dir, tmp_path):
    clear_shared_models()
    folder, marker = folder_with_foreign_code(tiny_bellm_dir, tmp_path)
    with pytest.raises(ValueError, match=r"'evilmod\.Evil'.*trust_remote_code=True"):
        BeLLMEmbedding(model_name=folder, device="cpu")
    assert not marker.exists()
    BeLLMEmbedding(model_name=folder, device="cpu", trust_remote_code=True)
    assert marker.exists()
    clear_shared_models()


def test_a_lone_surrogate_is_named_with_its_position(tiny_bellm):
    """Was the tokenizer's `TextEncodeInput must be Union[...]` with no position."""
    with pytest.raises(ValueError, match=r"texts\[1\] holds '\\ud800' at character 0, an unpaired UTF-16 surrogate"):
        BeLLMEmbedding(model=tiny_bellm).get_text_embedding_batch(["fine", "\ud800"])


def test_the_onnx_backend_gives_the_torch_vectors(tiny_onnx_dir):
    clear_shared_models()
    onnx_embedding = BeLLMEmbedding(tiny_onnx_dir, backend="onnx")
    torch_embedding = BeLLMEmbedding(tiny_onnx_dir, device="cpu")
    assert onnx_embedding._model[0].backend == "onnx" and onnx_embedding.backend == "onnx"
    np.testing.assert_allclose(onnx_embedding.get_text_embedding_batch(TEXTS),
                               torch_embedding.get_text_embedding_batch(TEXTS), atol=1e-5)
    np.testing.assert_allclose(onnx_embedding.get_query_embedding(TEXTS[0]),
                               torch_embedding.get_query_embedding(TEXTS[0]), atol=1e-5)
    with pytest.raises(ValueError, match="backend='nonsense' is not one of torch, onnx"):
        BeLLMEmbedding(tiny_onnx_dir, backend="nonsense")
    clear_shared_models()


@pytest.mark.parametrize("kind", BAD_FOLDER_KINDS)
def test_a_model_folder_that_cannot_load_is_refused_in_one_line(kind, tiny_bellm_dir, tiny_model_dir, tmp_path):
    bad = make_bad_folder(kind, tiny_bellm_dir, tiny_model_dir, tmp_path)
    clear_shared_models()
    with pytest.raises(ValueError, match=bad.message) as refused:
        BeLLMEmbedding(model_name=str(bad.path), device="cpu")
    assert "\n" not in str(refused.value) and not bad.marker.exists()
