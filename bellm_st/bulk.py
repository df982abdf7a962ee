"""Encoding large collections at the accelerator's pace.

``SentenceTransformer.encode`` tokenises a batch, copies it to the device and runs it, one step
after the other: the copy from ordinary memory waits for the previous batch to finish, so on a
GPU the tokenizer and the model take turns and each idles while the other works.
:func:`encode_bulk` gives the same embeddings with the three overlapped: a background thread
tokenises ahead (the Rust tokenizer releases the GIL and spreads a large chunk over every core)
into pinned memory, copies do not wait, and embeddings stay on the device until the end. With
several devices, each runs a replica of the model and takes the next ready batch.

For a BeLLM model, texts are tokenised in large chunks and batched by *exact* token length, so
no batch holds a single pad token: no compute is wasted on padding, and without a mask the
attention kernels take their fastest (flash) path in the causal and the bi-directional layers
alike. Other models get length-sorted, padded batches.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from bellm_st.inputs import validate_texts
from bellm_st.kernels import attention_without_cudnn
from bellm_st.module import BeLLMEncoder
from bellm_st.tokenization import TokenizedBatch, group_by_length
from bellm_st.varlen import flat_attention_unsupported, flat_features

_DONE = object()
TOKENIZE_CHUNK = 16_384  # texts per tokenizer call: large enough to keep every core busy and fill buckets
PENDING_BATCHES = 2  # batches' worth of rows that may wait in length buckets before the fullest goes out


def _longest_first(texts: list[str]) -> np.ndarray:
    """Indices of ``texts`` by character length, longest first (ties keep their order)."""
    return np.argsort(-np.fromiter((len(text) for text in texts), dtype=np.int64, count=len(texts)), kind="stable")


def _length_sorted_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Indices of texts grouped longest first, so each batch holds texts of similar length (little padding)."""
    order = _longest_first(texts)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _resolve_prompt(model: SentenceTransformer, prompt: str | None, prompt_name: str | None) -> str | None:
    """The prompt ``encode`` would use: an explicit one, a named one, or the model's default."""
    if prompt is not None:
        return prompt
    name = prompt_name if prompt_name is not None else getattr(model, "default_prompt_name", None)
    if name is None:
        return None
    if name not in model.prompts:
        raise ValueError(f"prompt_name={name!r} is not one of the model's prompts {sorted(model.prompts)}")
    return model.prompts[name]


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
            features = {
                "input_ids": torch.from_numpy(ids[start : start + rows]),
                "attention_mask": torch.ones((len(indices[start : start + rows]), length), dtype=torch.int64),
                "padding_free": True,
            }
            if text_mask is not None:
                features["text_mask"] = torch.from_numpy(text_mask[start : start + rows].astype(np.int64))
            yield indices[start : start + rows], features

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
    """Flat batches (:mod:`bellm_st.varlen`) in input order: texts end to end, each batch as full as the limits allow.

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

    def __init__(self, batches: Iterator[tuple[np.ndarray, dict[str, Any]]], pin_memory: bool,
                 prefetch_batches: int, consumers: int):
        super().__init__(daemon=True)
        self.batches = batches
        self.pin_memory = pin_memory
        self.consumers = consumers
        self.ready: queue.Queue = queue.Queue(maxsize=prefetch_batches)
        self.stopped = threading.Event()

    def run(self) -> None:
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
        for _ in range(self.consumers):
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
                if self.stopped.is_set():  # another consumer failed
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


def replicate(model: SentenceTransformer, devices: Sequence[str | torch.device]) -> list[SentenceTransformer]:
    """One model per device for :func:`encode_bulk`: ``model`` itself on the first device that is
    its own, copies elsewhere.

    Made once and reused: copying weights to a device per call would cost more than it saves.
    """
    replicas, used = [], False
    for device in devices:
        if not used and model.device == torch.device(device):
            replicas.append(model)
            used = True
        else:
            replicas.append(copy.deepcopy(model).to(device))
    return replicas


def encode_bulk(
    model: SentenceTransformer | Sequence[SentenceTransformer],
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
) -> np.ndarray | torch.Tensor:
    """Embed many texts with tokenisation overlapped with the forward pass; same vectors as ``model.encode``.

    Worth it on a GPU with thousands of texts or more; on a CPU the model is the bottleneck and
    ``model.encode`` is as fast. A batch holds at most ``batch_size`` texts and (for BeLLM
    models, whose batches are unpadded) at most ``max_batch_tokens`` tokens. Given several
    copies of one model on different devices (see :func:`replicate`), each takes the next
    tokenised batch, one thread per device. Returns float32 vectors in the order of ``texts``:
    a numpy array, or a tensor on the first model's device.

    BeLLM models on an Ampere-or-newer CUDA GPU in half precision get flat batches (texts of any length end to
    end, variable-length flash attention; :mod:`bellm_st.varlen`), other BeLLM models batches of
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
    replicas = [model] if isinstance(model, SentenceTransformer) else list(model)
    if not replicas:
        raise ValueError("encode_bulk needs a model (or a non-empty list of copies of one)")
    model = replicas[0]
    devices = [replica.device for replica in replicas]
    for replica in replicas:
        replica.eval()
    prompt = _resolve_prompt(model, prompt, prompt_name)
    batches = _batches(replicas, texts, prompt, batch_size, max_batch_tokens, flat_batches)
    source = _Tokenizer(
        batches,
        pin_memory=any(device.type == "cuda" for device in devices),
        prefetch_batches=prefetch_batches,
        consumers=len(devices),
    )
    results: list[tuple[list[np.ndarray], list[torch.Tensor]] | BaseException] = [None] * len(devices)  # type: ignore[list-item]
    progress = tqdm(total=len(texts), unit="text", desc="Encoding") if show_progress_bar else None

    def work(slot: int) -> None:
        try:
            results[slot] = _run_batches(replicas[slot], source, normalize_embeddings, progress)
        except BaseException as error:  # noqa: BLE001 - raised in the caller's thread below
            results[slot] = error
            source.stopped.set()

    source.start()
    try:
        with attention_without_cudnn():
            _run_on_devices(work, len(devices))
    finally:
        source.stopped.set()
        source.join()
        if progress is not None:
            progress.close()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    order = np.concatenate([indices for indices_done, _ in results for indices in indices_done])
    embeddings = torch.cat([batch.to(devices[0]) for _, embeddings_done in results for batch in embeddings_done])
    inverse = torch.from_numpy(np.argsort(order, kind="stable")).to(devices[0])
    embeddings = embeddings[inverse]
    return embeddings.cpu().numpy() if convert_to_numpy else embeddings


def _batches(replicas: list[SentenceTransformer], texts: list[str], prompt: str | None, batch_size: int,
             max_batch_tokens: int, flat_batches: bool | None):
    """The batches ``encode_bulk`` runs: flat or exact-length ones for BeLLM models, padded ones otherwise."""
    model = replicas[0]
    if not isinstance(model[0], BeLLMEncoder):
        if flat_batches:
            raise ValueError(f"flat_batches=True needs a BeLLM model; this one starts with {type(model[0]).__name__}")
        return _padded_batches(model, texts, prompt, batch_size)
    if _use_flat_batches(replicas, flat_batches):
        return _flat_batches(model[0], texts, prompt, batch_size, max_batch_tokens)
    return _unpadded_batches(model[0], texts, prompt, batch_size, max_batch_tokens, PENDING_BATCHES)


def _use_flat_batches(replicas: list[SentenceTransformer], flat_batches: bool | None) -> bool:
    """Flat batches where every replica can run them fast; ``flat_batches`` overrides (True also where slow)."""
    if flat_batches is not None:
        return flat_batches
    return all(flat_attention_unsupported(replica[0].decoder, replica.device) is None for replica in replicas)


def _run_on_devices(work, count: int) -> None:
    if count == 1:
        work(0)
        return
    workers = [threading.Thread(target=work, args=(slot,), daemon=True) for slot in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
