"""Python client for the realtime protocol (docs/protocol.md): an async API and a thread-backed
sync API whose send methods never block (for robot control loops).

Async::

    async with RealtimeClient("ws://127.0.0.1:8765/v1/realtime", token="t") as c:
        await c.send_text("where are the batteries?")
        async for ev in c.events():
            if ev["type"] == "response.output_text.delta":
                print(ev["delta"], end="")
            elif ev["type"] == "response.done":
                break

Sync (a background thread runs the event loop; ``send_*`` return at once)::

    c = SyncRealtimeClient(url, token="t").connect()
    c.on("response.output_text.delta", lambda ev: print(ev["delta"], end=""))
    c.send_text("hello")
    done = c.wait_for("response.done", timeout=30)
    c.close()

Spoken replies (docs/voice.md)::

    await c.speak(rate=24000)                    # output_modalities ["audio"] at 24 kHz PCM16
    c.on_audio(WavSink("replies/"))              # or Player.start(24000): server/client_audio.py
    await c.truncate(item_id, audio_end_ms)      # barge-in: what the person heard of the reply

If the connection drops (not a deliberate close), the client reconnects with backoff and
resumes the same session (``?session_id=``); it then yields a local ``client.reconnected``
event (local events start with ``client.``: ``client.disconnected``, ``client.reconnected``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np

from server.protocol import PROTOCOL_VERSION, encode_binary, new_id

log = logging.getLogger(__name__)

Callback = Callable[[dict[str, Any]], Any]
# Close codes after which reconnecting cannot help.
_FINAL_CLOSE_CODES = {1000, 1008, 4400, 4401, 4409, 4429}


class ClientError(Exception):
    """Connecting failed or the server refused the session (``code`` is the protocol error code)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def pcm16(audio: np.ndarray | bytes) -> bytes:
    """PCM16 little-endian bytes from int16 samples, float samples in -1..1, or bytes."""
    if isinstance(audio, bytes | bytearray | memoryview):
        return bytes(audio)
    a = np.asarray(audio)
    if a.dtype != np.int16:
        a = (np.clip(a.astype(np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)
    return a.astype("<i2").tobytes()


class RealtimeClient:
    """Async client: one session, optionally resumed; see the module docstring."""

    def __init__(self, url: str, *, token: str | None = None, session_id: str | None = None,
                 reconnect: bool = True, max_reconnect_s: float = 30.0, open_timeout: float = 60.0,
                 max_queue: int = 10_000) -> None:
        self.url, self.token, self.session_id = url, token, session_id
        self.reconnect, self.max_reconnect_s, self.open_timeout = reconnect, max_reconnect_s, open_timeout
        self.session: dict[str, Any] | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._ws: Any = None
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_queue)
        self._callbacks: dict[str, list[Callback]] = defaultdict(list)
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._connected = asyncio.Event()
        self._finished = asyncio.Event()

    # ---- connection -----------------------------------------------------------------------------

    def _full_url(self) -> str:
        parts = urlsplit(self.url)
        query = [p for p in parts.query.split("&") if p]
        params: dict[str, str] = {"v": str(PROTOCOL_VERSION)}
        if self.token:
            params["token"] = self.token
        if self.session_id:
            params["session_id"] = self.session_id
        query.append(urlencode(params))
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "&".join(query), ""))

    async def connect(self) -> dict[str, Any]:
        """Open the socket and wait for ``session.created``; return the session object."""
        await self._open()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop(), name="realtime-client-reader")
        return self.session or {}

    async def _open(self) -> None:
        from websockets.asyncio.client import connect

        ws = await connect(self._full_url(), open_timeout=self.open_timeout, max_size=None,
                           compression=None, ping_interval=20, ping_timeout=20)
        try:
            async with asyncio.timeout(self.open_timeout):
                first = json.loads(await ws.recv())
        except Exception as exc:
            code = ws.close_code
            await ws.close()
            raise ClientError(f"no session.created from the server (close code {code})") from exc
        if first.get("type") != "session.created":
            err = first.get("error", {}) if first.get("type") == "error" else {}
            await ws.close()
            raise ClientError(f"server refused the session: {err.get('message', first)}", err.get("code"))
        self._ws = ws
        self.session = first["session"]
        self.session_id = self.session["id"]
        self._connected.set()
        await self._deliver(first)

    async def _read_loop(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                try:
                    async for message in self._ws:
                        if isinstance(message, str):
                            await self._deliver(json.loads(message))
                except ConnectionClosed:
                    pass
                self._connected.clear()
                self.close_code, self.close_reason = self._ws.close_code, self._ws.close_reason
                if self._closing or not self.reconnect or self.close_code in _FINAL_CLOSE_CODES:
                    return
                await self._deliver({"type": "client.disconnected", "code": self.close_code,
                                     "reason": self.close_reason})
                if not await self._reconnect():
                    return
        finally:
            self._finished.set()
            self._connected.clear()

    async def _reconnect(self) -> bool:
        delay, deadline = 0.2, time.monotonic() + self.max_reconnect_s
        while not self._closing and time.monotonic() < deadline:
            await asyncio.sleep(delay)
            try:
                await self._open()
            except ClientError as exc:
                if exc.code in ("unauthorized", "unsupported_version"):
                    return False
            except (OSError, TimeoutError, Exception) as exc:   # server still down: try again
                log.debug("reconnect failed: %s", exc)
            else:
                await self._deliver({"type": "client.reconnected", "session_id": self.session_id})
                return True
            delay = min(delay * 2, 5.0)
        return False

    async def close(self) -> None:
        """Close the session (code 1000); no reconnect."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)

    async def __aenter__(self) -> RealtimeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # ---- receiving ------------------------------------------------------------------------------

    def on(self, type_: str, callback: Callback) -> None:
        """Call ``callback(event)`` for each event of ``type_`` (``"*"``: every event); may be async."""
        self._callbacks[type_].append(callback)

    async def _deliver(self, ev: dict[str, Any]) -> None:
        for cb in (*self._callbacks.get(ev.get("type", ""), ()), *self._callbacks.get("*", ())):
            try:
                res = cb(ev)
                if inspect.isawaitable(res):
                    await res
            except Exception:
                log.exception("callback for %s failed", ev.get("type"))
        if self._queue.full():
            self._queue.get_nowait()   # drop the oldest: an unread queue must not grow forever
        self._queue.put_nowait(ev)

    async def events(self, timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Yield received events in order; ends when the session ends (or after ``timeout`` idle)."""
        while True:
            if self._queue.empty() and self._finished.is_set():
                return
            getter = asyncio.ensure_future(self._queue.get())
            finished = asyncio.ensure_future(self._finished.wait())
            done, _ = await asyncio.wait({getter, finished}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            if not done:
                raise TimeoutError("no event within timeout")

    async def wait_for(self, type_: str, timeout: float = 30.0,
                       predicate: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The next event of ``type_`` (others are consumed and dropped)."""
        async with asyncio.timeout(timeout):
            async for ev in self.events():
                if ev.get("type") == type_ and (predicate is None or predicate(ev)):
                    return ev
        raise ClientError(f"session ended before {type_}")

    # ---- sending --------------------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> str:
        """Send one JSON event (an ``event_id`` is added when missing); return its event_id."""
        event = dict(event)
        event.setdefault("event_id", new_id("evt"))
        if not self._connected.is_set():
            await asyncio.wait_for(self._connected.wait(), self.max_reconnect_s)
        await self._ws.send(json.dumps(event, separators=(",", ":")))
        return str(event["event_id"])

    async def send_binary(self, header: dict[str, Any], payload: bytes) -> str:
        header = dict(header)
        header.setdefault("event_id", new_id("evt"))
        if not self._connected.is_set():
            await asyncio.wait_for(self._connected.wait(), self.max_reconnect_s)
        await self._ws.send(encode_binary(header, payload))
        return str(header["event_id"])

    async def update_session(self, **session: Any) -> str:
        return await self.send({"type": "session.update", "session": session})

    async def speak(self, rate: int = 24000, *, speed: float | None = None) -> str:
        """Ask for spoken replies: ``output_modalities ["audio"]``, PCM16 at ``rate``."""
        out: dict[str, Any] = {"format": {"type": "audio/pcm", "rate": rate}}
        if speed is not None:
            out["speed"] = speed
        return await self.update_session(output_modalities=["audio"], audio={"output": out})

    def on_audio(self, handler: Any) -> None:
        """Give each audio delta's PCM16 bytes to ``handler(pcm, rate, response_id, item_id)``
        (an :class:`~server.client_audio.AudioHandler`: ``WavSink``, ``Player``) and call
        ``handler.end(response_id)`` at response.done. The rate is the session's output rate."""
        from server.client_audio import output_rate

        def delta(ev: dict[str, Any]) -> None:
            handler(base64.b64decode(ev["delta"]), output_rate(self.session), ev["response_id"], ev["item_id"])

        def done(ev: dict[str, Any]) -> None:
            end = getattr(handler, "end", None)
            if end is not None:
                end(ev["response"]["id"])

        def session(ev: dict[str, Any]) -> None:
            self.session = ev["session"]

        self.on("session.updated", session)
        self.on("response.output_audio.delta", delta)
        self.on("response.done", done)

    async def truncate(self, item_id: str, audio_end_ms: int, content_index: int = 0) -> str:
        """Tell the server the person heard only the first ``audio_end_ms`` of a spoken reply:
        the stored turn keeps that much of its text."""
        return await self.send({"type": "conversation.item.truncate", "item_id": item_id,
                                "content_index": content_index, "audio_end_ms": int(audio_end_ms)})

    async def send_text(self, text: str, *, images: list[bytes] | None = None, respond: bool = True) -> str:
        """Add a user message (text, optional JPEG/PNG images) and, by default, ask for a response."""
        content: list[dict[str, Any]] = [{"type": "input_text", "text": text}]
        for img in images or []:
            mime = "image/png" if img.startswith(b"\x89PNG") else "image/jpeg"
            content.append({"type": "input_image",
                            "image_url": f"data:{mime};base64,{base64.b64encode(img).decode()}"})
        eid = await self.send({"type": "conversation.item.create",
                               "item": {"type": "message", "role": "user", "content": content}})
        if respond:
            await self.create_response()
        return eid

    async def append_audio(self, audio: np.ndarray | bytes, *, binary: bool = True) -> str:
        """Send one audio chunk (PCM16 at the session rate; float arrays are converted)."""
        data = pcm16(audio)
        if binary:
            return await self.send_binary({"type": "input_audio_buffer.append"}, data)
        return await self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()})

    async def commit_audio(self) -> str:
        """Close the buffered audio as one item (it is transcribed). As in Realtime GA this starts
        no response: call :meth:`create_response` for one."""
        return await self.send({"type": "input_audio_buffer.commit"})

    async def clear_audio(self) -> str:
        return await self.send({"type": "input_audio_buffer.clear"})

    async def send_frame(self, jpeg: bytes, *, binary: bool = True, timestamp_ms: int | None = None) -> str:
        """Send one camera frame (JPEG or PNG bytes)."""
        header: dict[str, Any] = {"type": "input_image_buffer.append"}
        if timestamp_ms is not None:
            header["timestamp_ms"] = timestamp_ms
        if binary:
            return await self.send_binary(header, jpeg)
        return await self.send({**header, "image": base64.b64encode(jpeg).decode()})

    async def create_response(self, metadata: dict[str, str] | None = None) -> str:
        ev: dict[str, Any] = {"type": "response.create"}
        if metadata:
            ev["response"] = {"metadata": metadata}
        return await self.send(ev)

    async def cancel_response(self, response_id: str | None = None) -> str:
        ev: dict[str, Any] = {"type": "response.cancel"}
        if response_id:
            ev["response_id"] = response_id
        return await self.send(ev)

    async def send_action_result(self, call_id: str, output: dict[str, Any] | str, *, respond: bool = True) -> str:
        """Report an action's result (a ``function_call_output`` item); ``respond``: then ask the
        agent to continue from it (``response.create``)."""
        text = output if isinstance(output, str) else json.dumps(output)
        eid = await self.send({"type": "conversation.item.create",
                               "item": {"type": "function_call_output", "call_id": call_id, "output": text}})
        if respond:
            await self.send({"type": "response.create"})
        return eid


class SyncRealtimeClient:
    """Thread-backed client: an event loop in a daemon thread. ``send_*`` methods never block
    (they queue the send on the loop); events arrive through callbacks (run on the client thread:
    keep them short), ``poll()`` (non-blocking), ``events()`` or ``wait_for()``.
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._kwargs, self.url = kwargs, url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="realtime-client", daemon=True)
        self._events: queue.Queue[dict[str, Any]] = queue.Queue(10_000)
        self._client: RealtimeClient | None = None
        self._callbacks: list[tuple[str, Callback]] = []
        self._audio_handlers: list[Any] = []
        self.send_errors: list[BaseException] = []

    def connect(self, timeout: float = 60.0) -> SyncRealtimeClient:
        self._thread.start()

        async def _connect() -> RealtimeClient:
            c = RealtimeClient(self.url, **self._kwargs)
            c.on("*", self._enqueue)
            for t, cb in self._callbacks:
                c.on(t, cb)
            for handler in self._audio_handlers:
                c.on_audio(handler)
            await c.connect()
            return c

        self._client = asyncio.run_coroutine_threadsafe(_connect(), self._loop).result(timeout)
        return self

    @property
    def session_id(self) -> str | None:
        return self._client.session_id if self._client else None

    @property
    def session(self) -> dict[str, Any] | None:
        return self._client.session if self._client else None

    def _enqueue(self, ev: dict[str, Any]) -> None:
        if self._events.full():
            with contextlib.suppress(queue.Empty):
                self._events.get_nowait()
        self._events.put_nowait(ev)

    def on(self, type_: str, callback: Callback) -> None:
        """Register a callback (before or after connect)."""
        if self._client is None:
            self._callbacks.append((type_, callback))
        else:
            self._loop.call_soon_threadsafe(self._client.on, type_, callback)

    def _submit(self, name: str, *args: Any, **kwargs: Any) -> None:
        assert self._client is not None, "connect() first"
        fut = asyncio.run_coroutine_threadsafe(getattr(self._client, name)(*args, **kwargs), self._loop)
        fut.add_done_callback(self._check)

    def _check(self, fut: Any) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.send_errors.append(fut.exception())

    # Non-blocking senders.
    def send(self, event: dict[str, Any]) -> None:
        self._submit("send", event)

    def send_text(self, text: str, *, images: list[bytes] | None = None, respond: bool = True) -> None:
        self._submit("send_text", text, images=images, respond=respond)

    def append_audio(self, audio: np.ndarray | bytes) -> None:
        self._submit("append_audio", audio)

    def commit_audio(self) -> None:
        self._submit("commit_audio")

    def send_frame(self, jpeg: bytes, timestamp_ms: int | None = None) -> None:
        self._submit("send_frame", jpeg, timestamp_ms=timestamp_ms)

    def update_session(self, **session: Any) -> None:
        self._submit("update_session", **session)

    def create_response(self) -> None:
        self._submit("create_response")

    def cancel(self, response_id: str | None = None) -> None:
        self._submit("cancel_response", response_id)

    def send_action_result(self, call_id: str, output: dict[str, Any] | str, *, respond: bool = True) -> None:
        self._submit("send_action_result", call_id, output, respond=respond)

    def speak(self, rate: int = 24000, *, speed: float | None = None) -> None:
        self._submit("speak", rate, speed=speed)

    def truncate(self, item_id: str, audio_end_ms: int, content_index: int = 0) -> None:
        self._submit("truncate", item_id, audio_end_ms, content_index)

    def on_audio(self, handler: Any) -> None:
        """See :meth:`RealtimeClient.on_audio` (the handler runs on the client's thread)."""
        if self._client is None:
            self._audio_handlers.append(handler)
        else:
            self._loop.call_soon_threadsafe(self._client.on_audio, handler)

    # Receiving.
    def poll(self) -> list[dict[str, Any]]:
        """Every event received since the last call; never blocks."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def events(self, timeout: float = 30.0) -> Iterator[dict[str, Any]]:
        """Yield events as they arrive; raises TimeoutError after ``timeout`` s without one."""
        while True:
            try:
                yield self._events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError("no event within timeout") from None

    def wait_for(self, type_: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {type_} within {timeout} s")
            try:
                ev = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if ev.get("type") == type_:
                return ev

    def close(self, timeout: float = 10.0) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> SyncRealtimeClient:
        return self if self._client is not None else self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
