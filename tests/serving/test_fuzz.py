"""Property-based fuzzing of request bodies against the real server: never a 5xx.

Bodies are drawn around the schema (right fields with wrong or odd values, unknown fields,
arbitrary JSON, lone surrogates) and as raw bytes; every answer is a success with one vector
per text, or a 4xx with an OpenAI-style error body.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Valid text (any script, emoji, control characters) and, besides, text with lone surrogates:
# JSON can carry them (as \udXXX escapes) although they are not valid text.
plain_texts = st.text(max_size=40)
texts = plain_texts | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
inputs = st.one_of(
    texts,
    st.lists(texts, max_size=6),
    st.lists(st.integers(), max_size=6),
    st.lists(st.lists(st.integers(), max_size=3), max_size=3),
    json_values,
)
fields = {
    "input": inputs,
    "model": st.one_of(st.sampled_from(["tiny-bellm", "text-embedding-3-small"]), json_values),
    "encoding_format": st.one_of(st.sampled_from(["float", "base64"]), json_values),
    "dimensions": st.one_of(st.integers(min_value=-3, max_value=40), json_values),
    "user": json_values,
    "prompt_name": st.one_of(st.sampled_from(["query", "document"]), json_values),
}
openai_options = {
    "encoding_format": st.sampled_from(["float", "base64"]),
    "dimensions": st.integers(min_value=1, max_value=32),
    "model": plain_texts,
}
near_valid_input = {"input": st.one_of(plain_texts, st.lists(plain_texts, min_size=1, max_size=6))}
near_valid = {
    "/v1/embeddings": st.fixed_dictionaries(near_valid_input, optional=openai_options),
    "/embed": st.fixed_dictionaries(
        near_valid_input, optional={**openai_options, "prompt_name": st.sampled_from(["query", "document"])}
    ),
}
with_unknown_fields = st.tuples(
    st.fixed_dictionaries({}, optional=fields), st.dictionaries(texts, json_values, max_size=2)
)
odd_bodies = st.one_of(
    st.fixed_dictionaries({}, optional=fields),
    with_unknown_fields.map(lambda pair: {**pair[1], **pair[0]}),
    json_values,
)

def count_texts(body) -> int:
    value = body["input"]
    return 1 if isinstance(value, str) else len(value)


def check_answer(answer: httpx.Response, body=None) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.text, body)
    payload = answer.json()
    if answer.status_code == 200:
        assert len(payload["data"]) == count_texts(body)
        assert [item["index"] for item in payload["data"]] == list(range(len(payload["data"])))
    else:
        assert 400 <= answer.status_code < 500
        assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embed"])
def test_fuzzed_json_bodies_never_get_5xx(http, path):
    statuses = set()

    @FUZZ
    @given(body=near_valid[path] | odd_bodies)
    def run(body):
        # ensure_ascii escapes lone surrogates as \udXXX, as a JSON client in another language would send them
        content = json.dumps(body, ensure_ascii=True)
        answer = http.post(path, content=content, headers={"content-type": "application/json"})
        check_answer(answer, body)
        statuses.add(answer.status_code)

    run()
    assert {200, 400} <= statuses, f"the fuzz never reached both success and rejection: {statuses}"


@FUZZ
@given(content=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_fuzzed_raw_bytes_never_get_5xx(http, content, content_type):
    headers = {"content-type": content_type} if content_type else {}
    check_answer(http.post("/v1/embeddings", content=content, headers=headers))


def test_deeply_nested_json_is_called_too_deep_not_undecodable(http):
    body = "[" * 100_000 + "]" * 100_000  # beyond Python's JSON parser (RecursionError)
    answer = http.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"].startswith("the request body nests JSON too deeply to parse")
