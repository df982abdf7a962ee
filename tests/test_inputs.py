"""Bad input gets a clear error naming the item; odd but valid text just works."""

from __future__ import annotations

import numpy as np
import pytest

from bellm_st.fast.bulk import encode_bulk
from bellm_st.inputs import validate_text, validate_texts


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        ("just a string", TypeError, r"must be a list of strings, got str.*\['my sentence'\]"),
        (None, TypeError, "must be a list of strings, got NoneType"),
        (42, TypeError, "got int"),
        ([], ValueError, "empty list"),
        (["fine", None], TypeError, r"texts\[1\] is NoneType"),
        (["fine", "also fine", 3.5], TypeError, r"texts\[2\] is float"),
        (["", "fine"], ValueError, r"texts\[0\] is empty"),
        (["fine", "  \n\t "], ValueError, r"texts\[1\] is only whitespace"),
        ([b"bytes"], TypeError, r"texts\[0\] is bytes"),
        (["fine", "ab\ud800c"], ValueError, r"texts\[1\] holds '\\ud800' at character 2, an unpaired UTF-16 surrogate"),
    ],
)
def test_validate_texts_names_the_bad_item(texts, error, message):
    with pytest.raises(error, match=message):
        validate_texts(texts, where="texts")


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        (None, TypeError, r"^query is NoneType \(None\), not a string"),
        (["a list"], TypeError, r"^query is list"),
        ("", ValueError, r"^query is empty"),
        (" \n", ValueError, r"^query is only whitespace"),
    ],
)
def test_validate_text_names_the_single_bad_text(text, error, message):
    with pytest.raises(error, match=message):
        validate_text(text, where="query")


def test_validate_text_returns_valid_text_unchanged():
    assert validate_text(" tab\tand emoji 🎸\n", where="query") == " tab\tand emoji 🎸\n"


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        ([None], TypeError, "is NoneType"),
        ([7], TypeError, "is int"),
        ([""], ValueError, "is empty"),
        (["   "], ValueError, "only whitespace"),
        ([], ValueError, "empty list"),  # sentence-transformers alone returns an empty float64 array
        (["a", "b", "c", "\ud800"], ValueError, r"texts\[3\] holds '\\ud800'"),  # was the tokenizer's TextEncodeInput error
        (["a", "b", "c", 7], TypeError, r"texts\[3\] is int"),  # the position in the whole list, not in a batch
    ],
)
def test_encode_rejects_bad_items_with_our_message(tiny_model, texts, error, message):
    with pytest.raises(error, match=message):
        tiny_model.encode(texts, batch_size=2)


def test_encode_query_with_a_nested_list_names_the_item(tiny_model_dir):
    """With a query prompt sentence-transformers took our TypeError for an old signature and ended in
    `can only concatenate str`."""
    import bellm_st

    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu", query_template="query: {text}")
    with pytest.raises(TypeError, match=r"texts\[0\] is list \(\['a', 'b'\]\), not a string"):
        model.encode_query([["a", "b"]])


def test_mixed_scripts_emoji_and_control_characters_encode(tiny_model):
    texts = ["Ein Mann spielt Gitarre 🎸", "男人在弹吉他", "tab\tand\x00null\x07bell", "مرحبا بالعالم", "é" * 3]
    vectors = tiny_model.encode(texts)
    assert vectors.shape == (5, 32)
    assert np.isfinite(vectors).all()


def test_a_very_long_text_warns_and_is_truncated(tiny_model, caplog):
    with caplog.at_level("WARNING"):
        vector = tiny_model.encode(["word " * 5000])
    assert "truncated" in caplog.text
    assert np.isfinite(vector).all()


@pytest.mark.parametrize("bulk", [False, True], ids=["encode", "encode_bulk"])
def test_truncation_warns_once_per_encode_call_with_a_count(tiny_model, caplog, monkeypatch, bulk):
    """Was one warning line per truncated text (encode), then one per tokenizer chunk (encode_bulk's thread)."""
    texts = ["word " * (600 + i) for i in range(10)] + ["short"]
    monkeypatch.setattr("bellm_st.fast.bulk.TOKENIZE_CHUNK", 4)
    with caplog.at_level("WARNING"):
        if bulk:
            encode_bulk(tiny_model, texts, batch_size=3)
        else:
            tiny_model.encode(texts, batch_size=3)
    warnings = [record.getMessage() for record in caplog.records if "truncated" in record.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("10 text(s) were longer than max_seq_length=512")
