"""Validation of the texts users hand to an encoder.

Every entry point (the module, the CLI, the integrations, the server) calls
:func:`validate_texts`, so a bad item always gets the same clear message instead of a stack
trace from deep inside a tokenizer or torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_REPR = 60


def preview(item: Any) -> str:
    """A bad input as error messages quote it: its repr, cut short so a huge input cannot flood a log or a response."""
    text = repr(item)
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."


def validate_texts(texts: Any, *, where: str = "input") -> list[str]:
    """Check that ``texts`` is a non-empty list of non-blank strings and return it as a list.

    Raises ``TypeError`` for a wrong container or item type and ``ValueError`` for an empty list
    or a blank item or one holding a lone surrogate (not encodable text), naming the item's index
    and the fix. Mixed scripts, emoji and control
    characters are valid text and pass through unchanged.
    """
    if isinstance(texts, (str, bytes)) or texts is None or not isinstance(texts, Sequence):
        raise TypeError(
            f"{where} must be a list of strings, got {type(texts).__name__}; "
            "wrap a single text in a list: ['my sentence']"
        )
    if len(texts) == 0:
        raise ValueError(f"{where} is an empty list; pass at least one non-empty string")
    for index, item in enumerate(texts):
        validate_text(item, where=f"{where}[{index}]")
    return list(texts)


def validate_text(text: Any, *, where: str = "text") -> str:
    """Check one text (a query, a single document) the way :func:`validate_texts` checks each item."""
    if not isinstance(text, str):
        raise TypeError(
            f"{where} is {type(text).__name__} ({preview(text)}), not a string; "
            "convert it with str() or drop it before encoding"
        )
    if not text.strip():
        raise ValueError(
            f"{where} is {'empty' if not text else 'only whitespace'} ({preview(text)}); "
            "remove blank texts before encoding: they carry no meaning to embed"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{where} holds {text[error.start]!r} at character {error.start}, an unpaired UTF-16 surrogate that is not valid "
            "Unicode text; decode the source bytes correctly, or clean the text with "
            "text.encode('utf-8', 'replace').decode('utf-8')"
        ) from None
    return text
