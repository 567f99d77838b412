"""semantic_vad's end-of-turn models, shared by all sessions of a server.

A session with ``turn_detection.type == "semantic_vad"`` runs :class:`server.vad.SemanticVad`;
at ``vad.semantic_check_ms`` of silence its conversation asks these models whether the turn is
over. ``vad.semantic`` chooses them:

- ``"smart_turn+lm"`` (default): Smart Turn v3.2 on the audio (P(complete) ≥ the eagerness's
  threshold) and SmolLM2-135M on the speculative transcript (P(the sentence ends) ≥ 0.01) must
  both say complete for the turn to end at the check (``perception.turn.SmartTurnDetector``);
- ``"smart_turn"``: the audio model and the dangling-word rule only.

Both say unfinished: the turn waits for the eagerness's long limit (low 8 s, medium and auto
4 s, high 2 s, as in Realtime GA). They disagree (the text reads unfinished, "I'm looking for
the", or the audio sounds unfinished while the text reads finished): it waits
:data:`TEXT_WAIT_MS` (auto 1.5 s), long enough for a hesitation, short enough that a complete
question one of them misjudges ("What floor is the electronics section on?", which Smart Turn
scores 0.007) is not held for the long limit. The audio sounds unfinished but the text is sure
(P(the sentence ends) ≥ 0.05): the eagerness's fixed silence (auto 600 ms) — Smart Turn hears
espeak-ng's robotic voices as unfinished ("Can I return these shoes?" 0.03).

The models load in the background the first time a session asks (the server's start does not
wait for them); until then, or if they cannot load, semantic_vad ends a turn after the
eagerness's fixed silence (``server.core.audio_input.SEMANTIC_SILENCE_MS``). Their calls run in
threads of their own, so they never wait behind Whisper or delay another session's VAD: Smart
Turn (one ONNX thread) in one, the text model in another, where the transcripts of sessions
pausing at the same time go through it as one batch (one forward pass of SmolLM2 costs about
the same for one transcript as for several: it is bound by reading the weights).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import numpy as np

from perception.errors import ConfigError, MMAgentError
from server.batcher import MicroBatcher
from server.core.audio_input import SEMANTIC_SILENCE_MS

if TYPE_CHECKING:
    from perception.turn import SmartTurnDetector, TurnVerdict
    from server.metrics import Metrics

log = logging.getLogger("mmagent.server")

EAGERNESSES = ("low", "medium", "high", "auto")
# The two models disagree: the turn waits this long (ms), by eagerness.
TEXT_WAIT_MS = {"low": 3000, "medium": 1500, "auto": 1500, "high": 1000}
# ... unless the audio sounds unfinished and the text is sure it is finished (P(end) ≥ TEXT_SURE:
# 39 of 40 complete kiosk sentences, none of 40 unfinished phrases): the eagerness's fixed silence.
TEXT_SURE = 0.05


class EndOfTurnModels(Protocol):
    """What a conversation asks at a semantic_vad check (see the module docstring)."""

    def ready(self) -> bool:
        """True once loaded; the first call starts the load in the background."""
        ...

    async def audio_probability(self, eagerness: str, audio: np.ndarray, rate: int) -> float:
        """Smart Turn's P(complete) for the utterance so far (int16 at ``rate``)."""
        ...

    async def verdict(self, eagerness: str, p: float, transcript: str | None) -> TurnVerdict:
        """The decision from ``p`` and the speculative transcript (None: none was made)."""
        ...


class SemanticTurnModels:
    """:class:`EndOfTurnModels` from ``perception.turn`` (one detector per eagerness, one model)."""

    def __init__(self, kind: str = "smart_turn+lm", *, metrics: Metrics | None = None) -> None:
        if kind not in ("smart_turn+lm", "smart_turn"):
            raise ConfigError(f"semantic turn models must be 'smart_turn+lm' or 'smart_turn', got {kind!r}")
        self.kind, self.metrics = kind, metrics
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="turn")            # loading, Smart Turn
        self.text_executor = ThreadPoolExecutor(1, thread_name_prefix="turn-text")  # the text model, batched
        self._text: MicroBatcher[str, float] | None = None
        self._detectors: dict[str, SmartTurnDetector] | None = None
        self._loading: Future[None] | None = None
        self.error: MMAgentError | None = None

    def ready(self) -> bool:
        if self._detectors is None and self._loading is None:
            self._loading = self.executor.submit(self._load)
        return self._detectors is not None

    def load(self) -> None:
        """Load now, in this thread (tests, warm-up); raises the load's error."""
        self.ready()
        assert self._loading is not None
        self._loading.result()
        if self.error is not None:
            raise self.error

    def _load(self) -> None:
        from perception.turn import SmartTurnDetector, TurnConfig, make_turn_detector

        try:
            detectors = {}
            for eagerness in EAGERNESSES:
                d = make_turn_detector(TurnConfig(mode="smart_turn", eagerness=eagerness,  # type: ignore[arg-type]
                                                  text_model="lm" if self.kind == "smart_turn+lm" else "none",
                                                  text_wait_ms=TEXT_WAIT_MS[eagerness],
                                                  text_sure=TEXT_SURE if self.kind == "smart_turn+lm" else None,
                                                  unsure_ms=SEMANTIC_SILENCE_MS[eagerness]))
                assert isinstance(d, SmartTurnDetector)
                detectors[eagerness] = d
            next(iter(detectors.values())).audio_probability(np.zeros(1600, np.int16), 16000)   # first-call warm-up
        except MMAgentError as exc:
            self.error = exc
            log.warning("semantic_vad falls back to silence: its end-of-turn model did not load: %s [%s]",
                        exc, exc.code)
            return
        text_model = next(iter(detectors.values())).text_model      # one model, shared by the eagernesses
        if text_model is not None:
            # No wait for company: a call runs at once; the calls that come meanwhile form the next batch.
            self._text = MicroBatcher("turn_text", text_model.probabilities, executor=self.text_executor,
                                      max_batch=16, max_wait_ms=0.0, metrics=self.metrics)
        self._detectors = detectors
        log.info("semantic_vad: end-of-turn models loaded (%s)", self.kind)

    def _detector(self, eagerness: str) -> SmartTurnDetector:
        if self._detectors is None:
            raise RuntimeError("semantic turn models are not loaded (ask ready() first)")
        return self._detectors[eagerness]

    async def audio_probability(self, eagerness: str, audio: np.ndarray, rate: int) -> float:
        detector = self._detector(eagerness)
        return await asyncio.get_running_loop().run_in_executor(self.executor, detector.audio_probability, audio,
                                                                 rate)

    async def verdict(self, eagerness: str, p: float, transcript: str | None) -> TurnVerdict:
        detector = self._detector(eagerness)
        q = None
        if self._text is not None and detector.needs_text(transcript):
            assert transcript is not None
            q = await self._text.submit(transcript)
        return detector.verdict(p, transcript, q)   # the rules only, given q: no model runs on the loop

    async def close(self) -> None:
        if self._text is not None:
            await self._text.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.text_executor.shutdown(wait=False, cancel_futures=True)
