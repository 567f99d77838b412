"""The input audio buffer and turn detection of one session.

Audio arrives in the session's input format (PCM16 at 8/16/24/48 kHz, or G.711 μ-law / A-law at
8 kHz) and is decoded to PCM16 here. With turn detection off it accumulates until a client
commit; with turn detection on, a pluggable :class:`TurnDetector` turns it into speech
start / pause / resume / stop events (``server.vad``'s frozen dataclasses).

Turn detectors are chosen by ``turn_detection.type``:

=================  =============================================================================
``server_vad``     silence only: the turn ends after ``silence_duration_ms`` below ``threshold``
``semantic_vad``   an end-of-turn model decides (``vad.semantic``, Smart Turn v3.2 + SmolLM2 by
                   default): :class:`server.vad.SemanticVad` asks at ``vad.semantic_check_ms`` of
                   silence (a :class:`server.vad.TurnCheck`; the conversation runs the model and
                   answers), and silence alone ends the turn at the eagerness's long limit
                   (:data:`SEMANTIC_MAX_WAIT_MS`). Until the model is loaded, and with
                   ``vad.semantic = "silence"``, a turn ends after the eagerness's fixed silence
                   (:data:`SEMANTIC_SILENCE_MS`)
=================  =============================================================================

Audio faster than real time (a recorded file uploaded at once) is accepted up to a burst
(``limits.audio_burst_s``, 60 s by default); after that the per-second budget
(``limits.max_audio_seconds_per_s``) applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server.core.settings import SessionSettings, TurnDetection
from server.errors import ProtocolError
from server.limits import TokenBucket
from server.vad import SemanticVad, SpeechStopped, StreamingVad, VadEvent

# semantic_vad eagerness → (silence that ends a turn without a model, longest wait with one), ms.
# "high" answers soonest; "auto" is "medium" (Realtime GA's own definition). The long limits are
# GA's: low 8 s, medium 4 s, high 2 s.
SEMANTIC_SILENCE_MS = {"high": 300, "medium": 600, "auto": 600, "low": 1000}
SEMANTIC_MAX_WAIT_MS = {"high": 2000, "medium": 4000, "auto": 4000, "low": 8000}


@dataclass(frozen=True)
class DetectorParams:
    """What a detector is built from (a session's turn_detection, mapped)."""

    kind: str                  # "server_vad" | "semantic_vad"
    rate: int                  # input sample rate
    threshold: float
    prefix_padding_ms: int
    silence_ms: int            # silence that ends a turn (the short pause for a semantic detector)
    speculative_ms: int        # a pause this long starts speculative work (SpeechPaused)
    max_wait_ms: int           # semantic detectors: end the turn after this much silence at the latest
    backend: str               # VAD backend: "silero" | "energy"
    semantic: str = "silence"  # semantic_vad's model: "smart_turn+lm" | "smart_turn" | "silence"
    check_ms: int = 200        # semantic detectors: ask the model at this much silence


def detector_params(td: TurnDetection, rate: int, *, backend: str, speculative_ms: int,
                    semantic: str = "silence", check_ms: int = 200) -> DetectorParams:
    """Map a session's ``turn_detection`` onto detector parameters (``semantic_vad``: by eagerness)."""
    if td.type == "semantic_vad":
        silence = SEMANTIC_SILENCE_MS[td.eagerness]
        return DetectorParams("semantic_vad", rate, td.threshold, td.prefix_padding_ms, silence, speculative_ms,
                              SEMANTIC_MAX_WAIT_MS[td.eagerness], backend, semantic, min(check_ms, silence))
    return DetectorParams("server_vad", rate, td.threshold, td.prefix_padding_ms, td.silence_duration_ms,
                          speculative_ms, td.silence_duration_ms, backend)


class TurnDetector(Protocol):
    """Speech start/pause/resume/stop from PCM16 chunks (``server.vad.StreamingVad`` is one)."""

    speaking: bool

    @property
    def pending_s(self) -> float: ...

    def process(self, pcm: np.ndarray) -> list[VadEvent]:
        """Feed int16 samples (n,) at the input rate; the events they complete. CPU work: the
        connection runs it in a worker thread."""
        ...

    def flush(self) -> SpeechStopped | None: ...

    def drain(self) -> np.ndarray: ...

    def clear(self) -> None: ...


DetectorFactory = Callable[[DetectorParams], TurnDetector]


def silence_detector(p: DetectorParams) -> TurnDetector:
    return StreamingVad(p.rate, threshold=p.threshold, prefix_padding_ms=p.prefix_padding_ms,
                        silence_duration_ms=p.silence_ms, backend=p.backend, speculative_ms=p.speculative_ms)


def semantic_detector(p: DetectorParams) -> TurnDetector:
    """semantic_vad: the model decides at ``check_ms`` (``vad.semantic = "silence"``: the fixed
    silence of the eagerness, no model)."""
    if p.semantic == "silence":
        return silence_detector(p)
    return SemanticVad(p.rate, threshold=p.threshold, prefix_padding_ms=p.prefix_padding_ms,
                       max_wait_ms=p.max_wait_ms, check_ms=p.check_ms, backend=p.backend,
                       speculative_ms=p.speculative_ms)


_DETECTORS: dict[str, DetectorFactory] = {"server_vad": silence_detector, "semantic_vad": semantic_detector}


def register_detector(kind: str, factory: DetectorFactory) -> None:
    """Use ``factory`` for ``turn_detection.type == kind`` (e.g. Smart Turn for semantic_vad)."""
    _DETECTORS[kind] = factory


# ---- G.711 ------------------------------------------------------------------------------------

def _ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW = _ulaw_table()
ALAW = _alaw_table()


def decode_audio(raw: bytes, fmt: str, *, event_id: str | None = None, param: str = "audio") -> np.ndarray:
    """Bytes in ``fmt`` (``audio/pcm`` PCM16 LE, ``audio/pcmu``, ``audio/pcma``) → int16 (n,)."""
    if fmt == "audio/pcm":
        if len(raw) % 2:
            raise ProtocolError("invalid_audio", "PCM16 audio must have an even number of bytes", param=param,
                                event_id=event_id)
        return np.frombuffer(raw, dtype="<i2").astype(np.int16)
    table = ULAW if fmt == "audio/pcmu" else ALAW
    return table[np.frombuffer(raw, dtype=np.uint8)]


class AudioInput:
    """Buffered input audio of one session: the manual buffer, or the turn detector."""

    def __init__(self, settings: SessionSettings, *, budget: TokenBucket, max_pending_s: float,
                 backend: str, speculative_ms: int, semantic: str = "silence", check_ms: int = 200) -> None:
        self.budget, self.max_pending_s = budget, max_pending_s
        self.backend, self.speculative_ms = backend, speculative_ms
        self.semantic, self.check_ms = semantic, check_ms
        self.format, self.rate = settings.input_format, settings.rate
        self.received = 0                       # samples since the session began (audio_*_ms)
        self.manual: list[np.ndarray] = []
        self.manual_len = 0
        self.detector: TurnDetector | None = None
        self.params: DetectorParams | None = None
        self.configure(settings)

    def configure(self, settings: SessionSettings) -> np.ndarray:
        """Apply new settings; return the audio of an utterance in progress that the old
        detector held (so that switching detection off mid-utterance loses nothing)."""
        kept = self.detector.drain() if self.detector is not None else np.zeros(0, np.int16)
        self.format, self.rate = settings.input_format, settings.rate
        td = settings.turn_detection
        if td is None:
            self.detector, self.params = None, None
        else:
            self.params = detector_params(td, self.rate, backend=self.backend, speculative_ms=self.speculative_ms,
                                          semantic=self.semantic, check_ms=self.check_ms)
            self.detector = _DETECTORS[td.type](self.params)
        return kept

    @property
    def pending(self) -> bool:
        """Audio is buffered: manual audio, or an utterance in progress."""
        return self.manual_len > 0 or (self.detector is not None and self.detector.speaking)

    @property
    def pending_s(self) -> float:
        return self.detector.pending_s if self.detector is not None else self.manual_len / self.rate

    def accept(self, raw: bytes, event_id: str | None, *, queued_s: float = 0.0) -> np.ndarray:
        """Decode one append and charge it to the budgets; the PCM16 samples (maybe empty).
        ``queued_s``: audio of items that wait for the same response (counted as buffered)."""
        pcm = decode_audio(raw, self.format, event_id=event_id)
        if not len(pcm):
            return pcm
        seconds = len(pcm) / self.rate
        if seconds > self.max_pending_s:
            raise ProtocolError("audio_buffer_full", f"one append of {seconds:.1f} s is over max_pending_audio_s "
                                f"({self.max_pending_s:g} s); chunk dropped", event_id=event_id)
        if not self.budget.take(seconds):
            raise ProtocolError("audio_rate_exceeded",
                                f"audio arrives faster than max_audio_seconds_per_s ({self.budget.rate:g} s per "
                                f"second, burst {self.budget.burst:g} s); chunk dropped", event_id=event_id)
        if self.pending_s + queued_s + seconds > self.max_pending_s:
            raise ProtocolError("audio_buffer_full", f"buffered audio would exceed max_pending_audio_s "
                                f"({self.max_pending_s:g} s); chunk dropped", event_id=event_id)
        self.received += len(pcm)
        return pcm

    def buffer(self, pcm: np.ndarray) -> None:
        """Keep ``pcm`` in the manual buffer (turn detection off)."""
        if len(pcm):
            self.manual.append(pcm)
            self.manual_len += len(pcm)

    def take_manual(self) -> np.ndarray | None:
        if not self.manual_len:
            return None
        audio = np.concatenate(self.manual)
        self.manual, self.manual_len = [], 0
        return audio

    def clear(self) -> None:
        self.manual, self.manual_len = [], 0
        if self.detector is not None:
            self.detector.clear()

    def ms(self, samples: int | None = None) -> int:
        return int(1000 * (self.received if samples is None else samples) / self.rate)
