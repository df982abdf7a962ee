"""``bellm-st serve`` as its own process on loopback: a saved model, an API key, a bounded load
test (32 clients x 50 requests, every vector checked), and a graceful exit on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from benchmarks import serve_load  # the benchmark's own load generator: the test and the figures share one client

from .serving_support import reference

CLIENTS, REQUESTS_PER_CLIENT, TEXTS_PER_REQUEST = 32, 50, 2
API_KEY = "load-test-key"
SERVED_NAME = "tiny-bellm-saved"


@pytest.fixture(scope="module")
def cli_server(served_model, tmp_path_factory):
    """The real command line serving a saved model folder; SIGTERM must end it cleanly."""
    folder = tmp_path_factory.mktemp("served") / SERVED_NAME
    served_model.save(str(folder))
    port = serve_load.free_port()
    url = f"http://127.0.0.1:{port}"
    # One torch thread: the tiny model's ops are too small to share 2 cores with the HTTP work.
    process = serve_load.start_server(
        str(folder), port, "--api-key", API_KEY, "--device", "cpu", "--max-batch-size", "64",
        env={"OMP_NUM_THREADS": "1"},
    )
    try:
        serve_load.wait_until_healthy(url, process, timeout=180)
        yield url, process
    finally:
        if process.poll() is None:
            serve_load.stop_server(process, timeout=60)


def test_cli_serves_the_saved_model_behind_its_key(cli_server, served_model):
    cli_server, _ = cli_server
    assert httpx.post(f"{cli_server}/v1/embeddings", json={"input": "x"}).status_code == 401
    client = openai.OpenAI(base_url=f"{cli_server}/v1", api_key=API_KEY, max_retries=0)
    assert [model.id for model in client.models.list()] == [SERVED_NAME]
    texts = ["A saved model, loaded by path.", "The same vectors as in memory."]
    response = client.embeddings.create(input=texts, model=SERVED_NAME)
    vectors = [item.embedding for item in response.data]
    assert response.model == SERVED_NAME
    np.testing.assert_allclose(vectors, reference(served_model, texts), atol=1e-5)


def test_concurrent_load_loses_and_mixes_up_nothing(cli_server, served_model):
    cli_server, _ = cli_server
    outcomes, wall = asyncio.run(
        serve_load.run_load(
            cli_server,
            clients=CLIENTS,
            requests_per_client=REQUESTS_PER_CLIENT,
            texts_per_request=TEXTS_PER_REQUEST,
            api_key=API_KEY,
            deadline_seconds=150,
        )
    )
    report = serve_load.summarise(outcomes, wall)
    print(report)
    assert report["statuses"] == {"200": CLIENTS * REQUESTS_PER_CLIENT}, report
    texts = sorted({text for outcome in outcomes for text in outcome.texts})
    assert len(texts) == CLIENTS * REQUESTS_PER_CLIENT * TEXTS_PER_REQUEST, "every text must be distinct"
    # Big batches: a few forward passes of the tiny model instead of a hundred.
    expected = dict(zip(texts, reference(served_model, texts, batch_size=1024)))
    assert serve_load.mismatches(outcomes, expected) == []
    health = httpx.get(f"{cli_server}/health").json()
    assert health["queued_items"] == 0


def test_sigterm_finishes_the_request_in_flight(cli_server, served_model):
    """Runs last: it stops the server."""
    url, process = cli_server
    texts = [f"sentence number {index} of a long request" for index in range(2048)]
    answers = []
    sender = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{url}/v1/embeddings", json={"input": texts}, headers={"Authorization": f"Bearer {API_KEY}"},
                       timeout=120)
        )
    )
    sender.start()
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/health").json()["queued_items"] == 0 and sender.is_alive():
        assert time.monotonic() < deadline, "the large request never reached the queue"
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    sender.join(120)
    assert process.wait(timeout=60) == 0  # a graceful stop is a clean exit, not death by signal (143)
    assert answers and answers[0].status_code == 200, answers
    vectors = np.array([item["embedding"] for item in answers[0].json()["data"]])
    assert vectors.shape[0] == len(texts)
    np.testing.assert_allclose(vectors[::256], reference(served_model, texts[::256]), atol=1e-5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)
