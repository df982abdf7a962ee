"""The ONNX Runtime backend (``--backend onnx``): the endpoints, vectors (within 1e-5), usage and errors of torch."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

import bellm_st
import bellm_st.serving
from bellm_st.cli import app
from bellm_st.fast.onnx_export import export_onnx
from bellm_st.serving import ServerSettings

from .serving_support import MODEL_ID, QUERY_TEMPLATE, LiveServer, live_server

TEXTS = [
    "A man is playing a guitar.",
    "Hi",
    "The stock market fell sharply today, and then it fell again.",
    "Kinder spielen im Park Fußball. 🌳⚽",
]
TOLERANCE = 1e-5
runner = CliRunner()


@pytest.fixture(scope="module")
def onnx_folder(tiny_model_dir, tmp_path_factory) -> str:
    """The served tiny model saved with its graph, exported once (~15 s); a model of its own, so the export
    touches no shared one."""
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, query_template=QUERY_TEMPLATE, device="cpu")
    folder = tmp_path_factory.mktemp("onnx") / "tiny-bellm-onnx"
    model.save(str(folder))
    export_onnx(model, folder)
    return str(folder)


@pytest.fixture(scope="module")
def onnx_server(onnx_folder) -> Iterator[LiveServer]:
    with live_server(bellm_st.load(onnx_folder, backend="onnx"), ServerSettings(model_id=MODEL_ID)) as running:
        yield running


@pytest.fixture()
def served(monkeypatch) -> dict:
    """What ``serve`` would run, recorded instead of listening; the model loads for real."""
    calls = {}
    monkeypatch.setattr(bellm_st.serving, "serve", lambda model, settings, **options: calls.update(model=model,
                                                                                                  settings=settings))
    return calls


def _both(server, onnx_server, path: str, body: dict) -> tuple[httpx.Response, httpx.Response]:
    return httpx.post(f"{server.url}{path}", json=body), httpx.post(f"{onnx_server.url}{path}", json=body)


def _vectors(answer: httpx.Response) -> np.ndarray:
    data = answer.json()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    if isinstance(data[0]["embedding"], str):
        return np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in data])
    return np.array([item["embedding"] for item in data])


def _same_answer(torch_answer: httpx.Response, onnx_answer: httpx.Response) -> np.ndarray:
    """Same status, model and usage; vectors within the tolerance. Returns the ONNX vectors."""
    assert torch_answer.status_code == onnx_answer.status_code == 200, onnx_answer.text
    torch_body, onnx_body = torch_answer.json(), onnx_answer.json()
    assert onnx_body["model"] == torch_body["model"] == MODEL_ID
    assert onnx_body["usage"] == torch_body["usage"]
    vectors = _vectors(onnx_answer)
    np.testing.assert_allclose(vectors, _vectors(torch_answer), atol=TOLERANCE)
    return vectors


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_openai_endpoint_gives_the_torch_vectors_and_usage(server, onnx_server, served_model, encoding_format):
    answers = _both(server, onnx_server, "/v1/embeddings", {"input": TEXTS, "encoding_format": encoding_format})
    vectors = _same_answer(*answers)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    expected_tokens = sum(len(ids) for ids in served_model[0].tokenizer(TEXTS, add_special_tokens=False)["input_ids"])
    assert answers[1].json()["usage"] == {"prompt_tokens": expected_tokens, "total_tokens": expected_tokens}


@pytest.mark.parametrize("dimensions", [1, 8, 31, 32])
def test_dimensions_match_torch(server, onnx_server, dimensions):
    answers = _both(server, onnx_server, "/v1/embeddings", {"input": TEXTS, "dimensions": dimensions})
    assert _same_answer(*answers).shape == (len(TEXTS), dimensions)


def test_single_string_input_matches_torch(server, onnx_server):
    assert _same_answer(*_both(server, onnx_server, "/v1/embeddings", {"input": TEXTS[2]})).shape == (1, 32)


def test_named_prompts_match_torch(server, onnx_server):
    query = _same_answer(*_both(server, onnx_server, "/embed", {"input": TEXTS, "prompt_name": "query"}))
    # The tiny model has no document prompt: the text is encoded as it is.
    document = _same_answer(*_both(server, onnx_server, "/embed", {"input": TEXTS, "prompt_name": "document"}))
    plain = _same_answer(*_both(server, onnx_server, "/v1/embeddings", {"input": TEXTS}))
    np.testing.assert_allclose(document, plain, atol=TOLERANCE)
    assert not np.allclose(query, plain, atol=1e-3), "the query prompt must reach the ONNX graph"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"input": TEXTS, "dimensions": 33}),
        ("/embed", {"input": TEXTS, "prompt_name": "passage"}),
        ("/v1/embeddings", {"input": []}),
        ("/v1/embeddings", {"input": ["fine", "   "]}),
    ],
)
def test_errors_match_torch(server, onnx_server, path, body):
    torch_answer, onnx_answer = _both(server, onnx_server, path, body)
    assert onnx_answer.status_code == torch_answer.status_code == 400
    assert onnx_answer.json() == torch_answer.json()


def test_models_and_health(onnx_server):
    assert [card["id"] for card in httpx.get(f"{onnx_server.url}/v1/models").json()["data"]] == [MODEL_ID]
    health = httpx.get(f"{onnx_server.url}/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model": MODEL_ID, "queued_items": 0, "max_queue_items": 4096}


def test_cli_serves_the_onnx_folder_under_its_name(served, onnx_folder):
    result = runner.invoke(app, ["serve", onnx_folder, "--backend", "onnx", "--max-batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert served["model"][0].backend == "onnx"
    assert list(served["model"].parameters()) == [], "no torch weights are loaded"
    assert served["settings"].model_id == "tiny-bellm-onnx"
    assert served["settings"].max_batch_size == 8


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{onnx}", "--backend", "onnx", "--device", "cuda"], "runs ONNX Runtime on the CPU"),
        (["{plain}", "--backend", "onnx"], "bellm-st export --onnx"),
        (["{missing}", "--backend", "onnx"], "no model folder at"),
    ],
)
def test_bad_onnx_arguments_exit_2(served, onnx_folder, tiny_model, tmp_path, arguments, message):
    tiny_model.save(str(tmp_path / "plain"))
    places = {"onnx": onnx_folder, "plain": str(tmp_path / "plain"), "missing": str(tmp_path / "nowhere")}
    result = runner.invoke(app, ["serve", *(argument.format(**places) for argument in arguments)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "model" not in served, "nothing is served"
