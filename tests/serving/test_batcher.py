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
    # 4 rows x 10 tokens fill the budget; a text over the budget still goes, alone; the request
    # skipped for lack of room goes first next time, so the two requests alternate.
    assert [batch for batch, _ in encoder.batches] == [
        ["s0", "s1", "s2", "s3"], ["a very long one"], ["s4", "s5", "s6", "short"], ["s7"]
    ]


def test_a_small_request_is_not_starved_by_a_large_one():
    async def run():
        encoder = FakeEncoder(delay=0.002)
        batcher = make(encoder, max_batch_size=32, max_queue_items=4096)
        large = asyncio.create_task(embed(batcher, [f"large {index}" for index in range(2048)]))
        for _ in range(2000):  # bounded: until the large request is in the model
            if encoder.batches:
                break
            await asyncio.sleep(0.001)
        batches_before = len(encoder.batches)
        small = await embed(batcher, ["small"])
        large_finished_first = large.done()
        await large
        await batcher.close()
        return encoder, small, batches_before, large_finished_first

    encoder, small, batches_before, large_finished_first = asyncio.run(run())
    assert not large_finished_first, "the 1-text request waited for all 2,048 texts of the other"
    small_batch = next(index for index, (batch, _) in enumerate(encoder.batches) if "small" in batch)
    # The batch in the model when it arrived (perhaps not yet recorded), then the next one.
    assert small_batch <= batches_before + 1, (small_batch, batches_before)
    assert len(encoder.batches[small_batch][0]) == 32, "the large request fills the rest of that batch"
    assert sum(len(batch) for batch, _ in encoder.batches) == 2049
    np.testing.assert_array_equal(small, expected(["small"]))


def test_batches_are_shared_round_robin():
    async def run():
        encoder = FakeEncoder(delay=0.02)
        batcher = make(encoder, max_batch_size=4)
        blocker = asyncio.create_task(embed(batcher, ["blocker"]))
        await asyncio.sleep(0.005)
        results = await asyncio.gather(
            embed(batcher, ["a1", "a2", "a3", "a4", "a5"]), embed(batcher, ["b1", "b2"]), embed(batcher, ["c1"])
        )
        await blocker
        await batcher.close()
        return encoder, results

    encoder, (a, b, c) = asyncio.run(run())
    assert [batch for batch, _ in encoder.batches[1:]] == [["a1", "a2", "b1", "c1"], ["a3", "a4", "a5", "b2"]]
    np.testing.assert_array_equal(a, expected(["a1", "a2", "a3", "a4", "a5"]))
    np.testing.assert_array_equal(b, expected(["b1", "b2"]))
    np.testing.assert_array_equal(c, expected(["c1"]))


def test_a_prompt_of_its_own_waits_at_most_one_batch():
    async def run():
        encoder = FakeEncoder(delay=0.002)
        batcher = make(encoder, max_batch_size=4)
        plain = asyncio.create_task(embed(batcher, [f"plain {index}" for index in range(40)]))
        await asyncio.sleep(0)
        query = await embed(batcher, ["a query"], "query")
        query_finished_first = not plain.done()
        await plain
        await batcher.close()
        return encoder, query, query_finished_first

    encoder, query, query_finished_first = asyncio.run(run())
    assert query_finished_first
    assert [prompt for _, prompt in encoder.batches[:3]].count("query") == 1
    np.testing.assert_array_equal(query, expected(["a query"], "query"))


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


def test_a_request_cancelled_midway_costs_no_more_forward_passes():
    async def run():
        encoder = FakeEncoder(delay=0.02)
        batcher = make(encoder, max_batch_size=4)
        abandoned = asyncio.create_task(embed(batcher, [f"abandoned {index}" for index in range(40)]))
        for _ in range(1000):  # bounded: until its first batch is in the model
            if encoder.batches:
                break
            await asyncio.sleep(0.001)
        abandoned.cancel()
        await asyncio.sleep(0)
        queued_after_cancel = batcher.queued_items
        kept = await embed(batcher, ["kept"])
        await batcher.close()
        return encoder, kept, queued_after_cancel

    encoder, kept, queued_after_cancel = asyncio.run(run())
    assert queued_after_cancel == 0, "a cancelled request's texts leave the queue at once"
    assert [len(batch) for batch, _ in encoder.batches] == [4, 1], "only the batch already in the model ran"
    np.testing.assert_array_equal(kept, expected(["kept"]))


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
