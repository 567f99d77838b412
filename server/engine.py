"""The models behind the server, behind one typed interface: :class:`ModelEngine`.

Every model call of a conversation goes through it: text, camera frames and speech encodings,
the agent's reply (``respond``), edits of stored turns, and — a slot for the voice — speech
synthesis. :class:`LocalEngine` runs everything in this process: perception through
micro-batchers, fusion and the agent, loaded once per process, in a worker thread, at start
(``warmup``) or on first use; every model call runs in a worker thread, never on the event loop.
Another implementation (e.g. Ray Serve deployments) only has to provide the same methods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from perception.errors import MMAgentError
from server.auth import LOCAL_PRINCIPAL
from server.batcher import MicroBatcher
from server.config import ServerConfig
from server.console import loading
from server.metrics import Metrics
from server.semantic_turn import EndOfTurnModels, SemanticTurnModels

if TYPE_CHECKING:
    from agent import PerceivedTurn, Session, TurnControl
    from agent.events import AgentEvent
    from perception.types import FrameEncoding, SpeechEncoding, TextEncoding
    from server.core.settings import FunctionTool
    from voice import AudioChunk

log = logging.getLogger(__name__)

# Loaded models, shared by every Engine of the process with the same model settings (a test
# session or a benchmark starts several servers; each must not load the models again).
_MODELS: dict[str, tuple[Any, Any, Any]] = {}
_MODELS_LOCK = threading.Lock()
_VOICES: dict[str, Any] = {}      # loaded voices (voice.Synthesizer) by their configuration
TEXT_CACHE_SIZE = 256


@dataclass(frozen=True)
class RespondRequest:
    """One reply of the agent: the turn as perceived, and the caller's hold on it."""

    session: Session
    perceived: PerceivedTurn
    cancel: asyncio.Event
    control: TurnControl            # stored only once committed; instructions, device results
    max_tokens: int | None = None   # None: the responder's own limit


class SpeechOut(Protocol):
    """One reply's speech (``voice.SpeechStream``): text in as it streams, audio chunks out."""

    def feed(self, delta: str) -> None: ...

    def finish(self) -> None: ...

    def cancel(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[AudioChunk]: ...


class Voice(Protocol):
    """Speech synthesis for ``output_modalities: ["audio"]`` (``voice.Synthesizer``): one per
    process, shared by every session; each reply opens its own stream."""

    @property
    def name(self) -> str: ...

    @property
    def output_rates(self) -> tuple[int, ...]:
        """PCM16 rates a stream can be opened at."""
        ...

    def open_stream(self, output_rate: int | None = None, *, speed: float = 1.0) -> SpeechOut:
        """A reply's stream: chunks of PCM16 LE mono at ``output_rate``, each with the text it speaks."""
        ...


class ModelEngine(Protocol):
    """What a conversation needs from the models (all sessions share one engine)."""

    # Turns between their end of input and their first reply delta, over all sessions; while
    # there are any, background work (camera presence updates) yields the CPU to them.
    turns_in_flight: int
    voice: Voice | None
    # semantic_vad's end-of-turn models (None: vad.semantic is "silence")
    turn_models: EndOfTurnModels | None

    @property
    def loaded(self) -> bool: ...

    async def ensure_loaded(self) -> None: ...

    async def open_session(self, session_id: str | None, *, principal: str = "local") -> Session:
        """The agent's session: a new one owned by ``principal``, or the one with ``session_id``
        resumed from its store. An unknown id and an id owned by another principal raise the
        same :class:`agent.errors.SessionError` (nothing of the session is loaded then)."""
        ...

    async def encode_text(self, text: str) -> TextEncoding: ...

    def prefetch_text(self, text: str) -> None:
        """Start encoding ``text`` now; a later ``encode_text(text)`` reuses the result."""
        ...

    async def encode_frame(self, image: bytes) -> FrameEncoding: ...

    async def encode_speech(self, audio: np.ndarray, rate: int) -> SpeechEncoding: ...

    def respond(self, request: RespondRequest) -> AsyncIterator[AgentEvent]:
        """The agent's events for one turn (ends with ``TurnDoneEvent``)."""
        ...

    async def revise_turn(self, session: Session, turn_id: str, *, reply: str | None = None,
                          forget: bool = False) -> None:
        """Change a stored turn: what was heard of its reply, or forget it (a deleted item)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def tools(self) -> tuple[FunctionTool, ...]:
        """The pack's actions, as the function tools the agent may call."""
        ...

    @property
    def pack_name(self) -> str | None: ...

    @property
    def instructions(self) -> str:
        """The agent's own instructions (persona), shown as the session's default."""
        ...

    async def close(self) -> None: ...


class LocalEngine:
    """Perception, fusion and agent for all sessions, in this process; ``await engine.ensure_loaded()`` first."""

    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self.config, self.metrics = config, metrics
        self.voice: Voice | None = None
        self.turn_models: EndOfTurnModels | None = (
            SemanticTurnModels(config.vad.semantic, metrics=metrics) if config.vad.semantic != "silence" else None)
        b = config.batching
        self.executor = ThreadPoolExecutor(b.model_threads, thread_name_prefix="model")
        # VAD and other tiny per-chunk work get their own thread so they never wait behind Whisper.
        self.light_executor = ThreadPoolExecutor(1, thread_name_prefix="vad")
        self.perception: Any = None
        self.fusion: Any = None
        self.agent: Any = None
        self._load_lock: asyncio.Lock | None = None
        self.load_error: BaseException | None = None
        # Turns between their end of input and their first reply delta, over all sessions. While
        # there are any, background work (camera presence updates) yields the CPU to them.
        self.turns_in_flight = 0
        self._owners: dict[str, str] = {}   # session owners when the agent keeps no store
        # Recent text encodings by text (a turn's text is often encoded ahead, during its
        # end-of-turn silence); futures, so a request arriving mid-encode waits for that one.
        self._text_cache: OrderedDict[str, asyncio.Future[Any]] = OrderedDict()
        self.text = MicroBatcher("text", self._encode_texts, executor=self.executor, enabled=b.enabled,
                                 max_batch=b.text.max_batch, max_wait_ms=b.text.max_wait_ms, metrics=metrics)
        self.frames = MicroBatcher("frames", self._encode_frames, executor=self.executor, enabled=b.enabled,
                                   max_batch=b.frames.max_batch, max_wait_ms=b.frames.max_wait_ms,
                                   metrics=metrics)
        self.speech = MicroBatcher("speech", self._encode_speech, executor=self.executor, enabled=b.enabled,
                                   max_batch=b.speech.max_batch, max_wait_ms=b.speech.max_wait_ms,
                                   metrics=metrics)

    @property
    def loaded(self) -> bool:
        return self.agent is not None

    async def ensure_loaded(self) -> None:
        """Load every model once (in a worker thread); later calls return at once."""
        if self.agent is not None:
            return
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:
            if self.agent is None:
                await asyncio.get_running_loop().run_in_executor(self.executor, self._load)

    def _load(self) -> None:
        from server.vad import load_silero

        key = json.dumps([type(self).__name__, self.config.pack, self.config.pipeline.fusion_checkpoint, self.config.state_dir,
                          self.config.agent, self.config.perception], sort_keys=True, default=str)
        with _MODELS_LOCK:
            if key not in _MODELS:
                _MODELS[key] = self._build_models()
            self.perception, self.fusion, agent = _MODELS[key]
        if self.config.vad.backend == "silero":
            load_silero()
        self.voice = self._load_voice(agent)
        self.agent = agent

    def _load_voice(self, agent: Any) -> Voice | None:
        """The server's voice (``voice`` section, then the pack's ``voice`` choice), loaded once
        per process; None when ``voice.enabled`` is false. A bad voice fails the start."""
        config = self.config.voice_config(getattr(getattr(agent, "pack", None), "voice", None))
        if config is None:
            return None
        key = json.dumps(dataclasses.asdict(config), sort_keys=True)
        with _MODELS_LOCK:
            if key not in _VOICES:
                from voice import Synthesizer

                with loading("voice: Piper text to speech"):
                    _VOICES[key] = Synthesizer(config)
            return _VOICES[key]  # type: ignore[no-any-return]

    def _build_models(self) -> tuple[Any, Any, Any]:
        from agent import Agent
        from fusion import FusionPredictor

        t0 = time.perf_counter()
        perception = self._make_perception()
        fusion: Any = None
        try:
            with loading("fusion core"):
                fusion = FusionPredictor.load(self.config.pipeline.fusion_checkpoint)
                fusion.check_encoders(perception.identities(), perception.feature_dims())
        except MMAgentError as exc:
            if self.config.pipeline.require_fusion:
                raise
            # Without a checkpoint the agent still answers; turn.fused then carries no prediction.
            log.warning("fusion disabled: %s [%s]", exc, exc.code)
            fusion = None
        with loading("agent: knowledge pack, retrieval index, language model",
                     hint="the first start converts the language model once, about 20 s"):
            agent = Agent.from_config(self._agent_config(), perception=perception, fusion=fusion,
                                      llm=self._make_llm())
            agent.warmup()
        log.info("models loaded in %.1f s", time.perf_counter() - t0)
        return perception, fusion, agent

    def _make_perception(self) -> Any:
        """The encoders, loaded (in parallel) in this process."""
        from perception import Perception

        with loading("perception: text, speech and vision encoders") as step:
            perception = Perception(self._perception_config())
            step.detail(", ".join(f"{k} {v:.1f} s" for k, v in perception.warmup().items()) + ", in parallel")
        return perception

    def _perception_config(self) -> Any:
        return perception_config_for(self.config)

    def _make_llm(self) -> Any:
        """The local language model to share (None: the agent builds its own, in process)."""
        return None

    def _agent_config(self) -> Any:
        from agent import AgentConfig

        from .config import sessions_db_path

        data: dict[str, Any] = {**self.config.agent}
        if self.config.pack is not None:
            data["pack"] = self.config.pack
        store = dict(data.get("store") or {})
        # The same default `mmagent sessions` reads (server.config.sessions_db_path).
        store.setdefault("path", str(sessions_db_path(self.config)))
        data["store"] = store
        return AgentConfig.from_dict(data)

    # ---- batched model calls (worker threads) -------------------------------------------------

    def _encode_texts(self, texts: list[str]) -> list[Any]:
        return list(self.perception.encode_text(texts))

    def _encode_frames(self, images: list[bytes]) -> list[Any]:
        return list(self.perception.encode_frames(images))

    def _encode_speech(self, items: list[tuple[np.ndarray, int]]) -> list[Any]:
        return [self.perception.encode_speech(audio, rate) for audio, rate in items]

    async def encode_text(self, text: str) -> TextEncoding:
        await self.ensure_loaded()
        return await asyncio.shield(self._text_future(text))

    def prefetch_text(self, text: str) -> None:
        """Start encoding ``text`` now (models loaded); a later ``encode_text(text)`` reuses it."""
        if self.loaded:
            self._text_future(text)

    def _text_future(self, text: str) -> asyncio.Future[Any]:
        fut = self._text_cache.get(text)
        if fut is not None and not (fut.done() and (fut.cancelled() or fut.exception() is not None)):
            self._text_cache.move_to_end(text)
            return fut
        fut = asyncio.ensure_future(self.text.submit(text))
        fut.add_done_callback(_retrieve)   # a prefetch nobody awaits must not log "never retrieved"
        self._text_cache[text] = fut
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return fut

    async def encode_frame(self, image: bytes) -> FrameEncoding:
        await self.ensure_loaded()
        return await self.frames.submit(image)

    async def encode_speech(self, audio: np.ndarray, rate: int) -> SpeechEncoding:
        await self.ensure_loaded()
        return await self.speech.submit((audio, rate))

    # ---- agent ---------------------------------------------------------------------------------

    async def open_session(self, session_id: str | None, *, principal: str = "local") -> Session:
        """See :meth:`ModelEngine.open_session`. The owner is checked first, with one indexed
        read, and the same way for an unknown id, so the refusal says and times nothing more."""
        await self.ensure_loaded()
        return await asyncio.get_running_loop().run_in_executor(
            self.light_executor, lambda: self._open_session(session_id, principal))

    def _open_session(self, session_id: str | None, principal: str) -> Session:
        from agent.errors import SessionError
        from agent.session import new_session_id

        store = self.agent.store
        if session_id is None:
            sid = new_session_id()
            if store is not None:
                store.create_session(sid, pack=self.agent.pack.name, owner=principal)
                return self.agent.open_session(session_id=sid)   # type: ignore[no-any-return]
            self._owners[sid] = principal
            return self.agent.open_session(session_id=sid, create_missing=True)  # type: ignore[no-any-return]
        owner = store.owner_of(session_id) if store is not None else self._owners.get(session_id, "")
        # Sessions stored before owners were (owner NULL) belong to the no-token principal.
        if (owner or LOCAL_PRINCIPAL) != principal:
            log.warning("refused to resume session %.64r for principal %s: it belongs to another principal",
                        session_id, principal)
            raise SessionError(f"unknown session id {session_id!r}")
        return self.agent.open_session(session_id=session_id)  # type: ignore[no-any-return]

    def respond(self, request: RespondRequest) -> AsyncIterator[AgentEvent]:
        return self.agent.respond(request.session, request.perceived,  # type: ignore[no-any-return]
                                  cancel=request.cancel, max_tokens=request.max_tokens, control=request.control)

    async def revise_turn(self, session: Session, turn_id: str, *, reply: str | None = None,
                          forget: bool = False) -> None:
        from agent.control import revise_turn

        await asyncio.get_running_loop().run_in_executor(
            self.light_executor, lambda: revise_turn(session, turn_id, reply=reply, forget=forget))

    def count_tokens(self, text: str) -> int:
        if self.agent is None:
            return max(1, (len(text) + 3) // 4)
        return int(self.agent.responder.count_tokens(text))

    def tools(self) -> tuple[FunctionTool, ...]:
        from server.core.settings import FunctionTool

        pack = getattr(self.agent, "pack", None)
        if pack is None:
            return ()
        return tuple(FunctionTool(a.name, a.description, a.parameters) for a in pack.actions.values())

    @property
    def pack_name(self) -> str | None:
        from pathlib import Path

        name = getattr(getattr(self.agent, "pack", None), "name", None)
        return name if isinstance(name, str) else (Path(self.config.pack).name if self.config.pack else None)

    @property
    def instructions(self) -> str:
        pack = getattr(self.agent, "pack", None)
        return f"{pack.persona}\n{pack.instructions}" if pack is not None else ""

    async def close(self) -> None:
        for fut in self._text_cache.values():
            fut.cancel()
        self._text_cache.clear()
        for b in (self.text, self.frames, self.speech):
            await b.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.light_executor.shutdown(wait=False, cancel_futures=True)
        if isinstance(self.turn_models, SemanticTurnModels):
            await self.turn_models.close()


def perception_config_for(config: ServerConfig) -> Any:
    """The configured perception, its recogniser biased towards the pack's vocabulary unless
    ``perception.speech_vocabulary`` is set (an empty list there turns the biasing off)."""
    import dataclasses

    from agent.pack import load_pack
    from agent.vocabulary import pack_vocabulary

    pconf = config.perception_config()
    if "speech_vocabulary" in config.perception:
        return pconf
    terms = tuple(pack_vocabulary(load_pack(config.pack)))
    return dataclasses.replace(pconf, speech_vocabulary=terms)


def make_engine(config: ServerConfig, metrics: Metrics) -> ModelEngine:
    """The engine ``serving.engine`` names: in process (default) or Ray Serve."""
    if config.serving.engine == "ray":
        from server.serving.engine import RayEngine

        return RayEngine(config, metrics)
    return LocalEngine(config, metrics)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
