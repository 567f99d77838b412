"""The OpenAI-compatible responder against a real SSE server on 127.0.0.1 started by the test."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent import Agent, AgentConfig, OpenAIConfig, ResponderConfig, StoreConfig, TurnInput
from agent.dialogue import DialogueState
from agent.responders import OpenAIResponder


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests: list[dict[str, Any]] = []  # noqa: RUF012
    flaky_left = [0]  # noqa: RUF012

    def log_message(self, *args: Any) -> None:
        pass

    def _chunk(self, data: str) -> None:
        raw = data.encode()
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def _event(self, obj: Any) -> None:
        self._chunk(f"data: {json.dumps(obj)}\n\n")

    def _delta(self, **delta: Any) -> None:
        self._event({"id": "c1", "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = self.path.split("/")[1]
        type(self).requests.append({"mode": mode, "body": body, "auth": self.headers.get("Authorization")})
        if mode == "flaky" and type(self).flaky_left[0] > 0:
            type(self).flaky_left[0] -= 1
            self.send_response(503)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"busy")
            return
        if mode == "unauthorized":
            self.send_response(401)
            self.send_header("Content-Length", "12")
            self.end_headers()
            self.wfile.write(b"bad api key.")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(": keep-alive\n\n")
        self._delta(role="assistant", content="")
        words = ["The ", "service ", "desk ", "is ", "by ", "the ", "main ", "entrance."]
        if mode == "tools":
            self._delta(content="Let me show you. ")
            self._delta(tool_calls=[{"index": 0, "id": "call_ok", "type": "function",
                                     "function": {"name": "show_on_map", "arguments": "{\"ais"}}])
            self._delta(tool_calls=[{"index": 0, "function": {"arguments": "le\": 7}"}}])
            self._delta(tool_calls=[{"index": 1, "id": "call_bad", "type": "function",
                                     "function": {"name": "show_on_map", "arguments": "{\"aisle\": \"seven\"}"}}])
            self._chunk("data: [DONE]\n\n")
            self._chunk("")
            return
        for i, w in enumerate(words):
            self._delta(content=w)
            time.sleep(0.02)
            if mode == "stall" and i == 2:
                time.sleep(3.0)
                return
            if mode == "drop" and i == 3:
                self.connection.shutdown(2)  # the connection dies mid-stream, no terminating chunk
                return
        self._chunk("data: [DONE]\n\n")
        self._chunk("")


@pytest.fixture(scope="module")
def sse_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def make_agent(perception: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Builds the agent (pack embedding) once; each call points it at another server path."""
    db = tmp_path_factory.mktemp("openai") / "s.db"
    cfg = AgentConfig(responder=ResponderConfig(kind="openai"), store=StoreConfig(path=str(db)))
    agent = Agent.from_config(cfg, perception=perception)

    def build(base_url: str, **kw: Any) -> Agent:
        oc = OpenAIConfig(base_url=base_url, model="test-model", connect_timeout_s=2, read_timeout_s=0.5,
                          total_timeout_s=10, max_retries=2, retry_backoff_s=0.05, **kw)
        agent.responder = OpenAIResponder(oc)
        return agent

    return build


def _run(agent: Agent, text: str) -> tuple[list[Any], Any]:
    async def go() -> list[Any]:
        session = agent.open_session()
        perceived = await agent.perceive(TurnInput(text=text))
        return [ev async for ev in agent.respond(session, perceived)]

    events = asyncio.run(go())
    return events, events[-1]


def test_streams_deltas_and_sends_the_prompt(sse_server: str, make_agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deltas arrive one by one; the request carries the grounded prompt, the model and the key."""
    monkeypatch.setenv("MMAGENT_OPENAI_API_KEY", "sk-test")
    _Handler.requests.clear()
    events, done = _run(make_agent(sse_server + "/ok/v1"), "where is the service desk?")
    deltas = [e.delta for e in events if e.type == "text.delta"]
    assert len(deltas) >= 5
    assert done.status == "completed" and done.text == "The service desk is by the main entrance."
    req = _Handler.requests[-1]
    assert req["auth"] == "Bearer sk-test" and req["body"]["model"] == "test-model" and req["body"]["stream"]
    user = req["body"]["messages"][-1]["content"]
    assert "to the left of the main entrance" in user  # the retrieved entry is in the prompt
    assert {t["function"]["name"] for t in req["body"]["tools"]} >= {"show_on_map", "handoff_to_human"}


def test_stalling_server_times_out_with_an_error_event(sse_server: str, make_agent: Any) -> None:
    """A server that stops sending mid-reply → responder_failed error event, turn failed, bounded time."""
    agent = make_agent(sse_server + "/stall/v1")
    t0 = time.perf_counter()
    events, done = _run(agent, "where is the service desk?")
    elapsed = time.perf_counter() - t0
    errors = [e for e in events if e.type == "error"]
    assert errors and errors[0].code == "responder_failed" and "read_timeout" in errors[0].message
    assert done.status == "failed" and done.error["code"] == "responder_failed"
    # nothing unverified reaches the client: the model's half sentence is not sent, the answer
    # composed from the pack is (the turn still fails with the backend's error)
    assert done.text.startswith("The service") and done.text == agent.dialogue.plan(
        "where is the service desk?", DialogueState()).text
    assert elapsed < 2.5


def test_dropped_connection_is_an_error(sse_server: str, make_agent: Any) -> None:
    """The connection dying before [DONE] is reported, not mistaken for a finished reply."""
    events, done = _run(make_agent(sse_server + "/drop/v1"), "where is the service desk?")
    errors = [e for e in events if e.type == "error"]
    assert errors and errors[0].code == "responder_failed"
    assert done.status == "failed"


def test_retries_before_the_first_byte_then_gives_up(sse_server: str, make_agent: Any) -> None:
    """503 twice then OK → one reply; 401 → no retry, error event naming the status."""
    _Handler.flaky_left[0] = 2
    _Handler.requests.clear()
    _, done = _run(make_agent(sse_server + "/flaky/v1"), "where is the service desk?")
    assert done.status == "completed" and len(_Handler.requests) == 3
    _Handler.requests.clear()
    events, done = _run(make_agent(sse_server + "/unauthorized/v1"), "where is the service desk?")
    assert done.status == "failed" and len(_Handler.requests) == 1
    assert "HTTP 401" in next(e for e in events if e.type == "error").message
    events, done = _run(make_agent("http://127.0.0.1:9/v1"), "where is the service desk?")  # nothing listens
    assert done.status == "failed" and done.error["code"] == "responder_failed"


def test_tool_calls_are_validated(sse_server: str, make_agent: Any) -> None:
    """A streamed tool call with valid arguments becomes an action; an invalid one is rejected."""
    events, done = _run(make_agent(sse_server + "/tools/v1"), "where are the batteries?")
    actions = [e for e in events if e.type == "action"]
    rejected = [e for e in events if e.type == "action.rejected"]
    assert ("show_on_map", {"aisle": 7}) in [(a.name, a.arguments) for a in actions]
    assert "call_ok" in [a.call_id for a in actions]
    assert len(rejected) == 1 and rejected[0].code == "invalid_action" and "seven" in rejected[0].message
    assert done.status == "completed"
    assert {"name": "show_on_map", "arguments": {"aisle": 7}, "call_id": "call_ok"} in done.actions
    assert all(a["arguments"] != {"aisle": "seven"} for a in done.actions)


def test_cancel_closes_a_stalled_stream_at_once(sse_server: str, make_agent: Any, tmp_path: Path) -> None:
    """Cancelling while the server is silent ends the turn at once, stored as cancelled."""
    agent = make_agent(sse_server + "/stall/v1")
    agent.responder.config.read_timeout_s = 5.0

    async def go() -> tuple[list[Any], float]:
        session = agent.open_session()
        perceived = await agent.perceive(TurnInput(text="where is the service desk?"))
        cancel = asyncio.Event()
        events = []
        t_cancel = 0.0
        async for ev in agent.respond(session, perceived, cancel=cancel):
            events.append(ev)
            # (model text is sent only in verified sentences: the stall comes before the first
            # one, so the cancel is timed from the start of the reply)
            if ev.type == "turn.fused" and not cancel.is_set():
                asyncio.get_running_loop().call_later(0.5, cancel.set)
                t_cancel = time.perf_counter() + 0.5
        return events, time.perf_counter() - t_cancel

    events, after = asyncio.run(go())
    assert events[-1].status == "cancelled"
    assert after < 1.0
    assert agent.store is not None
    stored = agent.store.load_session(agent.store.list_sessions(1)[0]["id"]).turns
    assert stored[-1].status == "cancelled"
