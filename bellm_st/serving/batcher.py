"""Dynamic batching: texts from concurrent requests share forward passes of the model.

Requests put their texts on one bounded queue and await a future. A single worker task fills
each batch (at most ``max_batch_size`` rows and ``max_batch_tokens`` padded tokens, one prompt
per batch), runs the model in a dedicated thread so the event loop keeps serving, and hands each
request its rows. A large request simply spans several batches.

Batches are filled round-robin over the waiting requests: one text from each in turn until the
batch is full. A request with one text therefore goes into the next batch even while a request
with thousands of texts is being encoded; the large one takes whatever room is left. Requests
that got rows move to the back of the line, so the request at the front (whose prompt the next
batch uses) is the one that has waited longest: a request with another prompt waits at most one
batch.

When the worker finds less than a full batch it waits up to ``batch_wait_seconds`` for more:
without that pause, clients that all got their answers from one batch come back a few
milliseconds apart, the first of them is sent alone, and batches alternate between one text and
all the others, which costs a whole forward pass per round.

Failure stays with its cause: when a mixed batch fails, each request in it is retried alone, so
one bad request cannot fail its neighbours. A request that is cancelled (its caller gave up)
leaves the queue at once; none of its texts not yet in a batch reaches the model.

The batcher knows requests and texts only; whoever calls :meth:`DynamicBatcher.embed` decides
when a request is abandoned, by cancelling that call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)


class BatchEncoder(Protocol):
    def encode(self, texts: list[str], prompt_name: str | None = None) -> np.ndarray: ...


class QueueFullError(Exception):
    """The queue cannot take a request's texts now; the client should retry later."""


class ShuttingDownError(Exception):
    """The server is draining for shutdown and takes no new work."""


@dataclass(eq=False)
class _Job:
    texts: list[str]
    token_counts: list[int]
    prompt_name: str | None
    future: asyncio.Future
    next_index: int = 0  # first text not yet taken into a batch
    results: list[np.ndarray] = field(default_factory=list)
    delivered: int = 0

    @property
    def abandoned(self) -> bool:
        return self.future.done()

    @property
    def waiting(self) -> int:
        """Texts not yet taken into a batch."""
        return len(self.texts) - self.next_index


@dataclass(frozen=True)
class _Slice:
    job: _Job
    start: int
    stop: int


class DynamicBatcher:
    """Group texts of concurrent requests into model batches; see the module docstring."""

    def __init__(
        self,
        encoder: BatchEncoder,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_queue_items: int,
        batch_wait_seconds: float = 0.0,
    ):
        self.encoder = encoder
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_items = max_queue_items
        self.batch_wait_seconds = batch_wait_seconds
        self.queued_items = 0
        self.closing = False
        self._jobs: deque[_Job] = deque()
        self._work_arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bellm-st-encode")

    async def embed(self, texts: list[str], token_counts: list[int], prompt_name: str | None = None) -> np.ndarray:
        """The vectors of ``texts`` (one row each, in order) once the worker has encoded them."""
        if self.closing:
            raise ShuttingDownError("the server is shutting down and takes no new requests")
        if self.queued_items + len(texts) > self.max_queue_items:
            raise QueueFullError(
                f"the queue holds {self.queued_items} of at most {self.max_queue_items} texts and cannot take "
                f"{len(texts)} more; retry shortly"
            )
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="bellm-st-batcher")
        job = _Job(list(texts), list(token_counts), prompt_name, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self.queued_items += len(texts)
        self._work_arrived.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._withdraw(job)  # its texts leave the queue now, not when the worker next looks
            raise

    async def close(self) -> None:
        """Stop taking requests, finish every queued one, then stop the worker thread."""
        self.closing = True
        self._work_arrived.set()
        if self._worker is not None:
            await self._worker
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    # -- the worker ----------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while True:
                await self._gather_a_batch()
                batch = self._take_batch()
                if batch is None:
                    if self.closing:
                        return
                    self._work_arrived.clear()
                    await self._work_arrived.wait()
                    continue
                await self._encode_and_deliver(batch)
        except BaseException as error:
            self._fail_all(error if isinstance(error, Exception) else ShuttingDownError("the batcher stopped"))
            raise

    async def _gather_a_batch(self) -> None:
        """Give texts already on their way a moment to join a batch that is not full yet."""
        if not self._jobs or self.closing or self.batch_wait_seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_seconds
        while self.queued_items < self.max_batch_size and not self.closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._work_arrived.clear()
            try:
                await asyncio.wait_for(self._work_arrived.wait(), remaining)
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                return

    def _take_batch(self) -> list[_Slice] | None:
        """The next batch: round-robin over the waiting requests with the front one's prompt,
        within the row and padded-token budgets; see the module docstring."""
        self._jobs = deque(job for job in self._jobs if job.waiting and not job.abandoned)
        if not self._jobs:
            return None
        prompt_name = self._jobs[0].prompt_name
        rows_of = {job: 0 for job in self._jobs if job.prompt_name == prompt_name}
        open_jobs = list(rows_of)
        rows = longest = 0
        while open_jobs and rows < self.max_batch_size:
            for job in list(open_jobs):
                index = job.next_index + rows_of[job]
                tokens = max(longest, job.token_counts[index]) if index < len(job.texts) else 0
                # A text over the token budget still goes, alone: it can never share a batch.
                if index == len(job.texts) or (rows and (rows + 1) * tokens > self.max_batch_tokens):
                    open_jobs.remove(job)
                    continue
                rows_of[job] += 1
                rows, longest = rows + 1, tokens
                if rows == self.max_batch_size:
                    break
        batch = [_Slice(job, job.next_index, job.next_index + count) for job, count in rows_of.items() if count]
        for part in batch:
            part.job.next_index = part.stop
            self.queued_items -= part.stop - part.start
        # Those served go to the back of the line, in their order; those skipped keep their place.
        served = {id(part.job) for part in batch}
        self._jobs = deque(
            [job for job in self._jobs if id(job) not in served]
            + [job for job in self._jobs if id(job) in served and job.waiting]
        )
        return batch

    def _withdraw(self, job: _Job) -> None:
        """Take a request's waiting texts off the queue; its future is done, so nothing is delivered."""
        self.queued_items -= job.waiting
        job.next_index = len(job.texts)

    async def _encode_and_deliver(self, batch: list[_Slice]) -> None:
        prompt_name = batch[0].job.prompt_name
        texts = [text for part in batch for text in part.job.texts[part.start : part.stop]]
        try:
            vectors = await self._encode(texts, prompt_name)
        except Exception as error:
            if len({id(part.job) for part in batch}) == 1:
                self._fail(batch[0].job, error)
                return
            logger.warning("a batch of %d texts failed (%s); retrying each request alone", len(texts), error)
            for part in batch:
                if not part.job.abandoned:
                    await self._encode_and_deliver([part])
            return
        offset = 0
        for part in batch:
            count = part.stop - part.start
            self._deliver(part.job, vectors[offset : offset + count])
            offset += count

    async def _encode(self, texts: list[str], prompt_name: str | None) -> np.ndarray:
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._executor, self.encoder.encode, texts, prompt_name)
        if len(vectors) != len(texts):
            raise RuntimeError(f"the encoder returned {len(vectors)} vectors for {len(texts)} texts")
        return vectors

    def _deliver(self, job: _Job, vectors: np.ndarray) -> None:
        job.results.append(vectors)
        job.delivered += len(vectors)
        if job.delivered == len(job.texts) and not job.future.done():
            job.future.set_result(np.concatenate(job.results))

    def _fail(self, job: _Job, error: Exception) -> None:
        self._withdraw(job)
        if not job.future.done():
            job.future.set_exception(error)

    def _fail_all(self, error: Exception) -> None:
        for job in self._jobs:
            self._fail(job, error)
        self._jobs.clear()
