"""Loading a model folder runs no code from it unless the caller trusts it (issue 19, item 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import bellm_st
from bellm_st.cli import app

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
