"""One WebSocket connection: the socket around a :class:`~server.core.conversation.Conversation`.

The only code that touches the socket. The reader loop decodes each message (the codec),
hands it to the core and queues what the core emits; one writer task sends the queue in
order. Turn detection's CPU work (the VAD on each audio chunk) runs in a worker thread.
Client errors count against an error budget (too many: close 1008); a bug in this session's
work closes only this connection (1011, logged with its traceback); a disconnect closes the
core, which forgets every turn the client never saw.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from perception.errors import MMAgentError
from server import protocol as P
from server.core import events as E
from server.core.codec import Codec
from server.core.conversation import Conversation
from server.core.runtime import AsyncioRuntime
from server.core.settings import SessionSettings
from server.errors import ProtocolError
from server.limits import ErrorBudget

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from agent import Session
    from server.app import Server

log = logging.getLogger(__name__)


class Connection:
    """``await connection.run()`` until the socket closes; then ``await connection.shutdown()``."""

    def __init__(self, server: Server, ws: ServerConnection, *, session_id: str, token: str | None,
                 resumed: bool, agent_session: Session, extensions: bool = True) -> None:
        self.server, self.ws, self.id, self.token = server, ws, session_id, token
        self.limits = server.config.limits
        self.runtime = AsyncioRuntime(self._task_failed, prefix=session_id)
        settings = None
        if not extensions:
            settings = Conversation.default_settings(server.config)
            settings.extensions = False
        self.core = Conversation(session_id=session_id, agent_session=agent_session, engine=server.engine,
                                 runtime=self.runtime, config=server.config, metrics=server.metrics,
                                 resumed=resumed, settings=settings)
        self.codec = Codec(max_text_chars=self.limits.max_text_chars)
        self.errors = ErrorBudget(self.limits.max_errors_per_10s, 10.0)
        self.notices: list[E.ServerEvent] = []     # sent right after session.created
        self._out: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.closed = False
        self.fatal: BaseException | None = None
        self.core.on_output = self._flush

    @property
    def settings(self) -> SessionSettings:
        return self.core.settings

    # ---- output ---------------------------------------------------------------------------

    def _flush(self) -> None:
        for ev in self.core.take():
            self._out.put_nowait(self.codec.encode(ev))

    async def _write(self) -> None:
        while True:
            msg = await self._out.get()
            if msg is None:
                return
            if self.closed:
                continue
            try:
                await self.ws.send(msg)
            except Exception:  # ConnectionClosed and friends: the reader loop ends the session
                self.closed = True

    async def _drain(self) -> None:
        """Send everything queued, then stop the writer."""
        if self._writer is not None and not self._writer.done():
            self._out.put_nowait(None)
            await self._writer

    async def close_with(self, code: str, message: str, close_code: int) -> None:
        """Send an ``error`` with ``code``, then close the socket with ``close_code``."""
        self.server.metrics.errors.inc(code=code)
        self._out.put_nowait(self.codec.encode(E.ErrorEvent(code, message, P.ERROR_TYPES.get(code, "server_error"))))
        await self._drain()
        self.closed = True
        await self.ws.close(close_code, code)

    @property
    def busy(self) -> bool:
        """A turn is being answered or waits for its turn (draining waits for these)."""
        return self.core.active is not None or bool(self.core.queue)

    async def close_for_restart(self) -> None:
        """Draining: send what is queued, then close with 1012 so the client reconnects (through
        the balancer, to another front end) and resumes its session there."""
        if self.closed:
            return
        await self._drain()
        self.closed = True
        await self.ws.close(P.CLOSE_SERVICE_RESTART, "service_restart")

    # ---- reader loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Read and handle client messages until the socket closes or a fatal error."""
        from websockets.exceptions import ConnectionClosed

        self._writer = asyncio.get_running_loop().create_task(self._write(), name=f"{self.id}-writer")
        self.core.start(self.notices)
        while not self.closed:
            try:
                async with asyncio.timeout(self.limits.idle_timeout_s):
                    message = await self.ws.recv()
            except TimeoutError:
                await self.close_with("idle_timeout", f"no client message for {self.limits.idle_timeout_s:g} s",
                                      P.CLOSE_IDLE)
                return
            except ConnectionClosed:
                return
            if self.fatal is not None:
                raise self.fatal
            await self.handle_message(message)
        if self.fatal is not None:
            raise self.fatal

    async def handle_message(self, message: str | bytes) -> None:
        before = self.core.client_errors
        try:
            if len(message) > self.limits.max_message_bytes:
                raise ProtocolError("message_too_large", f"message of {len(message)} bytes is over "
                                    f"max_message_bytes ({self.limits.max_message_bytes})")
            ev = self.codec.decode(message)
        except (ProtocolError, MMAgentError) as exc:
            self.core.reject(exc)
        else:
            if isinstance(ev, E.AudioAppend):
                await self._audio(ev)
            else:
                self.core.handle(ev)
        if self.core.client_errors > before and not self.errors.allow():
            await self.close_with("too_many_errors", f"more than {self.limits.max_errors_per_10s} errors in 10 s",
                                  P.CLOSE_POLICY)

    async def _audio(self, ev: E.AudioAppend) -> None:
        """Admit the chunk in the core, run the VAD in a worker thread, hand its events back."""
        try:
            pcm, detector = self.core.accept_audio(ev)
        except (ProtocolError, MMAgentError) as exc:
            self.core.reject(exc, ev.event_id)
            return
        if detector is None or not len(pcm):
            return
        t0 = time.perf_counter()
        events = await asyncio.get_running_loop().run_in_executor(self.server.light_executor, detector.process, pcm)
        self.server.metrics.stage.observe(time.perf_counter() - t0, stage="vad")
        self.core.detected(detector, events)

    # ---- the end ------------------------------------------------------------------------------

    def _task_failed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        if isinstance(exc, MMAgentError):
            return   # input and model errors were reported as error events where they happened
        # A bug in this session's work: log it, close this session with 1011, keep the others.
        log.error("session %s: task %s failed", self.id, task.get_name(), exc_info=exc)
        if self.fatal is None:
            self.fatal = exc
            asyncio.get_running_loop().create_task(self.ws.close(P.CLOSE_INTERNAL, "internal_error"))

    async def shutdown(self) -> None:
        """The client is gone (or replaced): stop everything; unseen turns are forgotten."""
        self.closed = True
        await self.core.close()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
