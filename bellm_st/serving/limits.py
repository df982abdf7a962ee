"""Turn a request's ``input`` into the texts to embed, or a 400 that says what was wrong.

Type and blank-item checks are :func:`bellm_st.validate_texts` (the same messages the Python API
gives); on top of it come the server's own limits: items per request, characters per text, and
text the tokenizer cannot take (unpaired UTF-16 surrogates, which JSON can carry).
"""

from __future__ import annotations

from typing import Any

from bellm_st.inputs import validate_texts
from bellm_st.serving.errors import APIError, json_type_name
from bellm_st.serving.settings import ServerSettings


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_token_array(value: Any) -> bool:
    """OpenAI also takes token ids (``[1, 2]`` or ``[[1, 2], [3]]``); say so instead of a type error."""
    return isinstance(value, list) and bool(value) and all(
        _is_token_id(item) or (isinstance(item, list) and bool(item) and all(_is_token_id(i) for i in item))
        for item in value
    )


def texts_from_input(value: Any, settings: ServerSettings) -> list[str]:
    """The texts of ``input`` after every check and the long-text policy; raises :class:`APIError`."""
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        raise APIError(
            400,
            f"input must be a string or a list of strings, got {json_type_name(value)}; "
            'for example "input": ["my sentence"]',
            param="input",
            code="invalid_input",
        )
    elif _is_token_array(value):
        raise APIError(
            400,
            "input holds token ids; this server embeds text only: send the strings themselves",
            param="input",
            code="token_input_unsupported",
        )
    try:
        texts = validate_texts(value, where="input")
    except (TypeError, ValueError) as error:
        raise APIError(400, str(error), param="input", code="invalid_input") from None
    if len(texts) > settings.max_items_per_request:
        raise APIError(
            400,
            f"input has {len(texts)} items but this server takes at most {settings.max_items_per_request} "
            "per request; split it into several requests",
            param="input",
            code="too_many_inputs",
        )
    return [_checked_text(text, index, settings) for index, text in enumerate(texts)]


def _checked_text(text: str, index: int, settings: ServerSettings) -> str:
    """The text within ``max_input_chars`` (cut or refused); encodability was checked by ``validate_texts``."""
    if len(text) <= settings.max_input_chars:
        return text
    if settings.long_input == "reject":
        raise APIError(
            400,
            f"input[{index}] has {len(text)} characters but this server takes at most "
            f"{settings.max_input_chars}; shorten or split it",
            param=f"input[{index}]",
            code="input_too_long",
        )
    return text[: settings.max_input_chars]
