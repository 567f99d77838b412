"""A clock that moves only when a test says so, and an engine whose every step a test controls,
for the conversation core's race tests (tests/test_core_*.py).

The fake engine keeps the agent's contract (``agent.control.TurnControl``): a turn is recorded
in ``stored`` only when its control is committed, in ``abandoned`` otherwise — as
``agent.Agent.respond`` does (tests/test_agent_turn_control.py checks the real agent).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agent import Session
from agent.events import AgentEvent, TextDeltaEvent, TurnDoneEvent, TurnFusedEvent
from perception.types import Faces, FrameEncoding, Prosody, Segment, SpeechEncoding, TextEncoding
from server.config import ServerConfig
from server.core.conversation import Conversation
from server.core.events import ServerEvent
from server.core.settings import FunctionTool
from server.engine import RespondRequest


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeRuntime:
    """Deterministic runtime: ``advance(dt)`` moves the clock and fires due timers; tasks are
    real asyncio tasks of the test's loop (``settle()`` lets them run)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self._timers: list[tuple[float, int, FakeTimer, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.failures: list[BaseException] = []

    def now(self) -> float:
        return self.t

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer()
        heapq.heappush(self._timers, (self.t + delay_s, next(self._seq), timer, callback))
        return timer

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.failures.append(t.exception())  # type: ignore[arg-type]

        task.add_done_callback(done)
        return task

    def advance(self, dt: float) -> None:
        self.t += dt
        while self._timers and self._timers[0][0] <= self.t:
            _, _, timer, cb = heapq.heappop(self._timers)
            if not timer.cancelled:
                cb()

    async def close(self) -> None:
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def speech_encoding(transcript: str) -> SpeechEncoding:
    return SpeechEncoding(transcript=transcript, segments=[Segment(0.0, 1.0, transcript, -0.1, 0.01)], language="en",
                          avg_logprob=-0.1, no_speech_prob=0.01, embedding=torch.zeros(4),
                          prosody=Prosody(-20, 3, 120, 10, 40, 2.5, 0.8, 1.0), duration_s=1.0, voiced_s=0.8)


@dataclass
class Step:
    """One turn inside the fake agent: the test releases its deltas (or lets them all go)."""

    request: RespondRequest
    go: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False


class FakeEngine:
    """Every model call of the core, faked. ``hold_speech``: transcriptions wait for
    ``release_speech()``; ``hold_reply``: each reply waits for ``step.go`` before its deltas."""

    def __init__(self) -> None:
        self.turns_in_flight = 0
        self.voice = None
        self.turn_models: Any = None     # semantic_vad's models (a FakeTurnModels in its tests)
        self.loaded = True
        self.hold_speech = False
        self.hold_reply = False
        self.reply = ["Batteries ", "are ", "in ", "aisle ", "7."]
        self.speech: list[tuple[np.ndarray, asyncio.Future[SpeechEncoding]]] = []
        self.transcript = "where are the batteries"
        self.steps: list[Step] = []
        self.stored: list[dict[str, Any]] = []       # turns the agent would store
        self.abandoned: list[dict[str, Any]] = []    # turns it would forget
        self.revised: list[tuple[str, str | None, bool]] = []
        self.actions: list[tuple[str, dict[str, Any]]] = []   # actions the next reply proposes

    # -- perception --
    async def ensure_loaded(self) -> None:
        pass

    async def open_session(self, session_id: str | None, *, principal: str = "local") -> Session:
        return Session(session_id or "sess_fake")

    async def encode_text(self, text: str) -> TextEncoding:
        return TextEncoding(text, torch.zeros(4), len(text.split()), False)

    def prefetch_text(self, text: str) -> None:
        pass

    async def encode_frame(self, image: bytes) -> FrameEncoding:
        return FrameEncoding(torch.zeros(4), [], Faces(0), 8, 8)

    async def encode_speech(self, audio: np.ndarray, rate: int) -> SpeechEncoding:
        fut: asyncio.Future[SpeechEncoding] = asyncio.get_running_loop().create_future()
        self.speech.append((audio, fut))
        if not self.hold_speech:
            fut.set_result(speech_encoding(self.transcript))
        return await fut

    def release_speech(self, transcript: str | None = None) -> None:
        for _, fut in self.speech:
            if not fut.done():
                fut.set_result(speech_encoding(transcript or self.transcript))

    # -- agent --
    def respond(self, request: RespondRequest) -> AsyncIterator[AgentEvent]:
        step = Step(request)
        self.steps.append(step)
        if not self.hold_reply:
            step.go.set()
        return self._reply(step)

    async def _reply(self, step: Step) -> AsyncIterator[AgentEvent]:
        from agent.events import ActionEvent

        req, control = step.request, step.request.control
        text: list[str] = []
        record = {"text": req.perceived.text.text if req.perceived.text else None, "reply": "", "status": ""}
        try:
            yield TurnFusedEvent(None, None)
            await step.go.wait()
            for name, args in self.actions:
                yield ActionEvent(name, args, f"call_{len(self.stored)}")
            for piece in self.reply:
                if req.cancel.is_set():
                    break
                text.append(piece)
                yield TextDeltaEvent(piece)
                await asyncio.sleep(0)
            status = "cancelled" if req.cancel.is_set() else "completed"
        except (GeneratorExit, asyncio.CancelledError):
            record.update(reply="".join(text), status="failed" if control.error else "cancelled")
            (self.stored if control.keeps else self.abandoned).append(record)
            raise
        keep = await control.decided()
        if control.error:
            status = "failed"
        record.update(reply="".join(text), status=status)
        (self.stored if keep else self.abandoned).append(record)
        step.finished = True
        yield TurnDoneEvent(status=status, text="".join(text), turn_id=f"turn_{len(self.steps)}")  # type: ignore[arg-type]

    async def revise_turn(self, session: Session, turn_id: str, *, reply: str | None = None,
                          forget: bool = False) -> None:
        self.revised.append((turn_id, reply, forget))

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def tools(self) -> tuple[FunctionTool, ...]:
        return (FunctionTool("show_on_map", "Show an aisle on the map.",
                             {"type": "object", "properties": {"aisle": {"type": "integer"}}}),)

    @property
    def pack_name(self) -> str | None:
        return "demo"

    @property
    def instructions(self) -> str:
        return "You are Kit."

    async def close(self) -> None:
        pass


def make_conversation(**config: Any) -> tuple[Conversation, FakeEngine, FakeRuntime]:
    """A conversation on the fake engine and runtime (energy VAD: no model loads)."""
    from server.config import load_config

    cfg: ServerConfig = load_config(None, env={}, overrides={"vad": {"backend": "energy"}, **config})
    engine, rt = FakeEngine(), FakeRuntime()
    conv = Conversation(session_id="sess_test", agent_session=Session("sess_test"), engine=engine,  # type: ignore[arg-type]
                        runtime=rt, config=cfg)
    return conv, engine, rt


async def settle(rounds: int = 30) -> None:
    """Let every ready task run (the fakes never wait on real time)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def types(events: list[ServerEvent]) -> list[str]:
    return [e.type for e in events]
