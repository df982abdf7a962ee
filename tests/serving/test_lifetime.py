"""A request lives while its client waits and no longer than shutdown allows: work of a client
that left never reaches the model, and what the shutdown grace cannot wait for gets an OpenAI 503."""

from __future__ import annotations

import threading

import httpx
import pytest

from bellm_st.serving import ServerSettings

from .serving_support import MODEL_ID, SlowEmbedder, json_body, live_server, open_request, read_answer, wait_until


@pytest.mark.parametrize("where", ["in the model", "body still arriving"])
def test_a_request_the_grace_period_cannot_wait_for_gets_an_openai_503(served_model, where):
    embedder = SlowEmbedder(served_model, delay=2.0)
    settings = ServerSettings(model_id=MODEL_ID, graceful_shutdown_seconds=0.3)
    with live_server(embedder, settings) as server:
        if where == "in the model":
            sock = open_request(server.url, json_body(["outlasts the grace period"]))
            assert embedder.started.wait(15)
        else:
            sock = open_request(server.url, b'{"input": ["', declared_length=1000)
            wait_until(lambda: server.server.server_state.tasks, "the server began the request")
        stopping = threading.Thread(target=server.stop)  # as SIGTERM does
        stopping.start()
        with sock:
            status, headers, body = read_answer(sock)
        stopping.join(30)
        assert not server.thread.is_alive(), "the server did not shut down"
    assert status == 503, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == ("service_unavailable_error", "shutting_down")
    assert "0.3 s" in body["error"]["message"]
    assert headers["connection"] == "close"


def test_a_client_that_leaves_costs_no_more_forward_passes(served_model):
    embedder = SlowEmbedder(served_model, delay=0.3)
    settings = ServerSettings(model_id=MODEL_ID, max_batch_size=2)
    with live_server(embedder, settings) as server:
        sock = open_request(server.url, json_body([f"abandoned text {index}" for index in range(20)]))
        assert embedder.started.wait(15)
        sock.close()  # the client gives up while its first batch is in the model
        wait_until(lambda: httpx.get(f"{server.url}/health").json()["queued_items"] == 0, "the queue emptied")
        later = httpx.post(f"{server.url}/v1/embeddings", json={"input": ["a later request"]}, timeout=30)
    assert later.status_code == 200
    *abandoned, last = embedder.batches
    assert last == 1, embedder.batches
    # The batch in the model when the client left, and at most one taken before the server noticed.
    assert sum(abandoned) <= 4, f"{sum(abandoned)} of the 20 texts of a client that left were encoded"
