"""Echo safety: the agent's own voice, picked up by the microphone, must not start a turn.

The server knows exactly what audio it sent and when the client began to play it (the
response's first audio chunk, or its release from a preemptive hold; clients play in real
time). So for every 10 ms of microphone input it knows the loudest the agent's voice can have
been at the speaker within the possible echo delays (network, playout buffer, the room:
``max_delay_ms``). Input that is not louder than that reference plus ``margin_db`` is, for the
turn detector, silence. The server's default, -5 dB, assumes the loudspeaker's echo reaches the
microphone at least 6 dB below the audio sent (a kiosk's speaker beside its microphone, with the
browser's own echo cancellation on top, is far below that); such an echo never starts speech.
A person who speaks over the agent is heard where their voice and its echo together are louder
than that — speaking at about the agent's own level or above — and always in the gaps between
its phrases.

Only the start of speech is gated: once the detector hears a person (a barge-in stops the
agent's audio), their utterance goes through untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

FRAME_MS = 10


def frame_rms(x: np.ndarray, rate: int) -> np.ndarray:
    """RMS of each whole 10 ms frame of ``x`` (float in [-1, 1]); a trailing part frame is left out."""
    n = rate * FRAME_MS // 1000
    k = len(x) // n
    if k == 0:
        return np.zeros(0, np.float32)
    f = x[: k * n].reshape(k, n).astype(np.float32)
    return np.sqrt(np.mean(f * f, axis=1))


class Envelope:
    """The 10 ms RMS envelope of a reply's output audio, appended chunk by chunk."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self._tail = np.zeros(0, np.float32)
        self._rate = 0

    def add(self, pcm: bytes, rate: int) -> None:
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        if rate != self._rate:
            self._tail, self._rate = np.zeros(0, np.float32), rate
        x = np.concatenate([self._tail, x])
        rms = frame_rms(x, rate)
        n = rate * FRAME_MS // 1000
        self._tail = x[len(rms) * n:]
        self.values.extend(float(v) for v in rms)


@dataclass(frozen=True)
class Reference:
    """One reply's audio as played: its envelope, the clock time it began to play, and where
    playback was cut (a barge-in or truncation), in ms of its audio."""

    envelope: Envelope
    started: float
    cut_ms: float | None = None


@dataclass
class EchoGate:
    """See the module docstring. ``floor``: below this reference RMS (about -50 dBFS) the agent
    is silent and nothing is gated."""

    margin_db: float = -5.0
    max_delay_ms: int = 400
    floor: float = 0.003
    gated_frames: int = 0          # frames of input treated as echo so far (metrics, tests)

    def reference_at(self, times: np.ndarray, refs: Iterable[Reference]) -> np.ndarray:
        """The loudest reference RMS within [t - max_delay_ms, t] for each clock time t (s)."""
        out = np.zeros(len(times), np.float32)
        for ref in refs:
            env = ref.envelope.values
            if not env:
                continue
            end = len(env) if ref.cut_ms is None else min(len(env), int(ref.cut_ms // FRAME_MS))
            for i, t in enumerate(times):
                pos = (t - ref.started) * 1000.0 / FRAME_MS          # frame playing at t
                hi = min(end, int(pos) + 1)
                lo = max(0, int(pos - self.max_delay_ms / FRAME_MS))
                if hi > lo:
                    out[i] = max(out[i], max(env[lo:hi]))
        return out

    def apply(self, pcm: np.ndarray, rate: int, end_time: float, refs: list[Reference]) -> np.ndarray:
        """``pcm`` (int16, the chunk just received, ending at clock time ``end_time``) with the
        frames that may be the agent's echo silenced; the same array when nothing is gated."""
        if not refs or not len(pcm):
            return pcm
        n = rate * FRAME_MS // 1000
        k = -(-len(pcm) // n)
        # Frame i ends at end_time - (k - 1 - i) * 10 ms (the client streams in real time).
        times = end_time - (k - 1 - np.arange(k)) * FRAME_MS / 1000.0
        ref = self.reference_at(times, refs)
        if not np.any(ref > self.floor):
            return pcm
        x = pcm.astype(np.float32) / 32768.0
        padded = np.concatenate([x, np.zeros(k * n - len(x), np.float32)])
        level = frame_rms(padded, rate)
        echo = (ref > self.floor) & (level <= ref * 10 ** (self.margin_db / 20))
        if not echo.any():
            return pcm
        self.gated_frames += int(echo.sum())
        mask = np.repeat(~echo, n)[: len(pcm)]
        return np.where(mask, pcm, 0).astype(np.int16)
