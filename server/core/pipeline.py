"""The model work of one response, in order: the turn's transcripts, perception, the agent's
reply through the engine, and the reply assembled onto the response handle.

Nothing here decides a state: :class:`~server.core.conversation.Conversation` starts a
response, and this coroutine reports back when it is done. Model failures become ``error``
events and a ``failed`` response; a bug propagates (the connection closes with 1011).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent import PerceivedTurn
from agent.events import (
    ActionEvent,
    ActionRejectedEvent,
    AgentErrorEvent,
    TextDeltaEvent,
    TurnDoneEvent,
    TurnFusedEvent,
)
from perception.errors import MMAgentError
from perception.types import FrameEncoding, SpeechEncoding, TextEncoding
from server import protocol as P
from server.core import events as E
from server.core.response import Response, usage_json
from server.engine import ModelEngine, RespondRequest
from server.metrics import Metrics

if TYPE_CHECKING:
    from agent import Session

# turn.fused fields when the server runs without a fusion checkpoint.
NO_FUSION: dict[str, Any] = {"intent": None, "intent_confidence": None, "intent_probs": {}, "emotion": None,
                             "emotion_confidence": None, "emotion_probs": {}, "addressee": None,
                             "addressee_prob": None, "modality_weights": {}}


@dataclass
class Frame:
    """One camera frame kept by the session; its encoding is computed at most once."""

    data: bytes
    received: float
    event_id: str | None
    encoding: asyncio.Task[FrameEncoding] | None = None


@dataclass
class Heard:
    """One committed audio item of a turn and its transcription (a task, then its result)."""

    item_id: str
    task: asyncio.Task[SpeechEncoding]


@dataclass
class TurnInput:
    """What a response answers: typed texts, images, audio items, device results, frames."""

    texts: list[str] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)
    heard: list[Heard] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    tool_results: list[Any] = field(default_factory=list)   # agent.ToolResult
    frames: list[Frame] | None = None   # chosen at the end of speech (None: at response time)

    def empty(self) -> bool:
        return not (self.texts or self.images or self.heard or self.tool_results)


class InFlight:
    """Counts one turn in ``engine.turns_in_flight`` from its end of input to its first delta
    (``/metrics``: ``mmagent_turns_waiting``; the wait feeds the server_busy retry hint)."""

    def __init__(self, engine: ModelEngine, metrics: Metrics | None = None) -> None:
        self.engine, self.metrics = engine, metrics
        self.t0 = time.perf_counter()
        engine.turns_in_flight += 1
        self.counted = True
        if metrics is not None:
            metrics.turns_waiting.set(engine.turns_in_flight)

    def release(self, *, first_delta: bool = False) -> None:
        if self.counted:
            self.counted = False
            self.engine.turns_in_flight -= 1
            if self.metrics is not None:
                self.metrics.turns_waiting.set(self.engine.turns_in_flight)
                if first_delta:
                    self.metrics.note_first_delta(time.perf_counter() - self.t0)


@dataclass
class PipelineContext:
    """What the pipeline uses of its conversation."""

    engine: ModelEngine
    metrics: Metrics
    agent_session: Session
    rate: Callable[[], int]
    emit: Callable[[E.ServerEvent], None]             # errors go to the client at once
    frame_encoding: Callable[[Frame], asyncio.Task[FrameEncoding]]
    allowed_tool: Callable[[str], bool]
    now: Callable[[], float]


def transcript_event(item_id: str, enc: SpeechEncoding) -> E.TranscriptionCompleted:
    return E.TranscriptionCompleted(item_id, 0, enc.transcript, {"type": "duration", "seconds": round(enc.duration_s, 3)},
                                    round(enc.confidence, 4), enc.language, round(enc.duration_s, 3))


def turn_text(texts: Sequence[str], speech: Sequence[SpeechEncoding]) -> str:
    """The turn's text: typed messages, then transcripts (docs/CONTRACTS.md)."""
    parts = [t for t in texts] + [s.transcript.strip() for s in speech if s.transcript.strip()]
    return " ".join(parts)


async def run_response(ctx: PipelineContext, r: Response, inp: TurnInput, *, max_tokens: int | None,
                       on_started: Callable[[], None], waiting: InFlight | None = None) -> None:
    """Answer ``inp`` onto ``r``: response.created … response.done. ``on_started`` runs right
    after response.created (the conversation commits a shown turn and arms its timeout).
    ``waiting``: the turn's count among the waiting turns, when the caller took it already."""
    waiting = waiting or InFlight(ctx.engine, ctx.metrics)
    try:
        await _run(ctx, r, inp, max_tokens, on_started, waiting)
    finally:
        waiting.release()


async def _run(ctx: PipelineContext, r: Response, inp: TurnInput, max_tokens: int | None,
               on_started: Callable[[], None], waiting: InFlight) -> None:
    m, engine = ctx.metrics, ctx.engine
    speech: list[SpeechEncoding] = []
    for h in inp.heard:
        try:
            speech.append(await asyncio.shield(h.task))
        except MMAgentError:
            pass   # reported with its item (transcription.failed); the turn goes on without it
    if r.done:
        return
    r.start()
    on_started()
    t_start = time.perf_counter()
    text = turn_text(inp.texts, speech)
    try:
        t0 = time.perf_counter()
        text_task = asyncio.ensure_future(engine.encode_text(text)) if text else None
        frame_tasks: list[asyncio.Future[FrameEncoding]] = [asyncio.ensure_future(engine.encode_frame(b))
                                                            for b in inp.images]
        frame_tasks += [asyncio.shield(ctx.frame_encoding(f)) for f in inp.frames or []]
        text_enc: TextEncoding | None = await text_task if text_task is not None else None
        t_text = time.perf_counter() - t0
        results = await asyncio.gather(*frame_tasks, return_exceptions=True)
        t_frames = time.perf_counter() - t0
        frames: list[FrameEncoding] = []
        for res in results:
            if isinstance(res, MMAgentError):
                ctx.emit(error(res.code, str(res), param="image"))
            elif isinstance(res, BaseException):
                raise res
            else:
                frames.append(res)
        m.stage.observe(t_text, stage="text")
        m.stage.observe(t_frames, stage="frames")
    except MMAgentError as exc:
        fail(ctx, r, exc.code, str(exc))
        return
    head = speech[-1] if speech else None
    if head is None and text_enc is None and not frames and not r.control.tool_results:
        fail(ctx, r, "empty_turn", "the turn has no usable text, audio or frame")
        return
    timings = {"text": t_text, "frames": t_frames}
    r.inputs = tuple(m for m, on in (("text", bool(inp.texts)), ("speech", bool(speech)),
                                     ("vision", bool(inp.images or frames))) if on)
    r.emit(perception_event("turn", frames, item_id=r.user_item_id, response_id=r.id, speech=head,
                            text=text_enc, timings=timings))
    if r.cancel.is_set():
        finish(ctx, r, "cancelled", None)
        return
    typed = " ".join(inp.texts) or None
    perceived = PerceivedTurn(text=text_enc, speech=_joined(speech), frames=frames,
                              timings={k: 1000 * v for k, v in timings.items()}, typed_text=typed)
    t_respond = time.perf_counter()
    first: float | None = None
    done: TurnDoneEvent | None = None
    agen = engine.respond(RespondRequest(ctx.agent_session, perceived, r.cancel, r.control, max_tokens))
    r.in_agent = True
    try:
        async for ev in agen:
            if isinstance(ev, TurnDoneEvent):
                done = ev
                break
            if r.cancel.is_set() or r.done:
                continue   # let the agent notice the cancel and record the turn as cancelled
            if isinstance(ev, TurnFusedEvent):
                fused = ev.to_json().get("fused") or dict(NO_FUSION)
                r.emit(E.TurnFused(r.user_item_id, r.id, ev.transcript_confidence, fused))
            elif isinstance(ev, TextDeltaEvent):
                if first is None:
                    first = time.perf_counter()
                    waiting.release(first_delta=True)
                    m.stage.observe(first - t_respond, stage="first_delta")
                r.text_delta(ev.delta)
                if r.audio and engine.voice is not None:
                    async for chunk in engine.voice.synthesize(ev.delta):
                        r.audio_delta(chunk, engine.voice.rate, ctx.now())
            elif isinstance(ev, ActionEvent):
                if ctx.allowed_tool(ev.name):
                    r.function_call(ev.name, ev.arguments, ev.call_id or P.new_id("call"))
            elif isinstance(ev, ActionRejectedEvent):
                ctx.emit(error(ev.code, f"action {ev.name!r} rejected: {ev.message}", param="action"))
            elif isinstance(ev, AgentErrorEvent):
                ctx.emit(error(ev.code, ev.message))
    finally:
        await agen.aclose()  # type: ignore[attr-defined]
    if r.done:   # ended meanwhile (a timeout)
        return
    now = time.perf_counter()
    m.stage.observe(now - t_respond, stage="respond")
    m.stage.observe(now - t_start, stage="turn")
    r.timings = {"perception": round(1000 * (t_respond - t_start), 1),
                 "first_delta": round(1000 * (first - t_start), 1) if first else None,
                 "total": round(1000 * (now - t_start), 1)}
    if done is None:
        fail(ctx, r, "internal_error", "the agent ended the turn without turn.done")
        return
    r.turn = {"turn_id": done.turn_id, "intent": done.intent, "emotion": done.emotion, "actions": done.actions,
              "route": done.route, "timings_ms": done.timings}
    r.usage = _usage(ctx, done, "".join(r.text), text)
    status = "cancelled" if r.cancel.is_set() and done.status != "failed" else done.status
    finish(ctx, r, status, done)   # type: ignore[arg-type]


def _joined(speech: list[SpeechEncoding]) -> SpeechEncoding | None:
    """The turn's speech: its last utterance, with every utterance's transcript (a turn of two
    spoken items is one question)."""
    if not speech:
        return None
    if len(speech) == 1:
        return speech[0]
    import dataclasses

    return dataclasses.replace(speech[-1], transcript=" ".join(s.transcript.strip() for s in speech
                                                              if s.transcript.strip()))


def _usage(ctx: PipelineContext, done: TurnDoneEvent, reply: str, question: str) -> dict[str, Any]:
    t = done.timings
    prompt = int(t.get("prompt_tokens") or ctx.engine.count_tokens(question or " "))
    out = int(t.get("generated_tokens") or (ctx.engine.count_tokens(reply) if reply else 0))
    return usage_json(input_tokens=prompt, cached_tokens=int(t.get("cached_prompt_tokens") or 0), output_tokens=out)


def finish(ctx: PipelineContext, r: Response, status: Any, done: TurnDoneEvent | None) -> None:
    if r.done:
        return
    if status == "failed" and r.error is None:
        r.error = (done.error if done is not None else None) or {"code": "internal_error", "message": "failed"}
    if r.message is not None and done is not None:
        r.message.turn_id = done.turn_id
    ctx.metrics.turns.inc(status=str(status))
    r.finish(status)


def fail(ctx: PipelineContext, r: Response, code: str, message: str) -> None:
    """The response failed before the agent stored anything: an error event, then response.done."""
    ctx.emit(error(code, message))
    r.error = {"code": code, "message": message}
    finish(ctx, r, "failed", None)


def error(code: str, message: str, *, param: str | None = None, event_id: str | None = None) -> E.ErrorEvent:
    return E.ErrorEvent(code, message, P.ERROR_TYPES.get(code, "server_error"), param, event_id)


def perception_event(source: str, frames: list[FrameEncoding], *, item_id: str | None = None,
                     response_id: str | None = None, speech: SpeechEncoding | None = None,
                     text: TextEncoding | None = None, timings: dict[str, float] | None = None) -> E.PerceptionUpdated:
    newest = frames[-1] if frames else None
    speech_json = None if speech is None else {
        k: v for k, v in speech.to_json().items()
        if k in ("transcript", "confidence", "language", "duration_s", "voiced_s", "prosody")}
    text_json = None if text is None else {k: v for k, v in text.to_json().items() if k != "embedding_dim"}
    return E.PerceptionUpdated(
        source="frame" if source == "frame" else "turn", item_id=item_id, response_id=response_id,
        faces_present=bool(newest is not None and newest.faces.count > 0),
        face_count=newest.faces.count if newest is not None else 0,
        labels=newest.to_json()["labels"] if newest is not None else [],
        frames=[{k: v for k, v in f.to_json().items() if k != "embedding_dim"} for f in frames],
        timings_ms={k: round(1000 * v, 1) for k, v in (timings or {}).items()},
        speech=speech_json, text=text_json)
