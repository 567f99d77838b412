"""One response: a handle with explicit stages, and the assembly of its Realtime GA events.

Stages (``Response.stage``)::

    QUEUED ──▶ PERCEIVING ──▶ GENERATING ──▶ DONE
    asked for;  response.created   the agent       response.done sent (completed,
    waits for   sent; encoders     streams text,   cancelled or failed)
    transcripts run                 calls, audio

Output is assembled in GA order: each output item is announced (``response.output_item.added``,
``conversation.item.added`` for in-band responses), then its content part, then deltas, then
``…done`` events in reverse order, then ``response.done`` with every item and token ``usage``.
Audio output is a stage of the message item: with ``output_modalities: ["audio"]`` text goes out
as ``response.output_audio_transcript.delta`` beside ``response.output_audio.delta``; each audio
chunk records how much text it speaks, so the playout position (``audio_end_ms`` of a
``conversation.item.truncate``, or the time since the audio began at a barge-in) tells what
the person heard.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from agent import TurnControl
from server.core import events as E
from server.core.echo import Envelope, Reference
from server.core.gate import SpeculationGate
from server.core.items import ConversationLog, Item, Part
from server.core.settings import output_format_json

Status = Literal["in_progress", "completed", "cancelled", "failed", "incomplete"]


class ResponseStage(enum.Enum):
    QUEUED = "queued"
    PERCEIVING = "perceiving"
    GENERATING = "generating"
    DONE = "done"


@dataclass
class AudioMark:
    """One audio chunk sent: where it sits in the reply's audio and the reply text it speaks."""

    start_ms: float
    duration_ms: float
    text: str


@dataclass
class Response:
    """See the module docstring. ``emit``: where its events go (the outbox, or a gate)."""

    id: str
    emit: Callable[[E.ServerEvent], None]
    log: ConversationLog
    control: TurnControl
    in_band: bool = True                    # conversation "auto": items join the conversation
    metadata: dict[str, str] | None = None
    modalities: tuple[str, ...] = ("text",)
    max_output_tokens: int | None = None
    conversation_id: str | None = None
    stage: ResponseStage = ResponseStage.QUEUED
    status: Status = "in_progress"
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str | None = None
    error: dict[str, str] | None = None
    output: list[Item] = field(default_factory=list)
    message: Item | None = None             # the assistant message item, once it has text
    text: list[str] = field(default_factory=list)
    marks: list[AudioMark] = field(default_factory=list)
    output_rate: int = 24000                # PCM16 rate of the audio deltas
    speed: float = 1.0
    voice_name: str | None = None
    audio_ms: int = 0                       # output audio sent so far
    audio_exact_ms: float = 0.0             # the same, unrounded
    audio_started: float | None = None      # clock time the client began to receive audio
    heard: str | None = None                # a truncation: the text the person heard
    envelope: Envelope = field(default_factory=Envelope)   # of the audio sent (the echo reference)
    audio_cut_ms: float | None = None       # playback stopped here (a barge-in, a truncation)
    turn: dict[str, Any] | None = None      # the agent's summary of the stored turn
    timings: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    user_item_id: str | None = None
    gate: SpeculationGate | None = None     # a preemptive response: its events wait here
    in_agent: bool = False                  # the agent's turn has begun
    inputs: tuple[str, ...] = ()            # what the turn carried (text, speech, vision): the console
    done_json: dict[str, Any] | None = None   # the response.done body, once sent

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.stage is ResponseStage.DONE

    @property
    def audio(self) -> bool:
        return "audio" in self.modalities

    def request_cancel(self, reason: str) -> bool:
        """Ask the response to stop (the agent notices within one token); False if already asked."""
        if self.cancel.is_set() or self.done:
            return False
        self.cancel_reason = reason
        self.cancel.set()
        return True

    def json(self) -> dict[str, Any]:
        details: dict[str, Any] | None = None
        if self.status == "cancelled":
            details = {"type": "cancelled", "reason": self.cancel_reason or "client_cancelled"}
        elif self.status == "failed":
            details = {"type": "failed", "error": self.error}
        elif self.status == "incomplete":
            details = {"type": "incomplete", "reason": "max_output_tokens"}
        return {"id": self.id, "object": "realtime.response", "status": self.status, "status_details": details,
                "output": [i.to_json() for i in self.output], "conversation_id": self.conversation_id,
                "output_modalities": list(self.modalities), "max_output_tokens": self.max_output_tokens or "inf",
                "metadata": self.metadata, "usage": self.usage,
                "audio": {"output": {"format": output_format_json(self.output_rate), "voice": self.voice_name}}}

    def start(self) -> None:
        """response.created: the turn's transcripts are in and perception begins."""
        self.stage = ResponseStage.PERCEIVING
        self.emit(E.ResponseCreated(self.json()))
        # One response at a time per session; its token cap (the local model's own counts).
        cap = self.max_output_tokens or 4096
        self.emit(E.RateLimitsUpdated([{"name": "requests", "limit": 1, "remaining": 0, "reset_seconds": 0.0},
                                       {"name": "tokens", "limit": cap, "remaining": cap, "reset_seconds": 0.0}]))

    # ---- output ---------------------------------------------------------------------------

    def _add_item(self, item: Item) -> int:
        index = len(self.output)
        self.output.append(item)
        self.emit(E.OutputItemAdded(self.id, index, item.to_json()))
        if self.in_band:
            prev = self.log.add(item)
            self.emit(E.ItemAdded(prev, item.to_json()))
        return index

    def _open_message(self) -> Item:
        if self.message is None:
            item = Item(id=_new_id("item"), type="message", role="assistant", status="in_progress")
            self.message = item
            self._add_item(item)
            part = Part("output_audio" if self.audio else "output_text")
            item.content.append(part)
            part_json = {"type": "audio", "transcript": ""} if self.audio else {"type": "text", "text": ""}
            self.emit(E.ContentPartAdded(self.id, item.id, self.output.index(item), 0, part_json))
        return self.message

    def text_delta(self, delta: str) -> None:
        """A piece of reply text (a transcript delta when the reply is spoken)."""
        if not delta:
            return
        self.stage = ResponseStage.GENERATING
        item = self._open_message()
        self.text.append(delta)
        part = item.content[0]
        index = self.output.index(item)
        if self.audio:
            part.transcript = (part.transcript or "") + delta
            self.emit(E.AudioTranscriptDelta(self.id, item.id, index, 0, delta))
        else:
            part.text = (part.text or "") + delta
            self.emit(E.TextDelta(self.id, item.id, index, 0, delta))

    def audio_delta(self, pcm: bytes, rate: int, now: float, text: str = "") -> None:
        """A chunk of spoken reply (PCM16 at ``rate``) that speaks ``text`` of the reply."""
        if not pcm:
            return
        item = self._open_message()
        if self.audio_started is None and (self.gate is None or self.gate.released):
            self.audio_started = now
        duration = 1000.0 * len(pcm) / 2 / rate
        self.envelope.add(pcm, rate)
        self.marks.append(AudioMark(self.audio_exact_ms, duration, text))
        self.audio_exact_ms += duration
        self.audio_ms = int(self.audio_exact_ms)
        item.content[0].audio_ms = self.audio_ms
        self.emit(E.AudioDelta(self.id, item.id, self.output.index(item), 0, base64.b64encode(pcm).decode()))

    def released(self, now: float) -> None:
        """A held (preemptive) response's events just went out: its audio starts playing now."""
        if self.audio_started is None and self.marks:
            self.audio_started = now

    def function_call(self, name: str, arguments: dict[str, Any], call_id: str) -> None:
        """A validated action of the agent, as a function_call output item (and, for clients
        that take them, the ``response.action`` extension event)."""
        self.stage = ResponseStage.GENERATING
        self._open_message()   # the reply's message stays output 0, whatever the agent does first
        args = json.dumps(arguments, separators=(",", ":"))
        item = Item(id=_new_id("item"), type="function_call", status="in_progress", call_id=call_id, name=name,
                    arguments="")
        index = self._add_item(item)
        self.emit(E.FunctionCallArgumentsDelta(self.id, item.id, index, call_id, args))
        item.arguments, item.status = args, "completed"
        self.emit(E.FunctionCallArgumentsDone(self.id, item.id, index, call_id, name, args))
        self._close_item(item, index)
        self.emit(E.ResponseAction(self.id, item.id, call_id, name, arguments))

    def _close_item(self, item: Item, index: int) -> None:
        self.emit(E.OutputItemDone(self.id, index, item.to_json()))
        if self.in_band and item.id in self.log:
            self.emit(E.ItemDone(None, item.to_json()))

    # ---- playout and truncation -------------------------------------------------------------

    def playout_ms(self, now: float) -> int:
        """How far the output audio has played, at most: what was sent, and no more than the
        time since the first chunk (clients play in real time)."""
        if self.audio_started is None:
            return 0
        return min(self.audio_ms, int(1000 * (now - self.audio_started)))

    def playing(self, now: float) -> bool:
        """Audio was sent that a client playing it in real time has not finished yet."""
        return self.audio_started is not None and self.audio_cut_ms is None and self.playout_ms(now) < self.audio_ms

    def cut_playout(self, audio_end_ms: float) -> None:
        """The client stopped playing at ``audio_end_ms`` (no echo of the rest will come)."""
        self.audio_cut_ms = audio_end_ms if self.audio_cut_ms is None else min(self.audio_cut_ms, audio_end_ms)

    def reference(self) -> Reference | None:
        """This reply's audio as the client plays it (for the echo gate); None before it plays."""
        if self.audio_started is None or not self.envelope.values:
            return None
        return Reference(self.envelope, self.audio_started, self.audio_cut_ms)

    def heard_text(self, audio_end_ms: float) -> str:
        """The reply text spoken within the first ``audio_end_ms`` of its audio: whole chunks
        before that point and, of the chunk playing then, its words in proportion."""
        words: list[str] = []
        for m in self.marks:
            if m.start_ms + m.duration_ms <= audio_end_ms:
                words += m.text.split()
            elif m.start_ms < audio_end_ms:
                part = m.text.split()
                words += part[:round(len(part) * (audio_end_ms - m.start_ms) / m.duration_ms)]
                break
            else:
                break
        return " ".join(words)

    # ---- the end ----------------------------------------------------------------------------

    def finish(self, status: Status) -> None:
        """Close open items and send response.done (after this, nothing more is emitted)."""
        if self.done:
            return
        self.status = status
        text = "".join(self.text)
        if self.message is not None:
            item = self.message
            index = self.output.index(item)
            part = item.content[0]
            if status == "completed":
                if self.audio:
                    self.emit(E.AudioDone(self.id, item.id, index, 0))
                    self.emit(E.AudioTranscriptDone(self.id, item.id, index, 0, text))
                    part_json: dict[str, Any] = {"type": "audio", "transcript": text}
                else:
                    self.emit(E.TextDone(self.id, item.id, index, 0, text))
                    part_json = {"type": "text", "text": text}
                self.emit(E.ContentPartDone(self.id, item.id, index, 0, part_json))
            item.status = "completed" if status == "completed" else "incomplete"
            if self.heard is not None:   # truncated while it streamed: keep what was heard
                part.text, part.transcript = (None, self.heard) if self.audio else (self.heard, None)
            self._close_item(item, index)
        self.stage = ResponseStage.DONE
        self.done_json = {**self.json(), "turn": self.turn, "timings_ms": self.timings}
        self.emit(E.ResponseDone(self.done_json))


def usage_json(*, input_tokens: int, cached_tokens: int, output_tokens: int, audio_input_tokens: int = 0,
               image_tokens: int = 0) -> dict[str, Any]:
    """``response.done.usage`` in GA shape (the local model's own token counts)."""
    text_in = max(0, input_tokens - audio_input_tokens - image_tokens)
    return {"total_tokens": input_tokens + output_tokens, "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "input_token_details": {"cached_tokens": cached_tokens, "text_tokens": text_in,
                                    "audio_tokens": audio_input_tokens, "image_tokens": image_tokens},
            "output_token_details": {"text_tokens": output_tokens, "audio_tokens": 0}}


def _new_id(prefix: str) -> str:
    from server.protocol import new_id

    return new_id(prefix)
