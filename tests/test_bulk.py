"""encode_bulk gives what SentenceTransformer.encode gives, in the input order, on one or several models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bellm_st
from bellm_st.bulk import encode_bulk, replicate

TEXTS = [text[:cut] for text in (
    "A man is playing a guitar.",
    "Children are playing football in the park.",
    "The stock market fell sharply today.",
    "Scientists discovered a new species of frog.",
) for cut in range(4, 45, 6)]


@pytest.fixture()
def model(tiny_model_dir):
    return bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu", query_template='The question {text} asks:"')


def test_same_vectors_as_encode_in_input_order(model):
    expected = model.encode(TEXTS, batch_size=5)
    actual = encode_bulk(model, TEXTS, batch_size=3, prefetch_batches=1)
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_prompts_and_normalisation_follow_encode(model):
    expected = model.encode_query(TEXTS, normalize_embeddings=True, convert_to_tensor=True)
    actual = encode_bulk(model, TEXTS, prompt_name="query", normalize_embeddings=True, convert_to_numpy=False)
    assert isinstance(actual, torch.Tensor)
    assert torch.allclose(actual, expected, atol=1e-5)


def test_several_replicas_share_the_work(model):
    replicas = replicate(model, ["cpu", "cpu"])
    assert replicas[0] is model and replicas[1] is not model
    np.testing.assert_allclose(encode_bulk(replicas, TEXTS, batch_size=2), model.encode(TEXTS), atol=1e-5)


def test_bad_input_and_failures_reach_the_caller(model, monkeypatch):
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        encode_bulk(model, ["fine", None])
    with pytest.raises(ValueError, match="batch_size=0"):
        encode_bulk(model, TEXTS, batch_size=0)
    with pytest.raises(ValueError, match="prompt_name='nope'"):
        encode_bulk(model, TEXTS, prompt_name="nope")

    def broken(*args, **kwargs):
        raise RuntimeError("tokenizer broke")

    monkeypatch.setattr(model, "preprocess", broken)
    with pytest.raises(RuntimeError, match="tokenizer broke"):
        encode_bulk(replicate(model, ["cpu", "cpu"]), TEXTS, batch_size=2)
