"""encode_bulk gives what SentenceTransformer.encode gives, in the input order, in one process or in a pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bellm_st
from bellm_st.fast.bulk import EQUAL_LENGTH_ROWS, _unpadded_batches, checked_devices, encode_bulk

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


def test_a_pool_of_two_processes_gives_the_vectors_of_one_model_in_input_order(model):
    """sentence-transformers' pool with encode_bulk in each process (two CPU processes here; ~20-40 s of start-up)."""
    expected = model.encode_query(TEXTS, normalize_embeddings=True)
    actual = encode_bulk(model, TEXTS, devices=["cpu", "cpu"], batch_size=2, prompt_name="query",
                         normalize_embeddings=True)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


@pytest.mark.parametrize("devices", [[], "cuda:0,cuda:1", ["gpu:0"]])
def test_devices_are_checked_before_any_process_starts(model, devices):
    with pytest.raises(ValueError, match="device"):
        checked_devices(devices)
    with pytest.raises(ValueError, match="device"):
        encode_bulk(model, TEXTS, devices=devices)


def test_pool_options_are_refused_without_a_pool(model):
    with pytest.raises(ValueError, match="compile_layers=True"):
        encode_bulk(model, TEXTS, compile_layers=True)
    with pytest.raises(ValueError, match="prompt_name='nope'"):  # before any process starts
        encode_bulk(model, TEXTS, devices=["cpu", "cpu"], prompt_name="nope")


def test_bad_input_and_failures_reach_the_caller(model, monkeypatch):
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        encode_bulk(model, ["fine", None])
    with pytest.raises(ValueError, match="batch_size=0"):
        encode_bulk(model, TEXTS, batch_size=0)
    with pytest.raises(ValueError, match="prompt_name='nope'"):
        encode_bulk(model, TEXTS, prompt_name="nope")

    def broken(*args, **kwargs):
        raise RuntimeError("tokenizer broke")

    monkeypatch.setattr(model[0], "tokenize_unpadded", broken)
    with pytest.raises(RuntimeError, match="tokenizer broke"):
        encode_bulk(model, TEXTS, batch_size=2)
    with pytest.raises(ValueError, match="max_batch_tokens=0"):
        encode_bulk(model, TEXTS, max_batch_tokens=0)


def spy_on_batches(model, monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Record every feature batch the model is run on."""
    seen = []
    original = model[0].forward

    def forward(features, **kwargs):
        seen.append({key: value.clone() for key, value in features.items() if isinstance(value, torch.Tensor)})
        return original(features, **kwargs)

    monkeypatch.setattr(model[0], "forward", forward)
    return seen


def test_bellm_batches_hold_no_padding_and_respect_both_limits(model, monkeypatch):
    seen = spy_on_batches(model, monkeypatch)
    texts = TEXTS * 3
    expected = model.encode(texts, batch_size=4)
    seen.clear()
    monkeypatch.setattr("bellm_st.fast.bulk.TOKENIZE_CHUNK", 7)  # several chunks, so buckets fill across chunks
    actual = encode_bulk(model, texts, batch_size=5, max_batch_tokens=40)
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    assert sum(len(batch["input_ids"]) for batch in seen) == len(texts)
    for batch in seen:
        rows, length = batch["input_ids"].shape
        assert bool(batch["attention_mask"].all()), "a bulk batch contained padding"
        assert rows <= 5 and (rows * length <= 40 or rows == 1)
        assert "text_mask" not in batch  # last-token pooling does not need the text located
    assert len({batch["input_ids"].shape[1] for batch in seen}) > 1


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_batches_keep_causal_and_bidirectional_layers(tiny_model_dir, attn):
    """Without a mask the lower layers must stay causal and the patched ones bi-directional."""
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, pooling="mean", device="cpu",
                           attn_implementation=attn)
    causal = bellm_st.build(tiny_model_dir, bidirectional_layers=0, pooling="mean", device="cpu",
                            attn_implementation=attn)
    expected = model.encode(TEXTS, batch_size=1)  # one text per batch: no padding, mask given
    np.testing.assert_allclose(encode_bulk(model, TEXTS, batch_size=4), expected, atol=1e-5)
    assert not np.allclose(encode_bulk(causal, TEXTS, batch_size=4), expected, atol=1e-3)


def test_mean_text_pooling_eos_and_truncation_match_encode(tiny_model_dir):
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, pooling="mean_text", append_eos=True,
                           max_seq_length=40, device="cpu")
    texts = TEXTS + ["a very long text that must be cut so the template still fits " * 4]
    np.testing.assert_allclose(encode_bulk(model, texts, batch_size=4), model.encode(texts, batch_size=3), atol=1e-5)


def test_other_models_get_padded_batches(tiny_model_dir):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models

    transformer = st_models.Transformer(tiny_model_dir)
    plain = SentenceTransformer(modules=[transformer, st_models.Pooling(transformer.get_embedding_dimension(), "mean")],
                                device="cpu")
    np.testing.assert_allclose(encode_bulk(plain, TEXTS, batch_size=4), plain.encode(TEXTS, batch_size=6), atol=1e-5)


@pytest.mark.parametrize("pending_batches", [1, None])
def test_rows_do_not_wait_for_the_whole_collection(model, pending_batches):
    """Partly filled buckets go out once too many rows wait, so the model need not idle while
    everything is tokenised; with no bound, batches this large would only leave at the end."""
    encoder = model[0]
    chunks_tokenised = []
    original = encoder.tokenize_unpadded

    def counting(texts, **kwargs):
        chunks_tokenised.append(len(texts))
        return original(texts, **kwargs)

    encoder.tokenize_unpadded = counting
    try:
        texts = TEXTS * 4
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("bellm_st.fast.bulk.TOKENIZE_CHUNK", 4)
            batches = _unpadded_batches(encoder, texts, None, batch_size=40, max_batch_tokens=100_000,
                                        pending_batches=pending_batches)
            first_indices, _ = next(batches)
            chunks_before_first_batch = len(chunks_tokenised)
            rest = [indices for indices, _ in batches]
    finally:
        del encoder.tokenize_unpadded
    all_chunks = -(-len(texts) // 4)
    if pending_batches is None:
        assert chunks_before_first_batch == all_chunks
    else:
        assert chunks_before_first_batch < all_chunks
    every_row = np.sort(np.concatenate([first_indices, *rest]))
    np.testing.assert_array_equal(every_row, np.arange(len(texts)))


def test_rows_of_one_length_encode_like_padded_rows_and_refuse_mixed_lengths(tiny_model):
    encoder = tiny_model[0]
    same_length = ["A man is playing a guitar."] * 3
    expected = encoder(encoder.preprocess(same_length))["sentence_embedding"]
    features = EQUAL_LENGTH_ROWS.preprocess(encoder, same_length, None, encoder.max_seq_length)
    assert torch.allclose(encoder(features)["sentence_embedding"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="one token length"):
        EQUAL_LENGTH_ROWS.preprocess(encoder, ["Hi", "A man is playing a guitar."], None, encoder.max_seq_length)

