"""The SentenceTransformer that BeLLM models come as: checks a whole input list before encoding it.

sentence-transformers sorts inputs by length and batches them before a module sees them, returns
an empty array for an empty list, and takes a ``TypeError`` from a module's ``preprocess`` for an
old signature (then retries with the prompt glued on, which ends in ``can only concatenate str``).
Checking the whole list up front gives one clear error naming the original position instead, and
the truncations of all batches are reported in one warning.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sentence_transformers import SentenceTransformer

from bellm_st.inputs import validate_text, validate_texts
from bellm_st.module import BeLLMEncoder
from bellm_st.tokenization import one_truncation_warning


def bellm_encoder(model: Any) -> BeLLMEncoder | None:
    """The BeLLM module of a model, or None for anything else (a plain sentence-transformers model, an ONNX encoder).

    The one test of "is this a BeLLM model": only a BeLLM encoder places texts inside a template,
    has a decoder to compile or merge an adapter into, and can run flat batches.
    """
    if isinstance(model, SentenceTransformer) and len(model) and isinstance(model[0], BeLLMEncoder):
        return model[0]
    return None


def encoder_of(model: Any) -> BeLLMEncoder:
    """:func:`bellm_encoder` for code that only works on BeLLM models: an error saying what the model is instead of None."""
    encoder = bellm_encoder(model)
    if encoder is None:
        first = type(model[0]).__name__ if isinstance(model, SentenceTransformer) and len(model) else type(model).__name__
        raise TypeError(
            f"expected a BeLLM model (first module BeLLMEncoder), got {first}; build one with bellm_st.build(base)"
        )
    return encoder


class BeLLMSentenceTransformer(SentenceTransformer):
    """A :class:`SentenceTransformer` whose ``encode`` (and ``encode_query``/``encode_document``) validates texts first."""

    def encode(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, str):
            validate_text(inputs, where="text")
        else:
            if isinstance(inputs, Iterable) and not isinstance(inputs, (Sequence, bytes, dict)):
                inputs = list(inputs)  # a generator or numpy array of texts, as sentence-transformers accepts
            validate_texts(inputs, where="texts")
        with one_truncation_warning(self.max_seq_length):
            return super().encode(inputs, *args, **kwargs)
