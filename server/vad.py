"""Streaming voice activity detection and end of turn, one ``StreamingVad`` per session.

Audio arrives as PCM16 chunks at the session rate. It is resampled to 16 kHz and cut into
32 ms windows (512 samples, Silero's window); each window gets a speech probability from
Silero VAD v6 (the ONNX model shipped inside faster-whisper, run with onnxruntime) or, with
``backend="energy"``, from its RMS level. A turn starts after ``MIN_SPEECH_MS`` of speech and
ends after ``silence_duration_ms`` of windows below ``threshold - HYSTERESIS``; the utterance
(with ``prefix_padding_ms`` of audio before the start) is returned at the session rate.

``process`` is CPU work and runs in a worker thread; one instance is used by one session only.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from perception.errors import ConfigError

VAD_RATE = 16000
WINDOW = 512                      # samples at 16 kHz: 32 ms
WINDOW_MS = WINDOW * 1000 / VAD_RATE
CONTEXT = 64                      # Silero v6 looks at the previous 64 samples too
MIN_SPEECH_MS = 64                # two windows of speech start a turn
HYSTERESIS = 0.15


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int
    audio: np.ndarray             # int16 (n,) at the session rate, prefix padding included
    paused_token: int | None = None   # the SpeechPaused of this final silence, if one was sent


@dataclass(frozen=True)
class SpeechPaused:
    """``speculative_ms`` of silence inside speech: the turn may be ending. Transcribing ``audio``
    now (while the rest of ``silence_duration_ms`` elapses) hides the transcription time; if the
    turn does end, its SpeechStopped has ``paused_token == token`` and only silence was added."""

    token: int
    audio: np.ndarray


@dataclass(frozen=True)
class SpeechResumed:
    """Speech went on after the pause ``token``: work started for that pause is void."""

    token: int


@dataclass(frozen=True)
class TurnCheck:
    """:class:`SemanticVad` only: ``check_ms`` of silence in the pause ``token``. Whoever runs the
    end-of-turn model on ``audio`` answers with ``SemanticVad.resolve(token, end_after_ms)``."""

    token: int
    audio: np.ndarray


VadEvent = SpeechStarted | SpeechStopped | SpeechPaused | SpeechResumed | TurnCheck


class _Silero:
    """The shared ONNX session (thread-safe); state lives in each StreamingVad."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self.session = get_vad_model().session

    def prob(self, window: np.ndarray, context: np.ndarray, state: list[np.ndarray]) -> float:
        x = np.concatenate([context, window])[None, :].astype(np.float32)   # (1, 576)
        out, h, c = self.session.run(None, {"input": x, "h": state[0], "c": state[1]})
        state[0], state[1] = h, c
        return float(out.reshape(-1)[0])


_silero_lock = threading.Lock()


@functools.cache
def _silero() -> _Silero:
    return _Silero()


def load_silero() -> None:
    """Load the Silero model now (server warm-up)."""
    with _silero_lock:
        _silero()


def energy_prob(window: np.ndarray) -> float:
    """A speech 'probability' from level alone: 0 at -50 dBFS and below, 1 at -30 dBFS and above."""
    rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64)))) if window.size else 0.0
    db = 20.0 * math.log10(rms + 1e-9)
    return min(1.0, max(0.0, (db + 50.0) / 20.0))


class StreamingVad:
    """Feed PCM16 chunks; get SpeechStarted / SpeechStopped events with the utterance audio."""

    def __init__(self, sample_rate: int, *, threshold: float = 0.5, prefix_padding_ms: int = 300,
                 silence_duration_ms: int = 500, backend: str = "silero", speculative_ms: int = 0) -> None:
        self.rate = sample_rate
        self.speculative_ms = speculative_ms if 0 < speculative_ms < silence_duration_ms else 0
        self._pause_token = 0
        self._paused: int | None = None   # token of the SpeechPaused sent in the current silence run
        self.threshold, self.silence_ms, self.backend = threshold, silence_duration_ms, backend
        self._model = _silero() if backend == "silero" else None
        self._resampler = None
        if sample_rate != VAD_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(sample_rate, VAD_RATE, 1, dtype="float32")
        self._pending16 = np.zeros(0, np.float32)      # 16 kHz samples not yet in a window
        self._context = np.zeros(CONTEXT, np.float32)
        self._state = [np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32)]
        self._windows_done = 0                          # 16 kHz windows processed
        self._received = 0                              # samples received at the session rate
        pad = int(sample_rate * prefix_padding_ms / 1000)
        self._prefix: deque[np.ndarray] = deque()
        self._prefix_len, self._prefix_max = 0, pad
        self._speech: list[np.ndarray] = []
        self._speech_len = 0
        self.speaking = False
        self._run_ms = 0.0       # consecutive speech while not speaking
        self._silence_ms = 0.0   # consecutive silence while speaking
        self._start_ms = 0

    @property
    def pending_s(self) -> float:
        """Seconds of audio held for the current utterance."""
        return self._speech_len / self.rate

    def process(self, pcm: np.ndarray) -> list[VadEvent]:
        """Feed int16 samples (n,) at the session rate; return the events they complete."""
        pcm = np.asarray(pcm, dtype=np.int16)
        events: list[VadEvent] = []
        self._received += len(pcm)
        # Keep the raw audio: in speech it joins the utterance; outside, the prefix ring buffer.
        if self.speaking:
            self._speech.append(pcm)
            self._speech_len += len(pcm)
        else:
            self._prefix.append(pcm)
            self._prefix_len += len(pcm)
            while self._prefix and self._prefix_len - len(self._prefix[0]) >= self._prefix_max:
                self._prefix_len -= len(self._prefix.popleft())
        x = pcm.astype(np.float32) / 32768.0
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        buf = np.concatenate([self._pending16, x])
        n = len(buf) // WINDOW
        for i in range(n):
            w = buf[i * WINDOW:(i + 1) * WINDOW]
            p = self._model.prob(w, self._context, self._state) if self._model is not None else energy_prob(w)
            self._context = w[-CONTEXT:]
            self._windows_done += 1
            ev = self._step(p)
            if ev is not None:
                events.append(ev)
        self._pending16 = buf[n * WINDOW:]
        return events

    def _step(self, p: float) -> VadEvent | None:
        end_ms = self._windows_done * WINDOW_MS
        if not self.speaking:
            self._run_ms = self._run_ms + WINDOW_MS if p >= self.threshold else 0.0
            if self._run_ms >= MIN_SPEECH_MS:
                self.speaking = True
                self._silence_ms = 0.0
                self._start_ms = int(end_ms - self._run_ms)
                self._speech = list(self._prefix)
                self._speech_len = self._prefix_len
                self._prefix.clear()
                self._prefix_len = 0
                return SpeechStarted(self._start_ms)
            return None
        self._silence_ms = self._silence_ms + WINDOW_MS if p < self.threshold - HYSTERESIS else 0.0
        if self._silence_ms == 0.0 and self._paused is not None:
            token, self._paused = self._paused, None
            return SpeechResumed(token)
        if self._silence_ms >= self.silence_ms:
            return self._stop(int(end_ms))
        if self.speculative_ms and self._paused is None and self._silence_ms >= self.speculative_ms:
            self._pause_token += 1
            self._paused = self._pause_token
            return SpeechPaused(self._pause_token, np.concatenate(self._speech))
        return None

    def _stop(self, end_ms: int) -> SpeechStopped:
        audio = np.concatenate(self._speech) if self._speech else np.zeros(0, np.int16)
        paused, self._paused = self._paused, None
        self.speaking = False
        self._speech, self._speech_len = [], 0
        self._run_ms = 0.0
        self._state = [np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32)]
        return SpeechStopped(end_ms, audio, paused)

    def flush(self) -> SpeechStopped | None:
        """End the current utterance now (client commit); None when not in speech."""
        if not self.speaking:
            return None
        stopped = self._stop(int(self._received * 1000 / self.rate))
        return SpeechStopped(stopped.audio_end_ms, stopped.audio, None)   # audio may differ from the pause's

    def drain(self) -> np.ndarray:
        """The audio of the utterance in progress (prefix padding included; empty when not in
        speech), then :meth:`clear` (turn detection switched off mid-utterance: keep the audio)."""
        audio = np.concatenate(self._speech) if self.speaking and self._speech else np.zeros(0, np.int16)
        self.clear()
        return audio

    def clear(self) -> None:
        """Drop buffered audio and any utterance in progress."""
        self._speech, self._speech_len = [], 0
        self._prefix.clear()
        self._prefix_len = 0
        self.speaking = False
        self._paused = None
        self._run_ms = self._silence_ms = 0.0


class SemanticVad(StreamingVad):
    """A :class:`StreamingVad` whose end of turn an end-of-turn model decides (``semantic_vad``).

    Silence alone ends a turn only at ``max_wait_ms`` (the eagerness's long limit). At
    ``check_ms`` of silence it emits :class:`TurnCheck`; the answer comes back, from another
    thread or task, as :meth:`resolve` with the silence after which this pause ends the turn
    (``check_ms``: now; the long limit: the model heard an unfinished turn). Speech resuming
    first voids the answer. The speculative pause (SpeechPaused) comes before the check, so
    the transcript the model may read is computed while the silence runs on.
    """

    def __init__(self, sample_rate: int, *, threshold: float = 0.5, prefix_padding_ms: int = 300,
                 max_wait_ms: int = 4000, check_ms: int = 200, backend: str = "silero",
                 speculative_ms: int = 100) -> None:
        if not 0 < check_ms < max_wait_ms:
            raise ConfigError(f"check_ms must be in (0, max_wait_ms={max_wait_ms}), got {check_ms}")
        # The pause token the check belongs to must exist by then: speculate at or before it.
        speculative = speculative_ms if 0 < speculative_ms < check_ms else max(WINDOW_MS, check_ms - WINDOW_MS)
        super().__init__(sample_rate, threshold=threshold, prefix_padding_ms=prefix_padding_ms,
                         silence_duration_ms=max_wait_ms, backend=backend, speculative_ms=int(speculative))
        self.check_ms, self.max_wait_ms = check_ms, max_wait_ms
        self._checked: int | None = None        # the pause whose TurnCheck was sent
        # process() holds it; resolve() only tries it, so neither side ever waits for the other.
        self._lock = threading.Lock()

    def process(self, pcm: np.ndarray) -> list[VadEvent]:
        with self._lock:
            events = super().process(pcm)
            # An answer that arrived after this chunk's last window was stepped.
            if self.speaking and self._paused is not None and self._silence_ms >= self.silence_ms:
                events.append(self._stop(int(self._windows_done * WINDOW_MS)))
            return events

    def _step(self, p: float) -> VadEvent | None:
        ev = super()._step(p)
        if isinstance(ev, SpeechResumed):
            self.silence_ms, self._checked = self.max_wait_ms, None
        elif (ev is None and self.speaking and self._paused is not None and self._checked != self._paused
              and self._silence_ms >= self.check_ms):
            self._checked = self._paused
            return TurnCheck(self._paused, np.concatenate(self._speech))
        return ev

    def resolve(self, token: int, end_after_ms: int) -> SpeechStopped | None:
        """The model's answer for pause ``token``: end the turn once its silence reaches
        ``end_after_ms``. Returns the SpeechStopped when that is now and no chunk is being
        processed (else the chunk in progress, or the next, ends it). A stale token: no-op."""
        if token != self._paused or not self.speaking:
            return None
        self.silence_ms = max(int(end_after_ms), 1)
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self.speaking and self._paused == token and self._silence_ms >= self.silence_ms:
                return self._stop(int(self._windows_done * WINDOW_MS))
            return None
        finally:
            self._lock.release()

    def _stop(self, end_ms: int) -> SpeechStopped:
        self.silence_ms, self._checked = self.max_wait_ms, None
        return super()._stop(end_ms)

    def clear(self) -> None:
        super().clear()
        self.silence_ms, self._checked = self.max_wait_ms, None
