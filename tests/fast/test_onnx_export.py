"""The ONNX export: the graph is the backbone, bi-directional layers included; shipped models export once, cached."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import numpy as np
import onnxruntime
import pytest
import torch

import bellm_st
from bellm_st import shipped
from bellm_st.fast import onnx_export
from bellm_st.fast.onnx_export import export_onnx, without_harmless_export_warnings
from bellm_st.fast.packing import PackedRows
from bellm_st.onnx_backbone import GRAPH_FILE, GRAPH_INPUTS

TEXTS = [
    "A man is playing a guitar.",
    "Hi",
    "The stock market fell sharply today, and then it fell again.",
    "Children are playing football in the park.",
    "A woman is slicing an onion.",
]


@pytest.fixture(scope="module")
def torch_model(tiny_onnx_dir):
    return bellm_st.load(tiny_onnx_dir, device="cpu")


@pytest.fixture(scope="module")
def session(tiny_onnx_dir):
    return onnxruntime.InferenceSession(f"{tiny_onnx_dir}/{GRAPH_FILE}", providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_the_graph_gives_the_backbone_states_on_padded_batches(torch_model, session, padding_side):
    encoder = torch_model[0]
    encoder.tokenizer.padding_side = padding_side
    try:
        features = encoder.preprocess(TEXTS)
    finally:
        encoder.tokenizer.padding_side = "right"
    assert not bool(features["attention_mask"].all()), "the batch must hold padding"
    with torch.no_grad():
        expected = encoder.auto_model(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
    (states,) = session.run(None, {name: features[name].numpy() for name in GRAPH_INPUTS})
    real = features["attention_mask"].numpy().astype(bool)
    np.testing.assert_allclose(states[real], expected.last_hidden_state.numpy()[real], atol=1e-5, rtol=1e-4)


def test_mean_text_pooling_and_a_packing_module_export(tiny_model_dir, tmp_path):
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, pooling="mean_text", device="cpu")
    model[0].batch_layout = PackedRows(128)  # a packing module still exports its padded graph
    model.save(str(tmp_path))
    assert export_onnx(model, tmp_path) == tmp_path / GRAPH_FILE
    np.testing.assert_allclose(bellm_st.load(str(tmp_path), backend="onnx").encode(TEXTS), model.encode(TEXTS),
                               atol=1e-5)


def test_export_refuses_what_it_cannot_export(tiny_model_dir, tiny_onnx_dir, tmp_path):
    with pytest.raises(TypeError, match="bellm-st SentenceTransformer"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path)
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"holds no saved BeLLM model.*model\.save\(folder\)"):
        export_onnx(model, tmp_path)
    with pytest.raises(FileExistsError, match="exists already"):
        export_onnx(model, tiny_onnx_dir)
    with pytest.raises(ValueError, match="already runs an exported graph"):
        export_onnx(bellm_st.load(tiny_onnx_dir, backend="onnx"), tmp_path)
    with pytest.raises(ValueError, match="fp32 CPU model"):
        export_onnx(bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu").to(torch.bfloat16), tmp_path)
    from peft import LoraConfig, get_peft_model

    with_adapter = bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu")
    with_adapter[0].auto_model = get_peft_model(with_adapter[0].auto_model, LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="merge_adapter"):
        export_onnx(with_adapter, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_onnx_explains_a_plain_checkpoint(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from bellm_st.cli import app

    result = CliRunner().invoke(app, ["export", "--onnx", tiny_model_dir, str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "bellm_st.build" in result.output


def test_a_shipped_model_is_exported_once_on_first_use(tiny_onnx_dir, torch_model, monkeypatch, tmp_path, caplog):
    """The shipped name stands for the tiny model here; the cache, the message and the loading are the real ones."""
    import bellm_st.export

    exports = []
    real_export = bellm_st.export.export_merged

    def export_the_tiny_model(name, output_dir, **options):
        exports.append(name)
        return real_export(tiny_onnx_dir, output_dir, **options)

    monkeypatch.setattr(shipped, "SHIPPED_MODELS", (*shipped.SHIPPED_MODELS, "tiny-shipped"))
    monkeypatch.setattr(bellm_st.export, "export_merged", export_the_tiny_model)
    with caplog.at_level(logging.WARNING, logger=onnx_export.__name__):
        first = bellm_st.load("tiny-shipped", backend="onnx", cache_dir=tmp_path)
    assert "exporting tiny-shipped to ONNX once" in caplog.text
    second = bellm_st.load("tiny-shipped", backend="onnx", cache_dir=tmp_path)
    assert exports == ["tiny-shipped"]
    cached = tmp_path / onnx_export.SHIPPED_EXPORTS / f"tiny-shipped-{bellm_st.__version__}"
    assert (cached / GRAPH_FILE).is_file()
    assert [path.name for path in cached.parent.iterdir() if not path.name.endswith(".lock")] == [cached.name]
    for model in (first, second):
        np.testing.assert_allclose(model.encode(TEXTS), torch_model.encode(TEXTS), atol=1e-5)


REGISTRY_LOG = "torch.onnx._internal.exporter._registration"  # where torch says "torchvision is not installed"


@contextlib.contextmanager
def recorded_warnings() -> Iterator[list[str]]:
    """Every warning and every message of the exporter's registry log, in order."""
    messages: list[str] = []
    recorder = logging.Handler()
    recorder.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger(REGISTRY_LOG).addHandler(recorder)
    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(warning.message) for warning in shown)
    finally:
        logging.getLogger(REGISTRY_LOG).removeHandler(recorder)


def test_export_hides_only_the_known_harmless_warnings(torch_model, tmp_path):
    torch_model.save(str(tmp_path / "graph"))
    with recorded_warnings() as messages:
        export_onnx(torch_model, tmp_path / "graph")
    assert messages == []  # torchvision ops skipped, LeafSpec deprecation, shared axis names
    with recorded_warnings() as messages, without_harmless_export_warnings():
        warnings.warn("a warning of its own", UserWarning)
        logging.getLogger(REGISTRY_LOG).warning("a registry message of its own")
    assert messages == ["a registry message of its own", "a warning of its own"]
