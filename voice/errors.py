"""Errors of the voice layer, below the project's roots in perception/errors.py::

    ConfigError                 "invalid_config"
    ├── VoiceNotFoundError      "voice_not_found"       the voice path (or its JSON) does not exist
    └── UnsupportedRateError    "unsupported_rate"      an output rate the voice layer does not produce
    ModelLoadError              "model_load_failed"
    ├── InvalidVoiceError       "invalid_voice"         not an ONNX Piper voice / bad voice JSON
    └── PhonemizerError         "phonemizer_failed"     espeak-ng missing, or failing on a text
    InputError                  "invalid_input"
    └── InvalidTextError        "invalid_text"          reply text that is not a string
"""

from __future__ import annotations

from perception.errors import ConfigError, InputError, InvalidTextError, MMAgentError, ModelLoadError


class VoiceNotFoundError(ConfigError):
    code = "voice_not_found"


class UnsupportedRateError(ConfigError):
    code = "unsupported_rate"


class InvalidVoiceError(ModelLoadError):
    code = "invalid_voice"


class PhonemizerError(ModelLoadError):
    code = "phonemizer_failed"


__all__ = ["ConfigError", "InputError", "InvalidTextError", "InvalidVoiceError", "MMAgentError",
           "ModelLoadError", "PhonemizerError", "UnsupportedRateError", "VoiceNotFoundError"]
