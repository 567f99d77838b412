"""The conversation core: one session's turn logic, with no I/O.

``handle(client event) → server events``; model work runs in tasks of the runtime passed in
(clock, timers, tasks) through the engine passed in, and what it produces lands in the same
ordered outbox (``take()``; ``on_output`` says when there is more). The asyncio connection
(:mod:`server.connection`) is only the socket around it.

Every user turn is a :class:`Turn` in exactly one of these states::

                 speech_started            pause (speculative_ms)
    (none) ─────────────────────▶ LISTENING ◀──────────────────▶ PAUSED ─┐ transcription and maybe
       │  item / commit (no VAD)      │        speech resumed            │ a held preemptive response
       │                              │ speech_stopped / commit          │ start here (a gate)
       ▼                              ▼                                  ▼
    COMMITTED ◀───────────────────────┴──────────────────────────────────┘
       │ response.create, or the VAD ended the turn with create_response
       ▼
    QUEUED   waits for its transcripts (and for the previous response to finish)
       │ response.created                      ▲ a preemptive response adopted at
       ▼                                       │ speech_stopped goes straight here
    RESPONDING  events reach the client ───────┘
       │ response.done
       ▼
    DONE

At most one turn takes input (``self.input``: LISTENING, PAUSED or COMMITTED) and at most one
responds (``self.active``: QUEUED or RESPONDING); turns whose response the VAD asked for while
another responds wait in ``self.queue``. A turn's agent turn is stored only once its events
were released to the client (``TurnControl.commit``), and forgotten when they never will be
(``abandon``): a preemptive response whose speech went on, a turn timeout, a disconnect
before the turn was shown, an out-of-band response.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agent import ToolResult, TurnControl
from perception.errors import MMAgentError
from server import protocol as P
from server.config import ServerConfig
from server.console import log_turn
from server.core import events as E
from server.core.audio_input import AudioInput, TurnDetector, decode_audio
from server.core.echo import EchoGate, Reference
from server.core.gate import GateState, SpeculationGate
from server.core.items import ConversationLog, Item, Part
from server.core.pipeline import (
    Frame,
    Heard,
    InFlight,
    PipelineContext,
    TurnInput,
    error,
    perception_event,
    run_response,
    transcript_event,
    turn_text,
)
from server.core.response import Response, ResponseStage
from server.core.runtime import Runtime, Timer
from server.core.settings import SessionSettings, TurnDetection, apply_session_update
from server.errors import ProtocolError
from server.limits import TokenBucket
from server.metrics import Metrics
from server.vad import (
    SemanticVad,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnCheck,
    VadEvent,
)

if TYPE_CHECKING:
    from agent import Session
    from perception.types import FrameEncoding, SpeechEncoding
    from server.engine import ModelEngine

log = logging.getLogger(__name__)

# While turns wait for their first delta, a session's presence update waits up to this many
# presence intervals.
PRESENCE_DEFER_FACTOR = 3
RECENT_RESPONSES = 32       # finished responses kept for conversation.item.truncate


class TurnState(enum.Enum):
    IDLE = "idle"               # the conversation's state when no turn is open
    LISTENING = "listening"
    PAUSED = "paused"
    COMMITTED = "committed"
    QUEUED = "queued"
    RESPONDING = "responding"
    DONE = "done"


S = TurnState
TRANSITIONS: dict[TurnState, frozenset[TurnState]] = {
    S.LISTENING: frozenset({S.PAUSED, S.COMMITTED, S.DONE}),
    S.PAUSED: frozenset({S.LISTENING, S.COMMITTED, S.DONE}),
    S.COMMITTED: frozenset({S.LISTENING, S.QUEUED, S.RESPONDING, S.DONE}),
    S.QUEUED: frozenset({S.RESPONDING, S.COMMITTED, S.DONE}),
    S.RESPONDING: frozenset({S.DONE}),
    S.DONE: frozenset(),
}


@dataclass
class Speculation:
    """Work started at a pause (``token``: the detector's pause id): the transcription, the
    frames chosen then, and maybe a preemptive response behind a gate."""

    token: int
    transcription: asyncio.Task[SpeechEncoding]
    frames: list[Frame]
    gate: SpeculationGate | None = None
    response: Response | None = None
    hold_timer: Timer | None = None


@dataclass
class Turn:
    """One user turn (see the module docstring for its states)."""

    n: int
    state: TurnState
    input: TurnInput = field(default_factory=TurnInput)
    speech_item_id: str | None = None         # announced by speech_started, committed later
    speculation: Speculation | None = None
    response: Response | None = None
    oob: bool = False                          # an out-of-band response (conversation "none")
    task: asyncio.Task[Any] | None = None      # the response's pipeline
    timeout: Timer | None = None
    inline_audio_s: float = 0.0                # audio of its conversation.item.create items

    def to(self, state: TurnState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise AssertionError(f"turn {self.n}: {self.state.value} → {state.value} is not a transition")
        self.state = state


class Conversation:
    """See the module docstring. ``agent_session``: the agent's session (history, store)."""

    def __init__(self, *, session_id: str, agent_session: Session, engine: ModelEngine, runtime: Runtime,
                 config: ServerConfig, metrics: Metrics | None = None, resumed: bool = False,
                 settings: SessionSettings | None = None) -> None:
        self.id, self.agent_session, self.engine, self.rt = session_id, agent_session, engine, runtime
        self.config, self.metrics, self.resumed = config, metrics or Metrics(), resumed
        lim, vad = config.limits, config.vad
        self.limits = lim
        self.settings = settings or self.default_settings(config)
        bucket = TokenBucket(lim.max_audio_seconds_per_s, lim.audio_burst_s, clock=runtime.now)
        self.audio = AudioInput(self.settings, budget=bucket, max_pending_s=lim.max_pending_audio_s,
                                backend=vad.backend, speculative_ms=vad.speculative_ms,
                                semantic=vad.semantic if engine.turn_models is not None else "silence",
                                check_ms=vad.semantic_check_ms)
        self._prepare_turn_models()
        self.frame_bucket = TokenBucket(lim.max_frames_per_s, lim.frame_burst, clock=runtime.now)
        self.frames: deque[Frame] = deque(maxlen=lim.max_frames_per_turn)
        self.log = ConversationLog()
        self.system_items: dict[str, str] = {}     # system messages, by item id (instructions)
        self.input: Turn | None = None
        self.active: Turn | None = None
        self.queue: deque[Turn] = deque()
        self.recent: deque[Response] = deque(maxlen=RECENT_RESPONSES)
        self.client_errors = 0
        self.on_output: Callable[[], None] | None = None
        self._out: list[E.ServerEvent] = []
        self._turns = 0
        self._last_presence = -1e9
        self._presence_task: asyncio.Task[Any] | None = None
        self._tools = {t.name: t for t in engine.tools()}
        # The agent's own voice in the microphone must not start a turn (server/core/echo.py).
        self.echo = EchoGate(vad.echo_margin_db, vad.echo_max_delay_ms) if vad.echo_gate else None
        self._in_samples = 0                       # input samples received (the input's own clock)
        self._in_anchor: float | None = None
        self._closed = False
        self.ctx = PipelineContext(engine=engine, metrics=self.metrics, agent_session=agent_session,
                                   rate=lambda: self.audio.rate, emit=self._emit,
                                   frame_encoding=self._frame_encoding, allowed_tool=self._tool_allowed,
                                   now=runtime.now)

    @staticmethod
    def default_settings(config: ServerConfig) -> SessionSettings:
        """A new session's settings (server configuration ``vad.*`` and ``pipeline.*``)."""
        vad = config.vad
        return SessionSettings(
            turn_detection=TurnDetection(threshold=vad.threshold, prefix_padding_ms=vad.prefix_padding_ms,
                                         silence_duration_ms=vad.silence_duration_ms,
                                         create_response=vad.create_response,
                                         interrupt_response=vad.interrupt_response),
            max_output_tokens=config.pipeline.max_output_tokens,
            presence_interval_ms=config.pipeline.presence_interval_ms)

    # ---- output ---------------------------------------------------------------------------

    @property
    def state(self) -> TurnState:
        """The newest open turn's state (input first), or IDLE."""
        turn = self.input or self.active
        return turn.state if turn is not None else TurnState.IDLE

    def _emit(self, ev: E.ServerEvent) -> None:
        if self._closed or (ev.extension and not self.settings.extensions):
            return
        if isinstance(ev, E.ErrorEvent):
            self.metrics.errors.inc(code=ev.code)
        self._out.append(ev)
        if self.on_output is not None:
            self.on_output()

    def take(self) -> list[E.ServerEvent]:
        """Every event produced since the last call, in order."""
        out, self._out = self._out, []
        return out

    def start(self, notices: Sequence[E.ServerEvent] = ()) -> list[E.ServerEvent]:
        """``session.created`` (then ``notices``, e.g. session_not_found): the first events."""
        self._emit(E.SessionCreated(self.session_json()))
        for ev in notices:
            self._emit(ev)
        return self.take()

    def session_json(self) -> dict[str, Any]:
        s, lim = self.settings, self.limits
        td = s.turn_detection
        tools = s.tools if s.tools is not None else tuple(self._tools.values())
        instructions = "\n".join(x for x in (self.engine.instructions, s.instructions) if x)
        return {
            "id": self.id, "object": "realtime.session", "type": "realtime", "model": "mmagent",
            "protocol_version": P.PROTOCOL_VERSION, "resumed": self.resumed,
            "output_modalities": list(s.output_modalities), "max_output_tokens": s.max_output_tokens or "inf",
            "instructions": instructions, "tools": [t.to_json() for t in tools], "tool_choice": s.tool_choice,
            "audio": {"input": {"format": s.input_format_json(),
                                "turn_detection": td.to_json() if td else None,
                                "transcription": {"model": "whisper", "language": s.transcription_language,
                                                  "prompt": s.transcription_prompt},
                                "noise_reduction": None},
                      "output": {"format": s.output_format_json(), "voice": self._voice_name(),
                                 "speed": s.speed}},
            "extensions": s.extensions,
            "vision": {"presence_updates": s.presence_updates, "presence_interval_ms": s.presence_interval_ms,
                       "max_frames_per_turn": lim.max_frames_per_turn, "frame_window_s": lim.frame_window_s},
            "pack": {"name": self.engine.pack_name},
            "limits": {"max_message_bytes": lim.max_message_bytes, "max_frames_per_s": lim.max_frames_per_s,
                       "max_audio_seconds_per_s": lim.max_audio_seconds_per_s, "audio_burst_s": lim.audio_burst_s,
                       "max_pending_audio_s": lim.max_pending_audio_s, "idle_timeout_s": lim.idle_timeout_s,
                       "respond_timeout_s": self.config.pipeline.respond_timeout_s},
        }

    def _voice_name(self) -> str | None:
        """The voice a session hears: the server's (one per server), under the name the client
        gave it if it named one; None without a voice."""
        voice = self.engine.voice
        if voice is None:
            return None
        return self.settings.voice or voice.name

    # ---- client events ----------------------------------------------------------------------

    def handle(self, ev: E.ClientEvent) -> list[E.ServerEvent]:
        """Apply one client event; the events to send (an ``error`` for a bad one)."""
        try:
            if isinstance(ev, E.AudioAppend):
                pcm, detector = self.accept_audio(ev)
                if detector is not None and len(pcm):
                    self._apply(detector, detector.process(pcm))
            else:
                self._dispatch(ev)
        except (ProtocolError, MMAgentError) as exc:
            self._reject(exc, ev.event_id)
        return self.take()

    def reject(self, exc: MMAgentError, event_id: str | None = None) -> list[E.ServerEvent]:
        """A client message that could not be taken (bad input, a limit): its error event."""
        self._reject(exc, event_id)
        return self.take()

    def _reject(self, exc: MMAgentError, event_id: str | None) -> None:
        self.client_errors += 1
        param = getattr(exc, "param", None)
        eid = getattr(exc, "event_id", None) or event_id
        self._emit(error(exc.code, str(exc), param=param, event_id=eid))

    def _dispatch(self, ev: E.ClientEvent) -> None:
        if isinstance(ev, E.SessionUpdate):
            self.on_session_update(ev)
        elif isinstance(ev, E.AudioCommit):
            self._on_commit(ev)
        elif isinstance(ev, E.AudioClear):
            self._clear_input()
            self._emit(E.AudioCleared())
        elif isinstance(ev, E.ImageAppend):
            self._on_image(ev)
        elif isinstance(ev, E.ItemCreate):
            self._on_item_create(ev)
        elif isinstance(ev, E.ItemDelete):
            self._on_item_delete(ev)
        elif isinstance(ev, E.ItemRetrieve):
            self._emit(E.ItemRetrieved(self.log.get(ev.item_id, event_id=ev.event_id).to_json()))
        elif isinstance(ev, E.ItemTruncate):
            self._on_truncate(ev)
        elif isinstance(ev, E.ResponseCreate):
            self._on_response_create(ev)
        elif isinstance(ev, E.ResponseCancel):
            self._on_response_cancel(ev)

    # ---- session.update -----------------------------------------------------------------------

    def on_session_update(self, ev: E.SessionUpdate) -> None:
        old = self.settings
        voice = self.engine.voice
        new = apply_session_update(old, ev.session, ev.event_id, known_tools=self._tools,
                                   audio_output=voice is not None,
                                   **({"output_rates": voice.output_rates} if voice is not None else {}))
        format_changed = (new.rate, new.input_format) != (old.rate, old.input_format)
        if format_changed and self.audio.pending:
            raise ProtocolError("invalid_state", "cannot change the audio format or rate while audio is buffered; "
                                "send input_audio_buffer.clear first", param="session.audio.input.format",
                                event_id=ev.event_id)
        if new.turn_detection is not None and old.turn_detection is None and self.audio.manual_len:
            raise ProtocolError("invalid_state", "cannot turn on turn detection while audio is buffered; send "
                                "input_audio_buffer.commit or .clear first",
                                param="session.audio.input.turn_detection", event_id=ev.event_id)
        self.settings = new
        if format_changed or new.turn_detection != old.turn_detection:
            self._reconfigure_input()
        self._emit(E.SessionUpdated(self.session_json()))

    def _reconfigure_input(self) -> None:
        """Turn detection changed: drop any speculation (its preemptive response was never
        shown), end the capture, keep the utterance's audio in the manual buffer."""
        turn = self.input
        if turn is not None:
            self._drop_speculation(turn)
        kept = self.audio.configure(self.settings)
        self._prepare_turn_models()
        self._in_samples, self._in_anchor = 0, None   # the input's clock restarts (its rate may differ)
        if self.audio.detector is None:
            self.audio.buffer(kept)
        if turn is not None and turn.state in (S.LISTENING, S.PAUSED):
            turn.speech_item_id = None
            self._end_capture(turn)

    # ---- audio ------------------------------------------------------------------------------

    def accept_audio(self, ev: E.AudioAppend) -> tuple[np.ndarray, TurnDetector | None]:
        """Decode and admit one append; the samples and the detector that must process them
        (None: buffered for a manual commit). The connection runs ``detector.process`` in a
        worker thread, then calls :meth:`detected`."""
        pcm = self.audio.accept(ev.audio, ev.event_id,
                                queued_s=self.input.inline_audio_s if self.input is not None else 0.0)
        if self.audio.detector is None:
            self.audio.buffer(pcm)
            return pcm, None
        end_time = self._input_clock(len(pcm))
        if self.echo is not None and not self.audio.detector.speaking:
            refs = self._echo_references()
            if refs:
                pcm = self.echo.apply(pcm, self.audio.rate, end_time, refs)
        return pcm, self.audio.detector

    def _input_clock(self, samples: int) -> float:
        """The clock time the chunk just received ends at, by the input's own sample count from
        its least-delayed chunk: chunks that arrive late in a burst (a busy client or network)
        keep their place in time. A gap of over a second in sending starts a new anchor."""
        now = self.rt.now()
        self._in_samples += samples
        at = now - self._in_samples / self.audio.rate
        if self._in_anchor is None or at < self._in_anchor or now - (self._in_anchor + self._in_samples /
                                                                     self.audio.rate) > 1.0:
            self._in_anchor = at
        return self._in_anchor + self._in_samples / self.audio.rate

    def _echo_references(self) -> list[Reference]:
        """The replies whose audio may be playing now: the active one, the last finished one."""
        out = []
        for r in (self.active.response if self.active else None, self.recent[-1] if self.recent else None):
            ref = r.reference() if r is not None and r.audio else None
            if ref is not None:
                out.append(ref)
        return out

    def detected(self, detector: TurnDetector, events: list[VadEvent]) -> list[E.ServerEvent]:
        """The detector's events for one chunk (ignored if the detector was replaced meanwhile)."""
        self._apply(detector, events)
        return self.take()

    def _apply(self, detector: TurnDetector, events: list[VadEvent]) -> None:
        if detector is not self.audio.detector or self._closed:
            return
        for e in events:
            if isinstance(e, SpeechStarted):
                self._speech_started(e.audio_start_ms)
            elif isinstance(e, SpeechPaused):
                self._speech_paused(e.token, e.audio)
            elif isinstance(e, SpeechResumed):
                self._speech_resumed(e.token)
            elif isinstance(e, SpeechStopped):
                self._speech_stopped(e.audio_end_ms, e.audio, e.paused_token)
            elif isinstance(e, TurnCheck) and isinstance(detector, SemanticVad):
                self._turn_check(detector, e.token, e.audio)

    # ---- semantic end of turn (semantic_vad) ----------------------------------------------------

    def _prepare_turn_models(self) -> None:
        """A semantic_vad session: start loading the end-of-turn models (once per server)."""
        td = self.settings.turn_detection
        if td is not None and td.type == "semantic_vad" and self.engine.turn_models is not None:
            self.engine.turn_models.ready()

    def _turn_check(self, detector: SemanticVad, token: int, audio: np.ndarray) -> None:
        """``check_ms`` of silence in pause ``token``: ask the end-of-turn models (Smart Turn on
        the audio now, the text model once the speculative transcript is there) and tell the
        detector when this pause ends the turn. Speech resuming first makes the answer void."""
        turn, models, td = self.input, self.engine.turn_models, self.settings.turn_detection
        if turn is None or turn.state is not S.PAUSED or td is None:
            return
        fallback = self.audio.params.silence_ms if self.audio.params is not None else detector.max_wait_ms
        if models is None or not models.ready():
            self._resolve_turn(detector, token, fallback)   # still loading (or none): the fixed silence
            return
        spec = turn.speculation if turn.speculation is not None and turn.speculation.token == token else None
        eagerness, rate = td.eagerness, self.audio.rate

        async def check() -> None:
            t0 = self.rt.now()
            try:
                p = await models.audio_probability(eagerness, audio, rate)
                t_audio = self.rt.now()
                transcript = None
                if spec is not None:
                    await asyncio.wait([spec.transcription])
                    if spec.transcription.cancelled():
                        return   # speech resumed: this pause is over
                    if spec.transcription.exception() is None:
                        transcript = spec.transcription.result().transcript
                t_text = self.rt.now()
                verdict = await models.verdict(eagerness, p, transcript)
            except (MMAgentError, RuntimeError) as exc:   # RuntimeError: its thread is shut down (server stop)
                log.warning("session %s: end-of-turn model failed, the turn ends on silence: %s", self.id, exc)
                self._resolve_turn(detector, token, fallback)
                return
            self.metrics.stage.observe(self.rt.now() - t0, stage="end_of_turn")
            log.debug("session %s: end of turn %s (P audio %.3f, text %s) → %d ms; Smart Turn %.0f ms, then the "
                      "transcript %.0f ms, then the text model %.0f ms", self.id, verdict.reason, p,
                      verdict.text_probability, verdict.end_after_ms, 1000 * (t_audio - t0), 1000 * (t_text - t_audio),
                      1000 * (self.rt.now() - t_text))
            self._resolve_turn(detector, token, verdict.end_after_ms)

        self.rt.spawn(check(), name="turn_check")

    def _resolve_turn(self, detector: SemanticVad, token: int, end_after_ms: int) -> None:
        stopped = detector.resolve(token, end_after_ms)
        if stopped is not None:
            self._apply(detector, [stopped])

    def _new_turn(self, state: TurnState) -> Turn:
        self._turns += 1
        return Turn(self._turns, state)

    def _speech_started(self, start_ms: int) -> None:
        turn = self.input
        if turn is None:
            turn = self.input = self._new_turn(S.LISTENING)
        elif turn.state is S.COMMITTED:
            turn.to(S.LISTENING)   # typed items are pending: the speech joins them
        turn.speech_item_id = P.new_id("item")
        self._emit(E.SpeechStarted(start_ms, turn.speech_item_id))
        td = self.settings.turn_detection
        active = self.active
        if td is not None and td.interrupt_response and active is not None and active.state is S.RESPONDING:
            self._barge_in(active)
        elif td is not None and td.interrupt_response:
            self._cut_playout()

    def _cut_playout(self) -> None:
        """Speech started while the last reply's audio is still playing (its response is done:
        synthesis runs ahead of playout): its stored turn keeps only what was heard by now.
        A client's conversation.item.truncate with the exact audio_end_ms still overrides it."""
        now = self.rt.now()
        r = self.recent[-1] if self.recent else None
        if r is None or not r.audio or not r.playing(now) or r.message is None:
            return
        self._truncate_done(r, r.message, r.playout_ms(now))

    def _barge_in(self, turn: Turn) -> None:
        """Speech started while a response streams: cancel it; the stored turn says so, and
        keeps only what the person heard of a spoken reply."""
        r = turn.response
        if r is None or not r.request_cancel("turn_detected"):
            return
        if r.in_agent:
            self.agent_session.mark_barge_in()   # the agent's turn in progress records it
        if r.audio and r.audio_ms:
            played = r.playout_ms(self.rt.now())
            r.heard = r.heard_text(played)
            r.cut_playout(played)

    def _speech_paused(self, token: int, audio: np.ndarray) -> None:
        turn = self.input
        if turn is None or turn.state is not S.LISTENING:
            return
        turn.to(S.PAUSED)
        frames = self._turn_frames()   # what the camera saw as the speech ended
        rate = self.audio.rate
        texts = list(turn.input.texts)

        async def speculate() -> SpeechEncoding:
            for f in frames:
                self._frame_encoding(f)
            enc = await self._transcribe(audio, rate)
            text = turn_text(texts, [enc])
            if text:
                self.engine.prefetch_text(text)
            return enc

        spec = turn.speculation = Speculation(token, self.rt.spawn(speculate(), name="speculate"), frames)
        td = self.settings.turn_detection
        if (self.config.vad.preemptive_response and td is not None and td.create_response and self.active is None
                and not self.queue and turn.input.empty() and not self._busy()):
            spec.gate = SpeculationGate(token, self._emit)
            r = spec.response = self._new_response(emit=spec.gate.emit, control=TurnControl(
                instructions=self._instructions(None)), user_item_id=turn.speech_item_id)
            r.gate = spec.gate
            inp = TurnInput(heard=[Heard(turn.speech_item_id or "", spec.transcription)], frames=frames)
            turn.task = self.rt.spawn(self._respond(turn, r, inp), name="preempt")
            spec.hold_timer = self.rt.call_later(self.config.vad.max_hold_ms / 1000.0,
                                                 lambda: self._hold_expired(turn, spec))

    def _speech_resumed(self, token: int) -> None:
        turn = self.input
        if turn is None or turn.state is not S.PAUSED:
            return
        if turn.speculation is not None and turn.speculation.token == token:
            self._drop_speculation(turn)
        turn.to(S.LISTENING)

    def _hold_expired(self, turn: Turn, spec: Speculation) -> None:
        """A preemptive response held for longer than vad.max_hold_ms: drop it (the turn will
        be answered afresh when it ends)."""
        if spec.gate is not None and spec.gate.state is GateState.HOLDING and turn.speculation is spec:
            self._drop_gate(spec)

    def _drop_gate(self, spec: Speculation) -> None:
        if spec.gate is not None and spec.gate.drop():
            self.metrics.preemptive.inc(outcome="discarded")
            r = spec.response
            if r is not None:
                r.control.abandon()
                r.request_cancel("turn_detected")
                r.stage = ResponseStage.DONE   # nothing it sends reaches the client any more
        if spec.hold_timer is not None:
            spec.hold_timer.cancel()

    def _drop_speculation(self, turn: Turn) -> None:
        spec, turn.speculation = turn.speculation, None
        if spec is None:
            return
        self._drop_gate(spec)
        spec.transcription.cancel()

    def _speech_stopped(self, end_ms: int, audio: np.ndarray, paused_token: int | None) -> None:
        turn = self.input
        if turn is None:   # cleared mid-utterance: the detector's stop has no turn any more
            return
        item_id = turn.speech_item_id or P.new_id("item")
        self._emit(E.SpeechStopped(end_ms, item_id))
        spec = turn.speculation
        if spec is not None and spec.token != paused_token:
            self._drop_speculation(turn)
            spec = None
        turn.speculation = None
        self._commit_audio(turn, item_id, audio, spec)
        td = self.settings.turn_detection
        if td is None or not td.create_response:
            if spec is not None:
                self._drop_gate(spec)
            return
        if spec is not None and spec.gate is not None and spec.gate.state is GateState.HOLDING \
                and spec.response is not None and self.active is None and not self.queue:
            self._adopt(turn, spec)
        else:
            if spec is not None:
                self._drop_gate(spec)
            self._request_response(turn, auto=True)

    def _commit_audio(self, turn: Turn, item_id: str, audio: np.ndarray, spec: Speculation | None) -> None:
        """Close one audio item: committed, added to the conversation, transcribed."""
        item = Item(id=item_id, type="message", role="user", content=[Part("input_audio")])
        prev = self.log.add(item)
        self._emit(E.AudioCommitted(prev, item_id))
        self._emit(E.ItemAdded(prev, item.to_json()))
        # Started during the last silence_duration_ms; the audio since then is silence.
        task = spec.transcription if spec is not None else self.rt.spawn(
            self._transcribe(audio, self.audio.rate), name="transcribe")
        heard = Heard(item_id, task)
        turn.input.heard.append(heard)
        turn.input.item_ids.append(item_id)
        if spec is not None:
            turn.input.frames = spec.frames
        turn.speech_item_id = None
        if turn.state is not S.COMMITTED:
            turn.to(S.COMMITTED)
        self.rt.spawn(self._transcribed(turn, item, heard), name="transcript")

    async def _transcribed(self, turn: Turn, item: Item, heard: Heard) -> None:
        """Report a transcription; then release a preemptive response waiting behind it."""
        try:
            enc = await asyncio.shield(heard.task)
        except MMAgentError as exc:
            self._emit(E.TranscriptionFailed(item.id, 0, exc.code, str(exc)))
            self._emit(error(exc.code, str(exc), param="audio"))
            enc = None
        except asyncio.CancelledError:
            if not heard.task.cancelled():
                raise
            return
        if enc is not None:
            item.content[0].transcript = enc.transcript
            self._emit(transcript_event(item.id, enc))
            self._emit(E.ItemDone(None, item.to_json()))
        r = turn.response
        if r is not None and r.gate is not None and r.gate.state is GateState.HOLDING and self.active is turn:
            self._release(turn, r, r.gate)

    async def _transcribe(self, audio: np.ndarray, rate: int) -> SpeechEncoding:
        t0 = self.rt.now()
        enc = await self.engine.encode_speech(audio, rate)
        self.metrics.stage.observe(self.rt.now() - t0, stage="speech")
        return enc

    def _adopt(self, turn: Turn, spec: Speculation) -> None:
        """The turn ended as speculated: its preemptive response becomes the active one. Its
        events are released right after the transcript (``_transcribed``)."""
        assert spec.response is not None and spec.gate is not None
        if spec.hold_timer is not None:
            spec.hold_timer.cancel()
        r = spec.response
        r.user_item_id = turn.input.item_ids[-1] if turn.input.item_ids else r.user_item_id
        turn.response = r
        self.input = None
        self.active = turn
        turn.to(S.RESPONDING)
        self._mark_answered(turn)

    def _release(self, turn: Turn, r: Response, gate: SpeculationGate) -> None:
        if gate.release(gate.id):
            r.released(self.rt.now())
            self.metrics.preemptive.inc(outcome="released")
            r.control.commit()
            self._arm_timeout(turn, r)
        if r.done:
            self._response_finished(turn)

    # ---- manual commit and clear --------------------------------------------------------------

    def _on_commit(self, ev: E.AudioCommit) -> None:
        """GA: commit closes the audio item and transcribes it; it never starts a response."""
        detector = self.audio.detector
        if detector is not None:
            stopped = detector.flush()
            if stopped is None:
                raise ProtocolError("input_audio_buffer_commit_empty", "no speech is buffered", event_id=ev.event_id)
            turn = self.input or self._open_input()
            self._drop_speculation(turn)
            self._commit_audio(turn, turn.speech_item_id or P.new_id("item"), stopped.audio, None)
            return
        audio = self.audio.take_manual()
        if audio is None:
            raise ProtocolError("input_audio_buffer_commit_empty", "the input audio buffer is empty",
                                event_id=ev.event_id)
        turn = self.input or self._open_input()
        self._commit_audio(turn, P.new_id("item"), audio, None)

    def _open_input(self) -> Turn:
        self.input = self._new_turn(S.COMMITTED)
        return self.input

    def _end_capture(self, turn: Turn) -> None:
        """Stop capturing speech into ``turn``: it keeps what it committed, or goes."""
        if turn.input.empty():
            turn.to(S.DONE)
            self.input = None
        elif turn.state is not S.COMMITTED:
            turn.to(S.COMMITTED)

    def _clear_input(self) -> None:
        turn = self.input
        if turn is not None:
            self._drop_speculation(turn)
            turn.speech_item_id = None
            if turn.state in (S.LISTENING, S.PAUSED):
                self._end_capture(turn)
        self.audio.clear()

    # ---- images -------------------------------------------------------------------------------

    def _on_image(self, ev: E.ImageAppend) -> None:
        if not self.frame_bucket.take(1.0):
            raise ProtocolError("frame_rate_exceeded", f"frames arrive faster than max_frames_per_s "
                                f"({self.limits.max_frames_per_s:g}); frame dropped", event_id=ev.event_id)
        now = self.rt.now()
        self.frames.append(Frame(ev.image, now, ev.event_id))
        s = self.settings
        interval = s.presence_interval_ms / 1000.0
        # Presence is background work: while any session's turn waits for its first reply delta
        # it is deferred (at most PRESENCE_DEFER_FACTOR intervals), so turns get the CPU first.
        busy = self.engine.turns_in_flight > 0
        due = now - self._last_presence >= interval * (PRESENCE_DEFER_FACTOR if busy else 1)
        if s.presence_updates and due and (self._presence_task is None or self._presence_task.done()):
            self._last_presence = now
            self._presence_task = self.rt.spawn(self._presence(self.frames[-1]), name="presence")

    def _frame_encoding(self, frame: Frame) -> asyncio.Task[FrameEncoding]:
        if frame.encoding is None:
            frame.encoding = self.rt.spawn(self.engine.encode_frame(frame.data), name="frame")
        return frame.encoding

    async def _presence(self, frame: Frame) -> None:
        t0 = self.rt.now()
        try:
            enc = await asyncio.shield(self._frame_encoding(frame))
        except MMAgentError as exc:
            if frame in self.frames:
                self.frames.remove(frame)
            self._emit(error(exc.code, str(exc), param="image", event_id=frame.event_id))
            return
        # Presence records an empty view only. The agent greets "a face after an empty scene" when a
        # turn sees the face; had presence recorded the arrival too, the kiosk's wordless greeting
        # turn would find the face already seen and stay silent (the greeting never fired while
        # presence updates were on). The turn itself records the face it sees.
        if enc.faces.count == 0:
            self.agent_session.observe_faces(0)
        self._emit(perception_event("frame", [enc], timings={"frames": self.rt.now() - t0}))

    def _recent_frames(self) -> list[Frame]:
        horizon = self.rt.now() - self.limits.frame_window_s
        return [f for f in self.frames if f.received >= horizon]

    def _turn_frames(self) -> list[Frame]:
        return self._recent_frames()[-self.config.pipeline.frames_per_turn:]

    # ---- conversation items -----------------------------------------------------------------

    def _on_item_create(self, ev: E.ItemCreate) -> None:
        new, eid = ev.item, ev.event_id
        item_id = new.id or P.new_id("item")
        if new.kind == "function_call_output":
            call = self.log.find_call(new.call_id or "")
            item = Item(id=item_id, type="function_call_output", call_id=new.call_id, output=new.output)
            self._add_item(item, ev)
            turn = self.input or self._open_input()
            turn.input.tool_results.append(ToolResult(new.call_id or "", call.name if call else None,
                                                      new.output or ""))
            turn.input.item_ids.append(item_id)
            return
        if new.kind == "function_call":
            self._add_item(Item(id=item_id, type="function_call", call_id=new.call_id, name=new.name,
                                arguments=new.arguments), ev)
            return
        if new.role in ("system", "assistant"):
            parts = [Part("input_text" if new.role == "system" else "output_text", text=t) for t in new.texts]
            item = Item(id=item_id, type="message", role=new.role, content=parts)
            self._add_item(item, ev)
            if new.role == "system":
                self.system_items[item_id] = " ".join(new.texts)
            return
        audios = [decode_audio(a, self.settings.input_format, event_id=eid, param="item.content.audio")
                  for a in new.audios]
        seconds = self._admit_inline(audios, len(new.images), eid, "item.content", pending=True)
        parts, ti = [], 0
        for ptype in new.part_types:
            if ptype == "input_text":
                parts.append(Part("input_text", text=new.texts[ti]))
                ti += 1
            elif ptype == "input_image":
                parts.append(Part("input_image"))
            else:
                parts.append(Part("input_audio"))
        item = Item(id=item_id, type="message", role="user", content=parts)
        self._add_item(item, ev)
        turn = self.input or self._open_input()
        turn.inline_audio_s += seconds
        turn.input.texts.extend(new.texts)
        turn.input.images.extend(new.images)
        turn.input.item_ids.append(item_id)
        if audios:
            task = self.rt.spawn(self._transcribe(np.concatenate(audios), self.audio.rate), name="transcribe")
            heard = Heard(item_id, task)
            turn.input.heard.append(heard)
            self.rt.spawn(self._transcribed(turn, item, heard), name="transcript")

    def _admit_inline(self, audios: list[np.ndarray], images: int, eid: str | None, param: str, *,
                      pending: bool) -> float:
        """Audio and images sent inside an item (or ``response.input``) pass the same limits as
        the append events: audio seconds come out of the session's audio budget
        (``max_audio_seconds_per_s`` with its burst), images out of its frame budget
        (``max_frames_per_s``); when ``pending`` (an item that waits for a response), what waits
        unanswered in the input turn counts against ``max_pending_audio_s`` (with the audio
        buffer) and ``max_pending_images``. All or nothing: a refused item takes nothing from the
        budgets. Returns the audio seconds admitted (the caller adds them to the input turn)."""
        lim = self.limits
        turn = self.input if pending else None
        queued_s = turn.inline_audio_s if turn is not None else 0.0
        queued_images = len(turn.input.images) if turn is not None else 0
        seconds = sum(len(a) for a in audios) / self.audio.rate
        if seconds > lim.max_pending_audio_s:
            raise ProtocolError("audio_buffer_full", f"audio over max_pending_audio_s ({lim.max_pending_audio_s:g} s)",
                                param=param, event_id=eid)
        if pending and seconds and self.audio.pending_s + queued_s + seconds > lim.max_pending_audio_s:
            raise ProtocolError("audio_buffer_full", "unanswered audio would exceed max_pending_audio_s "
                                f"({lim.max_pending_audio_s:g} s); item dropped", param=param, event_id=eid)
        if images and queued_images + images > lim.max_pending_images:
            raise ProtocolError("too_many_images", f"more than max_pending_images ({lim.max_pending_images}) "
                                "images would wait for one response; item dropped", param=param, event_id=eid)
        budget = self.audio.budget
        if seconds and not budget.can_take(seconds):
            raise ProtocolError("audio_rate_exceeded", f"audio arrives faster than max_audio_seconds_per_s "
                                f"({budget.rate:g} s per second, burst {budget.burst:g} s); item dropped",
                                param=param, event_id=eid)
        if images and not self.frame_bucket.can_take(images):
            raise ProtocolError("frame_rate_exceeded", f"images arrive faster than max_frames_per_s "
                                f"({lim.max_frames_per_s:g}); item dropped", param=param, event_id=eid)
        budget.take(seconds)
        self.frame_bucket.take(images)
        return seconds

    def _add_item(self, item: Item, ev: E.ItemCreate) -> None:
        prev = self.log.add(item, after=ev.previous_item_id, event_id=ev.event_id)
        self._emit(E.ItemAdded(prev, item.to_json()))
        self._emit(E.ItemDone(prev, item.to_json()))

    def _on_item_delete(self, ev: E.ItemDelete) -> None:
        item = self.log.delete(ev.item_id, event_id=ev.event_id)
        self.system_items.pop(item.id, None)
        turn = self.input
        if turn is not None and item.id in turn.input.item_ids:   # pending: not answered yet
            self._forget_pending(turn, item)
        elif item.turn_id is not None:   # answered: out of the agent's history from now on
            self.rt.spawn(self.engine.revise_turn(self.agent_session, item.turn_id, forget=True), name="forget")
        self._emit(E.ItemDeleted(item.id))

    def _forget_pending(self, turn: Turn, item: Item) -> None:
        inp = turn.input
        inp.item_ids.remove(item.id)
        for p in item.content:
            if p.type == "input_text" and p.text in inp.texts:
                inp.texts.remove(p.text)
        inp.heard = [h for h in inp.heard if h.item_id != item.id]
        inp.tool_results = [t for t in inp.tool_results if item.type != "function_call_output"
                            or t.call_id != item.call_id]
        if item.type == "message" and any(p.type == "input_image" for p in item.content):
            inp.images.clear()   # images are not kept per item; a deleted image item drops them all
        if inp.empty() and turn.state is S.COMMITTED:
            turn.to(S.DONE)
            self.input = None

    def _on_truncate(self, ev: E.ItemTruncate) -> None:
        item = self.log.get(ev.item_id, event_id=ev.event_id)
        if item.type != "message" or item.role != "assistant":
            raise ProtocolError("invalid_value", "only assistant messages can be truncated", param="item_id",
                                event_id=ev.event_id)
        if ev.content_index >= len(item.content):
            raise ProtocolError("invalid_value", f"item {item.id} has no content part {ev.content_index}",
                                param="content_index", event_id=ev.event_id)
        part = item.content[ev.content_index]
        if ev.audio_end_ms > part.audio_ms:
            raise ProtocolError("invalid_value", f"audio_end_ms {ev.audio_end_ms} is past the item's audio "
                                f"({part.audio_ms} ms)", param="audio_end_ms", event_id=ev.event_id)
        r = next((x for x in (*self.recent, *(t.response for t in (self.active,) if t)) if x is not None
                  and x.message is item), None)
        if r is not None and not r.done:
            r.heard = r.heard_text(ev.audio_end_ms)   # applied when it ends, to the stored turn as well
            r.cut_playout(ev.audio_end_ms)
        elif r is not None:
            self._truncate_done(r, item, ev.audio_end_ms)
        else:   # an item this session no longer tracks (a long conversation): text in proportion
            full = part.text or part.transcript or ""
            heard = full[: len(full) * ev.audio_end_ms // max(1, part.audio_ms)]
            self._set_heard(item, part, heard)
        self._emit(E.ItemTruncated(item.id, ev.content_index, ev.audio_end_ms))

    def _truncate_done(self, r: Response, item: Item, audio_end_ms: int) -> None:
        r.heard = r.heard_text(audio_end_ms)
        r.cut_playout(audio_end_ms)
        self._set_heard(item, item.content[0], r.heard)

    def _set_heard(self, item: Item, part: Part, heard: str) -> None:
        part.text, part.transcript = (heard, None) if part.type == "output_text" else (None, heard)
        if item.turn_id is not None:
            self.rt.spawn(self.engine.revise_turn(self.agent_session, item.turn_id, reply=heard), name="truncate")

    # ---- responses ----------------------------------------------------------------------------

    def _tool_allowed(self, name: str) -> bool:
        s = self.settings
        if s.tool_choice == "none":
            return False
        return s.tools is None or any(t.name == name for t in s.tools)

    def _instructions(self, extra: str | None) -> str | None:
        parts = [self.settings.instructions, *self.system_items.values(), extra]
        joined = " ".join(p for p in parts if p)
        return joined or None

    def _new_response(self, *, emit: Callable[[E.ServerEvent], None], control: TurnControl,
                      in_band: bool = True, metadata: dict[str, str] | None = None,
                      max_output_tokens: Any = E.UNSET, user_item_id: str | None = None) -> Response:
        mot = self.settings.max_output_tokens if max_output_tokens is E.UNSET else max_output_tokens
        s = self.settings
        return Response(P.new_id("resp"), emit, self.log, control, in_band=in_band, metadata=metadata,
                        modalities=s.output_modalities, max_output_tokens=mot,
                        conversation_id=f"conv_{self.id}" if in_band else None, user_item_id=user_item_id,
                        output_rate=s.output_rate, speed=s.speed, voice_name=self._voice_name())

    def _on_response_create(self, ev: E.ResponseCreate) -> None:
        p, eid = ev.response, ev.event_id
        if self.active is not None:
            rid = self.active.response.id if self.active.response else "for the previous turn"
            raise ProtocolError("conversation_already_has_active_response",
                                f"response {rid} is still active; cancel it or wait for response.done", event_id=eid)
        if p.output_modalities == ("audio",) and self.engine.voice is None:
            raise ProtocolError("invalid_value", "output_modalities [\"audio\"] needs a server voice; this server "
                                "has none", param="response.output_modalities", event_id=eid)
        inp = self._response_input(p, eid)
        if inp is None:
            turn = self._take_input(eid)
        else:
            turn = self._new_turn(S.COMMITTED)
            turn.input = inp
        turn.oob = p.conversation == "none"
        control = TurnControl(instructions=self._instructions(p.instructions),
                              tool_results=tuple(turn.input.tool_results), store=not turn.oob)
        turn.response = self._new_response(emit=self._emit, control=control, in_band=not turn.oob,
                                           metadata=p.metadata, max_output_tokens=p.max_output_tokens,
                                           user_item_id=turn.input.item_ids[-1] if turn.input.item_ids else None)
        if p.output_modalities:
            turn.response.modalities = p.output_modalities
        self._queue_turn(turn)

    def _response_input(self, p: E.ResponseParams, eid: str | None) -> TurnInput | None:
        """The input of a response: its own ``input`` items; for an out-of-band response without
        them, a copy of the pending input (which stays pending); else None (take the pending turn)."""
        if p.input is None:
            if p.conversation != "none":
                return None
            pending = self.input.input if self.input is not None else TurnInput()
            inp = TurnInput(texts=list(pending.texts), images=list(pending.images), heard=list(pending.heard),
                            tool_results=list(pending.tool_results), frames=self._turn_frames())
            if inp.empty() and not inp.frames:
                raise ProtocolError("empty_turn", "nothing to respond to: give response.input, or send text, "
                                    "audio or a camera frame first", event_id=eid)
            return inp
        inp = TurnInput(frames=[])
        for i, it in enumerate(p.input):
            if it.kind == "item_reference":
                ref = self.log.get(it.id or "", event_id=eid, param=f"response.input[{i}].id")
                if ref.type == "function_call_output":
                    call = self.log.find_call(ref.call_id or "")
                    inp.tool_results.append(ToolResult(ref.call_id or "", call.name if call else None,
                                                       ref.output or ""))
                elif ref.role == "user" and ref.text():
                    inp.texts.append(ref.text())
            elif it.kind == "function_call_output":
                call = self.log.find_call(it.call_id or "")
                inp.tool_results.append(ToolResult(it.call_id or "", call.name if call else None, it.output or ""))
            elif it.kind == "message" and it.role == "user":
                audios = [decode_audio(a, self.settings.input_format, event_id=eid) for a in it.audios]
                self._admit_inline(audios, len(it.images), eid, f"response.input[{i}].content", pending=False)
                inp.texts.extend(it.texts)
                inp.images.extend(it.images)
                if audios:
                    audio = np.concatenate(audios)
                    inp.heard.append(Heard("", self.rt.spawn(self._transcribe(audio, self.audio.rate),
                                                             name="transcribe")))
        if inp.empty():
            raise ProtocolError("empty_turn", "response.input has no user message or function_call_output",
                                param="response.input", event_id=eid)
        return inp

    def _take_input(self, eid: str | None) -> Turn:
        """The pending input as a turn to answer (the capture of speech in progress, if any,
        goes on in a new input turn)."""
        turn = self.input
        if turn is None or turn.input.empty():
            frames = self._turn_frames()
            if not frames:
                raise ProtocolError("empty_turn", "nothing to respond to: send text, audio or a camera frame first",
                                    event_id=eid)
            if turn is None:
                turn = self._new_turn(S.COMMITTED)
                turn.input.frames = frames
                return turn
        if turn.speculation is not None:   # an explicit response: no preemptive one beside it
            self._drop_gate(turn.speculation)
        if turn.state in (S.LISTENING, S.PAUSED):
            answered, rest = self._new_turn(S.COMMITTED), turn
            answered.input, rest.input = rest.input, TurnInput()
            self.input = rest
            return answered
        self.input = None
        return turn

    def _request_response(self, turn: Turn, *, auto: bool) -> None:
        """The VAD ended ``turn`` with create_response: answer it (after the active one)."""
        control = TurnControl(instructions=self._instructions(None), tool_results=tuple(turn.input.tool_results))
        turn.response = self._new_response(emit=self._emit, control=control,
                                           user_item_id=turn.input.item_ids[-1] if turn.input.item_ids else None)
        if self.input is turn:
            self.input = None
        self._queue_turn(turn)

    def _busy(self) -> bool:
        limit = self.config.pipeline.max_waiting_turns
        return limit > 0 and self.engine.turns_in_flight >= limit

    def _shed(self, turn: Turn) -> None:
        """Admission control: too many turns wait for the model. This one is refused now with
        server_busy and a retry hint instead of waiting behind them; what it would have
        answered stays pending (a later response.create answers it)."""
        waiting = self.engine.turns_in_flight
        retry_ms = int(min(10_000, max(250, 1000 * self.metrics.first_delta_s)))
        self.metrics.turns_shed.inc(reason="max_waiting_turns")
        if turn.response is not None:
            turn.response.control.abandon()
        self._emit(E.ErrorEvent("server_busy", f"the server is busy ({waiting} turns are waiting for the model); "
                                f"try again in {retry_ms} ms", P.ERROR_TYPES["server_busy"],
                                retry_after_ms=retry_ms))
        turn.response = None
        self._requeue_input(turn)
        turn.to(S.DONE)

    def _queue_turn(self, turn: Turn) -> None:
        turn.to(S.QUEUED)
        if self.active is None and self._busy():
            self._shed(turn)
            return
        if self.active is None:
            self._begin(turn)
        else:
            self.queue.append(turn)

    def _begin(self, turn: Turn) -> None:
        assert turn.response is not None
        self.active = turn
        if not turn.oob:
            self._mark_answered(turn)
        if turn.input.frames is None:
            turn.input.frames = self._turn_frames()
        # Counted among the waiting turns now, not when its task first runs: admission control
        # sees every turn admitted in the same tick.
        waiting = InFlight(self.engine, self.metrics)
        turn.task = self.rt.spawn(self._respond(turn, turn.response, turn.input, waiting), name="respond")
        turn.task.add_done_callback(lambda _task: waiting.release())   # also if cancelled before it ran

    def _mark_answered(self, turn: Turn) -> None:
        for iid in turn.input.item_ids:
            if iid in self.log:
                self.log.get(iid).answered = True

    async def _respond(self, turn: Turn, r: Response, inp: TurnInput, waiting: InFlight | None = None) -> None:
        def started() -> None:
            if turn.state is S.QUEUED:
                turn.to(S.RESPONDING)
            if r.gate is None:
                r.control.commit()   # response.created is out: the client sees this turn
                self._arm_timeout(turn, r)

        try:
            await run_response(self.ctx, r, inp, max_tokens=r.max_output_tokens, on_started=started, waiting=waiting)
            # Truncated while it streamed (a barge-in, or a client's truncate): the stored turn
            # keeps what was heard, whether the response was then cancelled or ran to its end.
            if r.status in ("cancelled", "completed", "incomplete") and r.heard is not None and r.turn \
                    and r.control.keeps:
                await self.engine.revise_turn(self.agent_session, r.turn["turn_id"], reply=r.heard)
        finally:
            if turn.response is r:   # (a dropped preemptive response of this turn is not its response)
                if r.done and r.control.keeps:
                    self._remember(turn, r)
                if self.active is turn:
                    self._response_finished(turn)

    def _remember(self, turn: Turn, r: Response) -> None:
        tid = r.turn["turn_id"] if r.turn else None
        for iid in turn.input.item_ids:
            if iid in self.log:
                self.log.get(iid).turn_id = tid
        self.recent.append(r)

    def _arm_timeout(self, turn: Turn, r: Response) -> None:
        limit = self.config.pipeline.respond_timeout_s
        if limit > 0:
            turn.timeout = self.rt.call_later(limit, lambda: self._timed_out(turn, r))

    def _timed_out(self, turn: Turn, r: Response) -> None:
        """respond_timeout_s passed: the response fails now (its slot is freed); the agent's turn
        is stopped and stored as failed with the code response_timeout."""
        if r.done:
            return
        limit = self.config.pipeline.respond_timeout_s
        message = f"the response took longer than respond_timeout_s ({limit:g} s)"
        r.control.fail("response_timeout", message)
        r.request_cancel("client_cancelled")
        self._emit(error("response_timeout", message))
        r.error = {"code": "response_timeout", "message": message}
        self.metrics.turns.inc(status="failed")
        r.finish("failed")
        if turn.task is not None:
            turn.task.cancel()   # a stuck model call: the agent stores the turn as failed
        if self.active is turn:
            self._response_finished(turn)

    def _response_finished(self, turn: Turn) -> None:
        if turn.timeout is not None:
            turn.timeout.cancel()
        r = turn.response
        if r is not None and r.done_json is not None and not self._closed:
            log_turn(self.id, r.done_json, r.inputs)   # the operator's console line
        if turn.state is not S.DONE:
            turn.to(S.DONE)
        if self.active is turn:
            self.active = None
        while self.queue and self.active is None:
            nxt = self.queue.popleft()
            self._begin(nxt)

    def _on_response_cancel(self, ev: E.ResponseCancel) -> None:
        turn = self.active
        r = turn.response if turn is not None else None
        if r is None or turn is None or (ev.response_id is not None and ev.response_id != r.id):
            raise ProtocolError("response_cancel_not_active", "there is no active response"
                                + (f" with id {ev.response_id}" if ev.response_id else ""),
                                param="response_id" if ev.response_id else None, event_id=ev.event_id)
        if r.stage is ResponseStage.QUEUED:
            # Not started (still waiting for its transcripts): it ends now, and what it would
            # have answered is pending again (it was never answered).
            r.request_cancel("client_cancelled")
            r.start()
            self.metrics.turns.inc(status="cancelled")
            r.finish("cancelled")
            r.control.abandon()
            self._requeue_input(turn)
            self._response_finished(turn)
            return
        r.request_cancel("client_cancelled")

    def _requeue_input(self, turn: Turn) -> None:
        if turn.oob:
            return
        pending = self.input
        if pending is None:
            self.input = self._new_turn(S.COMMITTED)
            self.input.input = turn.input
            return
        merged = turn.input
        merged.texts += pending.input.texts
        merged.images += pending.input.images
        merged.heard += pending.input.heard
        merged.item_ids += pending.input.item_ids
        merged.tool_results += pending.input.tool_results
        pending.input = merged

    # ---- the end --------------------------------------------------------------------------------

    async def close(self) -> None:
        """The client is gone: nothing unseen is stored, everything stops."""
        turns = [t for t in (self.input, self.active, *self.queue) if t is not None]
        for t in turns:
            if t.speculation is not None:
                self._drop_speculation(t)
            r = t.response
            if r is not None:
                r.control.abandon()   # committed turns stay committed: stored as cancelled
                r.request_cancel("client_cancelled")
        self._closed = True
        await self.rt.close()
