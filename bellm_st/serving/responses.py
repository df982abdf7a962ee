"""From normalised vectors to the OpenAI response: ``dimensions`` and ``encoding_format``."""

from __future__ import annotations

import base64

import numpy as np

from bellm_st.serving.schemas import Embedding, EmbeddingResponse, Usage


def shorten(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Keep the first ``dimensions`` components and L2-normalise again (Matryoshka-style truncation)."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    kept = vectors[:, :dimensions]
    norms = np.linalg.norm(kept, axis=1, keepdims=True)
    return (kept / np.where(norms == 0, 1, norms)).astype(np.float32)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A list of floats, or base64 of the little-endian float32 bytes (what the OpenAI clients decode)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def embedding_response(
    vectors: np.ndarray, token_counts: list[int], model_id: str, encoding_format: str
) -> EmbeddingResponse:
    """The response object, built without re-validating the numbers we just made."""
    tokens = sum(token_counts)
    return EmbeddingResponse.model_construct(
        data=[
            Embedding.model_construct(embedding=encode_vector(vector, encoding_format), index=index)
            for index, vector in enumerate(vectors)
        ],
        model=model_id,
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )
