"""Typed wire events: every client event the server takes and every server event it sends.

Each is a small frozen dataclass; :mod:`server.core.codec` is the one place that turns JSON (or
a binary message) into a client event and a server event into JSON. Server events carry their
Realtime GA ``type``; those this project adds (``extension = True``) are left out for a session
with ``extensions: false`` (strict Realtime clients). Nested objects (items, responses, the
session) are built by their owners (:mod:`~server.core.items`, :mod:`~server.core.response`) as
JSON-ready dicts in GA shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

Json = dict[str, Any]

# ---- client events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientEvent:
    type: ClassVar[str] = ""
    event_id: str | None


@dataclass(frozen=True)
class SessionUpdate(ClientEvent):
    type: ClassVar[str] = "session.update"
    session: Json


@dataclass(frozen=True)
class AudioAppend(ClientEvent):
    """Raw bytes in the session's input format (PCM16 LE, μ-law or A-law)."""

    type: ClassVar[str] = "input_audio_buffer.append"
    audio: bytes


@dataclass(frozen=True)
class AudioCommit(ClientEvent):
    type: ClassVar[str] = "input_audio_buffer.commit"


@dataclass(frozen=True)
class AudioClear(ClientEvent):
    type: ClassVar[str] = "input_audio_buffer.clear"


@dataclass(frozen=True)
class ImageAppend(ClientEvent):
    """mmagent: one camera frame (JPEG or PNG bytes)."""

    type: ClassVar[str] = "input_image_buffer.append"
    image: bytes


@dataclass(frozen=True)
class NewItem:
    """An item a client adds (``conversation.item.create``, or ``response.create``'s ``input``).

    ``kind``: ``message`` (role user / system / assistant), ``function_call`` or
    ``function_call_output``; ``reference``: an ``item_reference`` to an existing item's id.
    ``audio`` parts are raw bytes in the session's input format (decoded by the core).
    """

    kind: Literal["message", "function_call", "function_call_output", "item_reference"]
    id: str | None = None
    role: Literal["user", "system", "assistant"] | None = None
    texts: tuple[str, ...] = ()
    images: tuple[bytes, ...] = ()
    audios: tuple[bytes, ...] = ()
    part_types: tuple[str, ...] = ()   # content part types, in order (for the echo)
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None


@dataclass(frozen=True)
class ItemCreate(ClientEvent):
    type: ClassVar[str] = "conversation.item.create"
    item: NewItem
    previous_item_id: str | None = None


@dataclass(frozen=True)
class ItemDelete(ClientEvent):
    type: ClassVar[str] = "conversation.item.delete"
    item_id: str


@dataclass(frozen=True)
class ItemRetrieve(ClientEvent):
    type: ClassVar[str] = "conversation.item.retrieve"
    item_id: str


@dataclass(frozen=True)
class ItemTruncate(ClientEvent):
    type: ClassVar[str] = "conversation.item.truncate"
    item_id: str
    content_index: int
    audio_end_ms: int


UNSET: Any = object()   # a response.create field that was not given (distinct from null)


@dataclass(frozen=True)
class ResponseParams:
    """``response.create``'s ``response`` object. ``conversation="none"``: out of band (not added to
    the conversation, not stored); ``input``: the items to answer instead of the pending turn."""

    conversation: Literal["auto", "none"] = "auto"
    input: tuple[NewItem, ...] | None = None
    instructions: str | None = None
    max_output_tokens: Any = UNSET          # UNSET: the session's; None: "inf"; else an int
    metadata: dict[str, str] | None = None
    output_modalities: tuple[str, ...] | None = None
    tool_choice: str | None = None


@dataclass(frozen=True)
class ResponseCreate(ClientEvent):
    type: ClassVar[str] = "response.create"
    response: ResponseParams = field(default_factory=ResponseParams)


@dataclass(frozen=True)
class ResponseCancel(ClientEvent):
    type: ClassVar[str] = "response.cancel"
    response_id: str | None = None


CLIENT_EVENT_TYPES: tuple[type[ClientEvent], ...] = (
    SessionUpdate, AudioAppend, AudioCommit, AudioClear, ImageAppend, ItemCreate, ItemDelete, ItemRetrieve,
    ItemTruncate, ResponseCreate, ResponseCancel)

# ---- server events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerEvent:
    type: ClassVar[str] = ""
    extension: ClassVar[bool] = False   # this project's own (left out for strict clients)

    def fields(self) -> Json:
        """The event's fields (not ``type`` / ``event_id``), JSON-ready."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class SessionCreated(ServerEvent):
    type: ClassVar[str] = "session.created"
    session: Json


@dataclass(frozen=True)
class SessionUpdated(ServerEvent):
    type: ClassVar[str] = "session.updated"
    session: Json


@dataclass(frozen=True)
class ErrorEvent(ServerEvent):
    type: ClassVar[str] = "error"
    code: str
    message: str
    error_type: str
    param: str | None = None
    event_id: str | None = None   # the client event that caused it
    retry_after_ms: int | None = None   # server_busy: when to try again

    def fields(self) -> Json:
        err: Json = {"type": self.error_type, "code": self.code, "message": self.message,
                     "param": self.param, "event_id": self.event_id}
        if self.retry_after_ms is not None:
            err["retry_after_ms"] = self.retry_after_ms
        return {"error": err}


@dataclass(frozen=True)
class SpeechStarted(ServerEvent):
    type: ClassVar[str] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


@dataclass(frozen=True)
class SpeechStopped(ServerEvent):
    type: ClassVar[str] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True)
class AudioCommitted(ServerEvent):
    type: ClassVar[str] = "input_audio_buffer.committed"
    previous_item_id: str | None
    item_id: str


@dataclass(frozen=True)
class AudioCleared(ServerEvent):
    type: ClassVar[str] = "input_audio_buffer.cleared"


@dataclass(frozen=True)
class ItemAdded(ServerEvent):
    type: ClassVar[str] = "conversation.item.added"
    previous_item_id: str | None
    item: Json


@dataclass(frozen=True)
class ItemDone(ServerEvent):
    type: ClassVar[str] = "conversation.item.done"
    previous_item_id: str | None
    item: Json


@dataclass(frozen=True)
class ItemDeleted(ServerEvent):
    type: ClassVar[str] = "conversation.item.deleted"
    item_id: str


@dataclass(frozen=True)
class ItemRetrieved(ServerEvent):
    type: ClassVar[str] = "conversation.item.retrieved"
    item: Json


@dataclass(frozen=True)
class ItemTruncated(ServerEvent):
    type: ClassVar[str] = "conversation.item.truncated"
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True)
class TranscriptionCompleted(ServerEvent):
    """``confidence``, ``language``, ``duration_s``: mmagent fields beside the GA ones."""

    type: ClassVar[str] = "conversation.item.input_audio_transcription.completed"
    item_id: str
    content_index: int
    transcript: str
    usage: Json
    confidence: float
    language: str
    duration_s: float


@dataclass(frozen=True)
class TranscriptionFailed(ServerEvent):
    type: ClassVar[str] = "conversation.item.input_audio_transcription.failed"
    item_id: str
    content_index: int
    code: str
    message: str

    def fields(self) -> Json:
        return {"item_id": self.item_id, "content_index": self.content_index,
                "error": {"type": "server_error", "code": self.code, "message": self.message, "param": None}}


@dataclass(frozen=True)
class ResponseCreated(ServerEvent):
    type: ClassVar[str] = "response.created"
    response: Json


@dataclass(frozen=True)
class ResponseDone(ServerEvent):
    type: ClassVar[str] = "response.done"
    response: Json


@dataclass(frozen=True)
class OutputItemAdded(ServerEvent):
    type: ClassVar[str] = "response.output_item.added"
    response_id: str
    output_index: int
    item: Json


@dataclass(frozen=True)
class OutputItemDone(ServerEvent):
    type: ClassVar[str] = "response.output_item.done"
    response_id: str
    output_index: int
    item: Json


@dataclass(frozen=True)
class ContentPartAdded(ServerEvent):
    type: ClassVar[str] = "response.content_part.added"
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: Json


@dataclass(frozen=True)
class ContentPartDone(ServerEvent):
    type: ClassVar[str] = "response.content_part.done"
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: Json


@dataclass(frozen=True)
class TextDelta(ServerEvent):
    type: ClassVar[str] = "response.output_text.delta"
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str


@dataclass(frozen=True)
class TextDone(ServerEvent):
    type: ClassVar[str] = "response.output_text.done"
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    text: str


@dataclass(frozen=True)
class AudioDelta(ServerEvent):
    """``delta``: base64 of PCM16 at the session's output rate."""

    type: ClassVar[str] = "response.output_audio.delta"
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str


@dataclass(frozen=True)
class AudioDone(ServerEvent):
    type: ClassVar[str] = "response.output_audio.done"
    response_id: str
    item_id: str
    output_index: int
    content_index: int


@dataclass(frozen=True)
class AudioTranscriptDelta(ServerEvent):
    type: ClassVar[str] = "response.output_audio_transcript.delta"
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str


@dataclass(frozen=True)
class AudioTranscriptDone(ServerEvent):
    type: ClassVar[str] = "response.output_audio_transcript.done"
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    transcript: str


@dataclass(frozen=True)
class FunctionCallArgumentsDelta(ServerEvent):
    type: ClassVar[str] = "response.function_call_arguments.delta"
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str


@dataclass(frozen=True)
class FunctionCallArgumentsDone(ServerEvent):
    type: ClassVar[str] = "response.function_call_arguments.done"
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class RateLimitsUpdated(ServerEvent):
    type: ClassVar[str] = "rate_limits.updated"
    rate_limits: list[Json]


# ---- this project's own events (extensions) ----------------------------------------------------


@dataclass(frozen=True)
class PerceptionUpdated(ServerEvent):
    """What the encoders saw: ``source="frame"`` (presence) or ``"turn"`` (a turn's inputs)."""

    type: ClassVar[str] = "perception.updated"
    extension: ClassVar[bool] = True
    source: Literal["frame", "turn"]
    item_id: str | None
    response_id: str | None
    faces_present: bool
    face_count: int
    labels: list[Json]
    frames: list[Json]
    timings_ms: dict[str, float]
    speech: Json | None = None
    text: Json | None = None

    def fields(self) -> Json:
        out = super().fields()
        if self.source == "frame":
            out.pop("speech")
            out.pop("text")
        return out


@dataclass(frozen=True)
class TurnFused(ServerEvent):
    """The fused turn (intent, emotion, modality weights); ``fused`` keys go at the top level."""

    type: ClassVar[str] = "turn.fused"
    extension: ClassVar[bool] = True
    item_id: str | None
    response_id: str
    transcript_confidence: float | None
    fused: Json

    def fields(self) -> Json:
        return {"item_id": self.item_id, "response_id": self.response_id,
                "transcript_confidence": self.transcript_confidence, **self.fused}


@dataclass(frozen=True)
class ResponseAction(ServerEvent):
    """An action for the device, parsed arguments (the same call as the function_call item)."""

    type: ClassVar[str] = "response.action"
    extension: ClassVar[bool] = True
    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: Json


def pcm_of(audio: bytes) -> np.ndarray:
    """PCM16 LE bytes → int16 samples (n,)."""
    return np.frombuffer(audio, dtype="<i2")
