"""The one codec: a WebSocket message → a typed client event; a server event → JSON text.

Framing and the first checks (JSON, ``type``, binary header) are :mod:`server.protocol`'s; this
module checks each event's fields and builds its dataclass, so the core only ever sees valid,
typed events. Errors are :class:`ProtocolError` with a stable code and the offending field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from server import protocol as P
from server.core import events as E
from server.core.settings import parse_instructions, parse_max_output_tokens
from server.errors import ProtocolError, client_message

_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
MAX_METADATA_KEYS = 16


class Codec:
    """Decode client messages with this server's limits; encode server events."""

    def __init__(self, *, max_text_chars: int = 4000, new_event_id: Callable[[], str] | None = None,
                 max_decoded_pixels: int | None = None) -> None:
        self.max_text_chars = max_text_chars
        # Set: every image's header is read here and one that would decode to more pixels is
        # refused before it is buffered or queued for a model (image_too_large).
        self.max_decoded_pixels = max_decoded_pixels
        self._new_id = new_event_id or (lambda: P.new_id("evt"))

    # ---- server → client ------------------------------------------------------------------

    def to_json(self, ev: E.ServerEvent) -> dict[str, Any]:
        out = {"type": ev.type, "event_id": self._new_id(), **ev.fields()}
        if isinstance(ev, E.ErrorEvent | E.TranscriptionFailed | E.ResponseDone):
            _scrub_errors(out, 4)
        return out

    def encode(self, ev: E.ServerEvent) -> str:
        return json.dumps(self.to_json(ev), separators=(",", ":"), ensure_ascii=False)

    # ---- client → server ------------------------------------------------------------------

    def decode(self, message: str | bytes) -> E.ClientEvent:
        """One WebSocket message (text: JSON; binary: header + payload) → a typed event."""
        payload: bytes | None = None
        if isinstance(message, bytes):
            raw, payload = P.parse_binary_message(message)
        else:
            raw = P.parse_text_message(message)
        return self.build(raw, payload)

    def build(self, raw: dict[str, Any], payload: bytes | None = None) -> E.ClientEvent:
        eid: str | None = raw.get("event_id")
        t = raw["type"]
        if t == "session.update":
            return E.SessionUpdate(eid, _get(raw, "session", dict, eid, required=True))
        if t == "input_audio_buffer.append":
            if payload is None:
                b64 = _get(raw, "audio", str, eid, required=True)
                payload = P.decode_base64(b64, code="invalid_audio", path="audio", event_id=eid)
            return E.AudioAppend(eid, payload)
        if t == "input_audio_buffer.commit":
            return E.AudioCommit(eid)
        if t == "input_audio_buffer.clear":
            return E.AudioClear(eid)
        if t == "input_image_buffer.append":
            if payload is None:
                if isinstance(raw.get("image_url"), str) and raw.get("image") is None:
                    payload = P.decode_image_url(raw["image_url"], path="image_url", event_id=eid)
                else:
                    b64 = _get(raw, "image", str, eid, required=True)
                    payload = P.decode_base64(b64, code="invalid_image", path="image", event_id=eid)
            self.check_image(payload, eid, "image")
            return E.ImageAppend(eid, payload)
        if t == "conversation.item.create":
            item = self.item(_get(raw, "item", dict, eid, required=True), "item", eid)
            if item.kind == "item_reference":
                raise ProtocolError("invalid_value", "item.type item_reference is only valid in response.input",
                                    param="item.type", event_id=eid)
            return E.ItemCreate(eid, item, _get(raw, "previous_item_id", str, eid))
        if t == "conversation.item.delete":
            return E.ItemDelete(eid, _get(raw, "item_id", str, eid, required=True))
        if t == "conversation.item.retrieve":
            return E.ItemRetrieve(eid, _get(raw, "item_id", str, eid, required=True))
        if t == "conversation.item.truncate":
            end = _get(raw, "audio_end_ms", int, eid, required=True)
            index = _get(raw, "content_index", int, eid, required=True)
            if end < 0 or index < 0:
                raise ProtocolError("invalid_value", "audio_end_ms and content_index must be >= 0",
                                    param="audio_end_ms" if end < 0 else "content_index", event_id=eid)
            return E.ItemTruncate(eid, _get(raw, "item_id", str, eid, required=True), index, end)
        if t == "response.create":
            return E.ResponseCreate(eid, self.response_params(_get(raw, "response", dict, eid) or {}, eid))
        if t == "response.cancel":
            return E.ResponseCancel(eid, _get(raw, "response_id", str, eid))
        raise ProtocolError("unknown_event_type", f"unknown event type {t[:80]!r}", param="type", event_id=eid)

    def response_params(self, resp: dict[str, Any], eid: str | None) -> E.ResponseParams:
        conv = resp.get("conversation", "auto")
        if conv not in ("auto", "none"):
            raise ProtocolError("invalid_value", "response.conversation must be \"auto\" or \"none\"",
                                param="response.conversation", event_id=eid)
        inp: tuple[E.NewItem, ...] | None = None
        if resp.get("input") is not None:
            items = _get(resp, "input", list, eid, path="response.input")
            inp = tuple(self.item(it, f"response.input[{i}]", eid) for i, it in enumerate(items))
        metadata = _get(resp, "metadata", dict, eid, path="response.metadata")
        if metadata is not None and (len(metadata) > MAX_METADATA_KEYS or not all(
                isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                for k, v in metadata.items())):
            raise ProtocolError("invalid_value", f"response.metadata must map at most {MAX_METADATA_KEYS} keys "
                                "(≤ 64 characters) to strings (≤ 512 characters)", param="response.metadata",
                                event_id=eid)
        mot: Any = E.UNSET
        if "max_output_tokens" in resp:
            mot = parse_max_output_tokens(resp["max_output_tokens"], "response.max_output_tokens", eid)
        mods = _get(resp, "output_modalities", list, eid, path="response.output_modalities")
        if mods is not None and mods not in (["text"], ["audio"]):
            raise ProtocolError("invalid_value", "output_modalities must be [\"text\"] or [\"audio\"]",
                                param="response.output_modalities", event_id=eid)
        choice = resp.get("tool_choice")
        if choice is not None and choice not in ("auto", "none"):
            raise ProtocolError("invalid_value", "tool_choice must be \"auto\" or \"none\"",
                                param="response.tool_choice", event_id=eid)
        return E.ResponseParams(
            conversation=conv, input=inp,
            instructions=parse_instructions(resp.get("instructions"), "response.instructions", eid),
            max_output_tokens=mot, metadata=metadata, output_modalities=tuple(mods) if mods else None,
            tool_choice=choice)

    def item(self, item: Any, path: str, eid: str | None) -> E.NewItem:
        """Parse one item (``conversation.item.create``'s, or one of ``response.input``)."""
        if not isinstance(item, dict):
            raise ProtocolError("invalid_value", f"{path} must be an object", param=path, event_id=eid)
        kind = _get(item, "type", str, eid, path=path + ".type", required=True)
        item_id = _get(item, "id", str, eid, path=path + ".id")
        if item_id is not None and not 1 <= len(item_id) <= 64:
            raise ProtocolError("invalid_value", f"{path}.id must be 1..64 characters", param=path + ".id",
                                event_id=eid)
        if kind == "item_reference":
            return E.NewItem("item_reference", id=_get(item, "id", str, eid, path=path + ".id", required=True))
        if kind == "function_call_output":
            return E.NewItem("function_call_output", id=item_id,
                             call_id=_get(item, "call_id", str, eid, path=path + ".call_id", required=True),
                             output=self._text(_get(item, "output", str, eid, path=path + ".output",
                                                    required=True), path + ".output", eid, allow_empty=True))
        if kind == "function_call":
            return E.NewItem("function_call", id=item_id,
                             call_id=_get(item, "call_id", str, eid, path=path + ".call_id", required=True),
                             name=_get(item, "name", str, eid, path=path + ".name", required=True),
                             arguments=_get(item, "arguments", str, eid, path=path + ".arguments", default="{}"))
        if kind != "message":
            raise ProtocolError("invalid_value", f"{path}.type must be message, function_call, "
                                "function_call_output or item_reference", param=path + ".type", event_id=eid)
        role = _get(item, "role", str, eid, path=path + ".role", required=True)
        if role not in ("user", "system", "assistant"):
            raise ProtocolError("invalid_value", f"{path}.role must be user, system or assistant",
                                param=path + ".role", event_id=eid)
        content = _get(item, "content", list, eid, path=path + ".content", required=True)
        if not content:
            raise ProtocolError("invalid_value", f"{path}.content must not be empty", param=path + ".content",
                                event_id=eid)
        allowed = {"user": ("input_text", "text", "input_image", "input_audio"), "system": ("input_text", "text"),
                   "assistant": ("output_text", "text")}[role]
        texts: list[str] = []
        images: list[bytes] = []
        audios: list[bytes] = []
        types: list[str] = []
        for i, part in enumerate(content):
            ppath = f"{path}.content[{i}]"
            if not isinstance(part, dict):
                raise ProtocolError("invalid_value", f"{ppath} must be an object", param=ppath, event_id=eid)
            ptype = _get(part, "type", str, eid, path=ppath + ".type", required=True)
            if ptype not in allowed:
                raise ProtocolError("invalid_value", f"{ppath}.type {ptype[:40]!r} is not valid for a {role} "
                                    f"message (one of {list(allowed)})", param=ppath + ".type", event_id=eid)
            if ptype in ("input_text", "text", "output_text"):
                texts.append(self._text(_get(part, "text", str, eid, path=ppath + ".text", required=True),
                                        ppath + ".text", eid))
                types.append("output_text" if role == "assistant" else "input_text")
            elif ptype == "input_image":
                url = _get(part, "image_url", str, eid, path=ppath + ".image_url", required=True)
                data = P.decode_image_url(url, path=ppath + ".image_url", event_id=eid)
                self.check_image(data, eid, ppath + ".image_url")
                images.append(data)
                types.append("input_image")
            else:
                b64 = _get(part, "audio", str, eid, path=ppath + ".audio", required=True)
                raw = P.decode_base64(b64, code="invalid_audio", path=ppath + ".audio", event_id=eid)
                if not raw:
                    raise ProtocolError("invalid_audio", "audio must not be empty", param=ppath + ".audio",
                                        event_id=eid)
                audios.append(raw)
                types.append("input_audio")
        return E.NewItem("message", id=item_id, role=role, texts=tuple(texts), images=tuple(images),  # type: ignore[arg-type]
                         audios=tuple(audios), part_types=tuple(types))

    def check_image(self, data: bytes, eid: str | None, param: str) -> None:
        check_image(data, eid, param)
        if self.max_decoded_pixels is None:
            return
        from perception.errors import ImageTooLargeError, InvalidImageError
        from perception.images import probe_decoded_pixels

        try:
            fmt, width, height, pixels = probe_decoded_pixels(data)
        except ImageTooLargeError:
            raise ProtocolError("image_too_large", "the image has too many pixels", param=param,
                                event_id=eid) from None
        except InvalidImageError as exc:
            raise ProtocolError("invalid_image", str(exc), param=param, event_id=eid) from None
        if pixels > self.max_decoded_pixels:
            raise ProtocolError("image_too_large", f"the {fmt} image is {width}x{height}: it would decode to "
                                f"{pixels:,} pixels, over max_decoded_pixels ({self.max_decoded_pixels:,})",
                                param=param, event_id=eid)

    def _text(self, text: str, path: str, eid: str | None, *, allow_empty: bool = False) -> str:
        if not allow_empty and not text.strip():
            raise ProtocolError("invalid_text", "text must not be empty", param=path, event_id=eid)
        if len(text) > self.max_text_chars:
            raise ProtocolError("text_too_long", f"text of {len(text)} characters is over max_text_chars "
                                f"({self.max_text_chars})", param=path, event_id=eid)
        return text


def _scrub_errors(obj: dict[str, Any], depth: int) -> None:
    """Every ``{"code", "message"}`` error object in an outgoing event gets a message written
    for people (:func:`server.errors.client_message`): the one boundary all errors pass."""
    code, message = obj.get("code"), obj.get("message")
    if isinstance(code, str) and isinstance(message, str):
        obj["message"] = client_message(code, message)
    if depth > 0:
        for value in obj.values():
            if isinstance(value, dict):
                _scrub_errors(value, depth - 1)


def check_image(data: bytes, eid: str | None, param: str) -> None:
    if not data.startswith(_IMAGE_MAGIC):
        raise ProtocolError("invalid_image", "image is not a JPEG or PNG", param=param, event_id=eid)


def _get(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], eid: str | None, *, path: str | None = None,
         required: bool = False, default: Any = None) -> Any:
    return P.get_field(obj, name, kind, path=path or name, event_id=eid, required=required, default=default)
