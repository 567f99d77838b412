"""Session stores, SQLite and PostgreSQL, under the same tests: round trip, resume, retention,
barge-in, and survival of a SIGKILL mid-turn; PostgreSQL's migrations under concurrency."""

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

from agent import SessionError, SessionStore, StoreConfig
from agent.errors import StoreError
from agent.session import TurnRecord
from agent.store_api import SessionStoreProtocol, open_store

REPO = Path(__file__).resolve().parent.parent


class Backend:
    """One store implementation under test: ``target`` is a SQLite path or a PostgreSQL URL."""

    def __init__(self, kind: str, target: str) -> None:
        self.kind, self.target = kind, target

    def open(self, **kw: object) -> SessionStoreProtocol:
        cfg = StoreConfig(url=self.target, **kw) if self.kind == "postgres" else StoreConfig(path=self.target, **kw)  # type: ignore[arg-type]
        return open_store(cfg)

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        """Change rows behind the store's back (``?`` placeholders)."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.target)
            conn.execute(sql, params)
            conn.commit()
            conn.close()
        else:
            import psycopg

            with psycopg.connect(self.target, autocommit=True) as pg:
                pg.execute(sql.replace("?", "%s"), params)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "s.db"))
    return Backend("postgres", request.getfixturevalue("pg_url"))


def _turn(i: int, status: str = "completed") -> TurnRecord:
    return TurnRecord(turn_id=f"turn_{i:04d}", index=i, created_at=time.time(), status=status,
                      text=f"question {i}", reply=f"answer {i}", route="extractive",
                      fused={"intent": "store_hours", "emotion": "neutral", "emotion_confidence": 0.9},
                      fused_vector=[0.5, -1.0, 2.0], actions=[{"name": "show_on_map", "arguments": {"aisle": 2}}],
                      timings={"total": 12.5})


def test_round_trip_resume_and_export(backend: Backend) -> None:
    """Turns written by one store instance come back, complete, from a fresh one (a restart)."""
    store = backend.open()
    session = store.create_session(pack="demo_kiosk")
    for i in range(3):
        store.save_turn(session.id, _turn(i, "cancelled" if i == 2 else "completed"))
    store.close()

    store2 = backend.open()
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
    if backend.kind == "sqlite":
        assert isinstance(store2, SessionStore)
        conn = sqlite3.connect(backend.target)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    # a turn written again (a revised reply) replaces the stored one, same index, same id
    again = _turn(1)
    again.reply = "answer 1, revised"
    store2.save_turn(session.id, again)
    assert [t.reply for t in store2.load_turns(session.id)] == ["answer 0", "answer 1, revised", "answer 2"]
    store2.close()


def test_retention_expires_idle_sessions(backend: Backend) -> None:
    """A session idle past the retention is deleted at open and cannot be resumed."""
    store = backend.open(retention_days=1)
    old = store.create_session()
    store.save_turn(old.id, _turn(0))
    fresh = store.create_session()
    backend.execute("UPDATE sessions SET updated_at=? WHERE id=?", (time.time() - 2 * 86400, old.id))
    with pytest.raises(SessionError, match="expired"):
        store.load_session(old.id)
    assert store.expire() == 0
    assert [s["id"] for s in store.list_sessions()] == [fresh.id]
    assert store.load_turns(old.id) == []
    store.close()


def test_barge_in_flag_is_persisted(backend: Backend) -> None:
    """mark_barge_in on a finished turn updates the stored row."""
    store = backend.open()
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
    from agent.config import StoreConfig
    from agent.store_api import is_postgres_url, open_store
    from agent.session import TurnRecord
    target = sys.argv[1]
    store = open_store(StoreConfig(url=target) if is_postgres_url(target) else StoreConfig(path=target))
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
            sql = ("INSERT INTO turns(session_id, idx, turn_id, created_at, status, data)"
                   " VALUES ('sess_crash', 40, 'turn_partial', 0, 'in_progress', '{{}}')")
            if is_postgres_url(target):
                import psycopg
                conn = psycopg.connect(target)   # not autocommit: the INSERT opens a transaction
                conn.execute(sql)
            else:
                conn = store._conn()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(sql)
            print("mid-turn", flush=True)
            time.sleep(60)
""")


@pytest.mark.parametrize("when", ["mid_transaction", "while_writing"])
def test_sigkill_mid_turn_keeps_completed_turns(tmp_path: Path, backend: Backend, when: str) -> None:
    """A writer killed with SIGKILL loses at most the turn in progress; the store stays intact."""
    db = backend.target
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(script), db], stdout=subprocess.PIPE, text=True)
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

    store = backend.open()
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


# ---- PostgreSQL only -------------------------------------------------------------------------

def test_postgres_migrations_are_safe_when_front_ends_start_together(pg_url: str) -> None:
    """Six stores opening an empty database at once: the schema is made exactly once, every one
    of them works, and a later open finds nothing to do."""
    import threading

    from agent.store_postgres import SCHEMA_VERSION, PostgresSessionStore, migrate

    stores: list[PostgresSessionStore] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_one() -> None:
        try:
            start.wait()
            stores.append(PostgresSessionStore(pg_url, pool_size=1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(stores) == 6
    ids = [s.create_session().id for s in stores]
    assert sorted(r["id"] for r in stores[0].list_sessions()) == sorted(ids)
    assert all(s.schema_version() == SCHEMA_VERSION for s in stores)
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM mmagent_schema").fetchone() == (1,)
        assert migrate(conn) == SCHEMA_VERSION   # already there: nothing applied
    for s in stores:
        s.close()


def test_postgres_written_by_one_front_end_read_by_another(pg_url: str) -> None:
    """Two stores (two front ends' pools) on one database: each sees the other's turns at once."""
    a, b = open_store(StoreConfig(url=pg_url)), open_store(StoreConfig(url=pg_url))
    session = a.create_session(pack="demo_kiosk", meta={"kiosk": "entrance"})
    a.save_turn(session.id, _turn(0))
    resumed = b.load_session(session.id)
    assert resumed.history() == [("question 0", "answer 0")] and resumed.meta == {"kiosk": "entrance"}
    b.save_turn(session.id, _turn(1))
    assert [t.index for t in a.load_session(session.id).turns] == [0, 1]
    a.close()
    b.close()


def test_postgres_unreachable_is_a_clear_store_error() -> None:
    """A URL nobody listens on: StoreError ("store_unavailable") naming the URL, quickly."""
    from agent.store_postgres import PostgresSessionStore
    from tests.pg_server import free_port

    url = f"postgresql://mmagent:secret@127.0.0.1:{free_port()}/none"
    with pytest.raises(StoreError, match="cannot connect") as info:
        PostgresSessionStore(url, connect_timeout_s=2)
    assert info.value.code == "store_unavailable"
    assert "secret" not in str(info.value)


def test_store_url_must_be_postgres() -> None:
    from perception.errors import ConfigError

    with pytest.raises(ConfigError, match="postgresql://"):
        StoreConfig(url="mysql://x").validate()


def test_postgres_owner_dialogue_state_and_previews(pg_url: str) -> None:
    """The columns and table added after version 1: a session's owner, its dialogue state (written
    in the turn's transaction), and the operator's previews."""
    from agent.store_postgres import PostgresSessionStore

    store = PostgresSessionStore(pg_url)
    s = store.create_session(owner="kiosk-7")
    assert store.owner_of(s.id) == "kiosk-7"
    with pytest.raises(SessionError):
        store.owner_of("sess_unknown")
    store.save_turn(s.id, _turn(0), dialogue_state={"topic": "batteries", "slots": {"aisle": 4}})
    assert store.load_dialogue_state(s.id) == {"topic": "batteries", "slots": {"aisle": 4}}
    store.save_turn(s.id, _turn(1), dialogue_state={"topic": "returns"})
    resumed = store.load_session(s.id)
    assert resumed.dialogue_state == {"topic": "returns"}  # type: ignore[attr-defined]
    assert store.previews([s.id]) == {s.id: {"first_text": "question 0", "last_reply": "answer 1"}}
    assert store.export(s.id)["owner"] == "kiosk-7" and store.list_sessions()[0]["owner"] == "kiosk-7"
    store.delete_session(s.id)
    assert store.load_dialogue_state(s.id) == {}
    store.close()


def test_postgres_migrates_a_version_1_database(pg_url: str) -> None:
    """A database made by the first schema (before owners): opened, it is brought to the current
    version with its sessions kept (owner NULL)."""
    import psycopg

    from agent.store_postgres import MIGRATIONS, SCHEMA_VERSION, PostgresSessionStore

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE mmagent_schema (version INTEGER NOT NULL)")
        conn.execute(MIGRATIONS[0][1])
        conn.execute("INSERT INTO mmagent_schema VALUES (1)")
        conn.execute("INSERT INTO sessions(id, created_at, updated_at, meta) VALUES ('sess_old', %s, %s, '{}')",
                     (time.time(), time.time()))
    store = PostgresSessionStore(pg_url)
    assert store.schema_version() == SCHEMA_VERSION
    assert store.owner_of("sess_old") is None
    assert store.load_session("sess_old").turns == []
    store.close()


def test_sessions_cli_reads_postgres(pg_url: str) -> None:
    """`mmagent sessions --db postgresql://… list / export`: the operator commands on the shared store."""
    import json

    store = open_store(StoreConfig(url=pg_url))
    s = store.create_session(pack="demo_kiosk")
    store.save_turn(s.id, _turn(0))
    store.close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "server.cli", "sessions", "--db", pg_url, *args],
                              capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    listed = json.loads(cli("list", "--json"))
    assert [(r["id"], r["turns"]) for r in listed] == [(s.id, 1)]
    exported = json.loads(cli("export", s.id))
    assert exported["turns"][0]["reply"] == "answer 0"


def test_print_config_masks_the_store_password() -> None:
    """`mmagent serve --print-config` shows the PostgreSQL URL without its password."""
    from server.config import load_config

    cfg = load_config(None, env={}, overrides={"agent": {"store": {"url": "postgresql://kiosk:s3cret@db:5432/m"}}})
    shown = cfg.masked()["agent"]["store"]["url"]
    assert "s3cret" not in shown and shown == "postgresql://kiosk:***@db:5432/m"
