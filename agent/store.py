"""SQLite session store (standard library): WAL mode, one transaction per turn.

A turn is written once, when it ends (completed, cancelled or failed), in a single transaction
with its session's ``updated_at``: a crash mid-turn loses at most that turn and never touches
earlier ones. Each thread gets its own connection, so the store is safe to call from worker
threads (the agent calls it through ``asyncio.to_thread``). Sessions idle longer than the
retention are deleted at open and by :meth:`SessionStore.expire`.

Schema (version 2)::

    sessions(id PK, created_at, updated_at, pack, meta JSON, owner)
    turns(session_id, idx, turn_id UNIQUE, created_at, status, text, typed_text, transcript,
          data JSON (perception, fused, retrieved, reply, actions, timings, ...),
          fused_vector BLOB (float32), media BLOB (JSON, only when configured), barge_in)

``owner`` is the principal that created the session (the server's non-secret id of an API
token, or ``"local"`` when no tokens are configured; never a token itself). Version 2 added
it; a version-1 database is migrated at open (``ALTER TABLE``), its sessions keep owner NULL,
which the server treats as ``"local"``: resumable only while no tokens are configured.
"""

from __future__ import annotations

import array
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .errors import SessionError
from .session import Session, TurnRecord, new_session_id

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    pack TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    owner TEXT
);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    turn_id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    text TEXT,
    typed_text TEXT,
    transcript TEXT,
    data TEXT NOT NULL,
    fused_vector BLOB,
    media BLOB,
    barge_in INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, idx)
);
CREATE INDEX IF NOT EXISTS sessions_updated ON sessions(updated_at);
-- The dialogue manager's state of a session (agent/dialogue.py), written with each turn.
-- Added without a schema version change: CREATE IF NOT EXISTS upgrades older files in place.
CREATE TABLE IF NOT EXISTS dialogue_state (
    session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    updated_at REAL
);
"""
# Fields of TurnRecord kept in the JSON ``data`` column.
_DATA_FIELDS = ("perception", "fused", "route", "retrieved", "reply", "actions", "rejected_actions",
                "timings", "error", "guard", "dialogue")


def turn_from_row(r: Any) -> TurnRecord:
    """A stored turn row (either backend: a mapping with the ``turns`` table's columns) as a TurnRecord."""
    data = json.loads(r["data"])
    vec = None
    if r["fused_vector"] is not None:
        a = array.array("f")
        a.frombytes(bytes(r["fused_vector"]))
        vec = a.tolist()
    media = json.loads(bytes(r["media"])) if r["media"] is not None else None
    return TurnRecord(turn_id=r["turn_id"], index=r["idx"], created_at=r["created_at"], status=r["status"],
                      text=r["text"] or "", typed_text=r["typed_text"], transcript=r["transcript"],
                      fused_vector=vec, barge_in=bool(r["barge_in"]), media=media,
                      **{k: data[k] for k in _DATA_FIELDS if k in data})


def turn_blobs(t: TurnRecord, store_media: bool) -> tuple[str, bytes | None, bytes | None]:
    """The encoded columns of a turn: its data JSON, fused vector (float32 bytes) and media JSON."""
    data = json.dumps({k: getattr(t, k) for k in _DATA_FIELDS}, default=str)
    vec = array.array("f", t.fused_vector).tobytes() if t.fused_vector is not None else None
    media = json.dumps(t.media).encode() if (store_media and t.media is not None) else None
    return data, vec, media


class SessionStore:
    """Sessions and turns in one SQLite file (created with its folder if missing)."""

    def __init__(self, path: str | Path, *, retention_days: float = 30.0, store_media: bool = False) -> None:
        self.path = Path(path)
        self.retention_s = retention_days * 86400.0
        self.store_media = store_media
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        with conn:
            conn.executescript(_SCHEMA)
            self._migrate(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.expire()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring an older database up to SCHEMA_VERSION (tables are created IF NOT EXISTS, so a
        column added since must be added here)."""
        columns = {r[1] for r in conn.execute("PRAGMA table_info(sessions)")}
        if "owner" not in columns:   # version 1 → 2: sessions.owner (NULL for older sessions)
            conn.execute("ALTER TABLE sessions ADD COLUMN owner TEXT")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            conn.execute("PRAGMA foreign_keys=ON")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        with self._all_lock:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except sqlite3.ProgrammingError:  # made in another thread; it is closed when that thread ends
                pass
        self._local = threading.local()

    # -- sessions -------------------------------------------------------------------------------

    def create_session(self, session_id: str | None = None, *, pack: str | None = None,
                       meta: dict[str, Any] | None = None, owner: str | None = None) -> Session:
        """A new session; ``owner``: the principal that may resume it (see the module docstring)."""
        sid = session_id or new_session_id()
        now = time.time()
        conn = self._conn()
        with conn:
            conn.execute("INSERT INTO sessions(id, created_at, updated_at, pack, meta, owner) VALUES (?,?,?,?,?,?)",
                         (sid, now, now, pack, json.dumps(meta or {}), owner))
        return Session(sid, created_at=now, store=self, meta=meta)

    def exists(self, session_id: str) -> bool:
        return self._conn().execute("SELECT 1 FROM sessions WHERE id=?", (session_id,)).fetchone() is not None

    def owner_of(self, session_id: str) -> str | None:
        """The owner of a live session (None: created before owners were stored). One indexed
        read and no turns, so a caller can check the owner before loading anything; an unknown
        or expired id raises :class:`SessionError`."""
        row = self._conn().execute("SELECT owner, updated_at FROM sessions WHERE id=?", (session_id,)).fetchone()
        if row is None or row["updated_at"] < time.time() - self.retention_s:
            raise SessionError(f"unknown session id {session_id!r}")
        return row["owner"] if row["owner"] is None else str(row["owner"])

    def load_session(self, session_id: str) -> Session:
        """The session with all its turns; :class:`SessionError` if unknown or expired."""
        row = self._conn().execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()
        if row is None:
            raise SessionError(f"unknown session id {session_id!r}")
        if row["updated_at"] < time.time() - self.retention_s:
            self.delete_session(session_id)
            raise SessionError(f"session {session_id!r} expired")
        session = Session(session_id, created_at=row["created_at"], turns=self.load_turns(session_id),
                          store=self, meta=json.loads(row["meta"] or "{}"))
        session.dialogue_state = self.load_dialogue_state(session_id)
        return session

    def load_dialogue_state(self, session_id: str) -> dict[str, Any]:
        """The dialogue manager's stored state of a session ({} if none yet)."""
        row = self._conn().execute("SELECT state FROM dialogue_state WHERE session_id=?", (session_id,)).fetchone()
        return dict(json.loads(row["state"])) if row is not None else {}

    def load_turns(self, session_id: str) -> list[TurnRecord]:
        rows = self._conn().execute("SELECT * FROM turns WHERE session_id=? ORDER BY idx", (session_id,)).fetchall()
        return [turn_from_row(r) for r in rows]

    def save_turn(self, session_id: str, t: TurnRecord, *, dialogue_state: dict[str, Any] | None = None) -> None:
        """Write one finished turn and touch its session, in one transaction (with the session's
        dialogue state after the turn, when given)."""
        data, vec, media = turn_blobs(t, self.store_media)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT OR REPLACE INTO turns(session_id, idx, turn_id, created_at, status, text, typed_text,"
                " transcript, data, fused_vector, media, barge_in) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (session_id, t.index, t.turn_id, t.created_at, t.status, t.text, t.typed_text, t.transcript,
                 data, vec, media, int(t.barge_in)))
            conn.execute("UPDATE sessions SET updated_at=? WHERE id=?", (time.time(), session_id))
            if dialogue_state is not None:
                conn.execute("INSERT OR REPLACE INTO dialogue_state(session_id, state, updated_at) VALUES (?,?,?)",
                             (session_id, json.dumps(dialogue_state), time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def set_barge_in(self, session_id: str, turn_id: str, flag: bool = True) -> None:
        conn = self._conn()
        with conn:
            conn.execute("UPDATE turns SET barge_in=? WHERE session_id=? AND turn_id=?",
                         (int(flag), session_id, turn_id))

    def delete_session(self, session_id: str) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM turns WHERE session_id=?", (session_id,))
        conn.execute("DELETE FROM dialogue_state WHERE session_id=?", (session_id,))
        conn.execute("DELETE FROM sessions WHERE id=?", (session_id,))
        conn.execute("COMMIT")

    def expire(self, now: float | None = None) -> int:
        """Delete sessions idle for longer than the retention; return how many."""
        cutoff = (now if now is not None else time.time()) - self.retention_s
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [r[0] for r in conn.execute("SELECT id FROM sessions WHERE updated_at < ?", (cutoff,))]
            for sid in ids:
                conn.execute("DELETE FROM turns WHERE session_id=?", (sid,))
                conn.execute("DELETE FROM dialogue_state WHERE session_id=?", (sid,))
                conn.execute("DELETE FROM sessions WHERE id=?", (sid,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(ids)

    # -- operators --------------------------------------------------------------------------------

    def list_sessions(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT s.id, s.created_at, s.updated_at, s.pack, s.owner, COUNT(t.idx) AS turns FROM sessions s"
            " LEFT JOIN turns t ON t.session_id = s.id GROUP BY s.id ORDER BY s.updated_at DESC LIMIT ?",
            (limit,)).fetchall()
        return [dict(r) for r in rows]

    def previews(self, session_ids: list[str]) -> dict[str, dict[str, str | None]]:
        """For each session: its first user text and its last reply (``mmagent sessions list``)."""
        out: dict[str, dict[str, str | None]] = {}
        conn = self._conn()
        for sid in session_ids:
            first = conn.execute("SELECT COALESCE(text, transcript, typed_text) FROM turns WHERE session_id=?"
                                 " ORDER BY idx LIMIT 1", (sid,)).fetchone()
            last = conn.execute("SELECT json_extract(data, '$.reply') FROM turns WHERE session_id=?"
                                " AND COALESCE(json_extract(data, '$.reply'), '') != '' ORDER BY idx DESC LIMIT 1",
                                (sid,)).fetchone()
            out[sid] = {"first_text": first[0] if first else None, "last_reply": last[0] if last else None}
        return out

    def export(self, session_id: str) -> dict[str, Any]:
        """The whole session as JSON-ready data (what ``mmagent sessions export`` prints)."""
        row = self._conn().execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()
        if row is None:
            raise SessionError(f"unknown session id {session_id!r}")
        return {"id": row["id"], "created_at": row["created_at"], "updated_at": row["updated_at"],
                "pack": row["pack"], "owner": row["owner"], "meta": json.loads(row["meta"] or "{}"),
                "turns": [t.to_json() for t in self.load_turns(session_id)]}

    def integrity_check(self) -> str:
        return str(self._conn().execute("PRAGMA integrity_check").fetchone()[0])
