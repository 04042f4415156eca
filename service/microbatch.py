"""Greedy micro-batching inside the worker, so that concurrent /predict requests share model calls.

A model thread takes every request that queued while its previous call ran, up to ``max_batch_size``,
and runs them as one call. A lone request therefore never waits for a timer, and a busy server
batches by itself with nothing to tune. With ``threads=2``, a second thread forms and starts the next
batch while the first one's call finishes, for engines that overlap calls (OpenVINO's streams).
Unlike BentoML's adaptive batching (``benchmarks.serve --batching microbatch adaptive`` compares the
two) there is no HTTP hop: a request's item (a crop, or a small upload the model thread decodes) goes
to a model thread as a Python object. ``many`` submits several items of one request (the hands of
one frame) as a group that always lands in one model call, never split across two.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
_STOP = object()


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0

    def add(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)


class BatcherClosed(RuntimeError):
    pass


class MicroBatcher(Generic[Item, Result]):
    """``await batcher(item)`` -> ``run_batch([..., item, ...])[its index]``; ``run_batch`` must return
    one result per item, in order. An exception in ``run_batch`` fails every request of that batch; an
    exception returned in an item's place fails that item's request alone (an upload that does not decode)."""

    def __init__(self, run_batch: Callable[[list[Item]], Sequence[Result]], max_batch_size: int, name: str = "microbatch", threads: int = 1):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.stats = BatchStats()
        self._stats_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self.threads = [threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def submit(self, item: Item) -> Future[Result]:
        return self.submit_group([item])[0]

    def submit_group(self, items: Sequence[Item]) -> list[Future[Result]]:
        """Futures for ``items``, which the model threads take together: one model call for the group
        (a group larger than ``max_batch_size`` goes in chunks of that size)."""
        if self._closed:
            raise BatcherClosed("the model threads have stopped (server shutting down)")
        futures: list[Future[Result]] = [Future() for _ in items]
        entries = list(zip(items, futures, strict=True))
        for start in range(0, len(entries), self.max_batch_size):
            self._queue.put(entries[start : start + self.max_batch_size])
        return futures

    async def __call__(self, item: Item) -> Result:
        return await asyncio.wrap_future(self.submit(item))

    async def many(self, items: Sequence[Item]) -> list[Result]:
        """``[run_batch(...)[i] for each item]``, the items sharing one model call (see ``submit_group``)."""
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in self.submit_group(items))))

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish what is queued, then stop the model threads."""
        if not self._closed:
            self._closed = True
            for _ in self.threads:
                self._queue.put(_STOP)
            for thread in self.threads:
                thread.join(timeout)

    def _serve(self) -> None:
        held = None  # a group that did not fit into this thread's last batch: it starts the next one
        while True:
            batch, stop, held = self._next_batch(held)
            if batch:
                self._run(batch)
            if stop:
                return

    def _next_batch(self, held: Any = None) -> tuple[list[tuple[Item, Future[Result]]], bool, Any]:
        """Block for one request (or start from ``held``), then take whatever else is already waiting.
        Returns the batch, whether to stop, and a group left for the next batch because it did not fit."""
        entry = held if held is not None else self._queue.get()
        batch: list[tuple[Item, Future[Result]]] = []
        while entry is not _STOP:
            if batch and len(batch) + len(entry) > self.max_batch_size:
                return batch, False, entry  # a group is never split between two model calls
            # a client that went away costs no model time
            batch.extend((item, future) for item, future in entry if future.set_running_or_notify_cancel())
            if len(batch) >= self.max_batch_size:
                return batch, False, None
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return batch, False, None
        return batch, True, None

    def _run(self, batch: list[tuple[Item, Future[Result]]]) -> None:
        with self._stats_lock:
            self.stats.add(len(batch))
        try:
            results = self.run_batch([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except BaseException as err:  # noqa: BLE001 - every waiting request must hear about it
            for _, future in batch:
                future.set_exception(err)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
