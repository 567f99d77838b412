"""``mmagent serve``: start the realtime server (WebSocket + HTTP on one port)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="run the realtime WebSocket server and web client",
                              description="Run the realtime server. Settings: --config file, then "
                              "MMAGENT_* environment variables, then these flags.")
    p.add_argument("--pack", help="knowledge pack directory (default packs/demo_kiosk)")
    p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8765; 0 = any free port)")
    p.add_argument("--config", help="YAML or JSON configuration file")
    p.add_argument("--token", action="append", dest="tokens", help="API token (repeatable; or MMAGENT_TOKENS)")
    p.add_argument("--allowed-origin", action="append", dest="origins", help="allowed browser Origin (repeatable)")
    p.add_argument("--no-batching", action="store_true", help="disable batching of model calls across sessions (encoders and the language model)")
    p.add_argument("--lazy", action="store_true", help="load models on first use instead of at start")
    p.add_argument("--insecure-no-token", action="store_true",
                   help="allow binding a non-local interface without any API token")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective configuration (file, environment and flags merged; secrets "
                   "masked) as JSON and exit without starting")
    p.set_defaults(func=_serve)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("pack", "host", "port"):
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    if args.tokens:
        out["tokens"] = args.tokens
    if args.origins:
        out["allowed_origins"] = args.origins
    if args.no_batching:
        # Off for every model: the perception micro-batchers and the LLM's continuous batching.
        out["batching"] = {"enabled": False}
        out["agent"] = {"responder": {"local": {"batching": False}}}
    if args.lazy:
        out["pipeline"] = {"warmup": False}
    if args.insecure_no_token:
        out["allow_remote_without_token"] = True
    return out


def _serve(args: argparse.Namespace) -> int:
    from server.config import load_config
    from server.console import config_summary

    t0 = time.perf_counter()
    config = load_config(args.config, overrides=_overrides(args))
    if args.print_config:
        print(json.dumps(config.masked(), indent=2))
        return 0
    log.info("mmagent serve")
    for line in config_summary(config):
        log.info("  %s", line)
    _check_port(config.host, config.port)   # before a minute of model loading, not after
    return asyncio.run(_run(config, t0))


def _check_port(host: str, port: int) -> None:
    """Fail at once, in plain words, when the address is taken or cannot be used."""
    import socket

    from perception.errors import ConfigError

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as exc:
        why = "it is already in use (another mmagent serve?)" if exc.errno == 98 else (exc.strerror or str(exc))
        raise ConfigError(f"cannot listen on {host}:{port}: {why}; choose another --port") from None


async def _run(config: Any, t0: float) -> int:
    from server.app import Server

    server = Server(config)
    await server.start()
    token_hint = "?token=<your token>" if config.tokens else ""
    joiner = "&" if token_hint else "?"
    log.info("ready in %.0f s — open %s%s (the kiosk: %s%s%skiosk=1); WebSocket %s",
             time.perf_counter() - t0, server.url, token_hint, server.url, token_hint, joiner, server.ws_url)
    log.info("one line per turn follows: session, modalities, intent, latency, outcome, actions (Ctrl-C stops)")
    stop = asyncio.Event()
    drain = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGTERM (an orchestrator or the balancer's operator): drain, then exit. SIGINT: stop now.
    for sig, event in ((signal.SIGINT, stop), (signal.SIGTERM, drain)):
        try:
            loop.add_signal_handler(sig, event.set)
        except (NotImplementedError, RuntimeError):
            pass
    waits = [loop.create_task(stop.wait()), loop.create_task(drain.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    if drain.is_set() and not stop.is_set():
        log.info("SIGTERM: draining (no new sessions; open ones are told to reconnect after their turns, "
                 "at most %.0f s)…", config.limits.drain_timeout_s)
        await server.drain()
    log.info("shutting down…")
    await server.stop()
    return 0
