"""Bad input and limits: 4xx with an OpenAI-style body that says what was wrong, never 500."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest

from bellm_st.serving import ServerSettings

from .serving_support import MODEL_ID, live_server, open_request, read_answer, reference

API_KEY = "s3cret-key"


def assert_openai_error(answer: httpx.Response, status: int, *fragments: str) -> dict:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


@pytest.fixture(scope="module")
def strict_server(served_model):
    settings = ServerSettings(
        model_id=MODEL_ID,
        api_key=API_KEY,
        max_items_per_request=5,
        max_queue_items=10,
        max_input_chars=40,
        long_input="reject",
        max_payload_bytes=2000,
    )
    with live_server(served_model, settings) as running:
        yield running


@pytest.fixture(scope="module")
def impatient_server(served_model):
    with live_server(served_model, ServerSettings(model_id=MODEL_ID, request_body_timeout_seconds=0.5)) as running:
        yield running


@pytest.fixture(scope="module")
def truncating_server(served_model):
    with live_server(served_model, ServerSettings(model_id=MODEL_ID, max_input_chars=12)) as running:
        yield running


@pytest.mark.parametrize(
    ("body", "param", "fragments"),
    [
        ({"input": []}, "input", ["empty list"]),
        ({"input": ""}, "input", ["input[0] is empty"]),
        ({"input": ["fine", "   "]}, "input", ["input[1] is only whitespace"]),
        ({"input": ["fine", None]}, "input", ["input[1] is NoneType"]),
        ({"input": ["fine", 3.5]}, "input", ["input[1] is float"]),
        ({"input": ["fine", ["nested"]]}, "input", ["input[1] is list"]),
        ({"input": 42}, "input", ["string or a list of strings", "a number"]),
        ({"input": {"text": "x"}}, "input", ["string or a list of strings", "an object"]),
        ({"input": [101, 2023]}, "input", ["token ids"]),
        ({"input": [[101], [2023, 7]]}, "input", ["token ids"]),
        ({}, "input", ["input is required"]),
        ({"input": "x", "dimensions": 0}, "dimensions", ["greater than or equal to 1"]),
        ({"input": "x", "dimensions": 33}, "dimensions", ["dimensions=33", "1..32"]),
        ({"input": "x", "dimensions": "8"}, "dimensions", ["valid integer"]),
        ({"input": "x", "dimensions": 8.5}, "dimensions", ["valid integer"]),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format", ["'float' or 'base64'"]),
        ({"input": "x", "model": 7}, "model", ["valid string"]),
        ({"input": "x", "prompt_name": "query"}, "prompt_name", ["not a parameter"]),
    ],
)
def test_bad_bodies_name_the_problem(server, body, param, fragments):
    error = assert_openai_error(httpx.post(f"{server.url}/v1/embeddings", json=body), 400, *fragments)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("content", "headers", "fragments"),
    [
        (b'{"input": ["unclosed"', {"content-type": "application/json"}, ["not valid JSON"]),
        (b"[1, 2]", {"content-type": "application/json"}, ["must be a JSON object", "an array"]),
        (b"null", {"content-type": "application/json"}, ["must be a JSON object", "null"]),
        (b'{"input": "x"}', {"content-type": "text/plain"}, ["Content-Type: application/json"]),
        (b"", {"content-type": "application/json"}, ["no body"]),
        (b'{"input": "\\ud800 lone surrogate"}', {"content-type": "application/json"}, ["unpaired UTF-16 surrogate"]),
        (b'{"input": "caf\xe9"}', {"content-type": "application/json"}, ["UTF-8 encoded JSON"]),
    ],
)
def test_malformed_requests(server, content, headers, fragments):
    assert_openai_error(httpx.post(f"{server.url}/v1/embeddings", content=content, headers=headers), 400, *fragments)


def test_odd_but_valid_text_is_embedded(server, served_model):
    texts = ["control\x00chars\x07", "emoji 🎸🎶", "mixed Ελληνικά 中文 русский", "x"]
    answer = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts})
    assert answer.status_code == 200
    vectors = [item["embedding"] for item in answer.json()["data"]]
    np.testing.assert_allclose(vectors, reference(served_model, texts), atol=1e-5)


def test_unknown_route_and_method(server):
    error = assert_openai_error(httpx.post(f"{server.url}/v1/completions", json={}), 404, "/v1/completions")
    assert error["type"] == "not_found_error"
    assert_openai_error(httpx.get(f"{server.url}/v1/embeddings"), 405, "GET is not allowed")


@pytest.mark.parametrize("path", ["/v1/embeddings/", "/embed/", "/v1/models/"])
def test_a_trailing_slash_is_a_404_not_a_redirect(server, path):
    # Starlette would answer 307 to an address built from the Host header the client sent.
    answer = httpx.post(f"{server.url}{path}", json={"input": "x"}, headers={"host": "attacker.example"})
    assert "location" not in answer.headers
    assert_openai_error(answer, 404, f"no endpoint at {path}", f"use {path.rstrip('/')} (without the trailing slash)")


def test_unknown_prompt_name(server):
    error = assert_openai_error(
        httpx.post(f"{server.url}/embed", json={"input": "x", "prompt_name": "passage"}), 400, "'passage'", "query"
    )
    assert error["param"] == "prompt_name"


def test_any_model_name_is_accepted_and_the_served_one_echoed(server):
    answer = httpx.post(f"{server.url}/v1/embeddings", json={"input": "x", "model": "text-embedding-ada-002"})
    assert answer.status_code == 200
    assert answer.json()["model"] == MODEL_ID


# -- authentication ------------------------------------------------------------------------------
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {API_KEY}", API_KEY, "Bearer"])
def test_missing_or_wrong_key_is_401(strict_server, authorization):
    headers = {"authorization": authorization} if authorization else {}
    for method, path in (("POST", "/v1/embeddings"), ("GET", "/v1/models"), ("POST", "/embed")):
        # Even a malformed body gets 401 first: nothing is parsed for a stranger.
        answer = httpx.request(method, f"{strict_server.url}{path}", content=b"{not json", headers=headers)
        error = assert_openai_error(answer, 401, "Authorization: Bearer")
        assert error["type"] == "authentication_error"
        assert answer.headers["www-authenticate"] == "Bearer"


def test_right_key_passes_and_health_needs_none(strict_server, served_model):
    assert httpx.get(f"{strict_server.url}/health").status_code == 200
    client = openai.OpenAI(base_url=f"{strict_server.url}/v1", api_key=API_KEY, max_retries=0)
    response = client.embeddings.create(input=["a key was given"], model=MODEL_ID)
    np.testing.assert_allclose(response.data[0].embedding, reference(served_model, ["a key was given"])[0], atol=1e-5)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{strict_server.url}/v1", api_key="nope", max_retries=0).models.list()


# -- size limits ---------------------------------------------------------------------------------
AUTH = {"authorization": f"Bearer {API_KEY}"}


def test_too_many_items(strict_server):
    answer = httpx.post(f"{strict_server.url}/v1/embeddings", json={"input": ["x"] * 6}, headers=AUTH)
    error = assert_openai_error(answer, 400, "6 items", "at most 5")
    assert error["code"] == "too_many_inputs"
    assert httpx.post(f"{strict_server.url}/v1/embeddings", json={"input": ["x"] * 5}, headers=AUTH).status_code == 200


def test_too_long_text_is_rejected_when_so_configured(strict_server):
    answer = httpx.post(f"{strict_server.url}/v1/embeddings", json={"input": ["ok", "y" * 41]}, headers=AUTH)
    error = assert_openai_error(answer, 400, "input[1] has 41 characters", "at most 40")
    assert (error["param"], error["code"]) == ("input[1]", "input_too_long")
    assert httpx.post(f"{strict_server.url}/v1/embeddings", json={"input": "y" * 40}, headers=AUTH).status_code == 200


def test_too_long_text_is_truncated_by_default(truncating_server, served_model):
    text = "A man is playing a guitar on the stage."
    answer = httpx.post(f"{truncating_server.url}/v1/embeddings", json={"input": [text]})
    assert answer.status_code == 200
    expected = reference(served_model, [text[:12]])[0]
    np.testing.assert_allclose(answer.json()["data"][0]["embedding"], expected, atol=1e-5)
    assert not np.allclose(expected, reference(served_model, [text])[0], atol=1e-3)


def test_payload_over_the_limit_is_413(strict_server):
    body = b'{"input": ["' + b"z" * 3000 + b'"]}'
    answer = httpx.post(
        f"{strict_server.url}/v1/embeddings", content=body, headers={**AUTH, "content-type": "application/json"}
    )
    assert assert_openai_error(answer, 413, "2000 bytes")["code"] == "payload_too_large"


def test_chunked_payload_over_the_limit_is_413(strict_server):
    def chunks():
        yield b'{"input": ["'
        for _ in range(30):
            yield b"z" * 100
        yield b'"]}'

    answer = httpx.post(
        f"{strict_server.url}/v1/embeddings", content=chunks(), headers={**AUTH, "content-type": "application/json"}
    )
    assert "content-length" not in answer.request.headers
    assert_openai_error(answer, 413, "2000 bytes")


# -- slow bodies ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sent", [b"", b'{"input": ["the rest never comes'])
def test_a_body_that_does_not_arrive_in_time_is_408(impatient_server, sent):
    with open_request(impatient_server.url, sent, declared_length=1000) as sock:
        status, headers, body = read_answer(sock)
    assert status == 408, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == ("invalid_request_error", "request_body_timeout")
    assert "within 0.5 seconds" in body["error"]["message"]
    assert headers["connection"] == "close"
    answer = httpx.post(f"{impatient_server.url}/v1/embeddings", json={"input": ["a whole body"]})
    assert answer.status_code == 200, "a body sent at once is in time"
