"""bellm-st: turn any decoder-only LLM into a BeLLM sentence encoder for sentence-transformers."""

from bellm_st.api import build, load
from bellm_st.bidirectional import BidirectionalPatch, make_bidirectional
from bellm_st.inputs import validate_texts
from bellm_st.module import BeLLMEncoder
from bellm_st.prompts import DEFAULT_TEMPLATE

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_TEMPLATE",
    "BeLLMEncoder",
    "BidirectionalPatch",
    "build",
    "load",
    "make_bidirectional",
    "validate_texts",
]
