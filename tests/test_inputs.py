"""Bad input gets a clear error naming the item; odd but valid text just works."""

from __future__ import annotations

import numpy as np
import pytest

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
        ([], None, None),
    ],
)
def test_encode_rejects_bad_items_with_our_message(tiny_model, texts, error, message):
    if error is None:  # sentence-transformers itself returns an empty result for an empty list
        assert len(tiny_model.encode(texts)) == 0
        return
    with pytest.raises(error, match=message):
        tiny_model.encode(texts)


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
