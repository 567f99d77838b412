"""A generic micro-batcher: calls from many sessions to one model become one forward pass.

Each model has one queue. A collector task takes the first waiting call, then waits at most
``max_wait_ms`` for more (up to ``max_batch``) and runs ``fn(items) -> results`` in a worker
thread, never on the event loop. While a batch runs, the next one fills up, so under load the
batch size grows by itself. Calls whose caller went away (cancelled future) are dropped before
the forward pass. If a batch fails, its items are retried one by one so that one bad input
(e.g. an undecodable image) fails only its own caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

from server.metrics import Metrics

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


class MicroBatcher(Generic[T, R]):
    """``await batcher.submit(item)`` → ``fn([.., item, ..])[i]``."""

    def __init__(self, name: str, fn: Callable[[list[T]], Sequence[R]], *, executor: Executor,
                 max_batch: int = 32, max_wait_ms: float = 5.0, enabled: bool = True,
                 metrics: Metrics | None = None) -> None:
        self.name, self.fn, self.executor = name, fn, executor
        self.max_batch, self.max_wait = max(1, max_batch), max(0.0, max_wait_ms) / 1000.0
        self.enabled = enabled and max_batch > 1
        self.metrics = metrics
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Run ``item`` through the model, batched with concurrent callers when enabled."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            results = await loop.run_in_executor(self.executor, self._run, [item])
            return results[0]
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._collect(), name=f"batcher-{self.name}")
        fut: asyncio.Future[R] = loop.create_future()
        await self._queue.put((item, fut))
        return await fut

    def _run(self, items: list[T]) -> Sequence[R]:
        t0 = time.perf_counter()
        out = self.fn(items)
        if len(out) != len(items):
            raise RuntimeError(f"{self.name}: model returned {len(out)} results for {len(items)} inputs")
        if self.metrics is not None:
            self.metrics.batch.observe(len(items), model=self.name)
            self.metrics.stage.observe(time.perf_counter() - t0, stage=f"{self.name}_batch")
        return out

    async def _collect(self) -> None:
        assert self._queue is not None
        queue, loop = self._queue, asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.done()]
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self._run, [i for i, _ in live])
            except Exception:
                if len(live) == 1:
                    _, fut = live[0]
                    exc = _current_exception()
                    if not fut.done():
                        fut.set_exception(exc)
                    continue
                # One bad input must not fail its neighbours: retry them one at a time.
                for item, fut in live:
                    try:
                        (res,) = await loop.run_in_executor(self.executor, self._run, [item])
                    except Exception as exc:
                        if not fut.done():
                            fut.set_exception(exc)
                    else:
                        if not fut.done():
                            fut.set_result(res)
                continue
            for (_, fut), res in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
            self._queue = None


def _current_exception() -> BaseException:
    import sys

    exc = sys.exc_info()[1]
    assert exc is not None
    return exc
