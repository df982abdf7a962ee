"""The ONNX fast path: the exported graph gives model.encode's vectors, bi-directional layers included."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import bellm_st
from bellm_st.fast.onnx_export import OnnxEncoder, export_onnx, without_harmless_export_warnings
from bellm_st.fast.packing import PackedRows

TEXTS = [
    "A man is playing a guitar.",
    "Hi",
    "The stock market fell sharply today, and then it fell again.",
    "Children are playing football in the park.",
    "A woman is slicing an onion.",
]
QUERY_TEMPLATE = 'Find documents about {text} now:"'


def build_tiny(model_dir: str, bidirectional_layers: int, pooling: str = "mean"):
    return bellm_st.build(
        model_dir, bidirectional_layers=bidirectional_layers, pooling=pooling, query_template=QUERY_TEMPLATE, device="cpu"
    )


@pytest.fixture(scope="module")
def tiny_bidirectional(tiny_model_dir):
    return build_tiny(tiny_model_dir, bidirectional_layers=2)


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


@pytest.fixture(scope="module")
def export_and_its_warnings(tiny_bidirectional, tmp_path_factory) -> tuple[OnnxEncoder, list[str]]:
    with recorded_warnings() as messages:
        folder = export_onnx(tiny_bidirectional, tmp_path_factory.mktemp("onnx") / "tiny-k2")
    return OnnxEncoder(folder, threads=1), messages


@pytest.fixture(scope="module")
def exported(export_and_its_warnings) -> OnnxEncoder:
    return export_and_its_warnings[0]


@pytest.fixture()
def padding_side(tiny_bidirectional, exported, request):
    """Set the padding side on both tokenizers, and restore it afterwards."""
    tokenizers = (tiny_bidirectional[0].tokenizer, exported.tokenizer)
    previous = [tokenizer.padding_side for tokenizer in tokenizers]
    for tokenizer in tokenizers:
        tokenizer.padding_side = request.param
    yield request.param
    for tokenizer, side in zip(tokenizers, previous):
        tokenizer.padding_side = side


@pytest.mark.parametrize("padding_side", ["right", "left"], indirect=True)
def test_exported_graph_equals_torch_on_padded_batches(tiny_bidirectional, exported, padding_side):
    features = tiny_bidirectional[0].preprocess(TEXTS)
    assert not bool(features["attention_mask"].all()), "the batch must hold padding"
    with torch.no_grad():
        expected = tiny_bidirectional(dict(features))["sentence_embedding"].numpy()
    feeds = {name: features[name].numpy() for name in exported.input_names}
    np.testing.assert_allclose(exported.session.run(None, feeds)[0], expected, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(exported.encode(TEXTS, batch_size=2), tiny_bidirectional.encode(TEXTS), atol=1e-5)


@pytest.mark.parametrize("texts", [[TEXTS[0]], [TEXTS[2], TEXTS[2]]], ids=["one-text", "equal-lengths"])
def test_exported_graph_equals_torch_without_padding(tiny_bidirectional, exported, texts):
    assert bool(tiny_bidirectional[0].preprocess(texts)["attention_mask"].all())
    np.testing.assert_allclose(exported.encode(texts), tiny_bidirectional.encode(texts), atol=1e-5)


def test_bidirectional_layers_survive_export(tiny_model_dir, tiny_bidirectional, exported):
    """The k=2 graph gives the k=2 model's vectors, far from the causal model's (k=0, same weights)."""
    causal_vectors = build_tiny(tiny_model_dir, bidirectional_layers=0).encode(TEXTS)
    exported_vectors = exported.encode(TEXTS)
    np.testing.assert_allclose(exported_vectors, tiny_bidirectional.encode(TEXTS), atol=1e-5)
    effect = np.linalg.norm(exported_vectors - causal_vectors, axis=1)
    assert (effect > 1e-2 * np.linalg.norm(causal_vectors, axis=1)).all(), "the graph lost its bi-directional layers"
    assert exported.bidirectional_layers == 2


def test_prompts_and_options_match_sentence_transformers(tiny_bidirectional, exported):
    np.testing.assert_allclose(
        exported.encode(TEXTS, prompt_name="query"), tiny_bidirectional.encode(TEXTS, prompt_name="query"), atol=1e-5
    )
    np.testing.assert_allclose(
        exported.encode(TEXTS, prompt="topic: "), tiny_bidirectional.encode(TEXTS, prompt="topic: "), atol=1e-5
    )
    normalized = exported.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)
    single = exported.encode(TEXTS[1])
    assert single.shape == (exported.get_embedding_dimension(),)
    np.testing.assert_allclose(single, tiny_bidirectional.encode(TEXTS[1]), atol=1e-5)


def test_mean_text_pooling_feeds_the_text_mask(tiny_model_dir, tmp_path):
    model = build_tiny(tiny_model_dir, bidirectional_layers=2, pooling="mean_text")
    model[0].batch_layout = PackedRows(128)  # a packing module still exports its padded graph
    encoder = OnnxEncoder(export_onnx(model, tmp_path / "tiny-mean-text"))
    assert encoder.input_names == ["input_ids", "attention_mask", "text_mask"]
    np.testing.assert_allclose(encoder.encode(TEXTS), model.encode(TEXTS), atol=1e-5)


def test_export_hides_only_the_known_harmless_warnings(export_and_its_warnings):
    assert export_and_its_warnings[1] == []  # torchvision ops skipped, LeafSpec deprecation, shared axis names
    with recorded_warnings() as messages, without_harmless_export_warnings():
        warnings.warn("a warning of its own", UserWarning)
        logging.getLogger(REGISTRY_LOG).warning("a registry message of its own")
    assert messages == ["a registry message of its own", "a warning of its own"]


def test_export_refuses_what_it_cannot_export(tiny_model_dir, tmp_path):
    with pytest.raises(TypeError, match="bellm-st SentenceTransformer"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x")
    half = build_tiny(tiny_model_dir, bidirectional_layers=2).to(torch.bfloat16)
    with pytest.raises(ValueError, match="fp32 CPU model"):
        export_onnx(half, tmp_path / "x")
    from peft import LoraConfig, get_peft_model

    with_adapter = build_tiny(tiny_model_dir, bidirectional_layers=2)
    with_adapter[0].auto_model = get_peft_model(with_adapter[0].auto_model, LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="merge_adapter"):
        export_onnx(with_adapter, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_encoder_rejects_bad_input(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        OnnxEncoder(tmp_path)
    with pytest.raises(ValueError, match="threads=0"):
        OnnxEncoder(exported.folder, threads=0)
    with pytest.raises(ValueError, match="empty list"):
        exported.encode([])
    with pytest.raises(TypeError, match=r"sentences\[1\] is int"):
        exported.encode(["fine", 3])
    with pytest.raises(ValueError, match="batch_size=0"):
        exported.encode(TEXTS, batch_size=0)
    with pytest.raises(ValueError, match="'passage' is not one of this model's prompts"):
        exported.encode(TEXTS, prompt_name="passage")
    with pytest.raises(ValueError, match="not both"):
        exported.encode(TEXTS, prompt_name="query", prompt="topic: ")


def test_cli_export_onnx_explains_a_plain_checkpoint(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from bellm_st.cli import app

    result = CliRunner().invoke(app, ["export", "--onnx", tiny_model_dir, str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "bellm_st.build" in result.output
