"""Speech encoder (in progress): identity and size helpers."""

from __future__ import annotations

from pathlib import Path

from .config import PerceptionConfig

# Whisper encoder width by model size name (d_model = n_audio_state).
WHISPER_WIDTHS = {"tiny": 384, "base": 512, "small": 768, "medium": 1024, "large": 1280, "turbo": 1280}
DEFAULT_SPEECH_NAME = "whisper-tiny.en"


def _size_name(model: str) -> str | None:
    stem = Path(model).name.lower().replace("whisper-", "").replace("faster-", "")
    for size in WHISPER_WIDTHS:
        if stem.startswith(size):
            return size
    return None


def speech_dim(config: PerceptionConfig) -> int | None:
    """Encoder width without loading weights where it is knowable from the name; else None."""
    if config.speech_model is None:
        return WHISPER_WIDTHS["tiny"]
    size = _size_name(config.speech_model)
    return WHISPER_WIDTHS[size] if size else None


def speech_identity(config: PerceptionConfig, dim: int) -> str:
    name = DEFAULT_SPEECH_NAME if config.speech_model is None else Path(config.speech_model).name
    return f"speech:{name}:voiced-mean:{dim}"
