"""Perception layer: typed text, speech and camera-frame encodings from embedded models.

>>> from perception import Perception, PerceptionConfig
>>> p = Perception(PerceptionConfig())
>>> [e.embedding.shape for e in p.encode_text(["hello", "where are the batteries?"])]
[torch.Size([384]), torch.Size([384])]
"""

import os as _os

# OpenMP worker threads (torch, CTranslate2) spin while they wait for work by default. On a busy
# or shared CPU the spinning threads starve the ones doing the work: on the 2-core development
# machine under load, MiniLM at batch 32 ran 4x slower with spinning than with PASSIVE waiting.
# OpenMP reads this when its runtime loads, so it only takes effect if perception is imported
# before torch; an explicit setting in the environment always wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
