"""From a trained folder to a merged standalone folder, and to a shipped-model adapter folder."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from typer.testing import CliRunner

from bellm_st.cli import app
from bellm_st.export import export_merged, package_shipped
from bellm_st.training import Recipe, train

SENTENCES = ["A man is playing a guitar.", "The stock market fell sharply today."]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    (folder / "t.tsv").write_text(
        "anchor\tpositive\tnegative\nA man plays.\tSomeone plays.\tStocks fell.\nKids play.\tChildren play.\tA frog.\n"
    )
    recipe = Recipe(base=tiny_model_dir, train_data=["t.tsv"], dev_data=[], batch_size=2, max_steps=2,
                    learning_rate=1e-2, lora_r=4, batch_sampler="batch_sampler",
                    bidirectional_layers=2, pooling="last")
    train(recipe, folder / "model", data_dir=folder, device="cpu")
    return folder / "model"


def test_export_merges_the_adapter_and_keeps_the_embeddings(trained, tmp_path):
    with_adapter = SentenceTransformer(str(trained), trust_remote_code=True, device="cpu")
    export_merged(str(trained), tmp_path / "merged")

    assert not (tmp_path / "merged" / "adapter").exists()
    merged = SentenceTransformer(str(tmp_path / "merged"), trust_remote_code=True, device="cpu")
    assert not hasattr(merged[0].auto_model, "peft_config")
    assert merged[0].bidirectional_layer_indices == with_adapter[0].bidirectional_layer_indices
    torch.testing.assert_close(
        merged.encode(SENTENCES, convert_to_tensor=True), with_adapter.encode(SENTENCES, convert_to_tensor=True),
        rtol=1e-4, atol=1e-5,
    )


def test_cli_export_onnx_int8_writes_both_graphs_into_the_merged_folder(trained, tmp_path):
    import numpy as np

    import bellm_st
    from bellm_st.testing import CORPUS

    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(CORPUS) + "\n")
    target = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(trained), str(target), "--onnx", "--int8", str(calibration)])
    assert result.exit_code == 0, result.output
    assert "backend='onnx'" in result.output and "onnx/model_int8.onnx" in result.output
    assert {"model.onnx", "model_int8.onnx"} <= {path.name for path in (target / "onnx").iterdir()}
    assert (target / "model.safetensors").is_file() and (target / "module.py").is_file()
    with_adapter = SentenceTransformer(str(trained), trust_remote_code=True, device="cpu")
    expected = with_adapter.encode(SENTENCES, normalize_embeddings=True)
    fp32 = bellm_st.load(str(target), backend="onnx").encode(SENTENCES, normalize_embeddings=True)
    np.testing.assert_allclose(fp32, expected, atol=1e-5)
    int8 = bellm_st.load(str(target), backend="onnx", model_kwargs={"file_name": "onnx/model_int8.onnx"})
    assert ((int8.encode(SENTENCES, normalize_embeddings=True) * expected).sum(1) > 0.99).all()


def test_package_shipped_writes_the_layout_load_shipped_reads(trained, tiny_model_dir, tmp_path):
    target = package_shipped(trained, "bellm-tiny", base="smollm2-135m", models_root=tmp_path)

    settings = json.loads((target / "bellm_config.json").read_text())
    assert settings["base"] == "smollm2-135m" and settings["bidirectional_layers"] == 2 and settings["pooling"] == "last"
    assert json.loads((target / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m"
    restored = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_model_dir), str(target / "adapter"))
    saved = load_file(str(trained / "adapter" / "adapter_model.safetensors"))
    lora_b = next(name for name in saved if "lora_B" in name)
    assert saved[lora_b].abs().sum() > 0  # training moved the zero-initialised B matrices
    restored_state = {k: v for k, v in restored.state_dict().items() if "lora_B" in k}
    assert any(torch.equal(value, saved[lora_b]) for value in restored_state.values())


def test_package_shipped_needs_a_shipped_base(trained, tmp_path):
    with pytest.raises(ValueError, match="is not a shipped base; pass one of"):
        package_shipped(trained, "bellm-tiny", models_root=tmp_path)  # the recipe's base is a local folder


def test_a_pruned_model_packaged_as_shipped_loads_with_its_layers_kept(tiny_model_dir, tmp_path, monkeypatch):
    import bellm_st
    import bellm_st.bases

    (tmp_path / "t.tsv").write_text(
        "anchor\tpositive\tnegative\nA man plays.\tSomeone plays.\tStocks fell.\nKids play.\tChildren play.\tA frog.\n"
    )
    recipe = Recipe(base=tiny_model_dir, train_data=["t.tsv"], dev_data=[], batch_size=2, max_steps=2,
                    learning_rate=1e-2, lora_r=4, batch_sampler="batch_sampler", keep_layers=1,
                    bidirectional_layers=1, pooling="mean")
    trained = train(recipe, tmp_path / "pruned", data_dir=tmp_path, device="cpu").output_dir
    target = package_shipped(trained, "bellm-tiny-pruned", base="smollm2-135m", models_root=tmp_path / "models")

    assert json.loads((target / "bellm_config.json").read_text())["keep_layers"] == 1
    monkeypatch.setattr(bellm_st.bases, "base_checkpoint", lambda name, cache_dir=None: str(tiny_model_dir))
    shipped = bellm_st.load(str(target), device="cpu")  # an adapter folder anywhere loads like a shipped model
    original = SentenceTransformer(str(trained), trust_remote_code=True, device="cpu")
    assert len(shipped[0].decoder.layers) == 1
    torch.testing.assert_close(
        shipped.encode(SENTENCES, convert_to_tensor=True), original.encode(SENTENCES, convert_to_tensor=True),
        rtol=1e-4, atol=1e-5,
    )


def test_an_adapter_folder_without_a_base_is_refused_with_the_fix(trained, tmp_path):
    import bellm_st

    target = package_shipped(trained, "bellm-tiny", base="smollm2-135m", models_root=tmp_path)
    settings = json.loads((target / "bellm_config.json").read_text())
    del settings["base"]
    (target / "bellm_config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r'bellm_config\.json lacks "base" \(the base model: a shipped base'):
        bellm_st.load(str(target), device="cpu")


def test_cli_export_adapter_only_writes_the_shipped_layout(trained, tiny_model_dir, tmp_path, monkeypatch):
    import bellm_st
    import bellm_st.bases

    target = tmp_path / "share" / "my-model"
    result = CliRunner().invoke(app, ["export", str(trained), str(target), "--adapter-only", "--base", "smollm2-135m"])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (target / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((target / "bellm_config.json").read_text())["base"] == "smollm2-135m"
    monkeypatch.setattr(bellm_st.bases, "base_checkpoint", lambda name, cache_dir=None: str(tiny_model_dir))
    original = SentenceTransformer(str(trained), trust_remote_code=True, device="cpu")
    torch.testing.assert_close(
        bellm_st.load(str(target), device="cpu").encode(SENTENCES, convert_to_tensor=True),
        original.encode(SENTENCES, convert_to_tensor=True), rtol=1e-4, atol=1e-5,
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--adapter-only"], "is not a shipped base"),  # the recipe's base is a local folder
        (["--adapter-only", "--onnx"], "pick one"),
        (["--base", "smollm2-135m"], "only applies with --adapter-only"),
        (["--int8", __file__], "add --onnx"),
    ],
)
def test_cli_export_adapter_only_refuses_bad_options_before_writing(trained, tmp_path, extra, message):
    target = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(trained), str(target), *extra])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not target.exists()


@pytest.mark.parametrize("mode", [[], ["--onnx"], ["--adapter-only", "--base", "smollm2-135m"]], ids=["merged", "onnx", "adapter"])
def test_cli_export_keeps_an_existing_folder_in_every_mode(trained, tmp_path, mode):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["export", str(trained), str(target), *mode])
    assert result.exit_code == 2 and "not empty" in " ".join(result.output.split())
    assert sorted(path.name for path in target.iterdir()) == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "keep me"


def test_export_never_writes_over_a_model_folder_or_a_file(trained, tmp_path):
    before = sorted(path.name for path in trained.iterdir())
    with pytest.raises(FileExistsError, match="not empty"):
        export_merged(str(trained), trained)  # its own folder
    assert sorted(path.name for path in trained.iterdir()) == before
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"data")
    with pytest.raises(FileExistsError, match="not empty"):
        export_merged(str(trained), a_file)
    assert a_file.read_bytes() == b"data"
    (tmp_path / "empty").mkdir()
    assert (export_merged(str(trained), tmp_path / "empty") / "modules.json").is_file()  # an empty folder is fine


def test_cli_export_adapter_only_of_a_folder_without_an_adapter_names_what_is_missing(tmp_path):
    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), str(tmp_path / "out"), "--adapter-only"])
    assert result.exit_code == 2 and "adapter_model.safetensors" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()
