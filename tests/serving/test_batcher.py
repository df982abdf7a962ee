"""The dynamic batcher on its own, with a fake model that records every batch it gets."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from bellm_st.serving.batcher import DynamicBatcher, QueueFullError, ShuttingDownError


def fake_vector(text: str, prompt_name: str | None) -> list[float]:
    return [float(len(text)), float(sum(map(ord, text)) % 9973), 1.0 if prompt_name else 0.0]


class FakeEncoder:
    def __init__(self, delay: float = 0.0, poison: str | None = None):
        self.delay = delay
        self.poison = poison
        self.batches: list[tuple[list[str], str | None]] = []
        self.threads: set[str] = set()

    def encode(self, texts: list[str], prompt_name: str | None = None) -> np.ndarray:
        self.batches.append((list(texts), prompt_name))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.poison in texts:
            raise RuntimeError(f"cannot encode {self.poison!r}")
        return np.array([fake_vector(text, prompt_name) for text in texts], dtype=np.float32)


def make(encoder, **limits) -> DynamicBatcher:
    settings = {"max_batch_size": 32, "max_batch_tokens": 10_000, "max_queue_items": 1000} | limits
    return DynamicBatcher(encoder, **settings)


def expected(texts, prompt_name=None) -> np.ndarray:
    return np.array([fake_vector(text, prompt_name) for text in texts], dtype=np.float32)


async def embed(batcher, texts, prompt_name=None, tokens=1):
    return await batcher.embed(texts, [tokens] * len(texts), prompt_name)


def test_concurrent_requests_share_a_batch():
    async def run():
        encoder = FakeEncoder(delay=0.05)
        batcher = make(encoder)
        first = asyncio.create_task(embed(batcher, ["first"]))
        await asyncio.sleep(0.01)  # the worker is now inside the first forward pass
        texts = [f"text {index}" for index in range(10)]
        results = await asyncio.gather(*(embed(batcher, [text]) for text in texts))
        await first
        await batcher.close()
        return encoder, texts, results

    encoder, texts, results = asyncio.run(run())
    assert [len(batch) for batch, _ in encoder.batches] == [1, 10]
    for text, result in zip(texts, results):
        np.testing.assert_array_equal(result, expected([text]))
    assert encoder.threads == {"bellm-st-encode_0"}, "the model must run in the batcher's own thread"


def test_a_batch_that_is_not_full_waits_briefly_for_more():
    async def run():
        encoder = FakeEncoder()
        batcher = make(encoder, max_batch_size=4, batch_wait_seconds=0.3)
        first = asyncio.create_task(embed(batcher, ["early"]))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        await asyncio.gather(first, embed(batcher, ["later", "later too", "full now"]))
        waited_for_a_full_batch = time.perf_counter() - started
        lone = time.perf_counter()
        await embed(batcher, ["alone"])
        waited_alone = time.perf_counter() - lone
        await batcher.close()
        return encoder, waited_for_a_full_batch, waited_alone

    encoder, waited_for_a_full_batch, waited_alone = asyncio.run(run())
    assert [batch for batch, _ in encoder.batches] == [["early", "later", "later too", "full now"], ["alone"]]
    assert waited_for_a_full_batch < 0.2, "a full batch must go at once"
    assert 0.25 < waited_alone < 2, "a lone text waits out the pause, then goes"


def test_a_large_request_spans_batches_in_order():
    async def run():
        encoder = FakeEncoder()
        batcher = make(encoder, max_batch_size=32)
        texts = [f"item {index}" for index in range(70)]
        result = await embed(batcher, texts)
        await batcher.close()
        return encoder, texts, result

    encoder, texts, result = asyncio.run(run())
    assert [len(batch) for batch, _ in encoder.batches] == [32, 32, 6]
    np.testing.assert_array_equal(result, expected(texts))


def test_padded_token_budget_limits_a_batch():
    async def run():
        encoder = FakeEncoder()
        batcher = make(encoder, max_batch_tokens=40)
        short = batcher.embed([f"s{index}" for index in range(8)], [10] * 8)
        long = batcher.embed(["a very long one", "short"], [100, 1])
        await asyncio.gather(short, long)
        await batcher.close()
        return encoder

    encoder = asyncio.run(run())
    # 4 rows x 10 tokens fill the budget; a text over the budget still goes, alone.
    assert [len(batch) for batch, _ in encoder.batches] == [4, 4, 1, 1]


def test_one_prompt_per_batch():
    async def run():
        encoder = FakeEncoder(delay=0.02)
        batcher = make(encoder)
        blocker = asyncio.create_task(embed(batcher, ["blocker"]))
        await asyncio.sleep(0.005)
        results = await asyncio.gather(
            embed(batcher, ["plain 1"]), embed(batcher, ["a query"], "query"), embed(batcher, ["plain 2"])
        )
        await blocker
        await batcher.close()
        return encoder, results

    encoder, results = asyncio.run(run())
    assert encoder.batches[1:] == [(["plain 1", "plain 2"], None), (["a query"], "query")]
    np.testing.assert_array_equal(results[1], expected(["a query"], "query"))


def test_full_queue_refuses_then_recovers():
    async def run():
        batcher = make(FakeEncoder(delay=0.05), max_queue_items=5)
        running = asyncio.create_task(embed(batcher, ["in the model"]))
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(embed(batcher, ["a", "b", "c", "d"]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="holds 4 of at most 5"):
            await embed(batcher, ["e", "f"])
        fits = await embed(batcher, ["e"])
        await asyncio.gather(running, waiting)
        after = await embed(batcher, ["g", "h", "i", "j", "k"])
        await batcher.close()
        return fits, after, batcher.queued_items

    fits, after, queued = asyncio.run(run())
    np.testing.assert_array_equal(fits, expected(["e"]))
    np.testing.assert_array_equal(after, expected(["g", "h", "i", "j", "k"]))
    assert queued == 0


def test_a_failing_request_does_not_fail_its_batch_neighbours():
    async def run():
        encoder = FakeEncoder(delay=0.02, poison="poison")
        batcher = make(encoder)
        blocker = asyncio.create_task(embed(batcher, ["blocker"]))
        await asyncio.sleep(0.005)
        results = await asyncio.gather(
            embed(batcher, ["good 1"]), embed(batcher, ["poison", "x"]), embed(batcher, ["good 2"]),
            return_exceptions=True,
        )
        await blocker
        await batcher.close()
        return results, batcher.queued_items

    (good_1, failed, good_2), queued = asyncio.run(run())
    np.testing.assert_array_equal(good_1, expected(["good 1"]))
    np.testing.assert_array_equal(good_2, expected(["good 2"]))
    assert isinstance(failed, RuntimeError) and "poison" in str(failed)
    assert queued == 0


def test_a_cancelled_request_is_never_encoded():
    async def run():
        encoder = FakeEncoder(delay=0.05)
        batcher = make(encoder)
        blocker = asyncio.create_task(embed(batcher, ["blocker"]))
        await asyncio.sleep(0.01)
        abandoned = asyncio.create_task(embed(batcher, ["abandoned"]))
        await asyncio.sleep(0)
        abandoned.cancel()
        kept = await embed(batcher, ["kept"])
        await blocker
        await batcher.close()
        return encoder, kept, batcher.queued_items

    encoder, kept, queued = asyncio.run(run())
    assert ["abandoned"] not in [batch for batch, _ in encoder.batches]
    np.testing.assert_array_equal(kept, expected(["kept"]))
    assert queued == 0


def test_close_finishes_queued_work_and_refuses_new():
    async def run():
        batcher = make(FakeEncoder(delay=0.02), max_batch_size=2)
        pending = [asyncio.create_task(embed(batcher, [f"t{index}"] * 3)) for index in range(4)]
        await asyncio.sleep(0)
        await batcher.close()
        assert all(task.done() for task in pending)
        with pytest.raises(ShuttingDownError):
            await embed(batcher, ["late"])
        return [task.result() for task in pending]

    results = asyncio.run(run())
    for index, result in enumerate(results):
        np.testing.assert_array_equal(result, expected([f"t{index}"] * 3))
