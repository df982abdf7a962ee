"""backend="onnx": the module runs the folder's graph in ONNX Runtime and gives torch's vectors, however it loads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import bellm_st
from bellm_st import onnx_backbone
from bellm_st.config import EncoderSettings, read_settings
from bellm_st.onnx_backbone import GRAPH_FILE, OnnxBackbone, usable_cpus

TEXTS = [
    "A man is playing a guitar.",
    "Hi",
    "The stock market fell sharply today, and then it fell again.",
    "Kinder spielen im Park Fußball.",
]
TOLERANCE = 1e-5
LOADERS = {
    "SentenceTransformer": lambda folder: SentenceTransformer(folder, backend="onnx", trust_remote_code=True),
    "bellm_st.load": lambda folder: bellm_st.load(folder, backend="onnx"),
}


@pytest.fixture(scope="module")
def torch_model(tiny_onnx_dir):
    return bellm_st.load(tiny_onnx_dir, device="cpu")


@pytest.fixture(scope="module", params=list(LOADERS))
def onnx_model(tiny_onnx_dir, request):
    return LOADERS[request.param](tiny_onnx_dir)


def test_the_module_runs_the_graph(onnx_model, tiny_onnx_dir):
    module = onnx_model[0]
    # SentenceTransformer(..., trust_remote_code=True) runs the folder's copy of the classes
    assert module.backend == "onnx" and type(module.auto_model).__name__ == OnnxBackbone.__name__
    assert module.auto_model.graph.samefile(f"{tiny_onnx_dir}/{GRAPH_FILE}")
    assert list(onnx_model.parameters()) == [], "no torch weights are loaded"
    assert onnx_model.device.type == "cpu"


def test_encode_equals_torch(onnx_model, torch_model):
    assert not bool(torch_model[0].preprocess(TEXTS)["attention_mask"].all()), "the batch must hold padding"
    np.testing.assert_allclose(onnx_model.encode(TEXTS, batch_size=2), torch_model.encode(TEXTS), atol=TOLERANCE)
    np.testing.assert_allclose(onnx_model.encode(TEXTS[2]), torch_model.encode(TEXTS[2]), atol=TOLERANCE)
    tokens = onnx_model.encode(TEXTS[:2], output_value="token_embeddings")
    for onnx_states, torch_states in zip(tokens, torch_model.encode(TEXTS[:2], output_value="token_embeddings")):
        torch.testing.assert_close(onnx_states, torch_states, atol=TOLERANCE, rtol=0)


def test_prompts_and_normalisation_equal_torch(onnx_model, torch_model):
    query = onnx_model.encode_query(TEXTS)
    np.testing.assert_allclose(query, torch_model.encode_query(TEXTS), atol=TOLERANCE)
    assert not np.allclose(query, onnx_model.encode(TEXTS), atol=1e-3), "the query prompt reaches the graph"
    np.testing.assert_allclose(onnx_model.encode_document(TEXTS), torch_model.encode_document(TEXTS), atol=TOLERANCE)
    np.testing.assert_allclose(onnx_model.encode(TEXTS, prompt="topic: "), torch_model.encode(TEXTS, prompt="topic: "),
                               atol=TOLERANCE)
    normalized = onnx_model.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=TOLERANCE)
    np.testing.assert_allclose(normalized, torch_model.encode(TEXTS, normalize_embeddings=True), atol=TOLERANCE)


def test_truncation_and_left_padding_equal_torch(tiny_onnx_dir, torch_model, caplog):
    onnx_model = bellm_st.load(tiny_onnx_dir, backend="onnx")
    reference = bellm_st.load(tiny_onnx_dir, device="cpu")
    long_text = " ".join(["word"] * 60)
    for model in (onnx_model, reference):
        model.max_seq_length = 48
        model[0].tokenizer.padding_side = "left"
    assert len(reference[0].preprocess([long_text])["input_ids"][0]) == 48
    with caplog.at_level("WARNING"):
        vectors = onnx_model.encode([long_text, *TEXTS])
    assert "truncated" in caplog.text
    np.testing.assert_allclose(vectors, reference.encode([long_text, *TEXTS]), atol=TOLERANCE)
    assert not np.allclose(vectors[0], torch_model.encode(long_text), atol=1e-3), "the budget reaches the graph"


def test_the_graph_keeps_the_bidirectional_layers(onnx_model, torch_model, tiny_onnx_dir):
    causal = bellm_st.load(tiny_onnx_dir, device="cpu")
    causal[0].bidirectional_layers = 0
    effect = np.linalg.norm(onnx_model.encode(TEXTS) - causal.encode(TEXTS), axis=1)
    causal_size = np.linalg.norm(causal.encode(TEXTS), axis=1)
    assert (effect > 1e-2 * causal_size).all(), "the graph lost its bi-directional layers"
    assert onnx_model[0].bidirectional_layer_indices == torch_model[0].bidirectional_layer_indices == (2, 3)


def test_a_folder_without_the_graph_names_the_export_command(tiny_model, tmp_path):
    tiny_model.save(str(tmp_path))
    for load in LOADERS.values():
        with pytest.raises(FileNotFoundError, match=r"holds no ONNX graph onnx/model\.onnx.*bellm-st export --onnx"):
            load(str(tmp_path))


@pytest.mark.parametrize("load", [
    lambda folder: bellm_st.load(folder, backend="nonsense"),
    lambda folder: SentenceTransformer(folder, backend="nonsense", trust_remote_code=True),
], ids=["bellm_st.load", "SentenceTransformer"])
def test_an_unknown_backend_is_a_clear_error(tiny_onnx_dir, load):
    with pytest.raises(ValueError, match="backend='nonsense' is not one of torch, onnx"):
        load(tiny_onnx_dir)


def test_options_that_do_not_apply_are_refused(tiny_onnx_dir, tiny_model_dir):
    with pytest.raises(ValueError, match=r"model_kwargs \['dtype'\] do not apply to backend='onnx'"):
        bellm_st.load(tiny_onnx_dir, backend="onnx", model_kwargs={"dtype": torch.float16})
    with pytest.raises(ValueError, match="runs ONNX Runtime on the CPU"):
        bellm_st.load(tiny_onnx_dir, backend="onnx", device="cuda")
    with pytest.raises(ValueError, match="must name a file of the onnx/ folder"):
        bellm_st.load(tiny_onnx_dir, backend="onnx", model_kwargs={"file_name": "../model.onnx"})
    with pytest.raises(ValueError, match="give the folder, and no backbone"):
        bellm_st.BeLLMEncoder(tiny_model_dir, backend="onnx", keep_layers=2)


def test_the_graph_cannot_be_changed_as_a_torch_model_can(tiny_onnx_dir):
    module = bellm_st.load(tiny_onnx_dir, backend="onnx")[0]
    with pytest.raises(ValueError, match="keeps the layers it was exported with"):
        module.bidirectional_layers = 1
    with pytest.raises(ValueError, match="load the folder with backend='torch'"):
        module.keep_first_layers(2)


def test_settings_that_disagree_with_the_graph_are_refused(tiny_onnx_dir, tmp_path):
    folder = shutil.copytree(tiny_onnx_dir, tmp_path / "edited")
    settings = json.loads((folder / "bellm_config.json").read_text())
    (folder / "bellm_config.json").write_text(json.dumps({**settings, "bidirectional_layers": 1}))
    with pytest.raises(ValueError, match=r"exported with bi-directional layers \[2, 3\].*names \[3\].*export the graph"):
        bellm_st.load(str(folder), backend="onnx")


def test_the_folder_settings_are_read_with_the_schema_as_for_torch(tiny_onnx_dir, tmp_path):
    folder = shutil.copytree(tiny_onnx_dir, tmp_path / "bad-settings")
    settings = json.loads((folder / "bellm_config.json").read_text())
    (folder / "bellm_config.json").write_text(json.dumps({**settings, "normalize": "false"}))
    with pytest.raises(ValueError, match=r'json has "normalize": "false", which is not true or false') as bad:
        bellm_st.load(str(folder), backend="onnx")
    assert "\n" not in str(bad.value)
    bellm_st.load(tiny_onnx_dir, backend="onnx").save(str(tmp_path / "resaved"))
    assert read_settings(tmp_path / "resaved" / "bellm_config.json", EncoderSettings).model_dump() == settings


def test_another_graph_of_the_folder_loads_by_file_name(tiny_onnx_dir, tmp_path, torch_model):
    folder = shutil.copytree(tiny_onnx_dir, tmp_path / "two-graphs")
    graph = folder / GRAPH_FILE
    graph.rename(graph.with_name("model_copy.onnx"))  # its weights file keeps its name
    model = bellm_st.load(str(folder), backend="onnx", model_kwargs={"file_name": "onnx/model_copy.onnx"})
    np.testing.assert_allclose(model.encode(TEXTS), torch_model.encode(TEXTS), atol=TOLERANCE)


def test_an_onnx_model_saves_and_loads_again(tiny_onnx_dir, tmp_path, torch_model):
    bellm_st.load(tiny_onnx_dir, backend="onnx").save(str(tmp_path / "resaved"))
    assert (tmp_path / "resaved" / GRAPH_FILE).is_file()
    np.testing.assert_allclose(bellm_st.load(str(tmp_path / "resaved"), backend="onnx").encode(TEXTS),
                               torch_model.encode(TEXTS), atol=TOLERANCE)


def test_threads_follow_torch_within_the_usable_cpus_and_do_not_spin(tiny_onnx_dir):
    options = bellm_st.load(tiny_onnx_dir, backend="onnx")[0].auto_model.session.get_session_options()
    assert options.intra_op_num_threads == min(torch.get_num_threads(), usable_cpus())
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_a_cgroup_quota_caps_the_usable_cpus(monkeypatch, tmp_path):
    limit = tmp_path / "cpu.max"
    monkeypatch.setattr(onnx_backbone, "CGROUP_CPU_LIMIT", limit)
    limit.write_text("max 100000\n")
    unlimited = usable_cpus()
    limit.write_text("50000 100000\n")  # half a CPU still gets one thread
    assert usable_cpus() == 1
    limit.write_text(f"{100000 * (unlimited + 4)} 100000\n")
    assert usable_cpus() == unlimited
