"""The operator's console (server/console.py): the per-turn line from a real server, quiet
third-party loggers, the configuration summary and ``mmagent serve --print-config``."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from typing import Any

import pytest

from server.config import load_config
from server.console import config_summary, setup_logging, turn_line
from tests.conftest import REPO_ROOT


def _done(status: str = "completed", **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status, "status_details": None,
                            "turn": {"intent": "find_product", "route": "local",
                                     "actions": [{"name": "show_on_map", "arguments": {"aisle": 7}}]},
                            "timings_ms": {"perception": 40.0, "first_delta": 412.0, "total": 1310.0}}
    body.update(over)
    return body


def test_turn_line_says_session_modalities_intent_latency_outcome_actions() -> None:
    """One line: who, what came in, what it meant, how fast, how it ended, what was done."""
    line = turn_line("sess_0123", _done(), ("text", "vision"))
    assert line == ("turn sess_0123  text+vision  find_product  first 412 ms, total 1.3 s  "
                    "answered (local model)  show_on_map aisle=7")


@pytest.mark.parametrize(("body", "expected"), [
    (_done("cancelled", status_details={"type": "cancelled", "reason": "turn_detected"}), "interrupted (the person spoke)"),
    (_done("cancelled", status_details={"type": "cancelled", "reason": "client_cancelled"}), "stopped by the client"),
    (_done("failed", status_details={"type": "failed", "error": {"code": "responder_failed", "message": "boom"}},
           turn=None, timings_ms=None), "FAILED responder_failed: boom"),
    (_done(turn={"intent": "talk_to_human", "route": "handoff", "actions": []}), "handed off"),
    (_done(turn={"intent": None, "route": "empty", "actions": []}), "no reply"),
])
def test_turn_line_outcomes(body: dict[str, Any], expected: str) -> None:
    """Barge-in, stop, failure (with its code), handoff and an empty turn read plainly."""
    line = turn_line("sess_x", body, ())
    assert expected in line, line
    assert "None" not in line and "{" not in line, line   # no Python reprs for people


def test_third_party_loggers_are_quiet_and_ours_speak() -> None:
    """websockets' connection chatter and library INFO lines are hidden; ours are shown, short."""
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging(stream=buf)
        logging.getLogger("websockets.server").info("connection closed")
        logging.getLogger("transformers.modeling_utils").info("loading weights")
        logging.getLogger("server.session").info("a turn happened")
        logging.getLogger("agent.store").warning("disk almost full")
        out = buf.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    assert "connection closed" not in out and "loading weights" not in out
    assert "a turn happened" in out and "WARNING agent.store: disk almost full" in out
    first = out.splitlines()[0]
    assert first[2] == ":" and first[8:] == " a turn happened", first   # "HH:MM:SS message"


def test_config_summary_is_short_and_keeps_secrets() -> None:
    """A few lines with the pack, address, access and models; tokens never printed."""
    cfg = load_config(None, env={}, overrides={"tokens": ["s3cret-token"], "port": 9000})
    lines = config_summary(cfg)
    text = "\n".join(lines)
    assert len(lines) <= 5
    assert "127.0.0.1:9000" in text and "1 token" in text and "s3cret" not in text
    assert "--print-config" in text


def test_serve_print_config_prints_json_and_exits() -> None:
    """`mmagent serve --print-config`: the full effective configuration, secrets masked; no start."""
    run = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--print-config", "--token", "abc123",
                          "--port", "9123"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    cfg = json.loads(run.stdout)
    assert cfg["port"] == 9123 and cfg["tokens"] == ["***"]
    assert "abc123" not in run.stdout + run.stderr


def test_a_real_turn_logs_one_line(mm_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The server logs exactly one console line for a typed turn, with its session and outcome."""
    from server.client import SyncRealtimeClient

    caplog.set_level(logging.INFO, logger="mmagent")
    with SyncRealtimeClient(mm_server.ws_url) as c:
        c.send_text("Where are the batteries?")
        done = c.wait_for("response.done", timeout=90)
        sid = c.session_id
    lines = [r.getMessage() for r in caplog.records if r.name == "mmagent" and r.getMessage().startswith("turn ")]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"turn {sid}  text  ")
    assert done["response"]["status"] == "completed"
    assert "first " in lines[0] and "total " in lines[0]


def test_serve_on_a_taken_port_fails_at_once_in_plain_words() -> None:
    """Another process holds the port: a one-line error before any model loads, not a traceback."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: it is already in use" in run.stderr
    assert "Traceback" not in run.stderr and "loading" not in run.stderr
    assert time.monotonic() - t0 < 30
