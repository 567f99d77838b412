"""``mmagent chat``, ``mmagent ask`` and ``mmagent sessions`` (registered by server/cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the agent's subcommands to the top-level ``mmagent`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pack", help="knowledge pack directory (default: packs/demo_kiosk)")
    common.add_argument("--config", help="YAML/JSON file with an AgentConfig (nested dicts)")
    common.add_argument("--responder", choices=("local", "openai", "extractive"), help="reply backend")
    common.add_argument("--model", help="local: transformers model dir or hub id; openai: model name")
    common.add_argument("--base-url", help="openai: base URL of the OpenAI-compatible server")
    common.add_argument("--db", help="SQLite session store (default ~/.cache/mmagent/sessions.sqlite3)")
    common.add_argument("--fusion-checkpoint", help="fusion checkpoint (default: the demo checkpoint)")
    common.add_argument("--no-fusion", action="store_true", help="run without the fusion model")

    p = subparsers.add_parser("chat", parents=[common], help="talk to the agent in the terminal",
                              description="Terminal conversation. Type a message; /image FILE and "
                              "/audio FILE attach media to the next turn; /quit ends.")
    p.add_argument("--session", help="resume this session id")
    p.set_defaults(func=_chat)

    p = subparsers.add_parser("ask", parents=[common], help="one turn: text and/or media in, reply out",
                              description="One turn. With --json, prints one JSON object: transcript, "
                              "perception summary, fused outputs, reply, actions and per-stage timings.")
    p.add_argument("text", nargs="?", help="typed text of the turn")
    p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--audio", help="audio file (WAV, or anything ffmpeg reads)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the streamed reply")
    p.add_argument("--no-store", action="store_true", help="do not write the turn to the session store")
    p.set_defaults(func=_ask)

    p = subparsers.add_parser("sessions", help="list, show or export stored sessions (JSON)")
    p.add_argument("--db", help="SQLite session store (default ~/.cache/mmagent/sessions.sqlite3)")
    sp = p.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)
    q = sp.add_parser("list", help="most recently active sessions")
    q.add_argument("--limit", type=int, default=50)
    q.set_defaults(func=_sessions_list)
    q = sp.add_parser("show", help="one session with its turns, readable")
    q.add_argument("session_id")
    q.set_defaults(func=_sessions_show)
    q = sp.add_parser("export", help="one session as JSON")
    q.add_argument("session_id")
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
        cfg.store.path = args.db
    return cfg.validate()


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


def _read_media(images: list[str], audio: str | None) -> tuple[list[bytes], tuple[Any, int] | None]:
    from perception.config import Limits
    from perception.errors import InvalidImageError

    imgs = []
    for f in images:
        try:
            imgs.append(Path(f).read_bytes())
        except OSError as exc:
            raise InvalidImageError(f"cannot read image {f}: {exc}") from exc
    snd = None
    if audio:
        from perception.audio import read_audio_file

        snd = read_audio_file(audio, Limits())
    return imgs, snd


def _fused_line(ev: Any) -> str:
    f = ev.fused
    if f is None:
        return "[no fusion]"
    weights = " ".join(f"{k}={v:.2f}" for k, v in f.modality_weights.items())
    return (f"[intent {f.intent} {f.intent_confidence:.2f} | emotion {f.emotion} {f.emotion_confidence:.2f}"
            f" | addressee {f.addressee} | weights {weights}]")


async def _turn(agent: Any, session: Any, text: str | None, images: list[bytes], audio: Any,
                *, stream_out: bool) -> dict[str, Any]:
    from agent import TurnInput

    perceived = await agent.perceive(TurnInput(text=text, audio=audio, images=images))
    out: dict[str, Any] = {"transcript": perceived.speech.transcript if perceived.speech else None,
                           "actions": [], "rejected_actions": [], "errors": []}
    async for ev in agent.respond(session, perceived):
        if ev.type == "perception.summary":
            out["perception"] = ev.summary
        elif ev.type == "turn.fused":
            out["fused"] = ev.to_json()["fused"]
            out["transcript_confidence"] = ev.transcript_confidence
            if stream_out:
                if perceived.speech is not None:
                    print(f"(heard: {perceived.speech.transcript!r}, confidence {perceived.speech.confidence:.2f})")
                print(_fused_line(ev))
                print("agent> ", end="", flush=True)
        elif ev.type == "text.delta":
            if stream_out:
                print(ev.delta, end="", flush=True)
        elif ev.type == "action":
            out["actions"].append({"name": ev.name, "arguments": ev.arguments, "call_id": ev.call_id})
        elif ev.type == "action.rejected":
            out["rejected_actions"].append({"name": ev.name, "arguments": ev.arguments, "message": ev.message})
        elif ev.type == "error":
            out["errors"].append({"code": ev.code, "message": ev.message})
        elif ev.type == "turn.done":
            out.update(reply=ev.text, status=ev.status, route=ev.route, turn_id=ev.turn_id, timings_ms=ev.timings)
            if stream_out:
                print()
                for a in out["actions"]:
                    print(f"  [action {a['name']} {json.dumps(a['arguments'])}]")
                for a in out["rejected_actions"]:
                    print(f"  [rejected action {a['name']}: {a['message']}]")
                for e in out["errors"]:
                    print(f"  [error {e['code']}: {e['message']}]")
    out["session_id"] = session.id
    return out


def _ask(args: argparse.Namespace) -> int:
    from perception.errors import InputError

    images, audio = _read_media(args.image, args.audio)
    if not args.text and not images and audio is None:
        raise InputError("nothing to ask: give TEXT, --image or --audio")
    agent = _build_agent(args, use_store=not args.no_store)
    try:
        session = agent.open_session()
        result = asyncio.run(_turn(agent, session, args.text, images, audio, stream_out=not args.json))
    finally:
        agent.close()
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0 if result.get("status") == "completed" else 1


def _chat(args: argparse.Namespace) -> int:
    agent = _build_agent(args)
    session = agent.open_session(args.session) if args.session else agent.open_session()
    print(f"session {session.id} ({len(session.turns)} earlier turns), pack {agent.pack.name}, "
          f"responder {agent.responder.name}. /image FILE, /audio FILE attach media; /quit ends.")
    images: list[str] = []
    audio: str | None = None
    try:
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                break
            if line in ("/quit", "/exit"):
                break
            if line.startswith("/image "):
                images.append(line[7:].strip())
                print(f"  (image attached to the next turn: {images[-1]})")
                continue
            if line.startswith("/audio "):
                audio = line[7:].strip()
                print(f"  (audio attached to the next turn: {audio})")
                continue
            if line.startswith("/") and line.split()[0] not in ("/send",):
                print("  commands: /image FILE, /audio FILE, /send (send attached media without text), /quit")
                continue
            text = None if line.startswith("/send") else (line or None)
            if not text and not images and not audio:
                continue
            from perception.errors import MMAgentError

            try:
                imgs, snd = _read_media(images, audio)
                asyncio.run(_turn(agent, session, text, imgs, snd, stream_out=True))
            except MMAgentError as exc:
                print(f"  [error {exc.code}: {exc}]")
            images, audio = [], None
    except KeyboardInterrupt:
        print()
    finally:
        agent.close()
    return 0


# ---- sessions -------------------------------------------------------------------------------------

def _store(args: argparse.Namespace) -> Any:
    from agent.config import StoreConfig
    from agent.store import SessionStore

    sc = StoreConfig(path=args.db)
    path = sc.resolved_path()
    return SessionStore(path, retention_days=sc.retention_days)


def _sessions_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        print(json.dumps(store.list_sessions(args.limit), indent=2))
    finally:
        store.close()
    return 0


def _sessions_show(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        data = store.export(args.session_id)
    finally:
        store.close()
    print(f"session {data['id']} (pack {data['pack']}), {len(data['turns'])} turns")
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
