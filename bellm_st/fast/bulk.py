"""Encoding large collections at the accelerator's pace.

``SentenceTransformer.encode`` tokenises a batch, copies it to the device and runs it, one step
after the other: the copy from ordinary memory waits for the previous batch to finish, so on a
GPU the tokenizer and the model take turns and each idles while the other works.
:func:`encode_bulk` gives the same embeddings with the three overlapped: a background thread
tokenises ahead (the Rust tokenizer releases the GIL and spreads a large chunk over every core)
into pinned memory, copies do not wait, and embeddings stay on the device until the end. With
several devices, sentence-transformers' own multi-process pool runs ``encode_bulk`` in each
process (one per device, see :class:`_BulkInference`).

For a BeLLM model, texts are tokenised in large chunks and batched by *exact* token length, so
no batch holds a single pad token: no compute is wasted on padding, and without a mask the
attention kernels take their fastest (flash) path in the causal and the bi-directional layers
alike. Other models get length-sorted, padded batches.
"""

from __future__ import annotations

import contextvars
import copy
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from bellm_st.fast.flat import flat_attention_unsupported, flat_features
from bellm_st.fast.kernels import attention_without_cudnn, compile_model_layers
from bellm_st.inputs import validate_texts
from bellm_st.model import BeLLMSentenceTransformer, bellm_encoder
from bellm_st.module import BATCH_LAYOUT, BeLLMEncoder
from bellm_st.pooling import pool
from bellm_st.prompts import resolve_prompt
from bellm_st.tokenization import TokenizedBatch, group_by_length, one_truncation_warning

_DONE = object()
TOKENIZE_CHUNK = 16_384  # texts per tokenizer call: large enough to keep every core busy and fill buckets
PENDING_BATCHES = 2  # batches' worth of rows that may wait in length buckets before the fullest goes out


class EqualLengthRows:
    """Rows that all have one token length, so none is padded (a :class:`bellm_st.module.BatchLayout`)."""

    def preprocess(self, encoder: BeLLMEncoder, texts: list[str], prompt: str | None, max_length: int) -> dict[str, Any]:
        groups = group_by_length(encoder.tokenize_unpadded(texts, prompt, max_length))
        if len(groups) > 1:
            raise ValueError(
                f"EqualLengthRows needs texts of one token length, these have {len(groups)} lengths; "
                "use PackedRows or FLAT_ROW (bellm_st.fast) for texts of any length"
            )
        _, ids, text_mask = groups[0]
        return self.features(ids, text_mask)

    @staticmethod
    def features(ids: np.ndarray, text_mask: np.ndarray | None) -> dict[str, Any]:
        """Features of ``(rows, length)`` token ids; the attention mask (all ones) is what pooling reads."""
        features: dict[str, Any] = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.ones(ids.shape, dtype=torch.int64),
            BATCH_LAYOUT: EQUAL_LENGTH_ROWS,
        }
        if text_mask is not None:
            features["text_mask"] = torch.from_numpy(text_mask.astype(np.int64))
        return features

    def embed(self, encoder: BeLLMEncoder, features: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        # No mask for the model: it then never inspects the mask on the device, which would stall
        # the host once per batch.
        states = encoder.auto_model(input_ids=features["input_ids"], attention_mask=None, use_cache=False).last_hidden_state
        return states, pool(states, features["attention_mask"], features.get("text_mask"), encoder.pooling)

    def __repr__(self) -> str:
        return "EQUAL_LENGTH_ROWS"


EQUAL_LENGTH_ROWS = EqualLengthRows()


def _longest_first(texts: list[str]) -> np.ndarray:
    """Indices of ``texts`` by character length, longest first (ties keep their order)."""
    return np.argsort(-np.fromiter((len(text) for text in texts), dtype=np.int64, count=len(texts)), kind="stable")


def _length_sorted_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Indices of texts grouped longest first, so each batch holds texts of similar length (little padding)."""
    order = _longest_first(texts)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _padded_batches(model: SentenceTransformer, texts: list[str], prompt: str | None, batch_size: int):
    """Length-sorted, padded batches through the model's own ``preprocess`` (any model)."""
    for indices in _length_sorted_batches(texts, batch_size):
        yield indices, model.preprocess([texts[index] for index in indices], prompt=prompt)


def _unpadded_batches(
    encoder: BeLLMEncoder, texts: list[str], prompt: str | None, batch_size: int, max_batch_tokens: int,
    pending_batches: int | None,
):
    """Batches whose rows all have the same token length, so none needs padding.

    Texts are taken longest first (by characters) in large chunks, so each chunk covers few
    token lengths; rows of one length wait in a bucket until it holds a full batch. Rows must
    not wait too long, though: a chunk spreads over a dozen token lengths, so with large batches
    most buckets would fill only at the very end, and the model would idle while the whole
    collection is tokenised. Once more than ``pending_batches`` batches' worth of rows wait, the
    fullest bucket goes out as it is (``None`` waits for full buckets); the rest go last.
    """
    order = _longest_first(texts)
    buckets: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]] = {}
    filled: dict[int, int] = {}

    def rows_per_batch(length: int) -> int:
        return max(1, min(batch_size, max_batch_tokens // length))

    def flush(length: int):
        parts = buckets.pop(length)
        filled.pop(length)
        indices = np.concatenate([part[0] for part in parts])
        ids = np.concatenate([part[1] for part in parts])
        text_mask = None if parts[0][2] is None else np.concatenate([part[2] for part in parts])
        rows = rows_per_batch(length)
        for start in range(0, len(indices), rows):
            part = slice(start, start + rows)
            yield indices[part], EqualLengthRows.features(ids[part], None if text_mask is None else text_mask[part])

    for chunk_start in range(0, len(order), TOKENIZE_CHUNK):
        chunk = order[chunk_start : chunk_start + TOKENIZE_CHUNK]
        batch = encoder.tokenize_unpadded([texts[index] for index in chunk], prompt=prompt)
        for rows, ids, text_mask in group_by_length(batch):
            length = ids.shape[1]
            buckets.setdefault(length, []).append((chunk[rows], ids, text_mask))
            filled[length] = filled.get(length, 0) + len(rows)
            if filled[length] >= rows_per_batch(length):
                yield from flush(length)
        if pending_batches is not None:
            while filled and sum(filled.values()) > pending_batches * batch_size:
                yield from flush(max(filled, key=filled.__getitem__))
    for length in sorted(buckets, reverse=True):
        yield from flush(length)


def _flat_batches(encoder: BeLLMEncoder, texts: list[str], prompt: str | None, batch_size: int, max_batch_tokens: int):
    """Flat batches (:mod:`bellm_st.fast.flat`) in input order: texts end to end, each batch as full as the limits allow.

    No sorting or length buckets are needed, since texts of any length share a batch without
    padding; a chunk's last texts wait for the next chunk so that only the final batch is partial.
    """
    waiting = _Waiting()
    for chunk_start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = np.arange(chunk_start, min(chunk_start + TOKENIZE_CHUNK, len(texts)))
        waiting.add(chunk, encoder.tokenize_unpadded([texts[index] for index in chunk], prompt=prompt))
        while (taken := waiting.take(batch_size, max_batch_tokens, final=False)) is not None:
            yield taken[0], flat_features(taken[1])
    while (taken := waiting.take(batch_size, max_batch_tokens, final=True)) is not None:
        yield taken[0], flat_features(taken[1])


class _Waiting:
    """Tokenised texts not yet batched, end to end, with their positions in the input."""

    def __init__(self) -> None:
        self.indices = np.zeros(0, dtype=np.int64)
        self.batch: TokenizedBatch | None = None

    def add(self, indices: np.ndarray, batch: TokenizedBatch) -> None:
        self.indices = np.concatenate([self.indices, indices])
        self.batch = batch if self.batch is None else TokenizedBatch.concatenate([self.batch, batch])

    def take(self, batch_size: int, max_batch_tokens: int, final: bool) -> tuple[np.ndarray, TokenizedBatch] | None:
        """The next batch: as many texts as fit both limits (at least one); ``None`` when not yet full, unless final."""
        if self.batch is None or not len(self.batch.lengths):
            return None
        fitting = int(np.searchsorted(np.cumsum(self.batch.lengths), max_batch_tokens, side="right"))
        count = min(max(fitting, 1), batch_size)
        if count == len(self.batch.lengths) and not final:  # the limits were not reached: wait for more texts
            return None
        taken, self.batch = self.batch.split(count)
        indices, self.indices = self.indices[:count], self.indices[count:]
        return indices, taken


class _Tokenizer(threading.Thread):
    """Runs a batch generator ahead of the model into a bounded queue (pinned when a GPU reads them)."""

    def __init__(self, batches: Iterator[tuple[np.ndarray, dict[str, Any]]], pin_memory: bool, prefetch_batches: int):
        super().__init__(daemon=True)
        self.batches = batches
        self.pin_memory = pin_memory
        self.ready: queue.Queue = queue.Queue(maxsize=prefetch_batches)
        self.stopped = threading.Event()
        # The caller's context, so truncations are counted into the caller's one warning.
        self.context = contextvars.copy_context()

    def run(self) -> None:
        self.context.run(self._produce)

    def _produce(self) -> None:
        try:
            for indices, features in self.batches:
                if self.stopped.is_set():
                    return
                if self.pin_memory:
                    features = {key: value.pin_memory() if isinstance(value, torch.Tensor) else value
                                for key, value in features.items()}
                self._put((indices, features))
        except BaseException as error:  # noqa: BLE001 - handed to the consumers, raised in the caller's thread
            self._put(error)
        self._put(_DONE)

    def _put(self, item: Any) -> None:
        while not self.stopped.is_set():
            try:
                self.ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def items(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        while True:
            try:
                item = self.ready.get(timeout=0.1)
            except queue.Empty:
                if self.stopped.is_set():  # the consumer failed
                    return
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def _run_batches(
    model: SentenceTransformer, source: _Tokenizer, normalize: bool, progress: Any = None
) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """Embed every batch the tokenizer thread hands over; returns the batches' indices and embeddings."""
    device = model.device
    indices_done, embeddings_done = [], []
    with torch.inference_mode():
        for indices, features in source.items():
            if progress is not None:
                progress.update(len(indices))
            features = {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                        for key, value in features.items()}
            embeddings = model(features)["sentence_embedding"].float()
            if normalize:
                embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=-1)
            indices_done.append(indices)
            embeddings_done.append(embeddings)
    return indices_done, embeddings_done


def encode_bulk(
    model: SentenceTransformer,
    texts: Sequence[str],
    *,
    batch_size: int = 1024,
    max_batch_tokens: int = 65_536,
    prompt: str | None = None,
    prompt_name: str | None = None,
    normalize_embeddings: bool = False,
    prefetch_batches: int = 4,
    convert_to_numpy: bool = True,
    show_progress_bar: bool = False,
    flat_batches: bool | None = None,
    devices: Sequence[str] | None = None,
    compile_layers: bool = False,
) -> np.ndarray | torch.Tensor:
    """Embed many texts with tokenisation overlapped with the forward pass; same vectors as ``model.encode``.

    Worth it on a GPU with thousands of texts or more; on a CPU the model is the bottleneck and
    ``model.encode`` is as fast. A batch holds at most ``batch_size`` texts and (for BeLLM
    models, whose batches are unpadded) at most ``max_batch_tokens`` tokens. Returns float32
    vectors in the order of ``texts``: a numpy array, or a tensor on the model's device.

    ``devices`` (e.g. ``["cuda:0", "cuda:1"]``) runs sentence-transformers' multi-process pool,
    one process per device, each running ``encode_bulk`` on its chunks (unlike
    ``model.encode(device=[...])``, the model goes back to its device afterwards). Each process
    pays its start-up (seconds to tens of seconds), so this pays off only for large collections.
    ``compile_layers`` compiles the decoder layers in each process first (pooled runs only;
    compile a single model yourself with :func:`bellm_st.fast.compile_model_layers`).

    BeLLM models on an Ampere-or-newer CUDA GPU in half precision get flat batches (texts of any length end to
    end, variable-length flash attention; :mod:`bellm_st.fast.flat`), other BeLLM models batches of
    one exact token length. ``flat_batches`` forces either (``True`` also runs where the flash
    kernel is missing, through a slow exact stand-in).
    """
    texts = validate_texts(texts, where="texts")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens={max_batch_tokens} must be at least 1")
    if prefetch_batches < 1:
        raise ValueError(f"prefetch_batches={prefetch_batches} must be at least 1")
    prompt = resolve_prompt(model.prompts, model.default_prompt_name, prompt, prompt_name)
    options = {"max_batch_tokens": max_batch_tokens, "prefetch_batches": prefetch_batches, "flat_batches": flat_batches}
    if devices is not None:
        vectors = _encode_in_pool(model, texts, checked_devices(devices), prompt, batch_size, normalize_embeddings,
                                  show_progress_bar, {**options, "compile_layers": compile_layers})
        return vectors.numpy() if convert_to_numpy else vectors
    if compile_layers:
        raise ValueError("compile_layers=True applies to the processes of devices=[...]; for one model call "
                         "bellm_st.fast.compile_model_layers(model) once instead")
    model.eval()
    device = model.device
    batches = _batches(model, texts, prompt, batch_size, max_batch_tokens, flat_batches)
    progress = tqdm(total=len(texts), unit="text", desc="Encoding") if show_progress_bar else None
    with one_truncation_warning(model.max_seq_length):
        source = _Tokenizer(batches, pin_memory=device.type == "cuda", prefetch_batches=prefetch_batches)
        source.start()
        try:
            with attention_without_cudnn():
                indices_done, embeddings_done = _run_batches(model, source, normalize_embeddings, progress)
        finally:
            source.stopped.set()
            source.join()
            if progress is not None:
                progress.close()
    order = np.concatenate(indices_done)
    inverse = torch.from_numpy(np.argsort(order, kind="stable")).to(device)
    embeddings = torch.cat(embeddings_done)[inverse]
    return embeddings.cpu().numpy() if convert_to_numpy else embeddings


def checked_devices(devices: Sequence[str]) -> list[str]:
    """``devices`` as torch device names, or a ``ValueError`` showing the expected form (before any process starts)."""
    if isinstance(devices, str) or not len(devices):
        raise ValueError(f"devices must be a non-empty list such as ['cuda:0', 'cuda:1'], got {devices!r}")
    checked = []
    for device in devices:
        try:
            checked.append(str(torch.device(device)))
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device {device!r} is not a torch device name such as 'cuda:1': {error}") from None
    return checked


# Texts per chunk a pool process takes at a time: several tokenizer chunks, so each process's
# tokenizer thread runs ahead of its model for most of a chunk (sentence-transformers' own
# default, at most 5,000, would restart that pipeline often). Not measured on GPUs.
POOL_CHUNK_TEXTS = 4 * TOKENIZE_CHUNK


def _encode_in_pool(model: SentenceTransformer, texts: list[str], devices: list[str], prompt: str | None,
                    batch_size: int, normalize: bool, show_progress_bar: bool, options: dict[str, Any]) -> torch.Tensor:
    """``encode_bulk`` in every process of sentence-transformers' pool: a copy of ``model`` whose inference is ours."""
    # The copy's class is replaced, which would drop the overrides of an unknown subclass; ours only
    # validates texts, which encode_bulk has done already.
    if type(model) not in (SentenceTransformer, BeLLMSentenceTransformer):
        raise ValueError(f"devices=[...] needs a SentenceTransformer, got {type(model).__name__}")
    pooled = copy.copy(model)  # shares the modules; only the copy's inference changes
    pooled.__class__ = _BulkInference
    pooled.bulk_options = options
    chunk_size = max(1, min(POOL_CHUNK_TEXTS, math.ceil(len(texts) / len(devices))))
    home = model.device
    try:
        return pooled.encode(texts, prompt=prompt, batch_size=batch_size, normalize_embeddings=normalize,
                             device=devices, chunk_size=chunk_size, show_progress_bar=show_progress_bar,
                             convert_to_tensor=True)
    finally:
        model.to(home)  # starting the pool moved the shared modules to the CPU


class _BulkInference(SentenceTransformer):
    """A SentenceTransformer whose inference is :func:`encode_bulk`, so that each process of
    sentence-transformers' multi-process pool (which calls ``_inference``) takes the fast path.

    Only :func:`encode_bulk` makes these (a copy of the caller's model with ``bulk_options``);
    outputs other than sentence embeddings fall back to sentence-transformers' own inference.
    """

    bulk_options: dict[str, Any]

    def _inference(self, inputs: list, *, prompt: str | None, batch_size: int, output_value: str | None,
                   normalize_embeddings: bool, truncate_dim: int | None, device: str | None = None,
                   **kwargs: Any) -> torch.Tensor:
        plain = {"show_progress_bar", "save_to_cpu"}
        if output_value != "sentence_embedding" or truncate_dim is not None or set(kwargs) - plain:
            return super()._inference(inputs, prompt=prompt, batch_size=batch_size, output_value=output_value,
                                      normalize_embeddings=normalize_embeddings, truncate_dim=truncate_dim,
                                      device=device, **kwargs)
        options = dict(self.bulk_options)
        if device is not None and self.device != torch.device(device):
            if torch.device(device).type == "cuda":
                torch.cuda.set_device(torch.device(device))
            self.to(device)
        if options.pop("compile_layers") and not getattr(self, "_layers_compiled", False):
            compile_model_layers(self)
            self._layers_compiled = True
        vectors = encode_bulk(self, inputs, prompt=prompt, batch_size=batch_size,
                              normalize_embeddings=normalize_embeddings, convert_to_numpy=False, **options)
        return vectors.cpu()


def _batches(model: SentenceTransformer, texts: list[str], prompt: str | None, batch_size: int,
             max_batch_tokens: int, flat_batches: bool | None):
    """The batches ``encode_bulk`` runs: flat or exact-length ones for BeLLM models, padded ones otherwise."""
    if bellm_encoder(model) is None:
        if flat_batches:
            raise ValueError(f"flat_batches=True needs a BeLLM model; this one starts with {type(model[0]).__name__}")
        return _padded_batches(model, texts, prompt, batch_size)
    if _use_flat_batches(model, flat_batches):
        return _flat_batches(model[0], texts, prompt, batch_size, max_batch_tokens)
    return _unpadded_batches(model[0], texts, prompt, batch_size, max_batch_tokens, PENDING_BATCHES)


def _use_flat_batches(model: SentenceTransformer, flat_batches: bool | None) -> bool:
    """Flat batches where the model can run them fast; ``flat_batches`` overrides (True also where slow)."""
    if flat_batches is not None:
        return flat_batches
    return flat_attention_unsupported(model[0].decoder, model.device) is None
