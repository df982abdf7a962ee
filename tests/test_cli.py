"""The command line on a tiny saved model."""

from __future__ import annotations

import dataclasses
import inspect
import json

import click
import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

from bellm_st.cli import app
from bellm_st.evaluation.retrieval import evaluate_retrieval
from bellm_st.serving.settings import ServerSettings
from bellm_st.training import Recipe, adapt
from bellm_st.training.sweep import layer_sweep

runner = CliRunner()


@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory, tiny_model_dir):
    import bellm_st

    path = tmp_path_factory.mktemp("saved")
    bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu").save(str(path))
    return str(path)


def test_encode_prints_one_json_line_per_text(saved_tiny_model):
    result = runner.invoke(app, ["encode", "A man plays guitar.", "Stocks fell.", "--model", saved_tiny_model])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["text"] for line in lines] == ["A man plays guitar.", "Stocks fell."]
    assert np.linalg.norm(lines[0]["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_encode_reads_a_file_and_writes_npy(saved_tiny_model, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("first text\n\nsecond text\n", encoding="utf-8")
    target = tmp_path / "vectors.npy"
    result = runner.invoke(app, ["encode", "-f", str(source), "-o", str(target), "--model", saved_tiny_model])
    assert result.exit_code == 0, result.output
    assert np.load(target).shape == (2, 32)


def test_bulk_path_gives_the_same_vectors_as_encode(saved_tiny_model, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(f"text number {i} {'word ' * (i % 7)}" for i in range(40)) + "\n", encoding="utf-8")
    vectors = {}
    for flag in ("--bulk", "--no-bulk"):
        target = tmp_path / f"{flag}.npy"
        result = runner.invoke(app, ["encode", "-f", str(source), "-o", str(target), "--batch-size", "8",
                                     "--model", saved_tiny_model, flag])
        assert result.exit_code == 0, result.output
        vectors[flag] = np.load(target)
    assert vectors["--bulk"].shape == (40, 32)
    np.testing.assert_allclose(vectors["--bulk"], vectors["--no-bulk"], atol=1e-5)


def test_compiled_layers_give_the_same_vectors(saved_tiny_model, tmp_path):
    """`--compile` (torch.compile per decoder layer, dynamic shapes) changes speed, not the vectors."""
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(f"text number {i} {'word ' * (i % 5)}" for i in range(20)) + "\n", encoding="utf-8")
    vectors = {}
    for flags in (["--bulk", "--compile"], ["--no-bulk"]):
        target = tmp_path / f"{flags[-1]}.npy"
        result = runner.invoke(app, ["encode", "-f", str(source), "-o", str(target), "--batch-size", "8",
                                     "--model", saved_tiny_model, *flags])
        assert result.exit_code == 0, result.output
        vectors[flags[-1]] = np.load(target)
    np.testing.assert_allclose(vectors["--compile"], vectors["--no-bulk"], atol=1e-5)


def test_dtype_choice_changes_precision_not_meaning(saved_tiny_model, tmp_path):
    """fp32 is what auto gives on a CPU; bf16 weights give nearly the same vectors."""
    vectors = {}
    for dtype in ("auto", "fp32", "bf16"):
        target = tmp_path / f"{dtype}.npy"
        result = runner.invoke(app, ["encode", "A man plays guitar.", "Stocks fell.", "-o", str(target),
                                     "--model", saved_tiny_model, "--dtype", dtype, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        vectors[dtype] = np.load(target)
    np.testing.assert_array_equal(vectors["auto"], vectors["fp32"])
    assert not np.array_equal(vectors["bf16"], vectors["fp32"])
    assert (vectors["bf16"] * vectors["fp32"]).sum(axis=1).min() > 0.99  # normalised vectors: cosine


def test_unknown_dtype_exits_2_and_names_the_choices(saved_tiny_model):
    result = runner.invoke(app, ["encode", "text", "--dtype", "int4", "--model", saved_tiny_model])
    assert result.exit_code == 2 and "int4" in result.stderr and "bf16" in result.stderr


def test_unknown_prompt_name_exits_2(saved_tiny_model):
    result = runner.invoke(app, ["encode", "text", "--prompt-name", "nope", "--model", saved_tiny_model])
    assert result.exit_code == 2 and "nope" in result.stderr


def test_similarity_prints_a_matrix(saved_tiny_model):
    result = runner.invoke(app, ["similarity", "A man plays guitar.", "Stocks fell.", "--model", saved_tiny_model])
    assert result.exit_code == 0, result.output
    assert "1.000" in result.stdout and "cosine similarity" in result.stdout


@pytest.mark.parametrize("arguments", [["encode", "   "], ["similarity", "only one"], ["encode"]])
def test_bad_input_exits_2_with_a_message(saved_tiny_model, arguments):
    result = runner.invoke(app, [*arguments, "--model", saved_tiny_model])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert result.stdout == ""  # never mixed into the vectors a command writes to stdout


def test_encode_file_that_is_not_utf8_names_file_and_line(saved_tiny_model, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_bytes("first\ncaf\xe9\n".encode("latin-1"))
    result = runner.invoke(app, ["encode", "-f", str(source), "--model", saved_tiny_model])
    assert result.exit_code == 2
    assert "texts.txt, line 2: byte 0xe9 is not UTF-8" in " ".join(result.output.split())


def test_encode_file_with_a_byte_order_mark_keeps_the_first_text_clean(saved_tiny_model, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("\ufefffirst\n", encoding="utf-8")
    result = runner.invoke(app, ["encode", "-f", str(source), "--model", saved_tiny_model])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["text"] == "first"


@pytest.mark.parametrize("texts", [["fine", "\ud800"]])
def test_encode_names_a_lone_surrogate(saved_tiny_model, texts):
    result = runner.invoke(app, ["encode", *texts, "--model", saved_tiny_model])
    assert result.exit_code == 2
    assert "texts[1] holds '\\ud800'" in " ".join(result.output.split())


def test_train_data_that_is_a_folder_exits_2_with_a_message(tmp_path):
    (tmp_path / "data").mkdir()
    result = runner.invoke(app, ["train", "-o", str(tmp_path / "out"), "--data-dir", str(tmp_path),
                                 "--train-data", "data", "--no-dev"])
    assert result.exit_code == 2
    assert "data: is a folder" in " ".join(result.output.split()) and "Traceback" not in result.output


def test_several_devices_go_through_the_sentence_transformers_pool(saved_tiny_model, tmp_path):
    """`--device cpu,cpu`: two processes of sentence-transformers' pool, encode_bulk in each (~20-40 s of start-up)."""
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(f"text number {i} {'word ' * (i % 6)}" for i in range(23)) + "\n", encoding="utf-8")
    vectors = {}
    for device in ("cpu", "cpu,cpu"):
        target = tmp_path / f"{device.replace(',', '-')}.npy"
        result = runner.invoke(app, ["encode", "-f", str(source), "-o", str(target), "--model", saved_tiny_model,
                                     "--device", device, "--bulk", "--batch-size", "5"])
        assert result.exit_code == 0, result.output
        vectors[device] = np.load(target)
    np.testing.assert_allclose(vectors["cpu,cpu"], vectors["cpu"], atol=1e-5)
    refused = runner.invoke(app, ["encode", "x", "--model", saved_tiny_model, "--device", "cpu,cpu", "--no-bulk",
                                  "--compile"])
    assert refused.exit_code == 2 and "--no-bulk" in refused.output
    refused = runner.invoke(app, ["encode", "x", "--model", saved_tiny_model, "--device", "cpu,gpu:1"])
    assert refused.exit_code == 2 and "gpu:1" in refused.output


# Every default has one home; a command-line option either refers to it or leaves it to the callee.
COMMANDS = typer.main.get_command(app).commands


def options_of(command: str) -> dict[str, click.Parameter]:
    return {parameter.name: parameter for parameter in COMMANDS[command].params}


def test_train_options_leave_recipe_fields_to_the_recipe():
    fields = {field.name for field in dataclasses.fields(Recipe)}
    recipe_options = {name: option for name, option in options_of("train").items() if name in fields}
    assert len(recipe_options) > 25
    for name, option in recipe_options.items():
        assert option.default is None, f"train --{name} defaults to {option.default!r}; leave it None so Recipe's applies"


@pytest.mark.parametrize("field", ["batch_size", "learning_rate", "pooling", "train_max_seq_length", "packing_row_length"])
def test_train_help_prints_the_recipe_default(field):
    assert f"(default: {getattr(Recipe(), field)})" in options_of("train")[field].help


def test_serve_options_default_to_server_settings():
    defaults, options = ServerSettings(), options_of("serve")
    shared = [name for name in options if name in {field.name for field in dataclasses.fields(ServerSettings)}]
    assert len(shared) >= 10
    for name in shared:
        assert options[name].default == getattr(defaults, name), f"serve --{name} disagrees with ServerSettings.{name}"
    assert options["batch_wait_ms"].default == defaults.batch_wait_seconds * 1000


@pytest.mark.parametrize(
    ("command", "function"), [("sweep", layer_sweep), ("adapt", adapt), ("eval", evaluate_retrieval)]
)
def test_options_default_to_their_functions(command, function):
    parameters = inspect.signature(function).parameters
    for name, option in options_of(command).items():
        if name in parameters and parameters[name].default is not inspect.Parameter.empty:
            assert option.default in (None, parameters[name].default), (
                f"{command} --{name} defaults to {option.default!r} but {function.__name__} to {parameters[name].default!r}"
            )
