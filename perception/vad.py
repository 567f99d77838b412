"""Voice activity detection with Silero VAD v6 (the ONNX model that ships inside faster-whisper)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SAMPLE_RATE, PerceptionConfig


@dataclass(frozen=True)
class VoicedRegion:
    """A voiced stretch of the input, in samples at 16 kHz (``end`` exclusive)."""

    start: int
    end: int


class VoiceActivityDetector:
    """Finds voiced regions; the ONNX session is loaded once per process by faster-whisper."""

    def __init__(self, config: PerceptionConfig, max_region_s: float = float("inf")) -> None:
        """``max_region_s``: longer voiced stretches are split, preferably at a short pause."""
        from faster_whisper.vad import VadOptions, get_vad_model

        get_vad_model()  # load now, so warmup() covers it
        self.options = VadOptions(threshold=config.vad_threshold,
                                  min_silence_duration_ms=config.vad_min_silence_ms,
                                  speech_pad_ms=config.vad_speech_pad_ms,
                                  max_speech_duration_s=max_region_s)

    def regions(self, samples: np.ndarray) -> list[VoicedRegion]:
        """samples: (n,) float32 at 16 kHz → voiced regions, in order, non-overlapping."""
        from faster_whisper.vad import get_speech_timestamps

        assert samples.ndim == 1 and samples.dtype == np.float32, (samples.shape, samples.dtype)
        stamps = get_speech_timestamps(samples, self.options, sampling_rate=SAMPLE_RATE)
        return [VoicedRegion(int(s["start"]), int(s["end"])) for s in stamps]


def voiced_audio(samples: np.ndarray, regions: list[VoicedRegion]) -> np.ndarray:
    """The voiced regions concatenated: what the recogniser and the speech embedding see."""
    if not regions:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([samples[r.start:r.end] for r in regions]).astype(np.float32, copy=False)


def to_original_time(t: float, regions: list[VoicedRegion]) -> float:
    """Map a time (s) in the concatenated voiced audio back to the original audio's timeline."""
    offset = 0.0
    for r in regions:
        length = (r.end - r.start) / SAMPLE_RATE
        if t <= offset + length:
            return r.start / SAMPLE_RATE + (t - offset)
        offset += length
    return regions[-1].end / SAMPLE_RATE if regions else t
