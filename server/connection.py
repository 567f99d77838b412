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

    def __init__(self, server: Server, ws: ServerConnection, *, session_id: str, principal: str,
                 resumed: bool, agent_session: Session, extensions: bool = True) -> None:
        self.server, self.ws, self.id, self.principal = server, ws, session_id, principal
        self.limits = server.config.limits
        self.runtime = AsyncioRuntime(self._task_failed, prefix=session_id)
        settings = None
        if not extensions:
            settings = Conversation.default_settings(server.config)
            settings.extensions = False
        self.core = Conversation(session_id=session_id, agent_session=agent_session, engine=server.engine,
                                 runtime=self.runtime, config=server.config, metrics=server.metrics,
                                 resumed=resumed, settings=settings)
        self.codec = Codec(max_text_chars=self.limits.max_text_chars, max_decoded_pixels=server.max_decoded_pixels)
        self.errors = ErrorBudget(self.limits.max_errors_per_10s, 10.0)
        self.notices: list[E.ServerEvent] = []     # sent right after session.created
        self._out: asyncio.Queue[str | None] = asyncio.Queue()
        self.queued_bytes = 0                      # of the messages in _out (bounded: slow clients)
        self._room = asyncio.Event()               # set while queued_bytes <= max_outgoing_bytes
        self._room.set()
        self._stalled_since: float | None = None   # a send, or a full queue, waiting since then
        self._sending_since: float | None = None
        self._writer: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.closed = False
        self.fatal: BaseException | None = None
        self.core.on_output = self._flush

    @property
    def settings(self) -> SessionSettings:
        return self.core.settings

    # ---- output ---------------------------------------------------------------------------

    def _flush(self) -> None:
        for ev in self.core.take():
            self._enqueue(self.codec.encode(ev))

    def _enqueue(self, msg: str) -> None:
        if self.closed:
            return
        self.queued_bytes += len(msg)
        self._out.put_nowait(msg)
        if self.queued_bytes > self.limits.max_outgoing_bytes and self._room.is_set():
            self._room.clear()   # the reader loop stops taking this client's messages
            if self._stalled_since is None:
                self._stalled_since = time.monotonic()

    async def _write(self) -> None:
        while True:
            msg = await self._out.get()
            if msg is None:
                return
            self.queued_bytes -= len(msg)
            if self.queued_bytes <= self.limits.max_outgoing_bytes and not self._room.is_set():
                self._room.set()
                self._stalled_since = None
            if self.closed:
                continue
            self._sending_since = time.monotonic()
            try:
                await self.ws.send(msg)
            except Exception:  # ConnectionClosed and friends: the reader loop ends the session
                self.closed = True
            finally:
                self._sending_since = None

    async def _watch_for_stall(self) -> None:
        """Drop a client that stopped reading: a send that has not gone out, or a full queue,
        for slow_client_timeout_s. (WebSocket pings cannot tell: they queue behind the data.)"""
        limit = self.limits.slow_client_timeout_s
        while not self.closed:
            await asyncio.sleep(min(1.0, limit / 4))
            now = time.monotonic()
            since = min((t for t in (self._sending_since, self._stalled_since) if t is not None), default=None)
            if since is not None and now - since > limit:
                self._drop_slow(now - since)
                return

    def _drop_slow(self, waited_s: float) -> None:
        log.warning("session %s: the client read nothing for %.1f s (%d bytes queued); dropping it (4410)",
                    self.id, waited_s, self.queued_bytes)
        self.server.metrics.errors.inc(code="slow_client")
        self.server.metrics.slow_clients.inc()
        self.closed = True
        self._room.set()
        while not self._out.empty():   # what it never read is freed now
            self._out.get_nowait()
        self.queued_bytes = 0
        transport = self.ws.transport
        try:   # the close frame goes out if the socket can still take it (a slow reader sees it)
            self.ws.protocol.send_close(P.CLOSE_SLOW_CLIENT, "slow_client")
            self.ws.send_data()
            transport.close()
        except Exception:
            pass
        asyncio.get_running_loop().call_later(1.0, transport.abort)

    async def _drain(self) -> None:
        """Send everything queued, then stop the writer."""
        if self._writer is not None and not self._writer.done():
            self._out.put_nowait(None)
            await self._writer

    async def close_with(self, code: str, message: str, close_code: int) -> None:
        """Send an ``error`` with ``code``, then close the socket with ``close_code`` (a client that
        does not read gets slow_client_timeout_s for it, then the socket is dropped)."""
        self.server.metrics.errors.inc(code=code)
        self._enqueue(self.codec.encode(E.ErrorEvent(code, message, P.ERROR_TYPES.get(code, "server_error"))))
        try:
            async with asyncio.timeout(self.limits.slow_client_timeout_s):
                await self._drain()
                self.closed = True
                await self.ws.close(close_code, code)
        except TimeoutError:
            self.closed = True
            self.ws.transport.abort()

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

        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write(), name=f"{self.id}-writer")
        self._watchdog = loop.create_task(self._watch_for_stall(), name=f"{self.id}-watchdog")
        self.core.start(self.notices)
        while not self.closed:
            if not self._room.is_set():   # backpressure: its replies wait, so its input waits too
                await self._room.wait()
                continue
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
        tasks = [t for t in (self._writer, self._watchdog) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
