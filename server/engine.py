"""The models behind the server, shared by every session: perception (through micro-batchers),
fusion and the agent. Loaded once per process, in a worker thread, at start (``warmup``) or on
first use; every model call runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from perception.errors import MMAgentError
from server.batcher import MicroBatcher
from server.config import ServerConfig
from server.console import loading
from server.metrics import Metrics

log = logging.getLogger(__name__)

# Loaded models, shared by every Engine of the process with the same model settings (a test
# session or a benchmark starts several servers; each must not load the models again).
_MODELS: dict[str, tuple[Any, Any, Any]] = {}
_MODELS_LOCK = threading.Lock()
TEXT_CACHE_SIZE = 256


class Engine:
    """Perception, fusion and agent for all sessions; ``await engine.ensure_loaded()`` first."""

    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self.config, self.metrics = config, metrics
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

        key = json.dumps([self.config.pack, self.config.pipeline.fusion_checkpoint, self.config.state_dir,
                          self.config.agent, self.config.perception], sort_keys=True, default=str)
        with _MODELS_LOCK:
            if key not in _MODELS:
                _MODELS[key] = self._build_models()
            self.perception, self.fusion, agent = _MODELS[key]
        if self.config.vad.backend == "silero":
            load_silero()
        self.agent = agent

    def _build_models(self) -> tuple[Any, Any, Any]:
        from agent import Agent
        from fusion import FusionPredictor
        from perception import Perception

        t0 = time.perf_counter()
        with loading("perception: text, speech and vision encoders") as step:
            perception = Perception(self.config.perception_config())
            step.detail(", ".join(f"{k} {v:.1f} s" for k, v in perception.warmup().items()) + ", in parallel")
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
            agent = Agent.from_config(self._agent_config(), perception=perception, fusion=fusion)
            agent.warmup()
        log.info("models loaded in %.1f s", time.perf_counter() - t0)
        return perception, fusion, agent

    def _agent_config(self) -> Any:
        from pathlib import Path

        from agent import AgentConfig

        data: dict[str, Any] = {**self.config.agent}
        if self.config.pack is not None:
            data["pack"] = self.config.pack
        store = dict(data.get("store") or {})
        store.setdefault("path", str(Path(self.config.state_dir) / "sessions.sqlite3"))
        data["store"] = store
        return AgentConfig.from_dict(data)

    # ---- batched model calls (worker threads) -------------------------------------------------

    def _encode_texts(self, texts: list[str]) -> list[Any]:
        return list(self.perception.encode_text(texts))

    def _encode_frames(self, images: list[bytes]) -> list[Any]:
        return list(self.perception.encode_frames(images))

    def _encode_speech(self, items: list[tuple[np.ndarray, int]]) -> list[Any]:
        return [self.perception.encode_speech(audio, rate) for audio, rate in items]

    async def encode_text(self, text: str) -> Any:
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

    async def encode_frame(self, image: bytes) -> Any:
        await self.ensure_loaded()
        return await self.frames.submit(image)

    async def encode_speech(self, audio: np.ndarray, rate: int) -> Any:
        await self.ensure_loaded()
        return await self.speech.submit((audio, rate))

    # ---- agent ---------------------------------------------------------------------------------

    async def open_session(self, session_id: str | None) -> Any:
        """The agent's session (resumed from its store when ``session_id`` is known)."""
        await self.ensure_loaded()
        return await asyncio.get_running_loop().run_in_executor(
            self.light_executor, lambda: self.agent.open_session(session_id=session_id))

    def respond(self, session: Any, perceived: Any, cancel: asyncio.Event, max_tokens: int | None = None,
                discard: Callable[[], bool] | None = None) -> AsyncIterator[Any]:
        """The agent's reply events for one turn (its LLM runs in its own worker thread);
        ``max_tokens``: the session's max_output_tokens (None = the responder's own limit);
        ``discard``: true at the end = forget the turn (a voided preemptive response)."""
        return self.agent.respond(session, perceived, cancel=cancel,  # type: ignore[no-any-return]
                                  max_tokens=max_tokens, discard=discard)

    async def close(self) -> None:
        for fut in self._text_cache.values():
            fut.cancel()
        self._text_cache.clear()
        for b in (self.text, self.frames, self.speech):
            await b.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.light_executor.shutdown(wait=False, cancel_futures=True)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
