"""A slow model behind the real server: full queues answer 429/503, the event loop stays free,
and shutdown finishes the requests already in flight."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from bellm_st.serving import ServerSettings

from .serving_support import MODEL_ID, GatedEmbedder, live_server, reference, wait_until


def post_texts(url: str, texts: list[str]) -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=30)


def refuses_connections(url: str) -> bool:
    """True once a new request gets no answer: refused, or reset by a listener that is closing."""
    try:
        httpx.get(f"{url}/health", timeout=2)
    except httpx.TransportError:
        return True
    return False


@pytest.mark.parametrize("status", [429, 503])
def test_full_queue_answers_retry_later(served_model, status):
    embedder = GatedEmbedder(served_model)
    settings = ServerSettings(
        model_id=MODEL_ID, max_batch_size=1, max_queue_items=2, max_items_per_request=2, queue_full_status=status
    )
    texts = [f"request number {index}" for index in range(10)]
    with live_server(embedder, settings) as server, ThreadPoolExecutor(len(texts)) as pool:
        first = pool.submit(post_texts, server.url, texts[:1])
        assert embedder.started.wait(15), "the first request never reached the model"
        rest = [pool.submit(post_texts, server.url, [text]) for text in texts[1:]]
        # The model holds one text and the queue two: the other seven are turned away at once.
        wait_until(lambda: sum(future.done() for future in rest) >= 7, "seven requests were turned away")
        embedder.gate.set()
        answers = [first.result()] + [future.result() for future in rest]
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) == 3 and statuses.count(status) == 7, statuses
    for text, answer in zip(texts, answers):
        if answer.status_code == 200:
            vector = answer.json()["data"][0]["embedding"]
            np.testing.assert_allclose(vector, reference(served_model, [text])[0], atol=1e-5)
        else:
            error = answer.json()["error"]
            assert error["code"] == "queue_full"
            assert error["type"] == ("rate_limit_error" if status == 429 else "service_unavailable_error")
            assert "at most 2 texts" in error["message"]
            assert answer.headers["retry-after"] == "1"


def test_event_loop_keeps_answering_while_the_model_runs(served_model):
    embedder = GatedEmbedder(served_model)
    with live_server(embedder, ServerSettings(model_id=MODEL_ID)) as server, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post_texts, server.url, ["held in the model"])
        assert embedder.started.wait(15), "the request never reached the model"
        # The model cannot finish until the gate opens, so these answer only if the loop is free.
        health = httpx.get(f"{server.url}/health", timeout=10)
        models = httpx.get(f"{server.url}/v1/models", timeout=10)
        assert health.status_code == models.status_code == 200
        assert health.json()["queued_items"] == 0  # the text is in the model, not waiting
        assert not slow.done(), "the held request should still be running"
        embedder.gate.set()
        assert slow.result().status_code == 200


def test_shutdown_finishes_in_flight_requests(served_model):
    embedder = GatedEmbedder(served_model)
    texts = [[f"in flight {index}", f"second text {index}"] for index in range(4)]
    settings = ServerSettings(model_id=MODEL_ID, max_batch_size=2)
    with live_server(embedder, settings) as server, ThreadPoolExecutor(len(texts)) as pool:
        futures = [pool.submit(post_texts, server.url, batch) for batch in texts]
        batcher = server.app.state.batcher
        # One request in the model, three waiting: all four accepted before shutdown begins.
        wait_until(lambda: embedder.started.is_set() and batcher.queued_items == 6, "all four requests were accepted")
        stopping = threading.Thread(target=server.stop)  # as SIGTERM does: stop accepting, finish what was accepted
        stopping.start()
        wait_until(lambda: refuses_connections(server.url), "the server stopped accepting connections")
        embedder.gate.set()
        answers = [future.result() for future in futures]
        stopping.join(30)
        assert not server.thread.is_alive(), "the server did not shut down"
        assert batcher.closing
    assert [answer.status_code for answer in answers] == [200] * len(texts)
    for batch, answer in zip(texts, answers):
        vectors = [item["embedding"] for item in answer.json()["data"]]
        np.testing.assert_allclose(vectors, reference(served_model, batch), atol=1e-5)
    assert sum(embedder.batches) == 2 * len(texts)
