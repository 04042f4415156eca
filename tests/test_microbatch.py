"""The worker's micro-batcher: requests that queue while the model runs share its next call."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future

import pytest

from service.microbatch import BatcherClosed, MicroBatcher


class GatedModel:
    """Doubles its inputs; the first call waits for ``release`` so that the test can queue requests."""

    def __init__(self, fail_on: int | None = None):
        self.calls: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if self.fail_on in items:
            raise ValueError(f"cannot classify {self.fail_on}")
        return [2 * i for i in items]


def queue_behind_busy_model(batcher: MicroBatcher, model: GatedModel, first: int, items: list[int]) -> tuple[Future, list[Future]]:
    """Submit ``first`` (which holds the model), then ``items``, and wait until they all wait in the queue."""
    busy = batcher.submit(first)
    assert model.entered.wait(10)
    futures = [batcher.submit(i) for i in items]
    deadline = time.monotonic() + 10
    while batcher._queue.qsize() < len(items):
        assert time.monotonic() < deadline, "requests never reached the queue"
        time.sleep(0.001)
    return busy, futures


def test_requests_queued_during_a_call_share_the_next_one():
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=32)
    first, waiting = queue_behind_busy_model(batcher, model, 1, list(range(10, 15)))
    model.release.set()
    assert first.result(10) == 2 and [f.result(10) for f in waiting] == [20, 22, 24, 26, 28]
    assert model.calls == [[1], [10, 11, 12, 13, 14]]
    assert (batcher.stats.batches, batcher.stats.items, batcher.stats.largest) == (2, 6, 5)
    batcher.close()


def test_batches_never_exceed_the_limit():
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=3)
    _, futures = queue_behind_busy_model(batcher, model, 0, list(range(1, 8)))
    model.release.set()
    assert [f.result(10) for f in futures] == [2 * i for i in range(1, 8)]
    assert [len(c) for c in model.calls] == [1, 3, 3, 1]
    batcher.close()


def test_an_error_fails_its_batch_only_and_the_thread_keeps_serving():
    model = GatedModel(fail_on=11)
    batcher = MicroBatcher(model, max_batch_size=32)
    _, doomed = queue_behind_busy_model(batcher, model, 1, [10, 11])
    model.release.set()
    for future in doomed:
        with pytest.raises(ValueError, match="cannot classify 11"):
            future.result(10)
    assert batcher.submit(5).result(10) == 10
    batcher.close()


def test_an_exception_returned_for_one_item_fails_that_request_alone():
    def run_batch(items: list[int]) -> list[int | Exception]:
        return [ValueError(f"item {i} does not decode") if i < 0 else 2 * i for i in items]

    model = GatedModel()
    batcher = MicroBatcher(lambda items: model(items) and run_batch(items), max_batch_size=32)
    _, (good, bad, other) = queue_behind_busy_model(batcher, model, 1, [10, -1, 12])
    model.release.set()
    with pytest.raises(ValueError, match="item -1 does not decode"):
        bad.result(10)
    assert (good.result(10), other.result(10)) == (20, 24)
    assert model.calls[1] == [10, -1, 12]  # one model call, shared
    batcher.close()


def test_a_cancelled_request_costs_no_model_time():
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=32)
    _, (gone, kept) = queue_behind_busy_model(batcher, model, 1, [7, 8])
    assert gone.cancel()
    model.release.set()
    assert kept.result(10) == 16 and model.calls == [[1], [8]]
    batcher.close()


def test_a_wrong_number_of_results_is_an_error_not_a_mix_up():
    batcher = MicroBatcher(lambda items: items[:-1], max_batch_size=4)
    with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
        batcher.submit(1).result(10)
    batcher.close()


def test_awaiting_from_asyncio_and_closing():
    batcher = MicroBatcher(lambda items: [i * i for i in items], max_batch_size=8)

    async def many():
        return await asyncio.gather(*(batcher(i) for i in range(20)))

    assert asyncio.run(many()) == [i * i for i in range(20)]
    assert batcher.stats.items == 20
    batcher.close()
    with pytest.raises(BatcherClosed, match="shutting down"):
        batcher.submit(1)
    with pytest.raises(ValueError, match=">= 1"):
        MicroBatcher(lambda items: items, max_batch_size=0)


def test_several_model_threads_run_batches_at_the_same_time():
    both_running = threading.Barrier(2, timeout=10)  # passes only if two batches are in run_batch at once

    def run_batch(items):
        both_running.wait()
        return items

    batcher = MicroBatcher(run_batch, max_batch_size=1, threads=2)
    first, second = batcher.submit("a"), batcher.submit("b")
    assert (first.result(15), second.result(15)) == ("a", "b")
    assert batcher.stats.batches == 2
    batcher.close()
    assert not any(t.is_alive() for t in batcher.threads)


def test_thread_count_must_be_positive():
    with pytest.raises(ValueError, match="threads must be >= 1"):
        MicroBatcher(lambda items: items, max_batch_size=4, threads=0)


def test_a_group_is_one_model_call_and_is_never_split():
    """The hands of one frame: a group lands in one call, even when single requests were queued first
    and the group would overflow their batch (it then starts the next one)."""
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=4)
    busy, singles = queue_behind_busy_model(batcher, model, 0, [1, 2, 3])
    group = batcher.submit_group([10, 11])
    model.release.set()
    assert busy.result(10) == 0 and [f.result(10) for f in singles] == [2, 4, 6] and [f.result(10) for f in group] == [20, 22]
    assert model.calls == [[0], [1, 2, 3], [10, 11]]
    assert asyncio.run(batcher.many([5, 6, 7])) == [10, 12, 14] and model.calls[-1] == [5, 6, 7]
    assert asyncio.run(batcher.many([])) == []
    batcher.close()


def test_a_group_larger_than_a_batch_goes_in_chunks_of_the_limit():
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=2)
    busy, _ = queue_behind_busy_model(batcher, model, 0, [])
    group = batcher.submit_group([1, 2, 3])
    model.release.set()
    assert [f.result(10) for f in group] == [2, 4, 6] and busy.result(10) == 0
    assert model.calls == [[0], [1, 2], [3]]
    batcher.close()
