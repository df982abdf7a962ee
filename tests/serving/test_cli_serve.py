"""``bellm-st serve`` flags reach the server settings; no model argument means the default model; a model
folder that cannot load stops it with one line."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

import bellm_st.serving
from bellm_st.api import default_model_name
from bellm_st.cli import app
from bellm_st.serving import ServerSettings
from bellm_st.testing.bad_folders import BAD_FOLDER_KINDS, make_bad_folder
from bellm_st.testing.fixtures import tiny_bellm, tiny_bellm_dir  # noqa: F401 (pytest fixtures)

runner = CliRunner()


def test_no_model_serves_the_shipped_default(captured, served_model):
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 0, result.output
    assert captured["model_argument"] is None
    assert captured["backend"] == "torch"
    assert captured["model"] is served_model
    assert captured["settings"].model_id == default_model_name()
    assert (captured["host"], captured["port"]) == ("127.0.0.1", 8000)
    assert captured["settings"].api_key is None
    # Every limit not given on the command line is ServerSettings' own default.
    assert captured["settings"] == ServerSettings(model_id=default_model_name())


def test_flags_reach_the_settings(captured, tmp_path, monkeypatch):
    folder = tmp_path / "my-bellm"
    folder.mkdir()
    monkeypatch.setenv("BELLM_ST_API_KEY", "from-the-environment")
    result = runner.invoke(
        app,
        ["serve", str(folder), "--port", "9001", "--max-batch-size", "8", "--max-batch-tokens", "999",
         "--batch-wait-ms", "2.5", "--max-queue-items", "100", "--queue-full-status", "503",
         "--max-items-per-request", "50", "--max-input-chars", "1000", "--long-input", "reject",
         "--max-payload-bytes", "4096", "--graceful-shutdown-seconds", "5",
         "--request-body-timeout-seconds", "7.5"],
    )
    assert result.exit_code == 0, result.output
    settings = captured["settings"]
    assert captured["model_argument"] == str(folder)
    assert settings.model_id == "my-bellm"  # a folder is served under its name, not its path
    assert settings.api_key == "from-the-environment"
    assert (settings.max_batch_size, settings.max_batch_tokens, settings.batch_wait_seconds) == (8, 999, 0.0025)
    assert (settings.max_queue_items, settings.queue_full_status) == (100, 503)
    assert (settings.max_items_per_request, settings.max_input_chars, settings.long_input) == (50, 1000, "reject")
    assert (settings.max_payload_bytes, settings.graceful_shutdown_seconds, captured["port"]) == (4096, 5.0, 9001)
    assert settings.request_body_timeout_seconds == 7.5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--long-input", "chop"], "use 'truncate' or 'reject'"),
        (["--queue-full-status", "500"], "use 429 or 503"),
        (["--max-items-per-request", "5000"], "exceeds max_queue_items"),
        (["--api-key", "  "], "api_key is blank"),
        (["--request-body-timeout-seconds", "0"], "must be above 0"),
        (["--dtype", "int4"], "is not one of auto, fp32, bf16, fp16"),
        (["--backend", "onnx", "--dtype", "bf16"], "does not apply to --backend onnx"),
        (["--backend", "nonsense"], "backend='nonsense' is not one of torch, onnx"),
    ],
)
def test_bad_flags_exit_2_before_loading_a_model(captured, flags, message):
    result = runner.invoke(app, ["serve", *flags])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "model_argument" not in captured, "settings are checked before the model loads"


@pytest.mark.parametrize("kind", BAD_FOLDER_KINDS)
def test_a_model_folder_that_cannot_load_exits_2_with_one_line(kind, tiny_bellm_dir, tiny_model_dir, tmp_path,
                                                               monkeypatch):
    def serve(*args, **kwargs):
        raise AssertionError("the server must not start on a folder that cannot load")

    monkeypatch.setattr(bellm_st.serving, "serve", serve)
    bad = make_bad_folder(kind, tiny_bellm_dir, tiny_model_dir, tmp_path)
    result = runner.invoke(app, ["serve", str(bad.path), "--device", "cpu"])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and re.search(bad.message, lines[0]), result.stderr
    assert not bad.marker.exists()
