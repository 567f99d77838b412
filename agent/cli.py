"""``mmagent chat``, ``mmagent ask`` and ``mmagent sessions`` (registered by server/cli.py).

``ask`` answers through a running ``mmagent serve`` when one is up (models stay loaded there);
otherwise it loads the models in this process and says so. ``chat`` is a terminal conversation
for people (``--json``: one JSON object per turn, for programs); Ctrl-C during a reply stops the
reply, a bad ``/image`` or ``/audio`` file is refused at once and nothing is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .config import RESPONDER_KINDS

log = logging.getLogger(__name__)

DEFAULT_SERVER = "http://127.0.0.1:8765"
# In-process start of `ask` / `chat` (imports, encoders, fusion, language model), measured on the
# project's 2-core CPU with the model cache filled: 8-18 s depending on load (README).
LOAD_HINT = "about 8-20 s on a 2-core CPU"

CHAT_HELP = """\
commands:
  /image FILE   attach a photo to your next message (repeatable)
  /audio FILE   attach a recording (WAV, or anything ffmpeg reads) to your next message
  /send         send what is attached, without typing any text
  /clear        drop what is attached
  /help         this list
  /quit         leave (Ctrl-D too)
Ctrl-C while the agent answers stops that answer; at the prompt it leaves."""


def register(subparsers: Any) -> None:
    """Add the agent's subcommands to the top-level ``mmagent`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pack", help="knowledge pack directory (default: packs/demo_kiosk)")
    common.add_argument("--config", help="YAML/JSON file with an AgentConfig (nested dicts)")
    common.add_argument("--responder", choices=RESPONDER_KINDS,
                        help="reply backend: local language model, OpenAI-compatible server, or the pack's "
                        "own text (extractive)")
    common.add_argument("--model", help="local: transformers model dir or hub id; openai: model name")
    common.add_argument("--base-url", help="openai: base URL of the OpenAI-compatible server")
    common.add_argument("--db", help="SQLite session store (default: the one `mmagent serve` uses, "
                        "$MMAGENT_SESSIONS_DB or <state_dir>/sessions.sqlite3, see `mmagent sessions --help`)")
    common.add_argument("--fusion-checkpoint", help="fusion checkpoint (default: the demo checkpoint)")
    common.add_argument("--no-fusion", action="store_true", help="run without the fusion model")

    p = subparsers.add_parser("chat", parents=[common], help="talk to the agent in the terminal",
                              description="Terminal conversation with the agent (models loaded in this "
                              "process). Type a message and press Enter.\n\n" + CHAT_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--session", help="resume this session id")
    p.add_argument("--json", action="store_true",
                   help="for programs: no prompts, one JSON object per turn on stdout")
    p.set_defaults(func=_chat)

    p = subparsers.add_parser("ask", parents=[common], help="one turn: text and/or media in, reply out",
                              description="One turn. Uses a running `mmagent serve` when one answers at "
                              f"--server (default {DEFAULT_SERVER}); otherwise, or with --local or any "
                              f"option that configures the agent, loads the models in this process ({LOAD_HINT}). "
                              "With --json, prints one JSON object: transcript, perception summary, fused "
                              "outputs, reply, actions and per-stage timings.")
    p.add_argument("text", nargs="?", help="typed text of the turn")
    p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--audio", help="audio file (WAV, or anything ffmpeg reads)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the streamed reply")
    p.add_argument("--no-store", action="store_true",
                   help="do not write the turn to the session store (in-process only)")
    p.add_argument("--server", default=os.environ.get("MMAGENT_URL", DEFAULT_SERVER),
                   help=f"address of a running `mmagent serve` to ask (default $MMAGENT_URL or {DEFAULT_SERVER})")
    p.add_argument("--token", default=None,
                   help="API token for --server (default: the first of $MMAGENT_TOKENS)")
    p.add_argument("--local", action="store_true",
                   help="never use a running server: load the models in this process")
    p.set_defaults(func=_ask)

    p = subparsers.add_parser("sessions", help="list, show or export stored sessions",
                              description="Sessions stored by `mmagent serve`, `chat` and `ask`. Without --db "
                              "they are read from the database the server uses: the --config file's "
                              "agent.store.path, else $MMAGENT_SESSIONS_DB, else <state_dir>/sessions.sqlite3 "
                              "(state_dir: the config's, $MMAGENT_STATE_DIR, or var/ under the working directory).")
    p.add_argument("--db", help="session database to read: a SQLite file (default: the one `mmagent serve` "
                   "writes, see above) or a postgresql:// URL (the shared store of several front ends)")
    p.add_argument("--config", dest="server_config",
                   help="the YAML/JSON file given to `mmagent serve --config`: read its state_dir / agent.store.path")
    sp = p.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)
    q = sp.add_parser("list", help="most recently active sessions: local time, turns, first question … last reply")
    q.add_argument("--limit", type=int, default=50, help="show at most this many sessions (default 50)")
    q.add_argument("--json", action="store_true", help="print JSON (times as Unix seconds) instead of a table")
    q.set_defaults(func=_sessions_list)
    q = sp.add_parser("show", help="one session with its turns, readable")
    q.add_argument("session_id", help="the session id (first column of `sessions list`)")
    q.set_defaults(func=_sessions_show)
    q = sp.add_parser("export", help="one session as JSON")
    q.add_argument("session_id", help="the session id (first column of `sessions list`)")
    q.add_argument("-o", "--output", help="write to this file instead of stdout")
    q.set_defaults(func=_sessions_export)

# ---- building the agent -------------------------------------------------------------------------

def _config(args: argparse.Namespace) -> Any:
    from agent.config import AgentConfig

    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        import yaml

        from perception.errors import ConfigError

        try:
            loaded = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read --config {args.config}: {exc}") from exc
        data = loaded.get("agent", loaded) if isinstance(loaded, dict) else loaded
    cfg = AgentConfig.from_dict(data)
    if getattr(args, "pack", None):
        cfg.pack = args.pack
    if getattr(args, "responder", None):
        cfg.responder.kind = args.responder
    if getattr(args, "model", None):
        if cfg.responder.kind == "openai":
            cfg.responder.openai.model = args.model
        else:
            cfg.responder.local.model = args.model
    if getattr(args, "base_url", None):
        cfg.responder.openai.base_url = args.base_url
    if getattr(args, "db", None):
        if args.db.startswith(("postgresql://", "postgres://")):
            cfg.store.url = args.db
        else:
            cfg.store.path = args.db
    elif not cfg.store.path and not cfg.store.url:
        cfg.store.path = str(_shared_db())   # the server's database: `sessions list` shows these turns
    return cfg.validate()


def _shared_db(server_config: str | None = None) -> Path:
    from server.config import load_config, sessions_db_path

    return sessions_db_path(load_config(server_config))


def _shared_target(server_config: str | None = None) -> str:
    """The server's session store: its PostgreSQL URL (``agent.store.url`` or
    ``$MMAGENT_SESSIONS_URL``) when it has one, else its SQLite file."""
    import os

    from server.config import load_config

    cfg = load_config(server_config)
    store = cfg.agent.get("store") if isinstance(cfg.agent, dict) else None
    url = (store or {}).get("url") if isinstance(store, dict) else None
    url = url or os.environ.get("MMAGENT_SESSIONS_URL")
    return str(url) if url else str(_shared_db(server_config))


def _build_agent(args: argparse.Namespace, *, use_store: bool = True) -> Any:
    from agent import Agent
    from perception import Perception, PerceptionConfig
    from perception.errors import MMAgentError

    cfg = _config(args)
    perception = Perception(PerceptionConfig())
    fusion = None
    if not args.no_fusion:
        try:
            from fusion import FusionPredictor

            fusion = FusionPredictor.load(args.fusion_checkpoint)
        except (MMAgentError, ImportError) as exc:
            print(f"mmagent: fusion unavailable, continuing without fused state: {exc}", file=sys.stderr)
    agent = Agent.from_config(cfg, perception=perception, fusion=fusion, use_store=use_store)
    agent.warmup()
    return agent


# ---- media ----------------------------------------------------------------------------------------

def _read_image(path: str) -> bytes:
    """The file's bytes, checked to be an image perception can decode (else its own error)."""
    from perception import PerceptionConfig
    from perception.errors import InvalidImageError
    from perception.images import load_image

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidImageError(f"no such file: {path}") from None
    except OSError as exc:
        raise InvalidImageError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    load_image(data, PerceptionConfig())   # raises InvalidImageError / ImageTooLargeError naming the problem
    return data


def _read_audio(path: str) -> tuple[Any, int]:
    from perception.audio import read_audio_file
    from perception.config import Limits

    return read_audio_file(path, Limits())


def _read_media(images: list[str], audio: str | None) -> tuple[list[bytes], tuple[Any, int] | None]:
    return [_read_image(f) for f in images], (_read_audio(audio) if audio else None)


# ---- output for people ------------------------------------------------------------------------

def _words(label: Any) -> str:
    return str(label).replace("_", " ")


def _pct(x: Any) -> str:
    return f"{round(100 * float(x))} %"


def _args_text(args: Any) -> str:
    if isinstance(args, dict):
        return ", ".join(f"{_words(k)} {v}" for k, v in args.items())
    return str(args or "")


def understood_line(fused: dict[str, Any] | None) -> str | None:
    """'understood: find product (97 %), neutral, talking to me · signals text 71 %, vision 29 %'."""
    if not fused or fused.get("intent") is None:
        return None
    parts = [f"{_words(fused['intent'])} ({_pct(fused.get('intent_confidence', 0))})"]
    if fused.get("emotion"):
        parts.append(_words(fused["emotion"]))
    if fused.get("addressee") is not None:
        parts.append("talking to me" if fused["addressee"] else "not talking to me")
    weights = fused.get("modality_weights") or {}
    signals = ", ".join(f"{k} {_pct(v)}" for k, v in sorted(weights.items(), key=lambda kv: -kv[1]) if v >= 0.005)
    return "understood: " + ", ".join(parts) + (f" · signals {signals}" if signals else "")


class Human:
    """Prints one turn as it happens, for a person reading the terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.replying = False

    def say(self, text: str = "", end: str = "\n") -> None:
        print(text, end=end, file=self.stream, flush=True)

    def heard(self, transcript: str | None, confidence: float | None) -> None:
        if transcript is None:
            return
        conf = f" (confidence {_pct(confidence)})" if isinstance(confidence, int | float) else ""
        self.say(f"  heard: “{transcript.strip()}”{conf}" if transcript.strip() else "  heard: no words")

    def understood(self, fused: dict[str, Any] | None) -> None:
        line = understood_line(fused)
        if line:
            self.say(f"  {line}")

    def delta(self, text: str) -> None:
        if not self.replying:
            self.replying = True
            self.say("agent> ", end="")
        self.say(text, end="")

    def end_reply(self) -> None:
        if self.replying:
            self.say()
        self.replying = False

    def action(self, name: str, arguments: Any) -> None:
        args = _args_text(arguments)
        self.say(f"  → {_words(name)}" + (f": {args}" if args else ""))

    def rejected(self, name: str, message: str) -> None:
        self.say(f"  (the action {_words(name)} was refused: {message})")

    def error(self, code: str, message: str) -> None:
        self.say(f"  error [{code}]: {message}")


# ---- one turn, in this process ----------------------------------------------------------------

async def _turn(agent: Any, session: Any, text: str | None, images: list[bytes], audio: Any,
                *, out: Human | None) -> dict[str, Any]:
    """Perceive and answer one turn; ``out`` prints it for people as it streams (None: quiet)."""
    from agent import TurnInput

    perceived = await agent.perceive(TurnInput(text=text, audio=audio, images=images))
    result: dict[str, Any] = {"transcript": perceived.speech.transcript if perceived.speech else None,
                              "actions": [], "rejected_actions": [], "errors": [], "via": "in-process"}
    if out is not None and perceived.speech is not None:
        out.heard(perceived.speech.transcript, perceived.speech.confidence)
    try:
        async for ev in agent.respond(session, perceived):
            if ev.type == "perception.summary":
                result["perception"] = ev.summary
            elif ev.type == "turn.fused":
                result["fused"] = ev.to_json()["fused"]
                result["transcript_confidence"] = ev.transcript_confidence
                if out is not None:
                    out.understood(result["fused"])
            elif ev.type == "text.delta":
                if out is not None:
                    out.delta(ev.delta)
            elif ev.type == "action":
                result["actions"].append({"name": ev.name, "arguments": ev.arguments, "call_id": ev.call_id})
            elif ev.type == "action.rejected":
                result["rejected_actions"].append({"name": ev.name, "arguments": ev.arguments, "message": ev.message})
            elif ev.type == "error":
                result["errors"].append({"code": ev.code, "message": ev.message})
            elif ev.type == "turn.done":
                result.update(reply=ev.text, status=ev.status, route=ev.route, turn_id=ev.turn_id,
                              timings_ms=ev.timings)
    finally:
        if out is not None:
            out.end_reply()
    if out is not None:
        _print_after(out, result)
    result["session_id"] = session.id
    return result


def _print_after(out: Human, result: dict[str, Any]) -> None:
    for a in result["actions"]:
        out.action(a["name"], a["arguments"])
    for a in result["rejected_actions"]:
        out.rejected(a["name"], a["message"])
    for e in result["errors"]:
        out.error(e["code"], e["message"])


# ---- one turn, through a running server -------------------------------------------------------

def _server_urls(server: str) -> tuple[str, str]:
    """(http base, WebSocket URL) for an address given as http(s):// or ws(s)://, with or without a path."""
    from urllib.parse import urlsplit

    parts = urlsplit(server if "://" in server else f"http://{server}")
    secure = parts.scheme in ("https", "wss")
    return (f"{'https' if secure else 'http'}://{parts.netloc}",
            f"{'wss' if secure else 'ws'}://{parts.netloc}/v1/realtime")


def _running_server(server: str, timeout: float = 0.8) -> str | None:
    """The WebSocket URL of a `mmagent serve` answering at ``server``, or None."""
    import urllib.error
    import urllib.request

    http, ws = _server_urls(server)
    try:
        with urllib.request.urlopen(f"{http}/healthz", timeout=timeout) as r:
            health = json.loads(r.read().decode() or "{}")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return ws if health.get("status") == "ok" else None


def _as_jpeg_or_png(data: bytes) -> tuple[str, bytes]:
    if data.startswith(b"\x89PNG"):
        return "image/png", data
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", data
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, "JPEG", quality=90)
    return "image/jpeg", buf.getvalue()


async def _turn_remote(url: str, token: str | None, text: str | None, images: list[bytes], audio: Any,
                       *, out: Human | None, timeout: float = 120.0) -> dict[str, Any]:
    """The same turn over the realtime protocol: one user item (text, images, audio), one response."""
    import numpy as np
    import soxr

    from server.client import RealtimeClient  # the command line sits on top of every layer

    result: dict[str, Any] = {"transcript": None, "actions": [], "rejected_actions": [], "errors": [],
                              "via": url}
    async with RealtimeClient(url, token=token, reconnect=False) as c:
        session = c.session or {}
        rate = ((session.get("audio") or {}).get("input") or {}).get("format", {}).get("rate", 24000)
        content: list[dict[str, Any]] = []
        if text:
            content.append({"type": "input_text", "text": text})
        for img in images:
            mime, data = _as_jpeg_or_png(img)
            content.append({"type": "input_image", "image_url": f"data:{mime};base64,{base64.b64encode(data).decode()}"})
        if audio is not None:
            samples, sr = audio
            pcm = np.asarray(soxr.resample(np.asarray(samples, np.float32), sr, rate) if sr != rate else samples)
            pcm16 = (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()
            content.append({"type": "input_audio", "audio": base64.b64encode(pcm16).decode()})
        await c.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": content}})
        await c.create_response()
        started = False
        try:
            async for ev in c.events(timeout=timeout):
                kind = ev.get("type")
                if kind == "conversation.item.input_audio_transcription.completed":
                    result["transcript"] = ev.get("transcript", "")
                    if out is not None:
                        out.heard(result["transcript"], ev.get("confidence"))
                elif kind == "perception.updated" and ev.get("source") == "turn":
                    result["perception"] = {k: ev.get(k) for k in ("face_count", "faces_present", "labels", "frames",
                                                                   "speech", "text", "timings_ms")}
                elif kind == "turn.fused":
                    result["fused"] = {k: v for k, v in ev.items()
                                       if k not in ("type", "event_id", "item_id", "response_id", "transcript_confidence")}
                    result["transcript_confidence"] = ev.get("transcript_confidence")
                    if out is not None:
                        out.understood(result["fused"])
                elif kind == "response.created":
                    started = True
                elif kind == "response.output_text.delta":
                    if out is not None:
                        out.delta(ev.get("delta", ""))
                elif kind == "response.action":
                    result["actions"].append({"name": ev.get("name"), "arguments": ev.get("arguments"),
                                              "call_id": ev.get("call_id")})
                elif kind == "error":
                    err = ev.get("error") or {}
                    result["errors"].append({"code": err.get("code"), "message": err.get("message")})
                    if not started:   # refused before any response began: nothing more will come
                        result.update(status="failed", reply="", route=None)
                        break
                elif kind == "response.done":
                    r = ev.get("response") or {}
                    turn = r.get("turn") or {}
                    reply = "".join(part.get("text", "") for item in r.get("output") or []
                                    for part in item.get("content") or [] if part.get("type") == "output_text")
                    result.update(reply=reply, status=r.get("status"), route=turn.get("route"),
                                  turn_id=turn.get("turn_id"), timings_ms={**(turn.get("timings_ms") or {}),
                                                                          **(r.get("timings_ms") or {})})
                    break
        finally:
            if out is not None:
                out.end_reply()
        result["session_id"] = c.session_id
    if out is not None:
        _print_after(out, result)
    return result


# ---- ask ----------------------------------------------------------------------------------------

# Options that configure the agent itself: with any of them `ask` runs in this process.
_AGENT_OPTIONS = ("pack", "config", "responder", "model", "base_url", "db", "fusion_checkpoint")


def _ask(args: argparse.Namespace) -> int:
    from perception.errors import InputError

    images, audio = _read_media(args.image, args.audio)   # a bad file fails here, before any loading
    if not args.text and not images and audio is None:
        raise InputError("nothing to ask: give TEXT, --image or --audio")
    out = None if args.json else Human()
    local = args.local or args.no_fusion or args.no_store or any(getattr(args, k) for k in _AGENT_OPTIONS)
    url = None if local else _running_server(args.server)
    if url is not None:
        token = args.token or next(iter(t for t in os.environ.get("MMAGENT_TOKENS", "").split(",") if t), None)
        from server.client import ClientError

        try:
            result = asyncio.run(_turn_remote(url, token, args.text, images, audio, out=out))
        except ClientError as exc:
            print(f"mmagent: the server at {args.server} refused the turn: {exc}", file=sys.stderr)
            return 1
    else:
        if not local:
            print(f"mmagent: no server answers at {args.server}, so the models load in this process first "
                  f"({LOAD_HINT}); with `mmagent serve` running, ask answers in about a second.",
                  file=sys.stderr)
        t0 = time.perf_counter()
        agent = _build_agent(args, use_store=not args.no_store)
        log.debug("models loaded in %.1f s", time.perf_counter() - t0)
        try:
            session = agent.open_session()
            result = asyncio.run(_turn(agent, session, args.text, images, audio, out=out))
        finally:
            agent.close()
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0 if result.get("status") == "completed" else 1


# ---- chat ---------------------------------------------------------------------------------------

class Attachments:
    """Media attached to the next message; a file is read and checked when it is attached."""

    def __init__(self) -> None:
        self.images: list[tuple[str, bytes]] = []
        self.audio: tuple[str, Any] | None = None

    def __bool__(self) -> bool:
        return bool(self.images) or self.audio is not None

    def describe(self) -> str:
        names = [Path(p).name for p, _ in self.images] + ([Path(self.audio[0]).name] if self.audio else [])
        return ", ".join(names)

    def clear(self) -> None:
        self.images, self.audio = [], None


def _chat(args: argparse.Namespace) -> int:
    from perception.errors import MMAgentError

    people = not args.json
    out = Human() if people else None

    def emit(obj: dict[str, Any]) -> None:
        print(json.dumps(obj, default=str), flush=True)

    def problem(code: str, message: str) -> None:
        if out is not None:
            out.error(code, message)
        else:
            emit({"error": {"code": code, "message": message}})

    if people:
        print(f"loading the models ({LOAD_HINT})…", file=sys.stderr, flush=True)
    agent = _build_agent(args)
    session = agent.open_session(args.session) if args.session else agent.open_session()
    if out is not None:
        earlier = f", {len(session.turns)} earlier turns" if session.turns else ""
        out.say(f"mmagent chat · session {session.id}{earlier} · pack {agent.pack.name} · "
                f"replies: {agent.responder.name}")
        out.say("Type a message and press Enter. /help lists the commands; Ctrl-C stops a reply; "
                "/quit or Ctrl-D leaves.")
    else:
        emit({"session_id": session.id, "pack": agent.pack.name, "responder": agent.responder.name})
    attached = Attachments()
    runner = asyncio.Runner()
    try:
        while True:
            try:
                line = input("you> " if people else "").strip()
            except EOFError:
                break
            except KeyboardInterrupt:
                if out is not None:
                    out.say()
                break
            if not line:
                continue
            text: str | None = line
            if line.startswith("/"):
                command, _, rest = line.partition(" ")
                rest = rest.strip()
                if command in ("/quit", "/exit"):
                    break
                if command == "/help":
                    if out is not None:
                        out.say("\n".join("  " + x for x in CHAT_HELP.splitlines()))
                    else:
                        emit({"help": CHAT_HELP})
                    continue
                if command in ("/image", "/audio"):
                    if not rest:
                        problem("missing_file", f"{command} needs a file name: {command} FILE")
                        continue
                    try:
                        if command == "/image":
                            attached.images.append((rest, _read_image(rest)))
                        else:
                            attached.audio = (rest, _read_audio(rest))
                    except MMAgentError as exc:
                        problem(exc.code, f"{exc} — nothing was attached; what you had attached before is kept")
                        continue
                    if out is not None:
                        out.say(f"  (attached to your next message: {attached.describe()})")
                    else:
                        emit({"attached": attached.describe()})
                    continue
                if command == "/clear":
                    attached.clear()
                    if out is not None:
                        out.say("  (nothing attached now)")
                    continue
                if command != "/send":
                    problem("unknown_command", f"unknown command {command}; /help lists the commands")
                    continue
                if not attached:
                    problem("nothing_to_send", "nothing is attached: /image FILE or /audio FILE first")
                    continue
                text = None
            images = [data for _, data in attached.images]
            audio = attached.audio[1] if attached.audio else None
            try:
                result = runner.run(_turn(agent, session, text, images, audio, out=out))
            except KeyboardInterrupt:
                # The turn was sent and is stored as cancelled: its attachments went with it.
                attached.clear()
                if out is not None:
                    out.say("  (reply stopped)")
                else:
                    emit({"status": "cancelled", "session_id": session.id})
                continue
            except MMAgentError as exc:
                problem(exc.code, f"{exc} — the message was not sent; your attachments are kept")
                continue
            attached.clear()
            if out is None:
                emit(result)
    finally:
        runner.close()
        agent.close()
    return 0


# ---- sessions -------------------------------------------------------------------------------------

def _store(args: argparse.Namespace) -> Any:
    from agent.config import StoreConfig
    from agent.errors import SessionError
    from agent.store import SessionStore
    from agent.store_api import is_postgres_url, open_store

    target = args.db or _shared_target(args.server_config)
    if is_postgres_url(target):
        return open_store(StoreConfig(url=target))
    path = Path(target)
    if not path.exists():
        # Opening would create an empty database somewhere nobody looks: say where we looked.
        raise SessionError(f"no session database at {path.resolve()} (give --db, or --config of the server)")
    return SessionStore(path, retention_days=StoreConfig().retention_days)


def _local_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _clip(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def session_lines(rows: list[dict[str, Any]], previews: dict[str, dict[str, str | None]]) -> list[str]:
    """One line per session: last activity (local time), id, owner, turns, first question … last reply."""
    lines = []
    for r in rows:
        pv = previews.get(r["id"]) or {}
        first, last = _clip(pv.get("first_text"), 40), _clip(pv.get("last_reply"), 60)
        talk = f"“{first}” … “{last}”" if first or last else "(no turns)"
        n = r.get("turns") or 0
        owner = r.get("owner") or "-"   # the principal that may resume it (docs/protocol.md)
        lines.append(f"{_local_time(r.get('updated_at'))}  {r['id']}  {owner:20}  {n:>3} turn{'s' if n != 1 else ' '}"
                     f"  {talk}")
    return lines


def _sessions_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        rows = store.list_sessions(args.limit)
        previews = store.previews([r["id"] for r in rows])
    finally:
        store.close()
    if args.json:
        print(json.dumps([{**r, **previews.get(r["id"], {})} for r in rows], indent=2))
    elif not rows:
        print("no sessions")
    else:
        print(f"{'last active':16}  {'session':{len(rows[0]['id'])}}  {'owner':20}  turns  first question … last reply")
        print("\n".join(session_lines(rows, previews)))
    return 0


def _sessions_show(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        data = store.export(args.session_id)
    finally:
        store.close()
    print(f"session {data['id']} (pack {data['pack']}), {len(data['turns'])} turns, started "
          f"{_local_time(data.get('created_at'))}, last active {_local_time(data.get('updated_at'))}")
    for t in data["turns"]:
        fused = t.get("fused") or {}
        print(f"#{t['index']} {t['status']} [{t['route']}] intent={fused.get('intent')} emotion={fused.get('emotion')}"
              f"{' barge-in' if t['barge_in'] else ''}")
        print(f"  you:   {t['text']}")
        print(f"  agent: {t['reply']}")
        for a in t["actions"]:
            print(f"  action {a['name']} {json.dumps(a['arguments'])}")
        print(f"  timings_ms {json.dumps(t['timings'])}")
    return 0


def _sessions_export(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        text = json.dumps(store.export(args.session_id), indent=2)
    finally:
        store.close()
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0
