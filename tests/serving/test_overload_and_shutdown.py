"""A slow model behind the real server: full queues answer 429/503, the event loop stays free,
and shutdown finishes the requests already in flight."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from bellm_st.serving import ServerSettings

from .serving_support import MODEL_ID, SlowEmbedder, live_server, reference


def post_texts(url: str, texts: list[str]) -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=30)


@pytest.mark.parametrize("status", [429, 503])
def test_full_queue_answers_retry_later(served_model, status):
    embedder = SlowEmbedder(served_model, delay=0.5)
    settings = ServerSettings(
        model_id=MODEL_ID, max_batch_size=1, max_queue_items=2, max_items_per_request=2, queue_full_status=status
    )
    texts = [f"request number {index}" for index in range(10)]
    with live_server(embedder, settings) as server, ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(lambda text: post_texts(server.url, [text]), texts))
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {200, status}, statuses
    assert statuses.count(200) >= 3  # one in the model, two queued
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
    embedder = SlowEmbedder(served_model, delay=1.0)
    with live_server(embedder, ServerSettings(model_id=MODEL_ID)) as server, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post_texts, server.url, ["takes a second"])
        assert embedder.started.wait(10)
        time.sleep(0.1)  # the forward pass is under way
        started = time.perf_counter()
        health = httpx.get(f"{server.url}/health")
        models = httpx.get(f"{server.url}/v1/models")
        elapsed = time.perf_counter() - started
        assert health.status_code == models.status_code == 200
        assert not slow.done(), "the slow request should still be running"
        assert elapsed < 0.5, f"health and models took {elapsed:.2f}s while the model ran: the loop was blocked"
        assert slow.result().status_code == 200


def test_shutdown_finishes_in_flight_requests(served_model):
    embedder = SlowEmbedder(served_model, delay=0.4)
    texts = [[f"in flight {index}", f"second text {index}"] for index in range(4)]
    settings = ServerSettings(model_id=MODEL_ID, max_batch_size=2)
    with live_server(embedder, settings) as server, ThreadPoolExecutor(len(texts)) as pool:
        futures = [pool.submit(post_texts, server.url, batch) for batch in texts]
        assert embedder.started.wait(10)
        time.sleep(0.05)
        server.stop()  # as SIGTERM does: stop accepting, finish what was accepted
        answers = [future.result() for future in futures]
        assert server.app.state.batcher.closing
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", timeout=2)
    assert [answer.status_code for answer in answers] == [200] * len(texts)
    for batch, answer in zip(texts, answers):
        vectors = [item["embedding"] for item in answer.json()["data"]]
        np.testing.assert_allclose(vectors, reference(served_model, batch), atol=1e-5)
    assert sum(embedder.batches) == 2 * len(texts)
