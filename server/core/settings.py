"""Session settings: what ``session.update`` can change, validated in one place.

Realtime GA shapes (``session.audio.input.format``, ``turn_detection`` of type ``server_vad`` or
``semantic_vad``, ``tools``, ``instructions``, ``output_modalities``, ``max_output_tokens``) plus
this project's own (``vision``, ``extensions``). A bad value raises :class:`ProtocolError`
naming the field; the old settings are never changed in place (a failed update changes nothing).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from server.errors import ProtocolError
from server.protocol import get_field

# Input audio: PCM16 at these rates; G.711 μ-law / A-law (telephony) are 8 kHz by definition.
PCM_RATES = (8000, 16000, 24000, 48000)
DEFAULT_AUDIO_RATE = 24000
G711_RATE = 8000
AudioFormatType = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
AUDIO_FORMATS: tuple[AudioFormatType, ...] = ("audio/pcm", "audio/pcmu", "audio/pcma")
# The SDK's models admit only this rate in a format object; other rates are echoed beside it.
GA_PCM_RATE = 24000
EAGERNESS = ("low", "medium", "high", "auto")
MAX_INSTRUCTIONS_CHARS = 4000


@dataclass
class TurnDetection:
    """``session.audio.input.turn_detection``: ``server_vad`` (silence) or ``semantic_vad``.

    ``semantic_vad`` is mapped onto the session's turn detector with parameters chosen by its
    ``eagerness`` (see :func:`server.core.audio_input.detector_params`); the VAD fields then keep
    their ``server_vad`` defaults.
    """

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"

    def to_json(self) -> dict[str, Any]:
        common = {"create_response": self.create_response, "interrupt_response": self.interrupt_response}
        if self.type == "semantic_vad":
            return {"type": "semantic_vad", "eagerness": self.eagerness, **common}
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms, **common}


@dataclass(frozen=True)
class FunctionTool:
    """One function the agent may call (``session.tools[]``, Realtime ``type: "function"``)."""

    name: str
    description: str
    parameters: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters}


@dataclass
class SessionSettings:
    """What ``session.update`` can change (``rate`` is the input audio's sample rate)."""

    rate: int = DEFAULT_AUDIO_RATE
    turn_detection: TurnDetection | None = None
    max_output_tokens: int | None = None
    presence_updates: bool = True
    presence_interval_ms: int = 1000
    input_format: AudioFormatType = "audio/pcm"
    output_modalities: tuple[str, ...] = ("text",)
    instructions: str | None = None            # the client's, added to the pack's own
    tools: tuple[FunctionTool, ...] | None = None   # None: every action of the pack
    tool_choice: str = "auto"                   # "auto" | "none"
    transcription_language: str | None = None
    transcription_prompt: str | None = None
    extensions: bool = True                     # this project's own events (docs/protocol.md)
    # Output audio (``session.audio.output``): PCM16 at ``output_rate``; ``speed`` 1.0 = the
    # voice's pace (GA: 0.25..1.5); ``voice`` as the client named it (the server has one voice).
    output_rate: int = DEFAULT_AUDIO_RATE
    speed: float = 1.0
    voice: str | None = None

    def copy(self) -> SessionSettings:
        new = dataclasses.replace(self)
        if self.turn_detection is not None:
            new.turn_detection = dataclasses.replace(self.turn_detection)
        return new

    def input_format_json(self) -> dict[str, Any]:
        """The format object as GA clients validate it (``rate`` only when it is 24000)."""
        if self.input_format != "audio/pcm":
            return {"type": self.input_format}
        if self.rate == GA_PCM_RATE:
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": "audio/pcm", "sample_rate": self.rate}   # mmagent: rates GA does not list

    def output_format_json(self) -> dict[str, Any]:
        """``session.audio.output.format`` as GA clients validate it (see input_format_json)."""
        return output_format_json(self.output_rate)


def output_format_json(rate: int) -> dict[str, Any]:
    if rate == GA_PCM_RATE:
        return {"type": "audio/pcm", "rate": rate}
    return {"type": "audio/pcm", "sample_rate": rate}


def apply_session_update(settings: SessionSettings, session: Any, event_id: str | None, *,
                         known_tools: dict[str, FunctionTool] | None = None,
                         audio_output: bool = False,
                         output_rates: tuple[int, ...] = PCM_RATES) -> SessionSettings:
    """Validate a ``session.update`` payload; return the new settings (the old ones untouched).

    ``known_tools``: the pack's actions by name (a client may narrow ``tools`` to some of them,
    not invent new ones: the agent can only call what the pack defines); ``audio_output``: the
    server has a voice (else ``output_modalities: ["audio"]`` is refused); ``output_rates``: the
    PCM rates its voice can send.
    """
    if not isinstance(session, dict):
        raise ProtocolError("invalid_value", "'session' must be an object", param="session", event_id=event_id)
    new = settings.copy()
    kw: dict[str, Any] = {"event_id": event_id}
    stype = get_field(session, "type", str, path="session.type", **kw)
    if stype is not None and stype != "realtime":
        raise ProtocolError("invalid_value", "session.type must be \"realtime\" (transcription-only sessions "
                            "are not supported)", param="session.type", event_id=event_id)
    mods = get_field(session, "output_modalities", list, path="session.output_modalities", **kw)
    if mods is not None:
        if mods == ["text"]:
            new.output_modalities = ("text",)
        elif mods == ["audio"] and audio_output:
            new.output_modalities = ("audio",)
        elif mods == ["audio"]:
            raise ProtocolError("invalid_value", "output_modalities [\"audio\"] needs a server voice, and this "
                                "server has none configured; use [\"text\"]", param="session.output_modalities",
                                event_id=event_id)
        else:
            raise ProtocolError("invalid_value", "output_modalities must be [\"text\"] or [\"audio\"]",
                                param="session.output_modalities", event_id=event_id)
    if "max_output_tokens" in session:
        new.max_output_tokens = parse_max_output_tokens(session["max_output_tokens"], "session.max_output_tokens",
                                                        event_id)
    if "instructions" in session:
        new.instructions = _instructions(session["instructions"], "session.instructions", event_id)
    if "tools" in session:
        new.tools = _tools(session["tools"], known_tools or {}, event_id)
    if "tool_choice" in session:
        choice = session["tool_choice"]
        if choice not in ("auto", "none"):
            raise ProtocolError("invalid_value", "tool_choice must be \"auto\" or \"none\" (the agent decides "
                                "which action to call)", param="session.tool_choice", event_id=event_id)
        new.tool_choice = choice
    audio = get_field(session, "audio", dict, path="session.audio", **kw)
    inp = get_field(audio, "input", dict, path="session.audio.input", **kw) if audio else None
    if inp:
        fmt = get_field(inp, "format", dict, path="session.audio.input.format", **kw)
        if fmt is not None:
            _apply_format(new, fmt, event_id)
        if "turn_detection" in inp:
            td = inp["turn_detection"]
            new.turn_detection = None if td is None else _turn_detection(td, new.turn_detection or TurnDetection(),
                                                                         event_id)
        if "transcription" in inp:
            _apply_transcription(new, inp["transcription"], event_id)
        nr = inp.get("noise_reduction")
        if nr is not None:
            raise ProtocolError("invalid_value", "noise_reduction is not supported (send null)",
                                param="session.audio.input.noise_reduction", event_id=event_id)
    out = get_field(audio, "output", dict, path="session.audio.output", **kw) if audio else None
    if out and not audio_output and out.get("voice") is not None:
        raise ProtocolError("invalid_value", "this server has no voice configured (text output only)",
                            param="session.audio.output.voice", event_id=event_id)
    if out:
        _apply_output(new, out, output_rates, event_id)
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
    new.extensions = get_field(session, "extensions", bool, path="session.extensions", default=new.extensions, **kw)
    return new


def parse_max_output_tokens(value: Any, path: str, event_id: str | None) -> int | None:
    """``"inf"`` / null → None (only the responder's own limit); else an integer 1..4096."""
    if value == "inf" or value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096:
        return value
    raise ProtocolError("invalid_value", "max_output_tokens must be an integer 1..4096 or \"inf\"", param=path,
                        event_id=event_id)


def _instructions(value: Any, path: str, event_id: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError("invalid_value", f"'{path}' must be a string", param=path, event_id=event_id)
    if len(value) > MAX_INSTRUCTIONS_CHARS:
        raise ProtocolError("text_too_long", f"instructions of {len(value)} characters are over "
                            f"{MAX_INSTRUCTIONS_CHARS}", param=path, event_id=event_id)
    return value.strip() or None


def parse_instructions(value: Any, path: str, event_id: str | None) -> str | None:
    return _instructions(value, path, event_id)


def _tools(value: Any, known: dict[str, FunctionTool], event_id: str | None) -> tuple[FunctionTool, ...]:
    if not isinstance(value, list):
        raise ProtocolError("invalid_value", "session.tools must be a list", param="session.tools", event_id=event_id)
    out: list[FunctionTool] = []
    for i, t in enumerate(value):
        path = f"session.tools[{i}]"
        if not isinstance(t, dict) or t.get("type", "function") != "function":
            raise ProtocolError("invalid_value", "only function tools are supported", param=path, event_id=event_id)
        name = get_field(t, "name", str, path=path + ".name", event_id=event_id, required=True)
        if name not in known:
            raise ProtocolError("invalid_value", f"tool {name[:64]!r} is not an action of the pack (it has: "
                                f"{', '.join(sorted(known)) or 'none'}); the agent can only call those",
                                param=path + ".name", event_id=event_id)
        out.append(known[name])
    return tuple(out)


def _apply_format(new: SessionSettings, fmt: dict[str, Any], event_id: str | None) -> None:
    path = "session.audio.input.format"
    ftype = get_field(fmt, "type", str, path=path + ".type", default="audio/pcm", event_id=event_id)
    if ftype not in AUDIO_FORMATS:
        raise ProtocolError("unsupported_audio_format", f"audio format must be one of {list(AUDIO_FORMATS)}",
                            param=path + ".type", event_id=event_id)
    if ftype == "audio/pcm":
        rate = get_field(fmt, "rate", int, path=path + ".rate", event_id=event_id,
                         default=new.rate if new.input_format == "audio/pcm" else DEFAULT_AUDIO_RATE)
        if rate not in PCM_RATES:
            raise ProtocolError("unsupported_audio_format", f"audio/pcm rate must be one of {list(PCM_RATES)} Hz",
                                param=path + ".rate", event_id=event_id)
        new.rate = rate
    else:
        new.rate = G711_RATE
    new.input_format = ftype  # type: ignore[assignment]


def _apply_output(new: SessionSettings, out: dict[str, Any], rates: tuple[int, ...], event_id: str | None) -> None:
    path = "session.audio.output"
    kw: dict[str, Any] = {"event_id": event_id}
    fmt = get_field(out, "format", dict, path=path + ".format", **kw)
    if fmt is not None:
        ftype = get_field(fmt, "type", str, path=path + ".format.type", default="audio/pcm", **kw)
        if ftype != "audio/pcm":
            raise ProtocolError("unsupported_audio_format", "output audio format must be \"audio/pcm\" (PCM16); "
                                f"{ftype[:32]!r} is not supported", param=path + ".format.type", **kw)
        rate = get_field(fmt, "rate", int, path=path + ".format.rate", default=None, **kw)
        if rate is None:
            rate = get_field(fmt, "sample_rate", int, path=path + ".format.sample_rate", default=new.output_rate,
                             **kw)
        if rate not in rates:
            raise ProtocolError("unsupported_audio_format", f"output audio/pcm rate {rate} Hz is not supported; "
                                f"use one of {sorted(rates)}", param=path + ".format.rate", **kw)
        new.output_rate = rate
    speed = get_field(out, "speed", (int, float), path=path + ".speed", default=new.speed, **kw)
    if not 0.25 <= float(speed) <= 1.5:
        raise ProtocolError("invalid_value", "speed must be within 0.25..1.5", param=path + ".speed", **kw)
    new.speed = float(speed)
    voice = out.get("voice")
    if isinstance(voice, dict):      # GA's custom voice reference {"id": ...}
        voice = voice.get("id")
    if voice is not None and not isinstance(voice, str):
        raise ProtocolError("invalid_value", "voice must be a string", param=path + ".voice", **kw)
    if voice is not None:
        new.voice = voice[:64]


def _apply_transcription(new: SessionSettings, tr: Any, event_id: str | None) -> None:
    path = "session.audio.input.transcription"
    if tr is None:
        new.transcription_language = new.transcription_prompt = None
        return
    if not isinstance(tr, dict):
        raise ProtocolError("invalid_value", f"'{path}' must be an object or null", param=path, event_id=event_id)
    # The model is the server's speech model; the name a client asks for is accepted and not used.
    lang = get_field(tr, "language", str, path=path + ".language", event_id=event_id)
    prompt = get_field(tr, "prompt", str, path=path + ".prompt", event_id=event_id)
    if lang is not None and (len(lang) > 8 or not lang.replace("-", "").isalpha()):
        raise ProtocolError("invalid_value", "transcription.language must be a language code such as \"en\"",
                            param=path + ".language", event_id=event_id)
    new.transcription_language, new.transcription_prompt = lang, prompt


def _turn_detection(td: Any, base: TurnDetection, event_id: str | None) -> TurnDetection:
    path = "session.audio.input.turn_detection"
    if not isinstance(td, dict):
        raise ProtocolError("invalid_value", "turn_detection must be an object or null", param=path,
                            event_id=event_id)
    kind = td.get("type", base.type)
    if kind not in ("server_vad", "semantic_vad"):
        raise ProtocolError("invalid_value", "turn_detection.type must be \"server_vad\" or \"semantic_vad\"",
                            param=path + ".type", event_id=event_id)
    out = dataclasses.replace(base, type=kind)
    kw: dict[str, Any] = {"event_id": event_id}
    if td.get("idle_timeout_ms") is not None:
        raise ProtocolError("invalid_value", "idle_timeout_ms is not supported (send null)",
                            param=path + ".idle_timeout_ms", **kw)
    if kind == "semantic_vad":
        eager = get_field(td, "eagerness", str, path=path + ".eagerness", default=out.eagerness, **kw)
        if eager not in EAGERNESS:
            raise ProtocolError("invalid_value", f"eagerness must be one of {list(EAGERNESS)}",
                                param=path + ".eagerness", **kw)
        out.eagerness = eager  # type: ignore[assignment]
    else:
        thr = get_field(td, "threshold", (int, float), path=path + ".threshold", default=out.threshold, **kw)
        pad = get_field(td, "prefix_padding_ms", int, path=path + ".prefix_padding_ms",
                        default=out.prefix_padding_ms, **kw)
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


__all__ = ["AUDIO_FORMATS", "DEFAULT_AUDIO_RATE", "PCM_RATES", "FunctionTool", "SessionSettings", "TurnDetection",
           "apply_session_update", "parse_instructions", "parse_max_output_tokens"]
