"""The OpenAI-compatible responder: ``POST {base_url}/chat/completions`` with ``stream: true``.

Speaks to vLLM, Ollama, llama.cpp's server or a hosted API. Uses only the standard library
(``http.client`` in a worker thread). Bounded everywhere:

- ``connect_timeout_s`` to open the connection, ``read_timeout_s`` of silence between chunks,
  ``total_timeout_s`` for the whole reply;
- ``max_retries`` retries (with backoff) for connection failures and HTTP 429/5xx, only before
  the first byte of a reply; once text has streamed a failure is reported, never replayed;
- a stream that ends without ``data: [DONE]`` (dropped connection) is an error.

Cancellation shuts the socket down, so a blocked read returns at once.
Tool calls in the stream (``delta.tool_calls``) become :class:`ToolCall` chunks.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..config import OpenAIConfig
from ..errors import ResponderError
from ..prompt import approx_tokens
from .base import CancelToken, Chunk, ResponderRequest, ToolCall, stream_from_thread

_RETRY_STATUS = {429, 500, 502, 503, 504}


class OpenAIResponder:
    name = "openai"

    def __init__(self, config: OpenAIConfig | None = None) -> None:
        self.config = (config or OpenAIConfig()).validate()
        url = urllib.parse.urlsplit(self.config.base_url)
        self._https = url.scheme == "https"
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (443 if self._https else 80)
        self._path = url.path.rstrip("/") + "/chat/completions"

    def count_tokens(self, text: str) -> int:
        return approx_tokens(text)

    def warmup(self) -> None:
        return None

    def _connection(self) -> http.client.HTTPConnection:
        timeout = self.config.connect_timeout_s
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def body(self, request: ResponderRequest) -> dict[str, Any]:
        cfg = self.config
        body: dict[str, Any] = {"model": cfg.model, "messages": request.prompt.messages, "stream": True,
                                "max_tokens": _cap(cfg.max_tokens, request.max_tokens), "temperature": cfg.temperature}
        if cfg.use_tools and request.pack.actions:
            body["tools"] = request.pack.tools()
        return body

    def _open(self, payload: bytes, cancel: CancelToken, deadline: float) -> tuple[http.client.HTTPConnection,
                                                                               http.client.HTTPResponse]:
        cfg = self.config
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        key = cfg.resolved_api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last: str = ""
        for attempt in range(cfg.max_retries + 1):
            if cancel.is_set():
                raise ResponderError("cancelled")
            if attempt:
                time.sleep(min(cfg.retry_backoff_s * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic())))
            if time.monotonic() > deadline:
                break
            conn = self._connection()
            try:
                conn.connect()
                assert conn.sock is not None
                conn.sock.settimeout(cfg.read_timeout_s)
                sock = conn.sock
                cancel.add_callback(lambda s=sock: _shutdown(s))  # type: ignore[misc]
                conn.request("POST", self._path, body=payload, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status == 200:
                return conn, resp
            detail = resp.read(500).decode("utf-8", "replace")
            conn.close()
            last = f"HTTP {resp.status}: {detail}"
            if resp.status not in _RETRY_STATUS:
                raise ResponderError(f"{self.config.base_url}: {last}")
        raise ResponderError(f"{self.config.base_url}: failed after {cfg.max_retries + 1} attempts: {last}")

    def run(self, request: ResponderRequest, emit: Callable[[Any], None], cancel: CancelToken) -> None:
        """Blocking: stream one reply, calling ``emit`` with text and :class:`ToolCall` chunks."""
        cfg = self.config
        t0 = time.monotonic()
        deadline = t0 + cfg.total_timeout_s
        conn, resp = self._open(json.dumps(self.body(request)).encode(), cancel, deadline)
        tools: dict[int, dict[str, str]] = {}
        done = False
        try:
            while not cancel.is_set():
                if time.monotonic() > deadline:
                    raise ResponderError(f"reply not finished within total_timeout_s={cfg.total_timeout_s}")
                try:
                    line = resp.readline()
                except TimeoutError as exc:
                    raise ResponderError(f"no data for read_timeout_s={cfg.read_timeout_s} s") from exc
                except (OSError, http.client.HTTPException) as exc:
                    if cancel.is_set():
                        break
                    raise ResponderError(f"connection lost mid-stream: {type(exc).__name__}: {exc}") from exc
                if not line:
                    if cancel.is_set():
                        break
                    raise ResponderError("connection closed before the end of the stream (no [DONE])")
                text = line.decode("utf-8", "replace").strip()
                if not text.startswith("data:"):
                    continue  # blank separators, comments (": keep-alive"), event:/id: fields
                data = text[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    obj = json.loads(data)
                except json.JSONDecodeError as exc:
                    raise ResponderError(f"malformed event data: {data[:120]!r}") from exc
                if "error" in obj:
                    raise ResponderError(f"server error: {obj['error']}")
                for choice in obj.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        if "first_token_s" not in request.stats:
                            request.stats["first_token_s"] = time.monotonic() - t0
                        emit(delta["content"])
                    for tc in delta.get("tool_calls") or []:
                        slot = tools.setdefault(int(tc.get("index", 0)), {"id": "", "name": "", "arguments": ""})
                        fn = tc.get("function") or {}
                        slot["id"] = tc.get("id") or slot["id"]
                        slot["name"] += fn.get("name") or ""
                        slot["arguments"] += fn.get("arguments") or ""
        finally:
            conn.close()
        if done:
            for _, slot in sorted(tools.items()):
                emit(ToolCall(name=slot["name"], arguments=slot["arguments"], call_id=slot["id"]))

    def stream(self, request: ResponderRequest, cancel: CancelToken) -> AsyncIterator[Chunk]:
        return stream_from_thread(lambda emit: self.run(request, emit, cancel), name="openai-sse")


def _cap(limit: int, request_cap: int | None) -> int:
    return limit if request_cap is None else max(1, min(limit, request_cap))


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
