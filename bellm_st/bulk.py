"""Encoding large collections at the accelerator's pace.

``SentenceTransformer.encode`` tokenises a batch, copies it to the device and runs it, one step
after the other: the copy from ordinary memory waits for the previous batch to finish, so on a
GPU the tokenizer and the model take turns and each idles while the other works.
:func:`encode_bulk` gives the same embeddings with the three overlapped: a background thread
tokenises ahead (the Rust tokenizer releases the GIL) into pinned memory, copies do not wait,
and embeddings stay on the device until the end. With several devices, each runs a replica of
the model and takes the next ready batch.
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

from bellm_st.inputs import validate_texts

_DONE = object()


def _length_sorted_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Indices of texts grouped longest first, so each batch holds texts of similar length (little padding)."""
    order = np.argsort(-np.fromiter((len(text) for text in texts), dtype=np.int64, count=len(texts)), kind="stable")
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


class _Tokenizer(threading.Thread):
    """Tokenises batches ahead of the model into a bounded queue (pinned when a GPU reads them)."""

    def __init__(self, model, texts, batches, prompt, pin_memory: bool, prefetch_batches: int, consumers: int):
        super().__init__(daemon=True)
        self.model, self.texts, self.batches, self.prompt = model, texts, batches, prompt
        self.pin_memory = pin_memory
        self.consumers = consumers
        self.ready: queue.Queue = queue.Queue(maxsize=prefetch_batches)
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            for indices in self.batches:
                if self.stopped.is_set():
                    return
                features = self.model.preprocess([self.texts[index] for index in indices], prompt=self.prompt)
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


def _run_batches(model: SentenceTransformer, source: _Tokenizer, normalize: bool) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """Embed every batch the tokenizer thread hands over; returns the batches' indices and embeddings."""
    device = model.device
    indices_done, embeddings_done = [], []
    with torch.inference_mode():
        for indices, features in source.items():
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
    batch_size: int = 512,
    prompt: str | None = None,
    prompt_name: str | None = None,
    normalize_embeddings: bool = False,
    prefetch_batches: int = 4,
    convert_to_numpy: bool = True,
) -> np.ndarray | torch.Tensor:
    """Embed many texts with tokenisation overlapped with the forward pass; same vectors as ``model.encode``.

    Worth it on a GPU with thousands of texts or more; on a CPU the model is the bottleneck and
    ``model.encode`` is as fast. Given several copies of one model on different devices (see
    :func:`replicate`), each takes the next tokenised batch, one thread per device. Returns
    float32 vectors in the order of ``texts``: a numpy array, or a tensor on the first model's device.
    """
    texts = validate_texts(texts, where="texts")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if prefetch_batches < 1:
        raise ValueError(f"prefetch_batches={prefetch_batches} must be at least 1")
    replicas = [model] if isinstance(model, SentenceTransformer) else list(model)
    if not replicas:
        raise ValueError("encode_bulk needs a model (or a non-empty list of copies of one)")
    model = replicas[0]
    devices = [replica.device for replica in replicas]
    for replica in replicas:
        replica.eval()
    source = _Tokenizer(
        model,
        texts,
        _length_sorted_batches(texts, batch_size),
        _resolve_prompt(model, prompt, prompt_name),
        pin_memory=any(device.type == "cuda" for device in devices),
        prefetch_batches=prefetch_batches,
        consumers=len(devices),
    )
    results: list[tuple[list[np.ndarray], list[torch.Tensor]] | BaseException] = [None] * len(devices)  # type: ignore[list-item]

    def work(slot: int) -> None:
        try:
            results[slot] = _run_batches(replicas[slot], source, normalize_embeddings)
        except BaseException as error:  # noqa: BLE001 - raised in the caller's thread below
            results[slot] = error
            source.stopped.set()

    source.start()
    try:
        if len(devices) == 1:
            work(0)
        else:
            workers = [threading.Thread(target=work, args=(slot,), daemon=True) for slot in range(len(devices))]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
    finally:
        source.stopped.set()
        source.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    order = np.concatenate([indices for indices_done, _ in results for indices in indices_done])
    embeddings = torch.cat([batch.to(devices[0]) for _, embeddings_done in results for batch in embeddings_done])
    inverse = torch.from_numpy(np.argsort(order, kind="stable")).to(devices[0])
    embeddings = embeddings[inverse]
    return embeddings.cpu().numpy() if convert_to_numpy else embeddings
