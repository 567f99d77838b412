"""The conversation core without I/O: every turn race, on a fake clock and a fake engine.

Each test drives :class:`server.core.conversation.Conversation` with typed client events and
detector events, lets the fake engine's tasks run (``settle``), and checks the events a client
would see and what the agent would store. Nothing here loads a model or opens a socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from agent.control import TurnFate
from server.core import events as E
from server.core.audio_input import SEMANTIC_SILENCE_MS, decode_audio, detector_params
from server.core.codec import Codec
from server.core.conversation import Conversation, TurnState
from server.core.settings import TurnDetection
from server.errors import ProtocolError
from server.vad import SpeechPaused, SpeechResumed, SpeechStarted, SpeechStopped
from tests.core_fakes import FakeEngine, FakeRuntime, make_conversation, settle, types

with warnings.catch_warnings():   # the reference G.711 decoder (removed in Python 3.13)
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

CODEC = Codec()
AUDIO = np.zeros(2400, np.int16)


def ev(obj: dict[str, Any]) -> E.ClientEvent:
    return CODEC.decode(json.dumps(obj))


def text_item(text: str = "where are the batteries?") -> E.ClientEvent:
    return ev({"type": "conversation.item.create",
               "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})


def run(test: Callable[[Conversation, FakeEngine, FakeRuntime], Coroutine[Any, Any, None]],
        **config: Any) -> None:
    async def main() -> None:
        conv, engine, rt = make_conversation(**config)
        conv.start()
        try:
            await test(conv, engine, rt)
        finally:
            await conv.close()
        assert not rt.failures, rt.failures

    asyncio.run(main())


def vad(conv: Conversation, *events: Any) -> list[E.ServerEvent]:
    assert conv.audio.detector is not None
    return conv.detected(conv.audio.detector, list(events))


async def drain(conv: Conversation) -> list[E.ServerEvent]:
    await settle()
    return conv.take()


def responses(events: list[E.ServerEvent]) -> list[str]:
    return [e.type for e in events if e.type.startswith("response.")]


# ---- turns ---------------------------------------------------------------------------------------

def test_typed_turn_has_the_full_ga_sequence() -> None:
    """A typed turn: item added/done, then response.created … response.done in GA order; stored once."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        out = conv.handle(text_item())
        assert types(out) == ["conversation.item.added", "conversation.item.done"]
        assert conv.state is TurnState.COMMITTED
        conv.handle(ev({"type": "response.create"}))
        out = await drain(conv)
        assert types(out)[:6] == ["response.created", "rate_limits.updated", "perception.updated", "turn.fused",
                                  "response.output_item.added", "conversation.item.added"]
        assert types(out)[-5:] == ["response.output_text.done", "response.content_part.done",
                                   "response.output_item.done", "conversation.item.done", "response.done"]
        deltas = [e for e in out if isinstance(e, E.TextDelta)]
        added = next(e for e in out if isinstance(e, E.OutputItemAdded))
        assert deltas and all(d.item_id == added.item["id"] for d in deltas)
        done = out[-1]
        assert isinstance(done, E.ResponseDone) and done.response["status"] == "completed"
        assert done.response["usage"]["output_tokens"] == 5 and done.response["usage"]["total_tokens"] > 5
        assert engine.stored == [{"text": "where are the batteries?", "reply": "Batteries are in aisle 7.",
                                  "status": "completed"}]
        assert conv.state is TurnState.IDLE

    run(t)


def test_manual_commit_never_starts_a_response() -> None:
    """GA: input_audio_buffer.commit (turn detection off) commits and transcribes; response.create answers."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        conv.handle(ev({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}))
        conv.handle(E.AudioAppend(None, AUDIO.tobytes()))
        out = conv.handle(ev({"type": "input_audio_buffer.commit"}))
        out += await drain(conv)
        assert types(out) == ["input_audio_buffer.committed", "conversation.item.added",
                              "conversation.item.input_audio_transcription.completed", "conversation.item.done"]
        tr = next(e for e in out if isinstance(e, E.TranscriptionCompleted))
        assert tr.usage == {"type": "duration", "seconds": 1.0}
        assert not engine.steps and conv.state is TurnState.COMMITTED
        conv.handle(ev({"type": "response.create"}))
        out = await drain(conv)
        assert responses(out)[0] == "response.created" and engine.stored[0]["text"] == "where are the batteries"

    run(t)


def test_two_response_create_at_once() -> None:
    """Two response.create back to back: the second is refused; exactly one response, one stored turn."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        conv.handle(text_item())
        first = conv.handle(ev({"type": "response.create", "event_id": "a"}))
        second = conv.handle(ev({"type": "response.create", "event_id": "b"}))
        assert [e.code for e in second if isinstance(e, E.ErrorEvent)] == ["conversation_already_has_active_response"]
        assert second[0].event_id == "b"   # type: ignore[attr-defined]
        out = first + await drain(conv)
        assert types(out).count("response.created") == 1 and types(out).count("response.done") == 1
        assert len(engine.stored) == 1

    run(t)


# ---- speculation and the preemptive gate ---------------------------------------------------------

def test_pause_then_resume_drops_the_preemptive_response() -> None:
    """pause → resume: the held response is dropped without a trace (no event, not stored); the
    real end of the turn gives exactly one response, released after its transcript."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        out = vad(conv, SpeechStarted(100))
        out += vad(conv, SpeechPaused(1, AUDIO))
        assert conv.state is TurnState.PAUSED
        out += await drain(conv)
        assert len(engine.steps) == 1 and not engine.steps[0].finished   # generated, awaits its fate
        out += vad(conv, SpeechResumed(1))
        out += await drain(conv)
        assert types(out) == ["input_audio_buffer.speech_started"]
        assert engine.abandoned and not engine.stored
        assert conv.metrics.preemptive.value(outcome="discarded") == 1
        out = vad(conv, SpeechPaused(2, AUDIO))
        out += await drain(conv)
        assert out == []   # held
        out += vad(conv, SpeechStopped(1800, AUDIO, 2))
        out += await drain(conv)
        ts = types(out)
        assert ts[:5] == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                          "conversation.item.added", "conversation.item.input_audio_transcription.completed",
                          "conversation.item.done"]
        assert ts[5] == "response.created" and ts.count("response.created") == 1 and ts[-1] == "response.done"
        assert len(engine.stored) == 1 and conv.metrics.preemptive.value(outcome="released") == 1

    run(t)


def test_pause_then_session_update_stores_no_unseen_turn() -> None:
    """The issue's reproduction: speak, pause, then session.update turn_detection null. The
    preemptive reply is dropped (never stored), the speech so far is kept for a manual commit."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        out = vad(conv, SpeechStarted(100), SpeechPaused(1, AUDIO))
        out += await drain(conv)
        out += conv.handle(ev({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}))
        out += await drain(conv)
        assert types(out) == ["input_audio_buffer.speech_started", "session.updated"]
        assert engine.stored == [] and len(engine.abandoned) == 1
        assert conv.state is TurnState.IDLE and conv.audio.detector is None
        conv.handle(E.AudioAppend(None, AUDIO.tobytes()))
        out = conv.handle(ev({"type": "input_audio_buffer.commit"}))
        assert types(out)[0] == "input_audio_buffer.committed"
        conv.handle(ev({"type": "response.create"}))
        out = await drain(conv)
        assert responses(out)[-1] == "response.done" and len(engine.stored) == 1 and len(engine.abandoned) == 1

    run(t)


def test_hold_longer_than_max_hold_is_dropped() -> None:
    """A preemptive response held past vad.max_hold_ms is dropped; the turn is answered afresh at its end."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        vad(conv, SpeechStarted(0), SpeechPaused(1, AUDIO))
        await drain(conv)
        rt.advance(0.6)
        await settle()
        assert len(engine.abandoned) == 1
        out = vad(conv, SpeechStopped(5000, AUDIO, 1))
        out += await drain(conv)
        assert types(out).count("response.created") == 1 and len(engine.stored) == 1 and len(engine.steps) == 2

    run(t, vad={"backend": "energy", "max_hold_ms": 500})


def test_barge_in_during_a_hold_and_while_a_reply_streams() -> None:
    """Speech resuming during a hold only drops the hold (no cancel, no barge-in mark); speech
    starting while a reply streams cancels it (turn_detected) and marks the agent's turn."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        marks: list[Any] = []
        conv.agent_session.mark_barge_in = lambda turn_id=None: marks.append(turn_id)  # type: ignore[method-assign]
        vad(conv, SpeechStarted(0), SpeechPaused(1, AUDIO))
        await drain(conv)
        out = vad(conv, SpeechResumed(1))
        out += await drain(conv)
        assert responses(out) == [] and marks == [] and engine.abandoned
        # The turn ends; its reply streams slowly; the person speaks again.
        engine.hold_reply = True
        vad(conv, SpeechStopped(2000, AUDIO, None))
        out = await drain(conv)
        assert "response.created" in types(out)
        engine.steps[-1].go.set()
        await asyncio.sleep(0)
        out += vad(conv, SpeechStarted(2500))
        out += await drain(conv)
        done = [e for e in out if isinstance(e, E.ResponseDone)]
        assert done and done[0].response["status"] == "cancelled"
        assert done[0].response["status_details"]["reason"] == "turn_detected"
        assert marks == [None] and engine.stored[-1]["status"] == "cancelled"
        assert conv.state is TurnState.LISTENING

    run(t)


def test_cancel_while_queued() -> None:
    """response.cancel while the response waits for its transcript: it ends at once (created +
    done cancelled), the agent never runs, and the audio item is pending again for the next one."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        engine.hold_speech = True
        vad(conv, SpeechStarted(0), SpeechStopped(1500, AUDIO, None))
        assert conv.active is not None and conv.active.state is TurnState.QUEUED
        out = conv.handle(ev({"type": "response.cancel"}))
        assert types(out) == ["response.created", "rate_limits.updated", "response.done"]
        assert out[-1].response["status"] == "cancelled"   # type: ignore[attr-defined]
        await settle()
        engine.release_speech()
        out = await drain(conv)
        assert types(out) == ["conversation.item.input_audio_transcription.completed", "conversation.item.done"]
        assert not engine.steps and conv.state is TurnState.COMMITTED
        conv.handle(ev({"type": "response.create"}))
        out = await drain(conv)
        assert engine.stored and engine.stored[0]["text"] == "where are the batteries"

    run(t)


def test_disconnect_during_commit() -> None:
    """The client leaves after its turn was committed but before the held reply was released: the
    turn is forgotten. Leaving after the release stores it as cancelled."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        engine.hold_speech = True
        vad(conv, SpeechStarted(0), SpeechPaused(1, AUDIO))
        await drain(conv)
        out = vad(conv, SpeechStopped(1500, AUDIO, 1))   # committed; the transcript (and the release) pending
        out += await drain(conv)
        assert conv.active is not None and conv.active.response is not None
        control = conv.active.response.control
        await conv.close()
        engine.release_speech()
        await settle()
        assert responses(out) == [] and engine.stored == [] and control.fate is TurnFate.ABANDONED

    run(t)

    async def after_release(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        engine.hold_reply = True
        vad(conv, SpeechStarted(0), SpeechPaused(1, AUDIO))
        await drain(conv)
        vad(conv, SpeechStopped(1500, AUDIO, 1))
        out = await drain(conv)
        assert "response.created" in types(out)   # released: the client saw the turn
        await conv.close()
        await settle()
        assert [r["status"] for r in engine.stored] == ["cancelled"] and not engine.abandoned

    run(after_release)


def test_turn_timeout_frees_the_turn_and_marks_it() -> None:
    """respond_timeout_s: a stuck reply fails with response_timeout, the next turn goes ahead,
    and the stuck agent turn is stored as failed."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        engine.hold_reply = True
        conv.handle(text_item())
        conv.handle(ev({"type": "response.create"}))
        await drain(conv)
        rt.advance(5.5)
        out = conv.take()
        errors = [e for e in out if isinstance(e, E.ErrorEvent)]
        assert [e.code for e in errors] == ["response_timeout"]
        done = out[-1]
        assert isinstance(done, E.ResponseDone) and done.response["status"] == "failed"
        assert done.response["status_details"]["error"]["code"] == "response_timeout"
        await settle()
        assert engine.stored == [{"text": "where are the batteries?", "reply": "", "status": "failed"}]
        engine.hold_reply = False
        conv.handle(text_item("and the toilets?"))
        conv.handle(ev({"type": "response.create"}))
        out = await drain(conv)
        assert responses(out)[-1] == "response.done" and out[-1].response["status"] == "completed"  # type: ignore[attr-defined]

    run(t, pipeline={"respond_timeout_s": 5.0})


def test_vad_turn_queues_behind_a_streaming_reply() -> None:
    """With interrupt_response off, a turn that ends while a reply streams is answered after it."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        engine.hold_reply = True
        conv.handle(text_item())
        conv.handle(ev({"type": "response.create"}))
        await drain(conv)
        vad(conv, SpeechStarted(0), SpeechStopped(1500, AUDIO, None))
        await drain(conv)
        assert len(conv.queue) == 1
        engine.hold_reply = False
        engine.steps[0].go.set()
        out = await drain(conv)
        assert types(out).count("response.done") == 2 and len(engine.stored) == 2

    run(t, vad={"backend": "energy", "interrupt_response": False})


# ---- the Realtime GA surface -----------------------------------------------------------------------

def test_function_call_round_trip() -> None:
    """An action becomes a function_call item; its function_call_output reaches the agent's next turn."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        engine.actions = [("show_on_map", {"aisle": 7})]
        conv.handle(text_item())
        conv.handle(ev({"type": "response.create"}))
        out = await drain(conv)
        ts = types(out)
        assert "response.function_call_arguments.done" in ts and "response.action" in ts
        call = next(e for e in out if isinstance(e, E.FunctionCallArgumentsDone))
        assert json.loads(call.arguments) == {"aisle": 7} and call.name == "show_on_map"
        done = out[-1]
        assert [o["type"] for o in done.response["output"]] == ["message", "function_call"]  # type: ignore[attr-defined]
        engine.actions = []
        out = conv.handle(ev({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call.call_id, "output": '{"shown": true}'}}))
        assert types(out) == ["conversation.item.added", "conversation.item.done"]
        conv.handle(ev({"type": "response.create"}))
        await drain(conv)
        results = engine.steps[-1].request.control.tool_results
        assert [(r.call_id, r.name, r.output) for r in results] == [(call.call_id, "show_on_map", '{"shown": true}')]

    run(t)


def test_tool_choice_none_and_narrowed_tools() -> None:
    """tool_choice "none" keeps the agent's actions off the wire; tools must be the pack's."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        out = conv.handle(ev({"type": "session.update", "session": {"tools": [{"type": "function", "name": "fly"}]}}))
        assert out[0].code == "invalid_value"   # type: ignore[attr-defined]
        conv.handle(ev({"type": "session.update", "session": {"tool_choice": "none"}}))
        engine.actions = [("show_on_map", {"aisle": 7})]
        conv.handle(text_item())
        conv.handle(ev({"type": "response.create"}))
        out = await drain(conv)
        assert "response.function_call_arguments.done" not in types(out)

    run(t)


def test_out_of_band_response() -> None:
    """conversation "none" with input, instructions, max_output_tokens, metadata: answered apart,
    not stored, not in the conversation; the pending in-band turn stays pending."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        conv.handle(text_item("pending question"))
        conv.handle(ev({"type": "response.create", "response": {
            "conversation": "none", "metadata": {"topic": "x"}, "instructions": "Answer in one word.",
            "max_output_tokens": 3,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "classify"}]}]}}))
        out = await drain(conv)
        assert "conversation.item.added" not in types(out)
        done = out[-1]
        assert isinstance(done, E.ResponseDone)
        assert done.response["metadata"] == {"topic": "x"} and done.response["conversation_id"] is None
        req = engine.steps[0].request
        assert req.max_tokens == 3 and req.control.instructions == "Answer in one word."
        assert req.perceived.text is not None and req.perceived.text.text == "classify"
        assert engine.stored == [] and len(engine.abandoned) == 1
        conv.handle(ev({"type": "response.create"}))
        await drain(conv)
        assert engine.stored[0]["text"] == "pending question"

    run(t)


def test_system_and_assistant_items_retrieve_delete() -> None:
    """System items join the instructions; items can be retrieved; a deleted pending item is not answered."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        conv.handle(ev({"type": "conversation.item.create", "item": {
            "type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be brief."}]}}))
        conv.handle(ev({"type": "conversation.item.create", "item": {
            "id": "a1", "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi!"}]}}))
        out = conv.handle(ev({"type": "conversation.item.retrieve", "item_id": "a1"}))
        assert isinstance(out[0], E.ItemRetrieved) and out[0].item["content"] == [{"type": "output_text", "text": "Hi!"}]
        conv.handle(ev({"type": "conversation.item.create", "item": {
            "id": "u1", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "forget me"}]}}))
        out = conv.handle(ev({"type": "conversation.item.delete", "item_id": "u1"}))
        assert types(out) == ["conversation.item.deleted"]
        out = conv.handle(ev({"type": "conversation.item.retrieve", "item_id": "u1"}))
        assert out[0].code == "item_not_found"   # type: ignore[attr-defined]
        out = conv.handle(ev({"type": "response.create"}))
        assert out[0].code == "empty_turn"   # type: ignore[attr-defined]
        conv.handle(text_item("hello"))
        conv.handle(ev({"type": "response.create", "response": {"instructions": "Smile."}}))
        await drain(conv)
        assert engine.steps[0].request.control.instructions == "Be brief. Smile."

    run(t)


def test_truncate_text_item_and_deleted_answered_item() -> None:
    """Truncating a finished text reply at 0 ms removes what was never heard (stored too); past
    its audio is refused; deleting an answered item takes it out of the agent's history."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        conv.handle(text_item())
        conv.handle(ev({"type": "response.create"}))
        out = await drain(conv)
        item_id = out[-1].response["output"][0]["id"]   # type: ignore[attr-defined]
        bad = conv.handle(ev({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                              "audio_end_ms": 200}))
        assert bad[0].code == "invalid_value"   # type: ignore[attr-defined]
        out = conv.handle(ev({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                              "audio_end_ms": 0}))
        assert types(out) == ["conversation.item.truncated"]
        await settle()
        assert engine.revised == [("turn_1", "", False)]
        user = next(i for i in conv.log if i.role == "user")
        conv.handle(ev({"type": "conversation.item.delete", "item_id": user.id}))
        await settle()
        assert engine.revised[-1] == ("turn_1", None, True)

    run(t)


@dataclass
class FakeChunk:
    pcm: bytes
    sample_rate: int
    text: str


class FakeSpeech:
    """A reply's speech: one chunk per text delta, 100 ms of audio per character."""

    def __init__(self, rate: int, hold: asyncio.Event | None = None) -> None:
        self.rate, self.queue, self.hold = rate, asyncio.Queue[FakeChunk | None](), hold

    def feed(self, delta: str) -> None:
        self.queue.put_nowait(FakeChunk(b"\x00\x00" * int(0.1 * self.rate * len(delta)), self.rate, delta))

    def finish(self) -> None:
        self.queue.put_nowait(None)

    cancel = finish

    async def __aiter__(self) -> AsyncIterator[FakeChunk]:
        while (chunk := await self.queue.get()) is not None:
            yield chunk
        if self.hold is not None:        # the last audio is slow to come: the response stays open
            await self.hold.wait()


class FakeVoice:
    name = "fake"
    output_rates = (16000, 24000)

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.hold = hold

    def open_stream(self, output_rate: int | None = None, *, speed: float = 1.0) -> FakeSpeech:
        return FakeSpeech(output_rate or 24000, self.hold)


def test_audio_output_and_truncation_to_what_was_heard() -> None:
    """output_modalities audio: transcript + audio deltas; a truncate at audio_end_ms keeps the
    text that audio spoke, on the item and in the stored turn."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        engine.voice = FakeVoice()   # type: ignore[assignment]
        engine.reply = ["Aisle ", "seven."]
        conv.handle(ev({"type": "session.update", "session": {"output_modalities": ["audio"]}}))
        conv.handle(text_item())
        conv.handle(ev({"type": "response.create"}))
        out = await drain(conv)
        ts = types(out)
        assert "response.output_audio.delta" in ts and "response.output_audio_transcript.delta" in ts
        assert "response.output_text.delta" not in ts
        item = out[-1].response["output"][0]   # type: ignore[attr-defined]
        assert item["content"][0] == {"type": "output_audio", "transcript": "Aisle seven."}
        # "Aisle " is 600 ms of audio: truncating at 600 ms keeps it.
        conv.handle(ev({"type": "conversation.item.truncate", "item_id": item["id"], "content_index": 0,
                        "audio_end_ms": 600}))
        await settle()
        assert engine.revised == [("turn_1", "Aisle", False)]
        out = conv.handle(ev({"type": "conversation.item.retrieve", "item_id": item["id"]}))
        assert out[0].item["content"][0]["transcript"] == "Aisle"   # type: ignore[attr-defined]

    run(t)


def test_truncate_while_streaming_then_completed_keeps_what_was_heard() -> None:
    """A truncate that arrives while a spoken response still streams: the response completes,
    and the item and the stored turn keep only the words spoken before audio_end_ms."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        hold = asyncio.Event()
        engine.voice = FakeVoice(hold)   # type: ignore[assignment]
        engine.reply = ["Aisle ", "seven, ", "next to the bulbs."]
        conv.handle(ev({"type": "session.update", "session": {"output_modalities": ["audio"]}}))
        conv.handle(text_item())
        conv.handle(ev({"type": "response.create"}))
        await settle()
        out = conv.take()
        assert "response.done" not in types(out)
        item_id = next(e for e in out if e.type == "response.output_audio.delta").item_id   # type: ignore[attr-defined]
        conv.handle(ev({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                        "audio_end_ms": 1300}))      # "Aisle " (600 ms) and "seven, " (700 ms)
        hold.set()
        out = await drain(conv)
        done = out[-1].response   # type: ignore[attr-defined]
        assert done["status"] == "completed"
        assert done["output"][0]["content"][0]["transcript"] == "Aisle seven,"
        await settle()
        assert engine.revised == [("turn_1", "Aisle seven,", False)]

    run(t)


def test_strict_session_has_no_extension_events() -> None:
    """extensions: false leaves out perception.updated, turn.fused and response.action."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        conv.handle(ev({"type": "session.update", "session": {"extensions": False}}))
        engine.actions = [("show_on_map", {"aisle": 7})]
        conv.handle(text_item())
        conv.handle(ev({"type": "response.create"}))
        out = await drain(conv)
        assert not [e for e in out if e.extension] and "response.function_call_arguments.done" in types(out)

    run(t)


def test_session_reports_rates_ga_validates() -> None:
    """The session's format echo carries rate only at 24 kHz (the SDK's models admit no other);
    G.711 formats set 8 kHz; semantic_vad is accepted."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        out = conv.handle(ev({"type": "session.update", "session": {"audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000},
            "turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}}}))
        s = out[0].session   # type: ignore[attr-defined]
        assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "sample_rate": 16000}
        assert s["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
        assert conv.audio.params is not None and conv.audio.params.silence_ms == SEMANTIC_SILENCE_MS["high"]
        out = conv.handle(ev({"type": "session.update", "session": {"audio": {"input": {
            "format": {"type": "audio/pcmu"}}}}}))
        assert out[0].session["audio"]["input"]["format"] == {"type": "audio/pcmu"}   # type: ignore[attr-defined]
        assert conv.audio.rate == 8000

    run(t)


def test_audio_burst_then_budget() -> None:
    """A 60 s recording appended at once is accepted (the burst); more right after is refused."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        conv.handle(ev({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}))
        second = np.zeros(24000, np.int16).tobytes()
        for _ in range(60):
            assert conv.handle(E.AudioAppend(None, second)) == []
        out = conv.handle(E.AudioAppend("x", second))
        assert out[0].code in ("audio_rate_exceeded", "audio_buffer_full")   # type: ignore[attr-defined]
        conv.handle(ev({"type": "input_audio_buffer.commit"}))
        rt.advance(2.0)   # the budget refills at 1.5 s per second
        assert conv.handle(E.AudioAppend(None, second)) == []

    run(t)


# ---- pieces ----------------------------------------------------------------------------------------

def test_g711_decoding_matches_the_reference() -> None:
    """μ-law and A-law tables equal the standard library's G.711 decoder on all 256 codes."""
    codes = bytes(range(256))
    assert decode_audio(codes, "audio/pcmu").tobytes() == audioop.ulaw2lin(codes, 2)
    assert decode_audio(codes, "audio/pcma").tobytes() == audioop.alaw2lin(codes, 2)
    with pytest.raises(ProtocolError):
        decode_audio(b"\x00", "audio/pcm")


def test_semantic_vad_eagerness_mapping() -> None:
    """semantic_vad maps eagerness onto the detector: high answers soonest, low waits longest."""
    p = {e: detector_params(TurnDetection(type="semantic_vad", eagerness=e), 16000, backend="energy",  # type: ignore[arg-type]
                            speculative_ms=100) for e in ("low", "medium", "high", "auto")}
    assert p["high"].silence_ms < p["medium"].silence_ms < p["low"].silence_ms
    assert p["auto"] == p["medium"] and p["low"].max_wait_ms == 8000 and p["high"].max_wait_ms == 2000


def test_codec_rejects_bad_items_with_codes() -> None:
    """Item parsing: roles, part types, ids and references have their own error codes."""
    cases = [
        ({"type": "message", "role": "robot", "content": [{"type": "input_text", "text": "x"}]}, "invalid_value"),
        ({"type": "message", "role": "system", "content": [{"type": "input_image", "image_url": "x"}]},
         "invalid_value"),
        ({"type": "function_call_output", "output": "x"}, "missing_required_parameter"),
        ({"type": "item_reference", "id": "x"}, "invalid_value"),
        ({"type": "message", "role": "user", "content": [{"type": "input_audio",
                                                           "audio": base64.b64encode(b"").decode()}]},
         "invalid_audio"),
    ]
    for item, code in cases:
        with pytest.raises(ProtocolError) as info:
            CODEC.decode(json.dumps({"type": "conversation.item.create", "item": item}))
        assert info.value.code == code, item
    with pytest.raises(ProtocolError) as info:
        CODEC.decode(json.dumps({"type": "response.create", "response": {"conversation": "other"}}))
    assert info.value.code == "invalid_value"


def test_whole_utterance_in_one_chunk_with_a_dropped_pause() -> None:
    """Pause → resume → pause → stop in one detector call (a recording uploaded at once): the
    first speculation's runner ending late must not end the turn the second one answers."""
    async def t(conv: Conversation, engine: FakeEngine, rt: FakeRuntime) -> None:
        out = vad(conv, SpeechStarted(0), SpeechPaused(1, AUDIO), SpeechResumed(1), SpeechPaused(2, AUDIO),
                  SpeechStopped(3000, AUDIO, 2))
        out += await drain(conv)
        ts = types(out)
        assert ts.count("response.created") == 1 and ts[-1] == "response.done", ts
        assert len(engine.stored) == 1 and conv.state is TurnState.IDLE

    run(t)
