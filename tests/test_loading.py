"""Loading a model folder runs no code from it unless the caller trusts it (issue 19, item 1), never asks
on the terminal, and fails on a bad folder with one line naming the file and the fix (issue 26)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import bellm_st
from bellm_st.cli import app
from bellm_st.testing.bad_folders import BAD_FOLDER_KINDS, CODE_RUNNING_KINDS, make_bad_folder, write_adapter_folder

EVIL_CLASS = "evilmod.Evil"


@pytest.fixture(scope="module")
def saved_bellm(tmp_path_factory, tiny_model_dir) -> Path:
    path = tmp_path_factory.mktemp("saved-bellm")
    bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu").save(str(path))
    return path


@pytest.fixture()
def folder(saved_bellm, tmp_path) -> Path:
    """A fresh copy of a saved BeLLM model to tamper with."""
    return Path(shutil.copytree(saved_bellm, tmp_path / "model"))


def plant(path: Path, marker: Path, body: str = "") -> None:
    """A Python file that leaves ``marker`` behind when anything imports it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"open({str(marker)!r}, 'w').close()\n{body}", encoding="utf-8")


def add_evil_module(folder: Path, marker: Path) -> None:
    """modules.json names ``evilmod.Evil`` and ``evilmod.py`` sits beside it (the issue's folder)."""
    plant(folder / "evilmod.py", marker, "import torch\n\nclass Evil(torch.nn.Module):\n"
          "    @classmethod\n    def load(cls, *args, **kwargs):\n        return cls()\n\n"
          "    def forward(self, features, **kwargs):\n        return features\n")
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "evil", "type": EVIL_CLASS})
    (folder / "modules.json").write_text(json.dumps(modules))


def test_a_foreign_module_class_is_refused_naming_the_class_and_the_flag(folder, tmp_path):
    marker = tmp_path / "ran"
    add_evil_module(folder, marker)
    with pytest.raises(ValueError, match=r"'evilmod\.Evil'.*trust_remote_code=True \(on the command line: --trust-remote-code\)"):
        bellm_st.load(str(folder), device="cpu")
    assert not marker.exists()


def test_trust_remote_code_loads_it(folder, tmp_path):
    marker = tmp_path / "ran"
    add_evil_module(folder, marker)
    model = bellm_st.load(str(folder), device="cpu", trust_remote_code=True)
    assert marker.exists() and type(model[1]).__name__ == "Evil"


@pytest.mark.parametrize("command", [["encode", "a text", "-m"], ["serve"], ["eval", "--sts", "unused.tsv", "-m"]])
def test_the_command_line_refuses_it_with_one_line(folder, tmp_path, command, monkeypatch):
    marker = tmp_path / "ran"
    add_evil_module(folder, marker)
    if command[0] == "eval":
        monkeypatch.setattr("bellm_st.evaluation.sts.read_scored_pairs", lambda path: None)
    result = CliRunner().invoke(app, [*command, str(folder)])
    assert result.exit_code == 2, result.output
    assert "evilmod.Evil" in result.output and "--trust-remote-code" in result.output
    assert "Traceback" not in result.output and not marker.exists()


def test_bellm_classes_come_from_the_installed_package_never_the_folder(folder, tmp_path):
    """A folder may carry its own bellm_st/module.py (or a flat bellm_st.module.py): neither runs, trusted or not."""
    marker = tmp_path / "ran"
    plant(folder / "bellm_st" / "module.py", marker)
    plant(folder / "bellm_st" / "__init__.py", marker)
    plant(folder / "bellm_st.module.py", marker)
    for trusted in (False, True):
        model = bellm_st.load(str(folder), device="cpu", trust_remote_code=trusted)
        assert type(model[0]) is bellm_st.BeLLMEncoder
    assert not marker.exists()


def test_a_transformers_auto_map_in_config_json_does_not_run(folder, tmp_path):
    marker = tmp_path / "ran"
    plant(folder / "evil_modeling.py", marker, "from transformers import LlamaModel as EvilModel\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil_modeling.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "evil_modeling.EvilModel"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    model = bellm_st.load(str(folder), device="cpu")
    assert type(model[0].auto_model).__name__ == "LlamaModel"
    assert not marker.exists()


def test_pickle_only_weights_are_refused_unless_trusted(folder, tiny_model_dir):
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu")
    (folder / "model.safetensors").unlink()
    torch.save(model[0].auto_model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin holds weights as a pickle.*safetensors.*trust_remote_code=True"):
        bellm_st.load(str(folder), device="cpu")
    trusted = bellm_st.load(str(folder), device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(trusted.encode(["a text"]), model.encode(["a text"]), atol=1e-5)


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no model folder at '.*missing'"):
        bellm_st.load(str(tmp_path / "missing"), device="cpu")


@pytest.mark.parametrize("command", [["encode", "a text", "-m"], ["serve"]])
def test_encode_and_serve_on_a_missing_folder_exit_2_with_one_line(tmp_path, command):
    result = CliRunner().invoke(app, [*command, str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "no model folder at" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one message, wrapped to the terminal's width


def test_a_plain_sentence_transformers_folder_still_loads(tmp_path, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(tiny_model_dir, device="cpu").save(str(tmp_path / "plain"))
    model = bellm_st.load(str(tmp_path / "plain"), device="cpu")
    assert model.encode(["a text"]).shape == (1, 32)


def test_the_adapter_folder_the_bad_kinds_start_from_loads(saved_bellm, tiny_model_dir, tmp_path):
    """Each bad adapter folder differs from this one by its defect only."""
    folder = write_adapter_folder(saved_bellm, tiny_model_dir, tmp_path / "adapter-folder")
    model = bellm_st.load(str(folder), device="cpu")
    assert model[0].bidirectional_layers == 2 and model.encode(["a text"]).shape == (1, 32)


@pytest.mark.parametrize("kind", BAD_FOLDER_KINDS)
def test_a_bad_folder_is_refused_in_one_line_naming_the_file_and_running_nothing(kind, saved_bellm, tiny_model_dir,
                                                                                 tmp_path):
    bad = make_bad_folder(kind, saved_bellm, tiny_model_dir, tmp_path)
    with pytest.raises(ValueError, match=bad.message) as refused:
        bellm_st.load(str(bad.path), device="cpu")
    assert "\n" not in str(refused.value) and not bad.marker.exists()


@pytest.mark.parametrize("kind", BAD_FOLDER_KINDS)
def test_encode_refuses_a_bad_folder_with_one_line_on_stderr(kind, saved_bellm, tiny_model_dir, tmp_path):
    bad = make_bad_folder(kind, saved_bellm, tiny_model_dir, tmp_path)
    result = CliRunner().invoke(app, ["encode", "a text", "-m", str(bad.path)])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(bad.message, lines[0]), result.stderr
    assert not bad.marker.exists()


@pytest.mark.parametrize("stdin", ["answering-yes", "closed"])
@pytest.mark.parametrize("kind", CODE_RUNNING_KINDS)
def test_a_base_with_custom_code_never_prompts_whatever_stdin_is(kind, stdin, saved_bellm, tiny_model_dir, tmp_path):
    """Left unset, trust_remote_code made transformers ask "[y/N]" on stdin, and a "y" ran the folder's code."""
    bad = make_bad_folder(kind, saved_bellm, tiny_model_dir, tmp_path)
    checkout = str(Path(bellm_st.__file__).parent.parent)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))}
    streams = {"input": "y\n" * 100} if stdin == "answering-yes" else {"preexec_fn": lambda: os.close(0)}
    result = subprocess.run([sys.executable, "-m", "bellm_st.cli", "encode", "a text", "-m", str(bad.path)],
                            env=environment, capture_output=True, text=True, timeout=300, **streams)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout == "" and "[y/N]" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and re.search(bad.message, lines[0]), result.stderr[-3000:]
    assert not bad.marker.exists()


@pytest.mark.parametrize("kind", CODE_RUNNING_KINDS)
def test_trusted_the_base_loads_with_its_own_code(kind, saved_bellm, tiny_model_dir, tmp_path):
    bad = make_bad_folder(kind, saved_bellm, tiny_model_dir, tmp_path)
    bellm_st.load(str(bad.path), device="cpu", trust_remote_code=True)
    assert bad.marker.exists()


@pytest.mark.parametrize("kind", ["adapter-pickle-only", "adapter-symlink-to-pickles"])
def test_trusted_a_pickled_adapter_loads_as_its_safetensors_copy_does(kind, saved_bellm, tiny_model_dir, tmp_path):
    bad = make_bad_folder(kind, saved_bellm, tiny_model_dir, tmp_path)
    reference = write_adapter_folder(saved_bellm, tiny_model_dir, tmp_path / "reference")
    trusted = bellm_st.load(str(bad.path), device="cpu", trust_remote_code=True)
    expected = bellm_st.load(str(reference), device="cpu").encode(["a text"])
    np.testing.assert_allclose(trusted.encode(["a text"]), expected, atol=1e-5)


def test_trusted_a_malicious_pickle_is_still_refused_in_one_line(saved_bellm, tiny_model_dir, tmp_path):
    """Trusted, peft reads the pickle with torch.load(weights_only=True), which refuses what is not tensors."""
    bad = make_bad_folder("adapter-malicious-pickle", saved_bellm, tiny_model_dir, tmp_path)
    with pytest.raises(ValueError, match=r"could not load .*: a pickle weights file holds more than tensors, so "
                                         r"torch\.load\(weights_only=True\) refused it") as refused:
        bellm_st.load(str(bad.path), device="cpu", trust_remote_code=True)
    assert "\n" not in str(refused.value) and not bad.marker.exists()
    pickle.loads((bad.path / "adapter" / "adapter_model.bin").read_bytes()).close()  # what a plain unpickler does
    assert bad.marker.exists()
