"""Protocol v1 without I/O: event names, error codes, parsing and validation of client events,
binary message framing, and builders of server events. Documented in ``docs/protocol.md``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import struct
from collections.abc import Mapping
from typing import Any

from server.errors import ProtocolError, client_message

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
SUBPROTOCOL_PREFIX = "mmagent.v"              # "mmagent.v1"
TOKEN_SUBPROTOCOL_PREFIX = "mmagent.token."   # "mmagent.token.<token>"
REALTIME_SUBPROTOCOL = "realtime"             # OpenAI Realtime clients (browsers) offer it
# Token subprotocols (never echoed back): ours, and the one OpenAI's browser clients send.
TOKEN_SUBPROTOCOL_PREFIXES = (TOKEN_SUBPROTOCOL_PREFIX, "openai-insecure-api-key.")
WS_PATHS = ("/", "/v1/realtime")

AUDIO_RATES = (8000, 16000, 24000, 48000)
DEFAULT_AUDIO_RATE = 24000

CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "input_image_buffer.append",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
)
BINARY_EVENTS = ("input_image_buffer.append", "input_audio_buffer.append")

# Close codes (docs/protocol.md, "Close codes").
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_SERVICE_RESTART = 1012   # this front end is draining (SIGTERM): reconnect, the session resumes elsewhere
CLOSE_UNSUPPORTED_VERSION = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_IDLE = 4408
CLOSE_REPLACED = 4409
CLOSE_SLOW_CLIENT = 4410
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
    "item_not_found": "invalid_request_error",
    "session_not_found": "invalid_request_error",
    "unsupported_version": "invalid_request_error",
    "session_replaced": "invalid_request_error",
    "idle_timeout": "invalid_request_error",
    "slow_client": "rate_limit_error",
    "invalid_action": "server_error",
    "message_too_large": "rate_limit_error",
    "frame_rate_exceeded": "rate_limit_error",
    "audio_rate_exceeded": "rate_limit_error",
    "audio_buffer_full": "rate_limit_error",
    "too_many_images": "rate_limit_error",
    "too_many_sessions": "rate_limit_error",
    "too_many_errors": "rate_limit_error",
    "unauthorized": "authentication_error",
    "server_busy": "server_error",
    "responder_failed": "server_error",
    "response_timeout": "server_error",
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
                                 "message": client_message(code, message), "param": param, "event_id": event_id})


# ---- parsing ------------------------------------------------------------------------------

MAX_JSON_DEPTH = 32   # objects and arrays nested in one event (tool schemas in session.update nest deepest)
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_text_message(data: str) -> dict[str, Any]:
    """Parse one JSON text message into an event dict with a string ``type``."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise ProtocolError("invalid_event", f"the event nests deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"message is not valid JSON: {exc.msg} at position {exc.pos}") from None
    check_tree(obj)
    return _check_event(obj)


def check_tree(obj: Any) -> None:
    """Every event, text or binary header, before any handler sees it: nested at most
    MAX_JSON_DEPTH deep (``invalid_event``), every string and key proper Unicode — JSON's
    ``\\ud800`` escape gives a lone surrogate, which no encoder downstream accepts (``invalid_text``)."""
    stack: list[tuple[Any, int, str]] = [(obj, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise ProtocolError("invalid_text", "text is not valid Unicode (it holds a lone surrogate, "
                                    "e.g. \\ud800)", param=path[:200] or None)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise ProtocolError("invalid_event", f"the event nests deeper than {MAX_JSON_DEPTH} levels",
                                param=path[:200] or None)
        if isinstance(value, dict):
            for k, v in value.items():
                if _SURROGATE.search(k):
                    raise ProtocolError("invalid_text", "a field name is not valid Unicode (a lone surrogate)",
                                        param=path[:200] or None)
                stack.append((v, depth + 1, f"{path}.{k}" if path else k))
        else:
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(value))


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
    except RecursionError:
        raise ProtocolError("invalid_event", f"the binary header nests deeper than {MAX_JSON_DEPTH} levels") \
            from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError("invalid_binary_frame", "binary header is not UTF-8 JSON") from None
    check_tree(header)
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


# ---- session settings: server/core/settings.py (re-exported here) ----------------------------

def __getattr__(name: str) -> Any:
    """``SessionSettings``, ``TurnDetection``, ``apply_session_update``: from their module."""
    if name in ("SessionSettings", "TurnDetection", "apply_session_update"):
        from server.core import settings

        return getattr(settings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
