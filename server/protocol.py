"""Protocol v1 without I/O: event names, error codes, parsing and validation of client events,
binary message framing, and builders of server events. Documented in ``docs/protocol.md``.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.errors import ProtocolError

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
SUBPROTOCOL_PREFIX = "mmagent.v"              # "mmagent.v1"
TOKEN_SUBPROTOCOL_PREFIX = "mmagent.token."   # "mmagent.token.<token>"
WS_PATHS = ("/", "/v1/realtime")

AUDIO_RATES = (16000, 24000, 48000)
DEFAULT_AUDIO_RATE = 24000

CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "input_image_buffer.append",
    "conversation.item.create",
    "response.create",
    "response.cancel",
)
BINARY_EVENTS = ("input_image_buffer.append", "input_audio_buffer.append")

# Close codes (docs/protocol.md, "Close codes").
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_UNSUPPORTED_VERSION = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_IDLE = 4408
CLOSE_REPLACED = 4409
CLOSE_TOO_MANY_SESSIONS = 4429

# error.code -> error.type
ERROR_TYPES: dict[str, str] = {
    "invalid_json": "invalid_request_error",
    "invalid_event": "invalid_request_error",
    "unknown_event_type": "invalid_request_error",
    "missing_required_parameter": "invalid_request_error",
    "invalid_value": "invalid_request_error",
    "invalid_binary_frame": "invalid_request_error",
    "invalid_audio": "invalid_request_error",
    "unsupported_audio_format": "invalid_request_error",
    "invalid_image": "invalid_request_error",
    "image_too_large": "invalid_request_error",
    "invalid_text": "invalid_request_error",
    "text_too_long": "invalid_request_error",
    "invalid_input": "invalid_request_error",
    "invalid_state": "invalid_request_error",
    "input_audio_buffer_commit_empty": "invalid_request_error",
    "conversation_already_has_active_response": "invalid_request_error",
    "response_cancel_not_active": "invalid_request_error",
    "empty_turn": "invalid_request_error",
    "session_not_found": "invalid_request_error",
    "unsupported_version": "invalid_request_error",
    "session_replaced": "invalid_request_error",
    "idle_timeout": "invalid_request_error",
    "invalid_action": "server_error",
    "message_too_large": "rate_limit_error",
    "frame_rate_exceeded": "rate_limit_error",
    "audio_rate_exceeded": "rate_limit_error",
    "audio_buffer_full": "rate_limit_error",
    "too_many_sessions": "rate_limit_error",
    "too_many_errors": "rate_limit_error",
    "unauthorized": "authentication_error",
    "responder_failed": "server_error",
    "model_load_failed": "server_error",
    "checkpoint_mismatch": "server_error",
    "internal_error": "server_error",
}


def new_id(prefix: str) -> str:
    """A short random id such as ``resp_1a2b3c4d5e6f``."""
    return f"{prefix}_{secrets.token_hex(6)}"


def event(type_: str, **fields: Any) -> dict[str, Any]:
    """A server event: ``type``, a fresh ``event_id``, then ``fields``."""
    return {"type": type_, "event_id": new_id("evt"), **fields}


def error_event(code: str, message: str, *, param: str | None = None,
                event_id: str | None = None) -> dict[str, Any]:
    """An ``error`` server event with its stable code (docs/protocol.md, "Errors")."""
    return event("error", error={"type": ERROR_TYPES.get(code, "server_error"), "code": code,
                                 "message": message, "param": param, "event_id": event_id})


# ---- parsing ------------------------------------------------------------------------------

def parse_text_message(data: str) -> dict[str, Any]:
    """Parse one JSON text message into an event dict with a string ``type``."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("invalid_json", f"message is not valid JSON: {exc}") from None
    return _check_event(obj)


def _check_event(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ProtocolError("invalid_event", "an event must be a JSON object")
    event_id = obj.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise ProtocolError("invalid_value", "event_id must be a string", param="event_id")
    type_ = obj.get("type")
    if not isinstance(type_, str):
        raise ProtocolError("invalid_event", "an event needs a string 'type'", param="type",
                            event_id=event_id)
    if type_ not in CLIENT_EVENTS:
        raise ProtocolError("unknown_event_type", f"unknown event type {type_[:80]!r}", param="type",
                            event_id=event_id)
    return obj


def encode_binary(header: Mapping[str, Any], payload: bytes) -> bytes:
    """Frame a binary message: uint16 BE header length, UTF-8 JSON header, payload."""
    head = json.dumps(dict(header), separators=(",", ":")).encode()
    if len(head) > 0xFFFF:
        raise ValueError("binary header over 65535 bytes")
    return struct.pack(">H", len(head)) + head + payload


def parse_binary_message(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a binary message into (event header, payload); see docs/protocol.md."""
    if len(data) < 2:
        raise ProtocolError("invalid_binary_frame", "binary message shorter than its 2-byte header length")
    (n,) = struct.unpack(">H", data[:2])
    if 2 + n > len(data):
        raise ProtocolError("invalid_binary_frame", f"binary header length {n} runs past the message end")
    try:
        header = json.loads(data[2:2 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError("invalid_binary_frame", "binary header is not UTF-8 JSON") from None
    if not isinstance(header, dict) or header.get("type") not in BINARY_EVENTS:
        raise ProtocolError("invalid_binary_frame",
                            f"binary header must be a JSON object whose type is one of {list(BINARY_EVENTS)}",
                            param="type")
    return _check_event(header), bytes(data[2 + n:])


# ---- field access -------------------------------------------------------------------------

def get_field(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, path: str,
              event_id: str | None, required: bool = False, default: Any = None) -> Any:
    """``obj[name]`` checked to be ``kind``; ``invalid_value`` / ``missing_required_parameter``."""
    if name not in obj or obj[name] is None:
        if required:
            raise ProtocolError("missing_required_parameter", f"missing required field '{path}'",
                                param=path, event_id=event_id)
        return default
    value = obj[name]
    # bool is an int in Python; a JSON true is never a valid number here.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ProtocolError("invalid_value", f"'{path}' has the wrong type", param=path, event_id=event_id)
    if not isinstance(value, kind):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ProtocolError("invalid_value", f"'{path}' must be of type {names}", param=path,
                            event_id=event_id)
    return value


def decode_base64(value: str, *, code: str, path: str, event_id: str | None) -> bytes:
    """Strict base64 decoding; ``code`` names the error (``invalid_audio``/``invalid_image``)."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(code, f"'{path}' is not valid base64", param=path, event_id=event_id) from None


def decode_image_url(url: str, *, path: str, event_id: str | None) -> bytes:
    """Bytes of a ``data:image/...;base64,...`` URL (the only image URLs the server takes)."""
    if not url.startswith("data:image/") or ";base64," not in url[:64]:
        raise ProtocolError("invalid_image", f"'{path}' must be a data:image/...;base64 URL", param=path,
                            event_id=event_id)
    return decode_base64(url.split(",", 1)[1], code="invalid_image", path=path, event_id=event_id)


# ---- session settings -----------------------------------------------------------------------

@dataclass
class TurnDetection:
    """Server VAD settings of one session (``session.audio.input.turn_detection``)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms, "create_response": self.create_response,
                "interrupt_response": self.interrupt_response}


@dataclass
class SessionSettings:
    """What ``session.update`` can change."""

    rate: int = DEFAULT_AUDIO_RATE
    turn_detection: TurnDetection | None = None
    max_output_tokens: int | None = None
    presence_updates: bool = True
    presence_interval_ms: int = 1000


def apply_session_update(settings: SessionSettings, session: Any, event_id: str | None) -> SessionSettings:
    """Validate a ``session.update`` payload; return the new settings (the old ones untouched)."""
    if not isinstance(session, dict):
        raise ProtocolError("invalid_value", "'session' must be an object", param="session", event_id=event_id)
    new = SessionSettings(**settings.__dict__)
    if settings.turn_detection is not None:
        new.turn_detection = TurnDetection(**settings.turn_detection.__dict__)
    kw: dict[str, Any] = {"event_id": event_id}
    mods = get_field(session, "output_modalities", list, path="session.output_modalities", **kw)
    if mods is not None and mods != ["text"]:
        raise ProtocolError("invalid_value", "only output_modalities [\"text\"] is supported",
                            param="session.output_modalities", event_id=event_id)
    if "max_output_tokens" in session:
        mot = session["max_output_tokens"]
        if mot == "inf" or mot is None:
            new.max_output_tokens = None
        elif isinstance(mot, int) and not isinstance(mot, bool) and 1 <= mot <= 1024:
            new.max_output_tokens = mot
        else:
            raise ProtocolError("invalid_value", "max_output_tokens must be an integer 1..1024 or \"inf\"",
                                param="session.max_output_tokens", event_id=event_id)
    audio = get_field(session, "audio", dict, path="session.audio", **kw)
    inp = get_field(audio, "input", dict, path="session.audio.input", **kw) if audio else None
    if inp:
        fmt = get_field(inp, "format", dict, path="session.audio.input.format", **kw)
        if fmt is not None:
            ftype = get_field(fmt, "type", str, path="session.audio.input.format.type", default="audio/pcm", **kw)
            rate = get_field(fmt, "rate", int, path="session.audio.input.format.rate", default=new.rate, **kw)
            if ftype != "audio/pcm" or rate not in AUDIO_RATES:
                raise ProtocolError("unsupported_audio_format",
                                    f"audio format must be audio/pcm at one of {list(AUDIO_RATES)} Hz",
                                    param="session.audio.input.format", event_id=event_id)
            new.rate = rate
        if "turn_detection" in inp:
            td = inp["turn_detection"]
            if td is None:
                new.turn_detection = None
            else:
                new.turn_detection = _turn_detection(td, new.turn_detection or TurnDetection(), event_id)
    vision = get_field(session, "vision", dict, path="session.vision", **kw)
    if vision:
        new.presence_updates = get_field(vision, "presence_updates", bool, path="session.vision.presence_updates",
                                         default=new.presence_updates, **kw)
        interval = get_field(vision, "presence_interval_ms", int, path="session.vision.presence_interval_ms",
                             default=new.presence_interval_ms, **kw)
        if interval < 200:
            raise ProtocolError("invalid_value", "presence_interval_ms must be at least 200",
                                param="session.vision.presence_interval_ms", event_id=event_id)
        new.presence_interval_ms = interval
    return new


def _turn_detection(td: Any, base: TurnDetection, event_id: str | None) -> TurnDetection:
    path = "session.audio.input.turn_detection"
    if not isinstance(td, dict):
        raise ProtocolError("invalid_value", "turn_detection must be an object or null", param=path,
                            event_id=event_id)
    kind = td.get("type", "server_vad")
    if kind != "server_vad":
        raise ProtocolError("invalid_value", "turn_detection.type must be \"server_vad\"", param=path + ".type",
                            event_id=event_id)
    out = TurnDetection(**base.__dict__)
    kw: dict[str, Any] = {"event_id": event_id}
    thr = get_field(td, "threshold", (int, float), path=path + ".threshold", default=out.threshold, **kw)
    pad = get_field(td, "prefix_padding_ms", int, path=path + ".prefix_padding_ms", default=out.prefix_padding_ms, **kw)
    sil = get_field(td, "silence_duration_ms", int, path=path + ".silence_duration_ms",
                    default=out.silence_duration_ms, **kw)
    if not 0.0 <= float(thr) <= 1.0:
        raise ProtocolError("invalid_value", "threshold must be within 0..1", param=path + ".threshold", **kw)
    if not 0 <= pad <= 2000:
        raise ProtocolError("invalid_value", "prefix_padding_ms must be within 0..2000",
                            param=path + ".prefix_padding_ms", **kw)
    if not 100 <= sil <= 5000:
        raise ProtocolError("invalid_value", "silence_duration_ms must be within 100..5000",
                            param=path + ".silence_duration_ms", **kw)
    out.threshold, out.prefix_padding_ms, out.silence_duration_ms = float(thr), pad, sil
    out.create_response = get_field(td, "create_response", bool, path=path + ".create_response",
                                    default=out.create_response, **kw)
    out.interrupt_response = get_field(td, "interrupt_response", bool, path=path + ".interrupt_response",
                                       default=out.interrupt_response, **kw)
    return out
