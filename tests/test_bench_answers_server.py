"""bench/answers.py --url: the answer benchmark against a real running server (typed turns, one
WebSocket session per conversation), extractive replies."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import start_server

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "bench") not in sys.path:
    sys.path.append(str(REPO / "bench"))   # appended: bench/agent.py must not shadow the agent package

import answers as A  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = start_server(state_dir=str(tmp_path_factory.mktemp("bench_answers_state")),
                       agent={"responder": {"kind": "extractive"}})
    yield srv
    srv.stop()


def test_benchmark_against_a_running_server(server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "answers.json"
    assert A.main(["--url", server.ws_url, "--category", "product_where", "--limit", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "TOTAL" in printed and "product_where" in printed
    result = json.loads(out.read_text())
    assert result["mode"] == "server" and result["summary"]["total"]["n"] == 3
    first = result["turns"][0]
    assert first["say"] == "where is the milk?"
    assert "aisle 2" in first["reply"] and "show_on_map" in first["actions"] and first["passed"], first


def test_follow_up_turns_share_one_server_session(server: Any) -> None:
    import asyncio

    data = A.load_data()
    conv = next(c for c in data.conversations if c.id == "fu-coffee")
    replies = asyncio.run(A.run_remote(server.ws_url, None, [conv]))
    assert "aisle 4" in replies["fu-coffee#0"].text
    # The second turn went into the same session: the server stored both turns under one id.
    from agent.store import SessionStore

    store = SessionStore(Path(server.config.state_dir) / "sessions.sqlite3")
    try:
        assert any(r["turns"] == 2 for r in store.list_sessions(10))
    finally:
        store.close()
