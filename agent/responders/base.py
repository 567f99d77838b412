"""The responder interface, and the thread→asyncio bridge every blocking backend uses.

A responder turns a :class:`ResponderRequest` into an async stream of chunks: ``str`` (reply
text, in order) or :class:`ToolCall` (an action the model proposes; validated by the agent).
Blocking work (model forward passes, socket reads) runs in a worker thread; the event loop only
awaits a queue. Cancellation is a :class:`CancelToken` (a ``threading.Event`` with callbacks),
checked by the backend at every step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..pack import KnowledgePack
from ..prompt import Prompt
from ..retrieval import Retrieved


class CancelToken(threading.Event):
    """A thread-safe cancel flag; ``add_callback`` runs a function once when it is set."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._cb_lock = threading.Lock()

    def add_callback(self, fn: Callable[[], None]) -> None:
        with self._cb_lock:
            if not self.is_set():
                self._callbacks.append(fn)
                return
        fn()

    def set(self) -> None:
        with self._cb_lock:
            super().set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception:  # a failing callback must not stop the others
                pass


@dataclass(frozen=True)
class ToolCall:
    """An action proposed by a model. ``arguments`` is the raw JSON text or an already-parsed object."""

    name: str
    arguments: Any
    call_id: str = ""


Chunk = str | ToolCall


@dataclass
class ResponderRequest:
    """Everything a responder may use for one reply."""

    prompt: Prompt
    question: str
    hits: Sequence[Retrieved]
    pack: KnowledgePack
    stats: dict[str, float] = field(default_factory=dict)  # filled by the responder (e.g. prompt_tokens)
    # A per-reply cap on generated tokens (e.g. a server session's max_output_tokens); the
    # responder's own configured limit applies as well. None: only the responder's limit.
    max_tokens: int | None = None
    # The dialogue manager's answer composed from the selected facts ('' without it), and
    # whether ``hits`` are the facts it selected (not a plain retrieval).
    composed: str = ""
    selected: bool = False


class Responder(Protocol):
    """What the agent needs from a reply backend."""

    name: str

    def count_tokens(self, text: str) -> int: ...

    def warmup(self) -> None: ...

    def stream(self, request: ResponderRequest, cancel: CancelToken) -> AsyncIterator[Chunk]: ...


_END = object()


async def stream_from_thread(target: Callable[[Callable[[Any], None]], None], *,
                             name: str = "responder") -> AsyncIterator[Any]:
    """Run ``target(emit)`` in a daemon thread; yield what it emits, then re-raise its exception.

    ``emit`` may be called from any thread. If the consumer stops early, the thread keeps
    running until it notices its own cancel flag (the caller sets it).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def put(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def runner() -> None:
        try:
            target(lambda item: put("item", item))
        except BaseException as exc:
            put("error", exc)
        else:
            put("end", _END)

    threading.Thread(target=runner, name=name, daemon=True).start()
    while True:
        kind, value = await queue.get()
        if kind == "item":
            yield value
        elif kind == "error":
            raise value
        else:
            return
