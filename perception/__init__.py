"""Perception layer: typed text, speech and camera-frame encodings from embedded models.

>>> from perception import Perception, PerceptionConfig
>>> p = Perception(PerceptionConfig())
>>> [e.embedding.shape for e in p.encode_text(["hello", "where are the batteries?"])]
[torch.Size([384]), torch.Size([384])]
"""

from .config import SAMPLE_RATE, Limits, PerceptionConfig
from .errors import (
    AudioTooLongError,
    ConfigError,
    ImageTooLargeError,
    InputError,
    InvalidAudioError,
    InvalidImageError,
    InvalidTextError,
    MMAgentError,
    ModelLoadError,
    TextTooLongError,
)
from .facade import Perception
from .types import (
    FACE_FEATURES,
    PROSODY_FEATURES,
    Faces,
    FrameEncoding,
    Label,
    Prosody,
    Segment,
    SpeechEncoding,
    TextEncoding,
)

__all__ = [
    "FACE_FEATURES",
    "PROSODY_FEATURES",
    "SAMPLE_RATE",
    "AudioTooLongError",
    "ConfigError",
    "Faces",
    "FrameEncoding",
    "ImageTooLargeError",
    "InputError",
    "InvalidAudioError",
    "InvalidImageError",
    "InvalidTextError",
    "Label",
    "Limits",
    "MMAgentError",
    "ModelLoadError",
    "Perception",
    "PerceptionConfig",
    "Prosody",
    "Segment",
    "SpeechEncoding",
    "TextEncoding",
    "TextTooLongError",
]
