"""`mmagent serve` and `mmagent sessions` share one session database by default; `sessions list`
is readable (local times, turns, first question … last reply). Real server, real SQLite file."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from server.cli import main
from tests.conftest import start_server


async def _ask(ws_url: str, questions: list[str]) -> str:
    from server.client import RealtimeClient

    async with RealtimeClient(ws_url, reconnect=False) as c:
        for q in questions:
            await c.send_text(q)
            await c.wait_for("response.done", timeout=120)
        assert c.session_id
        return c.session_id


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> object:
    state = tmp_path_factory.mktemp("shared_db_state")
    srv = start_server(state_dir=str(state), agent={"responder": {"kind": "extractive"}})
    sid = asyncio.run(_ask(srv.ws_url, ["where are the batteries?", "and how much is the coffee?"]))  # type: ignore[attr-defined]
    yield state, sid
    srv.stop()  # type: ignore[attr-defined]


def test_sessions_reads_the_servers_database_from_its_config(served: tuple[Path, str], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    state, sid = served
    monkeypatch.delenv("MMAGENT_SESSIONS_DB", raising=False)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"state_dir: {state}\n")       # the file `mmagent serve --config` was given
    assert (state / "sessions.sqlite3").exists()
    assert main(["sessions", "--config", str(cfg), "list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if sid in x)
    # readable local time, the number of turns, the first question and the last reply
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d  ", line), line
    assert time.strftime("%Y-%m-%d") in line or "2 turns" in line
    assert "2 turns" in line and "where are the batteries?" in line and "$5.99" in line
    assert main(["sessions", "--config", str(cfg), "show", sid]) == 0
    assert "aisle 7" in capsys.readouterr().out


def test_sessions_without_flags_uses_the_servers_default(served: tuple[Path, str], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    state, sid = served
    monkeypatch.delenv("MMAGENT_SESSIONS_DB", raising=False)
    # `mmagent serve` with no config keeps its sessions in var/ under the working directory;
    # `mmagent sessions` run from the same directory finds them with no --db.
    monkeypatch.chdir(state.parent)
    monkeypatch.setenv("MMAGENT_STATE_DIR", state.name)
    assert main(["sessions", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    row = next(r for r in rows if r["id"] == sid)
    assert row["turns"] == 2 and row["first_text"] == "where are the batteries?" and "$5.99" in row["last_reply"]
    # nothing there: a clear error naming the path, and no empty database created
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMAGENT_STATE_DIR")
    assert main(["sessions", "list"]) == 1
    assert "var/sessions.sqlite3" in capsys.readouterr().err
    assert not (tmp_path / "var").exists()


def test_every_sessions_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from server.cli import build_parser

    def subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        return next(a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction))

    sessions = subparsers(build_parser())["sessions"]
    parsers = [sessions, *subparsers(sessions).values()]
    assert len(parsers) == 4
    for p in parsers:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help and len(action.help) > 10, f"{p.prog}: {action.dest} has no help"
    with pytest.raises(SystemExit):
        main(["sessions", "--help"])
    assert "state_dir" in capsys.readouterr().out
