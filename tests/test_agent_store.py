"""Sessions in SQLite: round trip, resume, retention, barge-in, and survival of a SIGKILL mid-turn."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent import SessionError, SessionStore
from agent.session import TurnRecord

REPO = Path(__file__).resolve().parent.parent


def _turn(i: int, status: str = "completed") -> TurnRecord:
    return TurnRecord(turn_id=f"turn_{i:04d}", index=i, created_at=time.time(), status=status,
                      text=f"question {i}", reply=f"answer {i}", route="extractive",
                      fused={"intent": "store_hours", "emotion": "neutral", "emotion_confidence": 0.9},
                      fused_vector=[0.5, -1.0, 2.0], actions=[{"name": "show_on_map", "arguments": {"aisle": 2}}],
                      timings={"total": 12.5})


def test_round_trip_resume_and_export(tmp_path: Path) -> None:
    """Turns written by one store instance come back, complete, from a fresh one (a restart)."""
    db = tmp_path / "s.db"
    store = SessionStore(db)
    session = store.create_session(pack="demo_kiosk")
    for i in range(3):
        store.save_turn(session.id, _turn(i, "cancelled" if i == 2 else "completed"))
    store.close()

    store2 = SessionStore(db)
    resumed = store2.load_session(session.id)
    assert [t.index for t in resumed.turns] == [0, 1, 2]
    assert resumed.turns[2].status == "cancelled"
    assert resumed.turns[0].fused_vector == [0.5, -1.0, 2.0]
    assert resumed.turns[1].actions == [{"name": "show_on_map", "arguments": {"aisle": 2}}]
    assert resumed.history() == [("question 0", "answer 0"), ("question 1", "answer 1")]
    exported = store2.export(session.id)
    assert exported["pack"] == "demo_kiosk" and len(exported["turns"]) == 3
    assert "fused_vector" not in exported["turns"][0]
    assert store2.list_sessions()[0]["turns"] == 3
    assert store2.integrity_check() == "ok"
    with pytest.raises(SessionError):
        store2.load_session("sess_unknown")
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    store2.close()


def test_retention_expires_idle_sessions(tmp_path: Path) -> None:
    """A session idle past the retention is deleted at open and cannot be resumed."""
    db = tmp_path / "s.db"
    store = SessionStore(db, retention_days=1)
    old = store.create_session()
    store.save_turn(old.id, _turn(0))
    fresh = store.create_session()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE sessions SET updated_at=? WHERE id=?", (time.time() - 2 * 86400, old.id))
    conn.commit()
    conn.close()
    with pytest.raises(SessionError, match="expired"):
        store.load_session(old.id)
    assert store.expire() == 0
    assert [s["id"] for s in store.list_sessions()] == [fresh.id]
    assert store.load_turns(old.id) == []
    store.close()


def test_barge_in_flag_is_persisted(tmp_path: Path) -> None:
    """mark_barge_in on a finished turn updates the stored row."""
    store = SessionStore(tmp_path / "s.db")
    session = store.create_session()
    rec = session.begin_turn("turn_a")
    rec.status = "cancelled"
    session.finish_turn(rec)
    store.save_turn(session.id, rec)
    session.mark_barge_in()
    assert store.load_session(session.id).turns[0].barge_in is True
    store.close()


_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from agent.store import SessionStore
    from agent.session import TurnRecord
    store = SessionStore(sys.argv[1])
    session = store.create_session(session_id="sess_crash")
    i = 0
    while True:
        rec = session.begin_turn(f"turn_{{i:05d}}")
        rec.status, rec.text, rec.reply = "completed", "q" * 200, "a" * 2000
        rec.fused_vector = [float(i)] * 256
        store.save_turn(session.id, rec)
        session.finish_turn(rec)
        print(i, flush=True)
        i += 1
        if i == 40:
            # a turn in progress: its transaction is open when the process dies
            conn = store._conn()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO turns(session_id, idx, turn_id, created_at, status, data)"
                         " VALUES ('sess_crash', 40, 'turn_partial', 0, 'in_progress', '{{}}')")
            print("mid-turn", flush=True)
            time.sleep(60)
""")


@pytest.mark.parametrize("when", ["mid_transaction", "while_writing"])
def test_sigkill_mid_turn_keeps_completed_turns(tmp_path: Path, when: str) -> None:
    """A writer killed with SIGKILL loses at most the turn in progress; the file stays intact."""
    db = tmp_path / "crash.db"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(script), str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed: list[int] = []
    deadline = time.time() + 60
    try:
        for line in proc.stdout:
            line = line.strip()
            if line == "mid-turn" or (when == "while_writing" and len(committed) >= 15):
                break
            committed.append(int(line))
            assert time.time() < deadline, "writer too slow"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    store = SessionStore(db)
    assert store.integrity_check() == "ok"
    turns = store.load_session("sess_crash").turns
    stored = [t.index for t in turns]
    # every turn whose commit returned is there, in order; nothing partial
    assert stored[: len(committed)] == committed
    assert all(t.status == "completed" for t in turns)
    assert all(t.fused_vector == [float(t.index)] * 256 for t in turns)
    if when == "mid_transaction":
        assert stored == list(range(40))
    store.close()
