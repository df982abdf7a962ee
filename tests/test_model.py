"""bellm_st.model: the one test of "is this a BeLLM model", and its strict form for code that needs one."""

from __future__ import annotations

import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Pooling

from bellm_st.model import bellm_encoder, encoder_of


def test_a_bellm_model_gives_its_encoder(tiny_model):
    assert bellm_encoder(tiny_model) is tiny_model[0]
    assert encoder_of(tiny_model) is tiny_model[0]


@pytest.mark.parametrize("other, named", [(SentenceTransformer(modules=[Pooling(8)], device="cpu"), "Pooling"),
                                          (object(), "object")])
def test_anything_else_is_none_or_an_error_naming_what_it_is(other, named):
    assert bellm_encoder(other) is None
    with pytest.raises(TypeError, match=f"got {named}; build one with bellm_st.build"):
        encoder_of(other)
