"""Request and response bodies of the embeddings API (the OpenAI schema, plus ``prompt_name``).

``input`` is declared as a string or a list of strings for the OpenAPI schema, but accepted as
any JSON value here: :mod:`bellm_st.serving.limits` checks it with the project's own
:func:`bellm_st.validate_texts`, whose messages name the bad item and the fix.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, WithJsonSchema

TextInput = Annotated[
    JsonValue,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            ],
            "description": "One text, or a list of texts, to embed.",
        }
    ),
]


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: the OpenAI embeddings request."""

    model_config = ConfigDict(extra="forbid")

    input: TextInput
    model: str | None = Field(None, description="Any model name; answers always name the served model.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64` is the little-endian float32 bytes of each vector."
    )
    dimensions: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        None, description="Keep the first `dimensions` components, then L2-normalise again."
    )
    user: str | None = Field(None, description="Accepted for compatibility and ignored.")


class NativeEmbeddingRequest(EmbeddingRequest):
    """``POST /embed``: the OpenAI request plus the model's named prompt (``query``/``document``)."""

    prompt_name: str | None = Field(None, description="A prompt of the model, e.g. `query` or `document`.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "bellm-st"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "shutting_down"]
    model: str
    queued_items: int
    max_queue_items: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every non-2xx answer, as the OpenAI API returns it."""

    error: ErrorDetail
