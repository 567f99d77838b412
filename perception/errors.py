"""The project's error hierarchy (its root, and the errors of the perception layer).

Every error the project raises on purpose derives from :class:`MMAgentError` and carries a
stable, machine-readable ``code`` (the same string the server sends in ``error`` events).
Each layer adds its own subclasses in its own ``errors`` module, always below these roots::

    MMAgentError                      code "internal_error"
    ├── ConfigError                   "invalid_config"        bad configuration value or file
    │   ├── voice.errors.VoiceNotFoundError    "voice_not_found"    no Piper voice at that path
    │   └── voice.errors.UnsupportedRateError  "unsupported_rate"   an output rate voice/ cannot produce
    ├── ModelLoadError                "model_load_failed"     a model or checkpoint cannot be loaded
    │   ├── fusion.errors.CheckpointError  "checkpoint_mismatch"
    │   ├── voice.errors.InvalidVoiceError "invalid_voice"    not an ONNX Piper voice, or a bad voice JSON
    │   └── voice.errors.PhonemizerError   "phonemizer_failed" espeak-ng missing or failing
    ├── InputError                    "invalid_input"         caller-supplied data is unusable
    │   ├── InvalidImageError         "invalid_image"         undecodable / wrong dtype / wrong channels
    │   ├── ImageTooLargeError        "image_too_large"       over the pixel or byte limit
    │   ├── InvalidAudioError         "invalid_audio"         undecodable / empty / wrong dtype / channels
    │   ├── AudioTooLongError         "audio_too_long"        over the duration limit
    │   ├── InvalidTextError          "invalid_text"          empty or not a string
    │   ├── TextTooLongError          "text_too_long"         over the character limit
    │   └── fusion.errors.ManifestError    "invalid_manifest"
    ├── agent.errors.PackError        "invalid_pack"          knowledge pack fails validation
    ├── agent.errors.ResponderError   "responder_failed"      LLM backend failed / timed out
    ├── agent.errors.ActionError      "invalid_action"        action arguments fail the schema
    ├── agent.errors.SessionError     "session_not_found"     unknown or expired session id
    ├── agent.errors.StoreError       "store_unavailable"     PostgreSQL session store unreachable
    └── server.errors.ProtocolError   (one code per wire problem; see docs/protocol.md)

Messages name the problem and, where one applies, the limit that was exceeded.
"""

from __future__ import annotations


class MMAgentError(Exception):
    """Root of every error the project raises deliberately."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(MMAgentError):
    code = "invalid_config"


class ModelLoadError(MMAgentError):
    code = "model_load_failed"


class InputError(MMAgentError):
    code = "invalid_input"


class InvalidImageError(InputError):
    code = "invalid_image"


class ImageTooLargeError(InputError):
    code = "image_too_large"


class InvalidAudioError(InputError):
    code = "invalid_audio"


class AudioTooLongError(InputError):
    code = "audio_too_long"


class InvalidTextError(InputError):
    code = "invalid_text"


class TextTooLongError(InputError):
    code = "text_too_long"
