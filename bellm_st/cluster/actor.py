"""A model per Ray actor: embeds one column of each batch and keeps the others (ids and all)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from bellm_st.inputs import validate_text

# Rows Ray hands an actor per call: on a GPU several encode_bulk batches, so its tokenizer thread
# runs ahead within a call (not measured on GPUs yet); on a CPU a few of encode's batches.
GPU_ROWS_PER_CALL, CPU_ROWS_PER_CALL = 16_384, 256


class EmbedBatches:
    """Callable class for ``Dataset.map_batches(..., batch_format="pyarrow")``: loads the model
    once per actor and returns each batch with a float32 vector column appended.

    ``model`` is what :func:`bellm_st.load` takes (a shipped name, a saved folder,
    ``None`` for the default; ``trust_remote_code`` as there). On a GPU the texts go through :func:`bellm_st.fast.encode_bulk`
    in ``dtype`` (``auto``: bf16 where the GPU has it), on a CPU through ``model.encode``; the
    vectors are the ones ``model.encode`` gives. Bad rows fail the batch with an error naming
    the column, the row in the batch and, when the rows carry Ray's ``path`` column, the file.
    """

    def __init__(self, model: str | None = None, *, text_column: str = "text", output_column: str = "embedding",
                 device: str | None = None, dtype: str = "auto", prompt_name: str | None = None,
                 normalize_embeddings: bool = False, trust_remote_code: bool = False) -> None:
        from bellm_st.api import inference_dtype, load
        from bellm_st.prompts import resolve_prompt

        self.text_column = text_column
        self.output_column = output_column
        self.prompt_name = prompt_name
        self.normalize_embeddings = normalize_embeddings
        self.model = load(model, device=device, trust_remote_code=trust_remote_code)
        self.model.to(inference_dtype(dtype, self.model.device))
        resolve_prompt(self.model.prompts, prompt_name=prompt_name)  # an unknown name fails before any batch

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch_texts(batch, self.text_column, self.output_column)
        vectors = self.embed(texts)
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        return batch.append_column(self.output_column, pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 vectors of ``texts``: ``encode_bulk`` on a GPU, ``model.encode`` on a CPU."""
        if self.model.device.type == "cuda":
            from bellm_st.api import GPU_BATCH_TEXTS, GPU_BATCH_TOKENS
            from bellm_st.fast import encode_bulk

            return encode_bulk(self.model, texts, batch_size=GPU_BATCH_TEXTS, max_batch_tokens=GPU_BATCH_TOKENS,
                               prompt_name=self.prompt_name, normalize_embeddings=self.normalize_embeddings)
        return self.model.encode(texts, prompt_name=self.prompt_name, normalize_embeddings=self.normalize_embeddings,
                                 convert_to_numpy=True).astype(np.float32, copy=False)


def batch_texts(batch: pa.Table, text_column: str, output_column: str) -> list[str]:
    """The batch's texts, or an error naming the column (and the row and file) that is wrong."""
    source = ""
    if "path" in batch.column_names and batch.num_rows:
        source = f" (from {batch.column('path')[0].as_py()})"
    if text_column not in batch.column_names:
        raise ValueError(f"no column {text_column!r}{source}; the rows have {', '.join(batch.column_names)}: "
                         "pass the right text column")
    if output_column in batch.column_names:
        raise ValueError(f"the rows already have a column {output_column!r}{source}; pick another output column")
    column = batch.column(text_column)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise TypeError(f"column {text_column!r}{source} holds {column.type}, not text; convert it to strings first")
    texts = column.to_pylist()
    for row, text in enumerate(texts):
        validate_text(text, where=f"column {text_column!r}, row {row} of this batch{source},")
    return texts


def embed_dataset(dataset: Any, model: str | None = None, *, workers: int, gpus_per_worker: float = 0,
                  cpus_per_worker: float = 1, rows_per_call: int | None = None, embedder: type = EmbedBatches,
                  **options: Any) -> Any:
    """``dataset`` with an embedding column, computed by ``workers`` actors (each its own model).

    ``gpus_per_worker=1`` puts each actor on a GPU of its own (Ray picks it). ``options`` go to
    ``embedder`` (see :class:`EmbedBatches`); a subclass may replace it. A dead actor (a lost
    node, an out-of-memory kill) is restarted by Ray Data and its batch run again on the new one,
    so no row is lost or doubled; an exception raised by the model fails the run instead.
    """
    import ray

    if rows_per_call is None:
        rows_per_call = GPU_ROWS_PER_CALL if gpus_per_worker else CPU_ROWS_PER_CALL
    options.setdefault("device", "cuda" if gpus_per_worker else "cpu")
    return dataset.map_batches(
        embedder, fn_constructor_kwargs={"model": model, **options}, batch_format="pyarrow", batch_size=rows_per_call,
        compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpus_per_worker, num_cpus=cpus_per_worker,
    )
