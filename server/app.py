"""The server process: one port for the WebSocket sessions and plain HTTP (static web client,
``/healthz``, ``/metrics``); session registry, auth, version negotiation, capacity limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import mimetypes
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from perception.errors import MMAgentError
from server import protocol as P
from server.auth import load_key, principal_of, request_allowed
from server.config import ServerConfig, _is_local
from server.connection import Connection
from server.core.pipeline import error as error_event
from server.engine import ModelEngine, make_engine
from server.metrics import Metrics

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"


def _response(status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> Response:
    reason = {200: "OK", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
              503: "Service Unavailable"}.get(status, "OK")
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff")])
    for k, v in (extra or {}).items():
        headers[k] = v
    return Response(status, reason, headers, body)


def _json_response(status: int, obj: Any) -> Response:
    return _response(status, json.dumps(obj).encode(), "application/json")


class Server:
    """``await server.start()`` then ``server.url``; ``await server.stop()``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.engine: ModelEngine = make_engine(config, self.metrics)
        # Turn detection (the VAD on each audio chunk) gets its own thread so it never waits
        # behind a model call.
        self.light_executor = ThreadPoolExecutor(1, thread_name_prefix="vad")
        self.sessions: dict[str, Connection] = {}
        self._per_token: dict[str, int] = {}
        self._recent: OrderedDict[str, float] = OrderedDict()   # closed session ids (for resume checks)
        self.max_decoded_pixels: int = config.perception_config().limits.max_decoded_pixels
        self._principal_key = load_key(config.state_dir) if config.tokens else b""
        self.static_dir = Path(config.static_dir) if config.static_dir else STATIC_DIR
        self._pack_name = Path(config.pack).name if config.pack else None
        self._server: Any = None
        self.port = config.port
        # Draining (SIGTERM): /healthz says 503 so the balancer sends no new sessions here, new
        # WebSocket upgrades get 503 (the balancer retries another front end), and each open
        # session is closed with 1012 once its turns in flight are done.
        self.draining = False

    @property
    def pack_name(self) -> str | None:
        return self.engine.pack_name or self._pack_name

    @property
    def url(self) -> str:
        host = self.config.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        return f"http://{shown}:{self.port}/"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:] + "v1/realtime"

    async def start(self) -> None:
        if self.config.pipeline.warmup:
            await self.engine.ensure_loaded()
        lim = self.config.limits
        self._server = await serve(
            self._handler, self.config.host, self.config.port,
            process_request=self._process_request, select_subprotocol=self._select_subprotocol,
            max_size=lim.hard_max_message_bytes, max_queue=8, ping_interval=20, ping_timeout=20,
            compression=None, server_header="mmagent")
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        for i, token in enumerate(self.config.tokens, 1):   # so an operator can tell the owners apart
            log.info("token #%d owns its sessions as principal %s", i,
                     principal_of(token, self._principal_key, tokens_configured=True))
        log.info("serving on %s (WebSocket %s)", self.url, self.ws_url)

    async def drain(self, timeout_s: float | None = None) -> dict[str, int]:
        """Stop taking sessions and close the open ones with 1012 ("service restart"), each as soon
        as it has no turn in flight; after ``timeout_s`` (default ``limits.drain_timeout_s``) the
        rest are closed too (their turns are stopped and stored as cancelled, as on a disconnect).
        Return how many sessions closed idle and how many were cut at the deadline."""
        self.draining = True
        limit = self.config.limits.drain_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        closed: dict[str, int] = {"idle": 0, "cut": 0}
        tasks: list[asyncio.Task[None]] = []
        while True:
            open_now = [c for c in self.sessions.values() if not c.closed]
            late = time.monotonic() >= deadline
            for conn in open_now:
                if late or not conn.busy:
                    closed["cut" if conn.busy else "idle"] += 1
                    tasks.append(asyncio.get_running_loop().create_task(conn.close_for_restart()))
            if late or not open_now:
                break
            await asyncio.sleep(0.05)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        log.info("drained: %d sessions closed after their turns, %d cut at the %.0f s deadline",
                 closed["idle"], closed["cut"], limit)
        return closed

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.engine.close()
        self.light_executor.shutdown(wait=False, cancel_futures=True)

    # ---- handshake ----------------------------------------------------------------------------

    def _select_subprotocol(self, connection: ServerConnection, offered: Any) -> Any:
        """RFC 6455: select one of the offered subprotocols, or none when none is ours (a
        browser fails the handshake when it offered some and none is selected). ``mmagent.vN``
        first, then ``realtime`` (OpenAI Realtime clients); a token subprotocol is never echoed."""
        for proto in offered:
            if proto.startswith(P.SUBPROTOCOL_PREFIX):
                return proto
        return P.REALTIME_SUBPROTOCOL if P.REALTIME_SUBPROTOCOL in offered else None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        refused = request_allowed(bound_to_loopback=_is_local(self.config.host),
                                  allowed_origins=self.config.allowed_origins, host=request.headers.get("Host"),
                                  origin=request.headers.get("Origin"), upgrade=upgrade)
        if refused is not None:
            self.metrics.errors.inc(code=refused)
            log.warning("refused a request for %s: %s (Host %.80r, Origin %.80r)", path[:80], refused,
                        request.headers.get("Host"), request.headers.get("Origin"))
            message = ("this server only answers requests to a loopback host name (127.0.0.1, localhost, [::1]); "
                       "set allowed_origins to serve other names" if refused == "host_not_allowed" else
                       "this Origin is not allowed (loopback origins only, or those in allowed_origins)")
            return _json_response(403, {"error": {"code": refused, "message": message}})
        if upgrade:
            if self.draining:
                return _json_response(503, {"error": {"code": "server_draining",
                                                      "message": "this front end is shutting down; retry"}})
            if path not in P.WS_PATHS:
                return _json_response(404, {"error": {"code": "not_found", "message": f"no WebSocket at {path}"}})
            return None
        if path == "/healthz":
            # 200 while this front end takes new sessions, 503 while it drains (the balancer's check).
            return _json_response(503 if self.draining else 200, {
                "status": "draining" if self.draining else "ok", "ready": not self.draining,
                "sessions": len(self.sessions), "models_loaded": self.engine.loaded,
                "protocol_version": P.PROTOCOL_VERSION})
        if path == "/metrics":
            return _response(200, self.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/pack/kiosk.json":
            return self._kiosk_data()
        return self._static(path)

    def _kiosk_data(self) -> Response:
        """The kiosk screens' data from the pack (server/kiosk_data.py): map, hours, screen actions."""
        from agent.pack import load_pack
        from server.kiosk_data import kiosk_json

        try:
            pack = getattr(getattr(self.engine, "agent", None), "pack", None) or load_pack(self.config.pack)
        except MMAgentError as exc:
            return _json_response(503, {"error": {"code": exc.code, "message": str(exc)}})
        return _json_response(200, kiosk_json(pack))

    def _static(self, path: str) -> Response:
        rel = "index.html" if path in ("/", "/v1/realtime") else path.lstrip("/")
        root = self.static_dir.resolve()
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            if rel == "index.html":
                body = b"<!doctype html><title>mmagent</title><p>mmagent is running; the web client " \
                       b"(server/static/index.html) is not installed.</p>"
                return _response(200, body, "text/html; charset=utf-8")
            return _json_response(404, {"error": {"code": "not_found", "message": f"{path} not found"}})
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix in (".js", ".mjs"):
            ctype = "text/javascript"
        if ctype.startswith("text/") or ctype in ("application/json", "image/svg+xml"):
            ctype += "; charset=utf-8"
        return _response(200, target.read_bytes(), ctype)

    # ---- sessions -----------------------------------------------------------------------------

    def _negotiate(self, ws: ServerConnection) -> tuple[int | None, str | None, str | None, str]:
        """(version or None when unsupported, token, session_id, version as asked)."""
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        asked = query.get("v", [None])[0]
        protos = [p.strip() for p in ws.request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        if asked is None:
            asked = next((p[len(P.SUBPROTOCOL_PREFIX):] for p in protos if p.startswith(P.SUBPROTOCOL_PREFIX)), "1")
        version = int(asked) if asked.isdigit() and int(asked) in P.SUPPORTED_VERSIONS else None
        token = query.get("token", [None])[0]
        if token is None:
            token = next((p[len(prefix):] for p in protos for prefix in P.TOKEN_SUBPROTOCOL_PREFIXES
                          if p.startswith(prefix)), None)
        if token is None:
            auth = ws.request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                token = auth[7:].strip()
        return version, token, query.get("session_id", [None])[0], asked

    def _token_ok(self, token: str | None) -> bool:
        if not self.config.tokens:
            return True
        return token is not None and any(hmac.compare_digest(token.encode(), t.encode()) for t in self.config.tokens)

    async def _refuse(self, ws: ServerConnection, code: str, message: str, close_code: int) -> None:
        self.metrics.errors.inc(code=code)
        with contextlib.suppress(Exception):
            await ws.send(json.dumps(P.error_event(code, message)))
            await ws.close(close_code, code)

    async def _handler(self, ws: ServerConnection) -> None:
        version, token, resume_id, asked = self._negotiate(ws)
        if version is None:
            await self._refuse(ws, "unsupported_version", f"protocol version {asked[:20]!r} is not supported; "
                               f"supported: {list(P.SUPPORTED_VERSIONS)}", P.CLOSE_UNSUPPORTED_VERSION)
            return
        if not self._token_ok(token):
            await self._refuse(ws, "unauthorized", "missing or invalid API token", P.CLOSE_UNAUTHORIZED)
            return
        lim = self.config.limits
        principal = principal_of(token, self._principal_key, tokens_configured=bool(self.config.tokens))
        token_key = principal if self.config.tokens else ""
        if len(self.sessions) >= lim.max_sessions:
            await self._refuse(ws, "too_many_sessions", f"the server has max_sessions ({lim.max_sessions}) open",
                               P.CLOSE_TOO_MANY_SESSIONS)
            return
        if token_key and self._per_token.get(token_key, 0) >= lim.max_sessions_per_token:
            await self._refuse(ws, "too_many_sessions", "this token has max_sessions_per_token "
                               f"({lim.max_sessions_per_token}) open", P.CLOSE_TOO_MANY_SESSIONS)
            return
        self._per_token[token_key] = self._per_token.get(token_key, 0) + 1
        session: Connection | None = None
        try:
            session = await self._open(ws, principal, resume_id)
            if session is None:
                return
            await session.run()
        except asyncio.CancelledError:
            raise
        except MMAgentError as exc:   # e.g. the models failed to load: say so, without a traceback
            log.error("session %s: %s [%s]", session.id if session is not None else "-", exc, exc.code)
            await self._refuse(ws, exc.code, str(exc), P.CLOSE_INTERNAL)
        except Exception:
            sid = session.id if session is not None else "-"
            log.exception("session %s: handler failed; closing it with 1011", sid)
            with contextlib.suppress(Exception):
                await ws.close(P.CLOSE_INTERNAL, "internal_error")
        finally:
            self._per_token[token_key] -= 1
            if session is not None:
                await session.shutdown()
                if self.sessions.get(session.id) is session:
                    del self.sessions[session.id]
                    self._recent[session.id] = time.time()
                    while len(self._recent) > 10_000:
                        self._recent.popitem(last=False)
                self.metrics.sessions_open.set(len(self.sessions))
            log.debug("session closed (%s)", ws.close_code)

    async def _open(self, ws: ServerConnection, principal: str, resume_id: str | None) -> Connection | None:
        """Create (or resume) the session; None when the connection was refused.

        Resuming needs the session's own principal. Another principal's id is answered exactly
        like an unknown one (a new session and ``session_not_found``): the owner's connection
        is left alone and nothing of its session is loaded."""
        from agent.errors import SessionError

        not_found = False
        agent_session = None
        if resume_id is not None:
            try:
                agent_session = await self.engine.open_session(resume_id, principal=principal)
            except SessionError:
                not_found = True
            old = self.sessions.get(resume_id)
            if agent_session is not None and old is not None:
                await old.close_with("session_replaced", "this session was opened by another connection",
                                     P.CLOSE_REPLACED)
                await old.shutdown()
        if agent_session is None:
            agent_session = await self.engine.open_session(None, principal=principal)
        sid = _session_id(agent_session)
        assert ws.request is not None
        flag = parse_qs(urlsplit(ws.request.path).query).get("extensions", ["on"])[0].lower()
        session = Connection(self, ws, session_id=sid, principal=principal,
                             resumed=resume_id is not None and not not_found, agent_session=agent_session,
                             extensions=flag not in ("0", "off", "false", "no"))
        self.sessions[sid] = session
        self.metrics.sessions_total.inc()
        self.metrics.sessions_open.set(len(self.sessions))
        if not_found:
            session.notices.append(error_event(
                "session_not_found", f"session {(resume_id or '')[:64]!r} is unknown or expired; "
                f"a new session {sid} was created"))
        return session


def _session_id(agent_session: Any) -> str:
    for attr in ("id", "session_id"):
        value = getattr(agent_session, attr, None)
        if isinstance(value, str):
            return value
    raise MMAgentError("agent session has no id")


# ---- running in a background thread (tests, benchmark, robot example) ------------------------

class ServerThread:
    """Run a Server on its own event loop in a daemon thread; ``url`` once started."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="mmagent-server", daemon=True)

    def start(self, timeout: float = 600.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def ws_url(self) -> str:
        assert self.server is not None
        return self.server.ws_url

    def _main(self) -> None:
        asyncio.run(self._amain())

    async def _amain(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.server = Server(self.config)
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.server.stop()

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


@contextlib.contextmanager
def running_server(config: ServerConfig) -> Iterator[ServerThread]:
    """``with running_server(cfg) as srv: ... srv.ws_url``."""
    st = ServerThread(config).start()
    try:
        yield st
    finally:
        st.stop()
