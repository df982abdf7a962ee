"""The served model as the server sees it: encode a batch, count tokens, know its prompts.

Kept apart from the HTTP layer so the batcher can be driven (and tested) with any object that
has the same two methods. The model is a SentenceTransformer whatever runs its backbone (torch on
any device, or ONNX Runtime on a CPU with ``backend="onnx"``), so token counts and vectors agree.
"""

from __future__ import annotations

import copy

import numpy as np
from sentence_transformers import SentenceTransformer
from transformers import PreTrainedTokenizerBase

# Named prompts clients may always ask for: models without them encode the text as it is,
# the same fallback as ``SentenceTransformer.encode_query``/``encode_document``.
STANDARD_PROMPTS = ("query", "document")


def _tokenizer(model: SentenceTransformer) -> PreTrainedTokenizerBase:
    return getattr(model[0], "tokenizer", None) or model.tokenizer


class Embedder:
    """Normalised embeddings and token counts from one SentenceTransformer (a BeLLM one or any other)."""

    def __init__(self, model: SentenceTransformer):
        self.model = model
        # A copy of its own: a fast tokenizer shared between threads fails ("Already borrowed") when
        # one call changes its truncation/padding while another runs, and the model's calls do that.
        self.tokenizer = copy.deepcopy(_tokenizer(model))
        self.dimension = int(model.get_embedding_dimension())
        self.max_seq_length = int(model.max_seq_length or self.tokenizer.model_max_length)
        self.count_tokens(["settles the tokenizer's settings before any thread uses it"])

    @property
    def prompt_names(self) -> tuple[str, ...]:
        return tuple(sorted({*self.model.prompts, *STANDARD_PROMPTS}))

    def encode(self, texts: list[str], prompt_name: str | None = None) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text, in one forward pass."""
        if prompt_name is not None and prompt_name not in self.model.prompts:
            prompt_name = None
        vectors = self.model.encode(
            texts,
            prompt_name=prompt_name,
            batch_size=len(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text under the model's tokenizer (without the template), capped at the model's limit."""
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [min(len(ids), self.max_seq_length) for ids in encoded]
