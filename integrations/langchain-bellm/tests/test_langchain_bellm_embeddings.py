"""BeLLMEmbeddings beyond the standard suites: templates, options, bad input, sharing, threads, async."""

from __future__ import annotations

import asyncio
import copy
import re
import threading
import time

import numpy as np
import pytest
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ValidationError
from sentence_transformers import SentenceTransformer

import bellm_st.api
from bellm_st.integration import clear_shared_models
from bellm_st.testing.bad_folders import BAD_FOLDER_KINDS, make_bad_folder
from langchain_bellm import BeLLMEmbeddings

DOCUMENTS = [
    "A man is playing a guitar.",
    "The stock market fell sharply today.",
    "Scientists discovered a new species of frog.",
]
QUERY_TEMPLATE = 'This question: "{text}" means in one word:"'


def test_documents_and_queries_match_the_model_with_their_own_templates(tiny_bellm):
    embeddings = BeLLMEmbeddings(model=tiny_bellm, query_template=QUERY_TEMPLATE, document_template="passage: ")
    documents = embeddings.embed_documents(DOCUMENTS)
    query = embeddings.embed_query(DOCUMENTS[0])

    assert isinstance(documents[0][0], float) and isinstance(query[0], float)
    expected_documents = tiny_bellm.encode(DOCUMENTS, prompt="passage: ", normalize_embeddings=True)
    expected_query = tiny_bellm.encode([DOCUMENTS[0]], prompt=QUERY_TEMPLATE, normalize_embeddings=True)[0]
    np.testing.assert_allclose(documents, expected_documents, atol=1e-6)
    np.testing.assert_allclose(query, expected_query, atol=1e-6)
    assert not np.allclose(query, documents[0], atol=1e-3)  # the two templates really differ


def test_without_templates_the_model_template_is_used_for_both(tiny_bellm):
    embeddings = BeLLMEmbeddings(model=tiny_bellm)
    np.testing.assert_allclose(embeddings.embed_query(DOCUMENTS[1]), embeddings.embed_documents(DOCUMENTS)[1], atol=1e-6)
    np.testing.assert_allclose(
        embeddings.embed_query(DOCUMENTS[1]), tiny_bellm.encode(DOCUMENTS[1], normalize_embeddings=True), atol=1e-6
    )


def test_a_models_own_query_and_document_prompts_are_used_without_templates(tiny_bellm):
    """An adapted model carries its prompts (bellm-st adapt saves them); the adapter needs no templates."""
    model = copy.copy(tiny_bellm)  # the fixture's prompts stay as they are
    model.prompts = {"query": QUERY_TEMPLATE, "document": "passage: "}
    embeddings = BeLLMEmbeddings(model=model)
    np.testing.assert_allclose(embeddings.embed_query(DOCUMENTS[0]),
                               tiny_bellm.encode(DOCUMENTS[0], prompt=QUERY_TEMPLATE, normalize_embeddings=True), atol=1e-6)
    np.testing.assert_allclose(embeddings.embed_documents(DOCUMENTS),
                               tiny_bellm.encode(DOCUMENTS, prompt="passage: ", normalize_embeddings=True), atol=1e-6)


def test_text_is_embedded_as_given_not_cleaned(tiny_bellm):
    embeddings = BeLLMEmbeddings(model=tiny_bellm)
    with_newline, with_space = embeddings.embed_documents(["first line\nsecond line", "first line second line"])
    np.testing.assert_allclose(
        with_newline, tiny_bellm.encode("first line\nsecond line", normalize_embeddings=True), atol=1e-6
    )
    assert not np.allclose(with_newline, with_space, atol=1e-4)


def test_normalize_option(tiny_bellm):
    normalized = np.array(BeLLMEmbeddings(model=tiny_bellm).embed_documents(DOCUMENTS))
    raw = np.array(BeLLMEmbeddings(model=tiny_bellm, normalize=False).embed_documents(DOCUMENTS))
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(raw, tiny_bellm.encode(DOCUMENTS), atol=1e-6)


def test_batch_size_and_progress_reach_encode(tiny_bellm, monkeypatch):
    calls = []
    original = tiny_bellm.encode

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_bellm, "encode", spy)
    BeLLMEmbeddings(model=tiny_bellm, batch_size=2, show_progress=True).embed_documents(DOCUMENTS)
    assert calls[0]["batch_size"] == 2 and calls[0]["show_progress_bar"] is True


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        (None, TypeError, "texts must be a list of strings, got NoneType"),
        ("one string", TypeError, r"got str; wrap a single text in a list"),
        ([], ValueError, "texts is an empty list"),
        (["fine", None], TypeError, r"texts\[1\] is NoneType"),
        (["fine", 3], TypeError, r"texts\[1\] is int"),
        (["fine", ""], ValueError, r"texts\[1\] is empty"),
        ([" \n"], ValueError, r"texts\[0\] is only whitespace"),
    ],
)
def test_bad_documents_get_the_core_errors(tiny_bellm, texts, error, message):
    embeddings = BeLLMEmbeddings(model=tiny_bellm)
    with pytest.raises(error, match=message):
        embeddings.embed_documents(texts)
    with pytest.raises(error, match=message):
        asyncio.run(embeddings.aembed_documents(texts))


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        (None, TypeError, r"^text is NoneType \(None\), not a string"),
        (["a list"], TypeError, r"^text is list"),
        (7, TypeError, r"^text is int"),
        ("", ValueError, r"^text is empty"),
        ("\t", ValueError, r"^text is only whitespace"),
    ],
)
def test_bad_query_gets_the_core_errors(tiny_bellm, text, error, message):
    embeddings = BeLLMEmbeddings(model=tiny_bellm)
    with pytest.raises(error, match=message):
        embeddings.embed_query(text)
    with pytest.raises(error, match=message):
        asyncio.run(embeddings.aembed_query(text))


def test_full_template_on_a_model_that_is_not_bellm_is_refused(tiny_model_dir):
    plain = SentenceTransformer(tiny_model_dir, device="cpu")  # transformer + mean pooling
    with pytest.raises(ValueError, match=r"not a BeLLM encoder.*plain prefix"):
        BeLLMEmbeddings(model=plain, query_template=QUERY_TEMPLATE)
    assert len(BeLLMEmbeddings(model=plain, query_template="query: ").embed_query("hello")) == 32


def test_bad_template_and_options_are_refused(tiny_bellm):
    with pytest.raises(ValueError, match="exactly once"):
        BeLLMEmbeddings(model=tiny_bellm, document_template="{text} and {text}")
    with pytest.raises(ValueError, match="batch_size"):
        BeLLMEmbeddings(model=tiny_bellm, batch_size=0)
    with pytest.raises(ValueError, match=r"device='cuda' but the given model is on cpu"):
        BeLLMEmbeddings(model=tiny_bellm, device="cuda")


def test_a_named_model_loads_once_per_process_and_device(tiny_bellm_dir, monkeypatch):
    clear_shared_models()
    loads = []
    original = bellm_st.api.load

    def counting_load(name, device=None, **options):
        loads.append((name, device))
        return original(name, device=device, **options)

    monkeypatch.setattr(bellm_st.api, "load", counting_load)
    threads = [
        threading.Thread(target=BeLLMEmbeddings, kwargs={"model_name": tiny_bellm_dir, "device": "cpu"})
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    first = BeLLMEmbeddings(model_name=tiny_bellm_dir, device="cpu")
    for thread in threads:
        thread.join()
    second = BeLLMEmbeddings(model_name=tiny_bellm_dir, device="cpu", query_template=QUERY_TEMPLATE)
    assert loads == [(tiny_bellm_dir, "cpu")]
    assert first._model is second._model
    assert len(first.embed_query("hello")) == 32
    clear_shared_models()


def test_the_default_model_is_named_and_shared_with_its_name():
    default = BeLLMEmbeddings(device="cpu")
    assert default.model_name == bellm_st.api.default_model_name()
    assert BeLLMEmbeddings(model_name=default.model_name, device="cpu")._model is default._model


def test_concurrent_calls_from_threads_are_serialised_and_correct(tiny_bellm, monkeypatch):
    embeddings = BeLLMEmbeddings(model=tiny_bellm)
    expected = embeddings.embed_documents(DOCUMENTS)
    active, most_active = 0, 0
    counter_lock = threading.Lock()
    original = tiny_bellm.encode

    def tracking_encode(*args, **kwargs):
        nonlocal active, most_active
        with counter_lock:
            active += 1
            most_active = max(most_active, active)
        time.sleep(0.01)
        try:
            return original(*args, **kwargs)
        finally:
            with counter_lock:
                active -= 1

    monkeypatch.setattr(tiny_bellm, "encode", tracking_encode)
    results, errors = [], []

    def worker():
        try:
            for _ in range(3):
                results.append(embeddings.embed_documents(DOCUMENTS))
        except Exception as error:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert most_active == 1
    assert len(results) == 18
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-6)


@pytest.mark.asyncio
async def test_async_methods_leave_the_event_loop_free(tiny_bellm, monkeypatch):
    embeddings = BeLLMEmbeddings(model=tiny_bellm)
    original = tiny_bellm.encode

    def slow_encode(*args, **kwargs):
        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_bellm, "encode", slow_encode)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    documents, query = await asyncio.gather(embeddings.aembed_documents(DOCUMENTS), embeddings.aembed_query("hello"))
    ticking.cancel()
    assert ticks >= 20  # about 0.6 s of encoding in worker threads; a blocked loop would not tick
    monkeypatch.setattr(tiny_bellm, "encode", original)
    np.testing.assert_allclose(documents, embeddings.embed_documents(DOCUMENTS), atol=1e-6)
    np.testing.assert_allclose(query, embeddings.embed_query("hello"), atol=1e-6)


def test_a_langchain_vector_store_finds_the_exact_document(tiny_bellm):
    store = InMemoryVectorStore.from_texts(DOCUMENTS, BeLLMEmbeddings(model=tiny_bellm), ids=["guitar", "stocks", "frog"])
    hits = store.similarity_search("The stock market fell sharply today.", k=1)
    assert hits[0].id == "stocks"


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
        BeLLMEmbeddings(model_name=folder, device="cpu")
    assert not marker.exists()
    BeLLMEmbeddings(model_name=folder, device="cpu", trust_remote_code=True)
    assert marker.exists()
    clear_shared_models()


def test_a_lone_surrogate_is_named_with_its_position(tiny_bellm):
    """Was the tokenizer's `TextEncodeInput must be Union[...]` with no position."""
    with pytest.raises(ValueError, match=r"texts\[1\] holds '\\ud800' at character 0, an unpaired UTF-16 surrogate"):
        BeLLMEmbeddings(model=tiny_bellm).embed_documents(["fine", "\ud800"])


def test_the_onnx_backend_gives_the_torch_vectors(tiny_onnx_dir):
    clear_shared_models()
    onnx_embeddings = BeLLMEmbeddings(model_name=tiny_onnx_dir, backend="onnx")
    torch_embeddings = BeLLMEmbeddings(model_name=tiny_onnx_dir, device="cpu")
    assert onnx_embeddings._model is not torch_embeddings._model
    assert onnx_embeddings._model[0].backend == "onnx"
    np.testing.assert_allclose(onnx_embeddings.embed_documents(DOCUMENTS), torch_embeddings.embed_documents(DOCUMENTS),
                               atol=1e-5)
    np.testing.assert_allclose(onnx_embeddings.embed_query(DOCUMENTS[0]), torch_embeddings.embed_query(DOCUMENTS[0]),
                               atol=1e-5)
    assert BeLLMEmbeddings(model_name=tiny_onnx_dir, backend="onnx")._model is onnx_embeddings._model
    with pytest.raises(ValueError, match="backend='nonsense' is not one of torch, onnx"):
        BeLLMEmbeddings(model_name=tiny_onnx_dir, backend="nonsense")
    with pytest.raises(ValueError, match="a given model runs as it was loaded"):
        BeLLMEmbeddings(model=torch_embeddings._model, backend="onnx")
    clear_shared_models()


@pytest.mark.parametrize("kind", BAD_FOLDER_KINDS)
def test_a_model_folder_that_cannot_load_is_refused_with_its_one_line(kind, tiny_bellm_dir, tiny_model_dir, tmp_path):
    """pydantic wraps what a LangChain class's validator raises; the one error it carries is bellm-st's line."""
    bad = make_bad_folder(kind, tiny_bellm_dir, tiny_model_dir, tmp_path)
    clear_shared_models()
    with pytest.raises(ValidationError) as refused:
        BeLLMEmbeddings(model_name=str(bad.path), device="cpu")
    [error] = refused.value.errors()
    assert re.search(bad.message, error["msg"]) and "\n" not in error["msg"]
    assert not bad.marker.exists()
