"""One WebSocket session: protocol events in, turns through the shared engine, reply events out.

The reader loop (``run``) only validates and routes events; heavy work runs in tasks so that
cancels, pings and other events keep flowing while a turn is perceived or a reply generates.
Turns of one session are answered one at a time (``_turn_lock``). A disconnect cancels every
task of the session.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from perception.errors import MMAgentError
from server import protocol as P
from server.console import log_turn
from server.errors import ProtocolError
from server.limits import ErrorBudget, TokenBucket
from server.vad import SpeechPaused, SpeechResumed, SpeechStarted, SpeechStopped, StreamingVad

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from server.app import Server

log = logging.getLogger(__name__)

# turn.fused fields when the server runs without a fusion checkpoint.
_NO_FUSION: dict[str, Any] = {"intent": None, "intent_confidence": None, "intent_probs": {}, "emotion": None,
                              "emotion_confidence": None, "emotion_probs": {}, "addressee": None,
                              "addressee_prob": None, "modality_weights": {}}

_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


# While turns wait for their first delta, a session's presence update waits up to this many
# presence intervals.
PRESENCE_DEFER_FACTOR = 3


class Hold:
    """The events of a preemptive response, kept back until its turn is confirmed.

    ``state``: "held" (events queue up) → "flushing" → "released" (events go out as sent), or
    "discarded" (speech went on: events are dropped, the reply is cancelled and forgotten).
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.state = "held"
        self.response: Response | None = None

    def discarded(self) -> bool:
        return self.state == "discarded"

    def discard(self) -> bool:
        """Drop the response unless it was already released; True if this call dropped it."""
        if self.state == "held":
            self.state = "discarded"
            self.events.clear()
            if self.response is not None:
                self.response.cancel.set()
            return True
        return False


# The hold of the preemptive response the current task belongs to (None: send at once).
_HOLD: contextvars.ContextVar[Hold | None] = contextvars.ContextVar("mmagent_hold", default=None)


@dataclass
class Speculation:
    """Transcription started after a short pause (``vad.speculative_ms``), before the turn ends."""

    token: int                      # the VAD's pause token; a later pause or more speech voids it
    task: asyncio.Task[Any]         # -> SpeechEncoding
    frames: list[Frame]             # the turn's frames, chosen as the speech ended
    hold: Hold | None = None        # a preemptive response (vad.preemptive_response), held back


def _turn_text(typed: list[str], speech: Any) -> str:
    """The turn's text: typed messages, then the transcript (docs/CONTRACTS.md)."""
    texts = list(typed)
    if speech is not None and speech.transcript.strip():
        texts.append(speech.transcript.strip())
    return " ".join(texts)


class WaitingTurn:
    """Counts one turn in ``engine.turns_in_flight`` from its end of input to its first delta."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.engine.turns_in_flight += 1
        self.counted = True

    def release(self) -> None:
        if self.counted:
            self.counted = False
            self.engine.turns_in_flight -= 1


@dataclass
class Frame:
    """One camera frame kept by the session; its encoding is computed at most once."""

    data: bytes
    received: float
    event_id: str | None
    encoding: asyncio.Task[Any] | None = None


@dataclass
class Response:
    """The reply being produced for one turn."""

    id: str
    item_id: str                  # the assistant message item
    user_item_id: str | None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str | None = None
    text: list[str] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)
    in_agent: bool = False        # agent.respond has begun (the agent has a turn in progress)
    modalities: tuple[str, ...] = ()   # what the turn carried, for the console's turn line


@dataclass
class PendingTurn:
    """User input waiting for the next response."""

    texts: list[str] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)
    speech: asyncio.Task[Any] | None = None      # -> SpeechEncoding
    item_id: str | None = None

    def empty(self) -> bool:
        return not self.texts and not self.images and self.speech is None


class Session:
    def __init__(self, server: Server, ws: ServerConnection, *, session_id: str, token: str | None,
                 resumed: bool, agent_session: Any) -> None:
        self.server, self.ws, self.id, self.token = server, ws, session_id, token
        self.resumed, self.agent_session = resumed, agent_session
        cfg = server.config
        self.limits = cfg.limits
        self.settings = P.SessionSettings(
            rate=P.DEFAULT_AUDIO_RATE,
            turn_detection=P.TurnDetection(
                threshold=cfg.vad.threshold, prefix_padding_ms=cfg.vad.prefix_padding_ms,
                silence_duration_ms=cfg.vad.silence_duration_ms, create_response=cfg.vad.create_response,
                interrupt_response=cfg.vad.interrupt_response),
            max_output_tokens=cfg.pipeline.max_output_tokens,
            presence_interval_ms=cfg.pipeline.presence_interval_ms)
        self.frame_bucket = TokenBucket(self.limits.max_frames_per_s, self.limits.frame_burst)
        self.audio_bucket = TokenBucket(self.limits.max_audio_seconds_per_s, self.limits.audio_burst_s)
        self.errors = ErrorBudget(self.limits.max_errors_per_10s, 10.0)
        self.vad: StreamingVad | None = None
        self.manual_audio: list[np.ndarray] = []
        self.manual_len = 0
        self.audio_received = 0              # samples at the session rate, for audio_*_ms
        self.frames: deque[Frame] = deque(maxlen=self.limits.max_frames_per_turn)
        self.pending = PendingTurn()
        self.last_item_id: str | None = None
        self.speech_item_id: str | None = None
        self.response: Response | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self._turn_lock = asyncio.Lock()
        self._last_presence = 0.0
        self._presence_task: asyncio.Task[Any] | None = None
        self._speculation: Speculation | None = None
        self.after_created: list[dict[str, Any]] = []   # events sent right after session.created
        self.closed = False
        self.fatal: BaseException | None = None
        self._reset_vad()

    # ---- output ---------------------------------------------------------------------------------

    async def send(self, ev: dict[str, Any]) -> None:
        hold = _HOLD.get()
        if hold is not None and hold.state != "released":
            if hold.state != "discarded":   # a preemptive response: kept until its turn ends
                hold.events.append(ev)
            return
        if self.closed:
            return
        try:
            await self.ws.send(json.dumps(ev, separators=(",", ":")))
        except Exception:  # ConnectionClosed and friends: the reader loop ends the session
            self.closed = True

    async def send_error(self, code: str, message: str, *, param: str | None = None,
                         event_id: str | None = None) -> None:
        self.server.metrics.errors.inc(code=code)
        await self.send(P.error_event(code, message, param=param, event_id=event_id))

    def session_json(self) -> dict[str, Any]:
        s, lim = self.settings, self.limits
        pack = self.server.pack_name
        return {
            "id": self.id, "object": "realtime.session", "type": "realtime", "model": "mmagent",
            "protocol_version": P.PROTOCOL_VERSION, "resumed": self.resumed,
            "output_modalities": ["text"], "max_output_tokens": s.max_output_tokens or "inf",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": s.rate},
                                "turn_detection": s.turn_detection.to_json() if s.turn_detection else None}},
            "vision": {"presence_updates": s.presence_updates, "presence_interval_ms": s.presence_interval_ms,
                       "max_frames_per_turn": lim.max_frames_per_turn, "frame_window_s": lim.frame_window_s},
            "pack": {"name": pack},
            "limits": {"max_message_bytes": lim.max_message_bytes, "max_frames_per_s": lim.max_frames_per_s,
                       "max_audio_seconds_per_s": lim.max_audio_seconds_per_s,
                       "max_pending_audio_s": lim.max_pending_audio_s, "idle_timeout_s": lim.idle_timeout_s},
        }

    # ---- reader loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Read and handle client messages until the socket closes or a fatal error."""
        from websockets.exceptions import ConnectionClosed

        await self.send(P.event("session.created", session=self.session_json()))
        for ev in self.after_created:
            await self.send(ev)
        while not self.closed:
            try:
                async with asyncio.timeout(self.limits.idle_timeout_s):
                    message = await self.ws.recv()
            except TimeoutError:
                await self.close_with("idle_timeout", f"no client message for {self.limits.idle_timeout_s:g} s",
                                      P.CLOSE_IDLE)
                return
            except ConnectionClosed:
                return
            if self.fatal is not None:
                raise self.fatal
            await self.handle_message(message)
        if self.fatal is not None:
            raise self.fatal

    async def close_with(self, code: str, message: str, close_code: int) -> None:
        await self.send_error(code, message)
        self.closed = True
        await self.ws.close(close_code, code)

    async def handle_message(self, message: str | bytes) -> None:
        event_id: str | None = None
        try:
            if len(message) > self.limits.max_message_bytes:
                raise ProtocolError("message_too_large",
                                    f"message of {len(message)} bytes is over max_message_bytes "
                                    f"({self.limits.max_message_bytes})")
            payload: bytes | None = None
            if isinstance(message, bytes):
                ev, payload = P.parse_binary_message(message)
            else:
                ev = P.parse_text_message(message)
            event_id = ev.get("event_id")
            await self.dispatch(ev, payload)
        except ProtocolError as exc:
            await self._client_error(exc.code, str(exc), exc.param, exc.event_id or event_id)
        except MMAgentError as exc:  # perception's input validation (text, image, audio)
            await self._client_error(exc.code, str(exc), None, event_id)

    async def _client_error(self, code: str, message: str, param: str | None, event_id: str | None) -> None:
        await self.send_error(code, message, param=param, event_id=event_id)
        if not self.errors.allow():
            await self.close_with("too_many_errors",
                                  f"more than {self.limits.max_errors_per_10s} errors in 10 s", P.CLOSE_POLICY)

    async def dispatch(self, ev: dict[str, Any], payload: bytes | None) -> None:
        t = ev["type"]
        eid = ev.get("event_id")
        if t == "input_audio_buffer.append":
            await self.on_audio_append(ev, payload, eid)
        elif t == "input_image_buffer.append":
            await self.on_image_append(ev, payload, eid)
        elif t == "session.update":
            await self.on_session_update(ev, eid)
        elif t == "input_audio_buffer.commit":
            await self.on_commit(eid)
        elif t == "input_audio_buffer.clear":
            self._clear_audio()
            await self.send(P.event("input_audio_buffer.cleared"))
        elif t == "conversation.item.create":
            await self.on_item_create(ev, eid)
        elif t == "response.create":
            await self.on_response_create(ev, eid)
        elif t == "response.cancel":
            await self.on_response_cancel(ev, eid)

    # ---- session.update ---------------------------------------------------------------------------

    async def on_session_update(self, ev: dict[str, Any], eid: str | None) -> None:
        session = P.get_field(ev, "session", dict, path="session", event_id=eid, required=True)
        new = P.apply_session_update(self.settings, session, eid)
        if new.rate != self.settings.rate and self._audio_pending():
            raise ProtocolError("invalid_state", "cannot change the audio rate while audio is buffered; "
                                "send input_audio_buffer.clear first", param="session.audio.input.format.rate",
                                event_id=eid)
        changed_vad = (new.rate != self.settings.rate) or (new.turn_detection != self.settings.turn_detection)
        self.settings = new
        if changed_vad:
            self._reset_vad()
        await self.send(P.event("session.updated", session=self.session_json()))

    def _reset_vad(self) -> None:
        td = self.settings.turn_detection
        self.manual_audio, self.manual_len = [], 0
        if td is None:
            self.vad = None
            return
        self.vad = StreamingVad(self.settings.rate, threshold=td.threshold, prefix_padding_ms=td.prefix_padding_ms,
                                silence_duration_ms=td.silence_duration_ms, backend=self.server.config.vad.backend,
                                speculative_ms=self.server.config.vad.speculative_ms)

    def _audio_pending(self) -> bool:
        return self.manual_len > 0 or (self.vad is not None and self.vad.speaking)

    def _clear_audio(self) -> None:
        self._take_speculation(None)
        self.manual_audio, self.manual_len = [], 0
        if self.vad is not None:
            self.vad.clear()
        self.speech_item_id = None

    # ---- audio ----------------------------------------------------------------------------------

    async def on_audio_append(self, ev: dict[str, Any], payload: bytes | None, eid: str | None) -> None:
        if payload is None:
            b64 = P.get_field(ev, "audio", str, path="audio", event_id=eid, required=True)
            payload = P.decode_base64(b64, code="invalid_audio", path="audio", event_id=eid)
        if len(payload) % 2:
            raise ProtocolError("invalid_audio", "PCM16 audio must have an even number of bytes", param="audio",
                                event_id=eid)
        if not payload:
            return
        pcm = np.frombuffer(payload, dtype="<i2")
        seconds = len(pcm) / self.settings.rate
        if not self.audio_bucket.take(seconds):
            raise ProtocolError("audio_rate_exceeded",
                                f"audio arrives faster than max_audio_seconds_per_s "
                                f"({self.limits.max_audio_seconds_per_s:g} s per second); chunk dropped",
                                event_id=eid)
        pending = (self.vad.pending_s if self.vad is not None else self.manual_len / self.settings.rate)
        if pending + seconds > self.limits.max_pending_audio_s:
            raise ProtocolError("audio_buffer_full",
                                f"buffered audio would exceed max_pending_audio_s "
                                f"({self.limits.max_pending_audio_s:g} s); chunk dropped", event_id=eid)
        self.audio_received += len(pcm)
        if self.vad is None:
            self.manual_audio.append(pcm)
            self.manual_len += len(pcm)
            return
        vad = self.vad
        t0 = time.perf_counter()
        events = await asyncio.get_running_loop().run_in_executor(
            self.server.engine.light_executor, vad.process, pcm)
        self.server.metrics.stage.observe(time.perf_counter() - t0, stage="vad")
        if vad is not self.vad:   # settings changed while the chunk was processed
            return
        for e in events:
            if isinstance(e, SpeechStarted):
                await self._speech_started(e.audio_start_ms)
            elif isinstance(e, SpeechPaused):
                self._take_speculation(None)   # speech resumed after an earlier pause: that one is stale
                frames = self._turn_frames()   # what the camera saw as the speech ended
                task = self._spawn(self._speculate(e.audio, frames), name="speculate")
                self._speculation = spec = Speculation(e.token, task, frames)
                td = self.settings.turn_detection
                if (self.server.config.vad.preemptive_response and td is not None and td.create_response
                        and self.response is None and not self._turn_lock.locked() and self.pending.empty()):
                    spec.hold = Hold()
                    turn = PendingTurn(speech=task, item_id=self.speech_item_id)
                    self._spawn(self._held_answer(spec.hold, turn, frames), name="preempt")
            elif isinstance(e, SpeechResumed):
                if self._speculation is not None and self._speculation.token == e.token:
                    self._take_speculation(None)
            elif isinstance(e, SpeechStopped):
                await self._speech_stopped(e.audio_end_ms, e.audio, e.paused_token)

    async def _speculate(self, audio: np.ndarray, frames: list[Frame]) -> Any:
        """Transcribe during the end-of-turn silence; meanwhile analyse the turn's frames and,
        once the transcript is known, encode the turn's text, so that the turn, if the silence
        lasts, starts with its perception done (frame analyses are kept on the frames, texts in
        the engine's cache)."""
        for f in frames:
            self._frame_encoding(f)
        enc = await self.server.engine.encode_speech(audio, self.settings.rate)
        text = _turn_text(self.pending.texts, enc)
        if text:
            self.server.engine.prefetch_text(text)
        return enc

    def _take_speculation(self, token: int | None) -> Speculation | None:
        """The speculation of pause ``token`` if it is the one running; cancel any other (and
        drop its preemptive response without a trace)."""
        spec, self._speculation = self._speculation, None
        if spec is not None and (token is None or spec.token != token):
            spec.task.cancel()
            self._discard(spec.hold)
            return None
        return spec

    def _discard(self, hold: Hold | None) -> None:
        if hold is not None and hold.discard():
            self.server.metrics.preemptive.inc(outcome="discarded")

    async def _held_answer(self, hold: Hold, pending: PendingTurn, frames: list[Frame]) -> None:
        """A preemptive response: the turn's answer, started at a pause, its events held."""
        _HOLD.set(hold)   # this task's own context: its sends go to the hold
        await self._answer(pending, frames, None)

    async def _release(self, hold: Hold) -> None:
        """The turn ended as speculated: send the held events, in order, then let the rest through."""
        if hold.state != "held":
            return
        self.server.metrics.preemptive.inc(outcome="released")
        hold.state = "flushing"
        while hold.events:   # events the response sends meanwhile are queued behind these
            await self.send(hold.events.pop(0))
        hold.state = "released"

    async def _speech_started(self, start_ms: int) -> None:
        self.speech_item_id = P.new_id("item")
        await self.send(P.event("input_audio_buffer.speech_started", audio_start_ms=start_ms,
                                item_id=self.speech_item_id))
        td = self.settings.turn_detection
        r = self.response
        if td is not None and td.interrupt_response and r is not None and not r.cancel.is_set():
            if r.in_agent and self.agent_session is not None:
                self.agent_session.mark_barge_in()   # the stored turn records the interruption
            self._cancel_response("turn_detected")

    async def _speech_stopped(self, end_ms: int, audio: np.ndarray, paused_token: int | None) -> None:
        item_id = self.speech_item_id or P.new_id("item")
        self.speech_item_id = None
        await self.send(P.event("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item_id))
        td = self.settings.turn_detection
        await self._commit_audio(item_id, audio, respond=td is None or td.create_response,
                                 speculation=self._take_speculation(paused_token))

    async def on_commit(self, eid: str | None) -> None:
        if self.vad is not None:
            stopped = self.vad.flush()
            if stopped is None:
                raise ProtocolError("input_audio_buffer_commit_empty", "no speech is buffered", event_id=eid)
            item_id = self.speech_item_id or P.new_id("item")
            self.speech_item_id = None
            self._take_speculation(None)
            td = self.settings.turn_detection
            await self._commit_audio(item_id, stopped.audio, respond=td is None or td.create_response)
            return
        if not self.manual_len:
            raise ProtocolError("input_audio_buffer_commit_empty", "the input audio buffer is empty", event_id=eid)
        audio = np.concatenate(self.manual_audio)
        self.manual_audio, self.manual_len = [], 0
        await self._commit_audio(P.new_id("item"), audio, respond=True)

    async def _commit_audio(self, item_id: str, audio: np.ndarray, *, respond: bool,
                            speculation: Speculation | None = None) -> None:
        prev, self.last_item_id = self.last_item_id, item_id
        await self.send(P.event("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id))
        await self.send(P.event("conversation.item.added", previous_item_id=prev, item={
            "id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}]}))
        if speculation is not None and speculation.hold is not None and respond:
            # The response started at the pause: send the transcript, then its held events.
            self._spawn(self._transcribe(item_id, audio, speculation.task, release=speculation.hold),
                        name="transcribe")
            return
        if speculation is not None:
            self._discard(speculation.hold)
        speech = self._spawn(self._transcribe(item_id, audio, speculation.task if speculation else None),
                             name="transcribe")
        self.pending.speech = speech
        self.pending.item_id = item_id
        if respond:
            self._start_response(None, None, frames=speculation.frames if speculation else None)

    async def _transcribe(self, item_id: str, audio: np.ndarray, speculation: asyncio.Task[Any] | None = None, *,
                          release: Hold | None = None) -> Any:
        """Transcribe (or await the speculative transcription); ``release``: the preemptive
        response whose held events follow the transcript."""
        t0 = time.perf_counter()
        try:
            try:
                if speculation is not None:
                    # Started during the last silence_duration_ms; the audio since then is silence.
                    enc = await speculation
                else:
                    enc = await self.server.engine.encode_speech(audio, self.settings.rate)
            except MMAgentError as exc:
                await self.send_error(exc.code, str(exc), param="audio")
                raise
            self.server.metrics.stage.observe(time.perf_counter() - t0, stage="speech")
            await self.send(P.event("conversation.item.input_audio_transcription.completed", item_id=item_id,
                                    content_index=0, transcript=enc.transcript,
                                    confidence=round(enc.confidence, 4), language=enc.language,
                                    duration_s=round(enc.duration_s, 3)))
            return enc
        finally:
            if release is not None:
                await self._release(release)

    # ---- images ---------------------------------------------------------------------------------

    async def on_image_append(self, ev: dict[str, Any], payload: bytes | None, eid: str | None) -> None:
        if payload is None:
            if isinstance(ev.get("image_url"), str) and ev.get("image") is None:
                payload = P.decode_image_url(ev["image_url"], path="image_url", event_id=eid)
            else:
                b64 = P.get_field(ev, "image", str, path="image", event_id=eid, required=True)
                payload = P.decode_base64(b64, code="invalid_image", path="image", event_id=eid)
        if not self.frame_bucket.take(1.0):
            raise ProtocolError("frame_rate_exceeded",
                                f"frames arrive faster than max_frames_per_s ({self.limits.max_frames_per_s:g}); "
                                "frame dropped", event_id=eid)
        _check_image(payload, eid, "image")
        self.frames.append(Frame(payload, time.monotonic(), eid))
        s = self.settings
        now = time.monotonic()
        interval = s.presence_interval_ms / 1000.0
        # Presence is background work: while any session's turn waits for its first reply delta
        # it is deferred (at most PRESENCE_DEFER_FACTOR intervals), so turns get the CPU first.
        busy = self.server.engine.turns_in_flight > 0
        due = now - self._last_presence >= interval * (PRESENCE_DEFER_FACTOR if busy else 1)
        if s.presence_updates and due and (self._presence_task is None or self._presence_task.done()):
            self._last_presence = now
            self._presence_task = self._spawn(self._presence(self.frames[-1]), name="presence")

    def _frame_encoding(self, frame: Frame) -> asyncio.Task[Any]:
        if frame.encoding is None:
            frame.encoding = asyncio.get_running_loop().create_task(self.server.engine.encode_frame(frame.data))
            self.tasks.add(frame.encoding)
            frame.encoding.add_done_callback(self._task_done)
        return frame.encoding

    async def _presence(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        try:
            enc = await asyncio.shield(self._frame_encoding(frame))
        except MMAgentError as exc:
            if frame in self.frames:
                self.frames.remove(frame)
            await self.send_error(exc.code, str(exc), param="image", event_id=frame.event_id)
            return
        observe = getattr(self.agent_session, "observe_faces", None)
        if observe is not None:
            observe(enc.faces.count)
        await self.send(_perception_event("frame", [enc], timings={"frames": time.perf_counter() - t0}))

    # ---- conversation items ---------------------------------------------------------------------

    async def on_item_create(self, ev: dict[str, Any], eid: str | None) -> None:
        item = P.get_field(ev, "item", dict, path="item", event_id=eid, required=True)
        kind = P.get_field(item, "type", str, path="item.type", event_id=eid, required=True)
        if kind != "message":
            raise ProtocolError("invalid_value", "item.type must be \"message\"", param="item.type", event_id=eid)
        role = P.get_field(item, "role", str, path="item.role", event_id=eid, required=True)
        if role != "user":
            raise ProtocolError("invalid_value", "item.role must be \"user\" (the persona comes from the pack)",
                                param="item.role", event_id=eid)
        item_id = P.get_field(item, "id", str, path="item.id", event_id=eid) or P.new_id("item")
        content = P.get_field(item, "content", list, path="item.content", event_id=eid, required=True)
        if not content:
            raise ProtocolError("invalid_value", "item.content must not be empty", param="item.content",
                                event_id=eid)
        texts: list[str] = []
        images: list[bytes] = []
        audios: list[np.ndarray] = []
        echo: list[dict[str, Any]] = []
        for i, part in enumerate(content):
            path = f"item.content[{i}]"
            if not isinstance(part, dict):
                raise ProtocolError("invalid_value", f"{path} must be an object", param=path, event_id=eid)
            ptype = P.get_field(part, "type", str, path=path + ".type", event_id=eid, required=True)
            if ptype in ("input_text", "text"):
                text = P.get_field(part, "text", str, path=path + ".text", event_id=eid, required=True)
                if not text.strip():
                    raise ProtocolError("invalid_text", "text must not be empty", param=path + ".text", event_id=eid)
                if len(text) > self.limits.max_text_chars:
                    raise ProtocolError("text_too_long", f"text of {len(text)} characters is over max_text_chars "
                                        f"({self.limits.max_text_chars})", param=path + ".text", event_id=eid)
                texts.append(text)
                echo.append({"type": "input_text", "text": text})
            elif ptype == "input_image":
                url = P.get_field(part, "image_url", str, path=path + ".image_url", event_id=eid, required=True)
                data = P.decode_image_url(url, path=path + ".image_url", event_id=eid)
                _check_image(data, eid, path + ".image_url")
                images.append(data)
                echo.append({"type": "input_image"})
            elif ptype == "input_audio":
                b64 = P.get_field(part, "audio", str, path=path + ".audio", event_id=eid, required=True)
                raw = P.decode_base64(b64, code="invalid_audio", path=path + ".audio", event_id=eid)
                if not raw or len(raw) % 2:
                    raise ProtocolError("invalid_audio", "PCM16 audio must be non-empty with an even byte count",
                                        param=path + ".audio", event_id=eid)
                if len(raw) / 2 / self.settings.rate > self.limits.max_pending_audio_s:
                    raise ProtocolError("audio_buffer_full", "audio over max_pending_audio_s "
                                        f"({self.limits.max_pending_audio_s:g} s)", param=path + ".audio",
                                        event_id=eid)
                audios.append(np.frombuffer(raw, dtype="<i2"))
                echo.append({"type": "input_audio", "transcript": None})
            else:
                raise ProtocolError("invalid_value", f"unknown content type {ptype[:40]!r}", param=path + ".type",
                                    event_id=eid)
        prev, self.last_item_id = self.last_item_id, item_id
        self.pending.texts.extend(texts)
        self.pending.images.extend(images)
        self.pending.item_id = item_id
        await self.send(P.event("conversation.item.added", previous_item_id=prev, item={
            "id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
            "content": echo}))
        if audios:
            self.pending.speech = self._spawn(self._transcribe(item_id, np.concatenate(audios)), name="transcribe")

    # ---- responses ------------------------------------------------------------------------------

    def _recent_frames(self) -> list[Frame]:
        horizon = time.monotonic() - self.limits.frame_window_s
        return [f for f in self.frames if f.received >= horizon]

    async def on_response_create(self, ev: dict[str, Any], eid: str | None) -> None:
        if self.response is not None or self._turn_lock.locked():
            active = self.response.id if self.response is not None else "for the previous turn"
            raise ProtocolError("conversation_already_has_active_response",
                                f"response {active} is still active; cancel it or wait for response.done",
                                event_id=eid)
        resp = P.get_field(ev, "response", dict, path="response", event_id=eid) or {}
        metadata = P.get_field(resp, "metadata", dict, path="response.metadata", event_id=eid)
        if self.pending.empty() and not self._recent_frames():
            raise ProtocolError("empty_turn", "nothing to respond to: send text, audio or a camera frame first",
                                event_id=eid)
        self._start_response(metadata, eid)

    def _turn_frames(self) -> list[Frame]:
        return self._recent_frames()[-self.server.config.pipeline.frames_per_turn:]

    def _start_response(self, metadata: dict[str, Any] | None, eid: str | None, *,
                        frames: list[Frame] | None = None) -> None:
        """``frames``: the turn's frames when chosen earlier (at the end of its speech)."""
        pending, self.pending = self.pending, PendingTurn()
        if frames is None:
            frames = self._turn_frames()
        self._spawn(self._answer(pending, frames, metadata), name="answer")

    async def on_response_cancel(self, ev: dict[str, Any], eid: str | None) -> None:
        rid = P.get_field(ev, "response_id", str, path="response_id", event_id=eid)
        if self.response is None or (rid is not None and rid != self.response.id):
            raise ProtocolError("response_cancel_not_active", "there is no active response"
                                + (f" with id {rid}" if rid else ""), param="response_id" if rid else None,
                                event_id=eid)
        self._cancel_response("client_cancelled")

    def _cancel_response(self, reason: str) -> None:
        r = self.response
        if r is not None and not r.cancel.is_set():
            r.cancel_reason = reason
            r.cancel.set()

    async def _answer(self, pending: PendingTurn, frames: list[Frame], metadata: dict[str, Any] | None) -> None:
        """Perceive one turn and stream the agent's reply (one turn at a time per session)."""
        waiting = WaitingTurn(self.server.engine)
        try:
            await self._answer_locked(pending, frames, metadata, waiting)
        finally:
            waiting.release()

    async def _answer_locked(self, pending: PendingTurn, frames: list[Frame], metadata: dict[str, Any] | None,
                             waiting: WaitingTurn) -> None:
        async with self._turn_lock:
            speech = None
            if pending.speech is not None:
                try:
                    speech = await pending.speech
                except MMAgentError:
                    return   # already reported by _transcribe
            r = Response(P.new_id("resp"), P.new_id("item"), pending.item_id or self.last_item_id,
                         metadata=metadata)
            self.response = r
            hold = _HOLD.get()
            if hold is not None:
                hold.response = r
                if hold.discarded():
                    r.cancel.set()
            try:
                await self._stream_response(r, pending, frames, speech, waiting)
            except MMAgentError as exc:
                await self._fail(r, exc.code, str(exc))
            finally:
                self.response = None

    async def _stream_response(self, r: Response, pending: PendingTurn, frames: list[Frame], speech: Any,
                               waiting: WaitingTurn) -> None:
        from agent import PerceivedTurn

        m, engine = self.server.metrics, self.server.engine
        await self.send(P.event("response.created", response=_response_json(r, "in_progress", None, [])))
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        text = _turn_text(pending.texts, speech)
        r.modalities = tuple(m for m, on in (("text", bool(pending.texts)), ("speech", speech is not None),
                                             ("vision", bool(pending.images or frames))) if on)
        try:
            t0 = time.perf_counter()
            text_task = asyncio.ensure_future(engine.encode_text(text)) if text else None
            frame_tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(engine.encode_frame(b))
                                                      for b in pending.images]
            frame_tasks += [asyncio.shield(self._frame_encoding(f)) for f in frames]
            text_enc = await text_task if text_task is not None else None
            timings["text"] = time.perf_counter() - t0
            frame_results = await asyncio.gather(*frame_tasks, return_exceptions=True)
            timings["frames"] = time.perf_counter() - t0
            frame_encs = []
            for res in frame_results:
                if isinstance(res, MMAgentError):
                    await self.send_error(res.code, str(res), param="image")
                elif isinstance(res, BaseException):
                    raise res
                else:
                    frame_encs.append(res)
            for stage in ("text", "frames"):
                m.stage.observe(timings[stage], stage=stage)
        except MMAgentError as exc:
            await self._fail(r, exc.code, str(exc))
            return
        if speech is None and text_enc is None and not frame_encs:
            await self._fail(r, "empty_turn", "the turn has no usable text, audio or frame")
            return
        ptimings = {"text": timings["text"], "frames": timings["frames"]}
        await self.send(_perception_event("turn", frame_encs, item_id=r.user_item_id, response_id=r.id,
                                          speech=speech, text=text_enc, timings=ptimings))
        if r.cancel.is_set():
            await self._done(r, "cancelled", None, None)
            return
        perceived = PerceivedTurn(text=text_enc, speech=speech, frames=frame_encs,
                                  timings={k: 1000 * v for k, v in ptimings.items()},
                                  typed_text=" ".join(pending.texts) or None)
        t_respond = time.perf_counter()
        first_delta: float | None = None
        done_ev: Any = None
        hold = _HOLD.get()
        agen = engine.respond(self.agent_session, perceived, r.cancel, self.settings.max_output_tokens,
                              discard=hold.discarded if hold is not None else None)
        r.in_agent = True
        try:
            async for ev in agen:
                kind = getattr(ev, "type", "")
                if kind == "turn.done":
                    done_ev = ev
                    break
                if r.cancel.is_set():
                    continue   # let the agent notice the cancel and record the turn as cancelled
                if kind == "turn.fused":
                    fused = ev.to_json().get("fused") or dict(_NO_FUSION)
                    await self.send(P.event("turn.fused", item_id=r.user_item_id, response_id=r.id,
                                            transcript_confidence=ev.transcript_confidence, **fused))
                elif kind == "text.delta":
                    if first_delta is None:
                        first_delta = time.perf_counter()
                        waiting.release()
                        m.stage.observe(first_delta - t_respond, stage="first_delta")
                    r.text.append(ev.delta)
                    await self.send(P.event("response.output_text.delta", response_id=r.id, item_id=r.item_id,
                                            output_index=0, content_index=0, delta=ev.delta))
                elif kind == "action":
                    await self.send(P.event("response.action", response_id=r.id, item_id=r.item_id,
                                            call_id=ev.call_id or P.new_id("call"), name=ev.name,
                                            arguments=ev.arguments))
                elif kind == "action.rejected":
                    await self.send_error(ev.code, f"action {ev.name!r} rejected: {ev.message}", param="action")
                elif kind == "error":
                    await self.send_error(ev.code, ev.message)
        finally:
            await agen.aclose()  # type: ignore[attr-defined]
        m.stage.observe(time.perf_counter() - t_respond, stage="respond")
        m.stage.observe(time.perf_counter() - t_start, stage="turn")
        status = "cancelled" if r.cancel.is_set() else (done_ev.status if done_ev is not None else "failed")
        extra = {"perception": round(1000 * (t_respond - t_start), 1),
                 "first_delta": round(1000 * (first_delta - t_start), 1) if first_delta else None,
                 "total": round(1000 * (time.perf_counter() - t_start), 1)}
        error = done_ev.error if done_ev is not None else {"code": "internal_error", "message": "no turn.done"}
        await self._done(r, status, done_ev, error, timings=extra)

    async def _fail(self, r: Response, code: str, message: str) -> None:
        await self.send_error(code, message)
        await self._done(r, "failed", None, {"code": code, "message": message})

    async def _done(self, r: Response, status: str, done_ev: Any, error: dict[str, str] | None,
                    timings: dict[str, Any] | None = None) -> None:
        text = "".join(r.text)
        if status == "completed":
            await self.send(P.event("response.output_text.done", response_id=r.id, item_id=r.item_id,
                                    output_index=0, content_index=0, text=text))
        if status == "cancelled":
            details: dict[str, Any] | None = {"type": "cancelled", "reason": r.cancel_reason or "client_cancelled"}
        elif status == "failed":
            details = {"type": "failed", "error": error}
        else:
            details = None
        output = [{"id": r.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                   "status": "completed" if status == "completed" else "incomplete",
                   "content": [{"type": "output_text", "text": text}]}]
        body = _response_json(r, status, details, output)
        body["turn"] = ({"turn_id": done_ev.turn_id, "intent": done_ev.intent, "emotion": done_ev.emotion,
                         "actions": done_ev.actions, "route": done_ev.route, "timings_ms": done_ev.timings}
                        if done_ev is not None else None)
        body["timings_ms"] = timings
        self.server.metrics.turns.inc(status=status)
        log_turn(self.id, body, r.modalities)
        await self.send(P.event("response.done", response=body))

    # ---- tasks ----------------------------------------------------------------------------------

    def _spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.id}-{name}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None or isinstance(exc, MMAgentError):
            return   # input and model errors were reported as error events where they happened
        # A bug in this session's work: log it, close this session with 1011, keep the others.
        log.error("session %s: task %s failed", self.id, task.get_name(), exc_info=exc)
        if self.fatal is None:
            self.fatal = exc
            asyncio.get_running_loop().create_task(self.ws.close(P.CLOSE_INTERNAL, "internal_error"))

    async def shutdown(self) -> None:
        """Cancel every task of the session (the client is gone)."""
        self.closed = True
        self._cancel_response("client_cancelled")
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _check_image(data: bytes, eid: str | None, param: str) -> None:
    if not data.startswith(_IMAGE_MAGIC):
        raise ProtocolError("invalid_image", "image is not a JPEG or PNG", param=param, event_id=eid)


def _response_json(r: Response, status: str, details: Any, output: list[Any]) -> dict[str, Any]:
    return {"id": r.id, "object": "realtime.response", "status": status, "status_details": details,
            "output": output, "output_modalities": ["text"], "metadata": r.metadata, "usage": None}


def _perception_event(source: str, frames: list[Any], *, item_id: str | None = None,
                      response_id: str | None = None, speech: Any = None, text: Any = None,
                      timings: dict[str, float] | None = None) -> dict[str, Any]:
    newest = frames[-1] if frames else None
    fields: dict[str, Any] = {
        "source": source, "item_id": item_id, "response_id": response_id,
        "faces_present": bool(newest is not None and newest.faces.count > 0),
        "face_count": newest.faces.count if newest is not None else 0,
        "labels": newest.to_json()["labels"] if newest is not None else [],
        "frames": [{k: v for k, v in f.to_json().items() if k != "embedding_dim"} for f in frames],
        "timings_ms": {k: round(1000 * v, 1) for k, v in (timings or {}).items()},
    }
    if source == "turn":
        fields["speech"] = None if speech is None else {
            k: v for k, v in speech.to_json().items() if k in (
                "transcript", "confidence", "language", "duration_s", "voiced_s", "prosody")}
        fields["text"] = None if text is None else {k: v for k, v in text.to_json().items() if k != "embedding_dim"}
    return P.event("perception.updated", **fields)
