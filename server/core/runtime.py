"""What the conversation core needs from its surroundings: a clock, timers and background tasks.

The core never sleeps, reads a socket or looks at the wall clock itself; it asks a ``Runtime``.
:class:`AsyncioRuntime` is the real one (the connection adapter passes it in); tests pass a
runtime whose clock only moves when the test says so (``tests/core_fakes.py``), so every race
in the turn logic replays the same way, in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Timer(Protocol):
    def cancel(self) -> None: ...


class Runtime(Protocol):
    """Clock, timers and tasks for one conversation."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` (synchronously, on the core's thread) after ``delay_s`` seconds."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this conversation (cancelled by :meth:`close`)."""
        ...

    async def close(self) -> None:
        """Cancel every task and timer and wait for the tasks to end."""
        ...


TaskFailed = Callable[[asyncio.Task[Any], BaseException], None]


class AsyncioRuntime:
    """The real runtime: the running event loop, ``time.monotonic``.

    ``on_task_failed`` is told about a task that died of an exception the core did not handle
    (a bug): the adapter logs it and closes that one connection with 1011.
    """

    def __init__(self, on_task_failed: TaskFailed | None = None, *, prefix: str = "conv") -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._on_task_failed = on_task_failed
        self._prefix = prefix
        self.closed = False

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            callback()

        handle = loop.call_later(max(0.0, delay_s), fire)
        self._timers.add(handle)
        return handle

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._prefix}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        if self.closed:
            task.cancel()
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._on_task_failed is not None:
            self._on_task_failed(task, exc)
        elif exc is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)

    async def close(self) -> None:
        self.closed = True
        for h in list(self._timers):
            h.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
