"""PostgreSQL session store (psycopg 3 + psycopg-pool): the same tables and guarantees as SQLite.

Several front ends share one database, so any of them can resume any session. Like the SQLite
store, a turn is written once, when it ends, in one transaction with its session's
``updated_at``: a front end that dies mid-turn loses at most that turn (the server rolls back
the open transaction when its connection drops) and never touches earlier ones.

Schema migrations are a numbered list of SQL steps (:data:`MIGRATIONS`); the version reached is
kept in ``mmagent_schema``. Every store that opens runs the steps it has not seen, in one
transaction under a PostgreSQL advisory lock, so two front ends starting at once never apply a
step twice, and a failing step leaves the schema as it was. Add a step; never edit an old one.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from .errors import SessionError, StoreError
from .session import Session, TurnRecord, new_session_id
from .store import turn_blobs, turn_from_row

# (version, SQL) in order. Version 1 mirrors agent/store.py's SQLite schema version 1.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    pack TEXT,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE turns (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    turn_id TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL,
    text TEXT,
    typed_text TEXT,
    transcript TEXT,
    data TEXT NOT NULL,
    fused_vector BYTEA,
    media BYTEA,
    barge_in BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (session_id, idx)
);
CREATE INDEX sessions_updated ON sessions(updated_at);
"""),
    # The principal that created the session (the SQLite store's schema 2); NULL for older ones.
    (2, "ALTER TABLE sessions ADD COLUMN owner TEXT"),
    # The dialogue manager's state of a session, written with each turn.
    (3, """
CREATE TABLE dialogue_state (
    session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    updated_at DOUBLE PRECISION
);
"""),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
# pg_advisory_xact_lock key: "mmagent" in ASCII, so other applications' locks never collide.
_MIGRATION_LOCK = 0x6D6D6167656E74


def migrate(conn: Any) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` (idempotent, safe to run concurrently);
    return the version found before. ``conn``: a psycopg connection, not in a transaction."""
    from psycopg.rows import tuple_row

    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        cur.execute("CREATE TABLE IF NOT EXISTS mmagent_schema (version INTEGER NOT NULL)")
        row = cur.execute("SELECT version FROM mmagent_schema").fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise StoreError(f"the database's schema is version {found}, newer than this code's "
                             f"{SCHEMA_VERSION}: upgrade mmagent before pointing it at this database")
        for version, sql in MIGRATIONS:
            if version > found:
                cur.execute(sql)
        if row is None:
            cur.execute("INSERT INTO mmagent_schema(version) VALUES (%s)", (SCHEMA_VERSION,))
        else:
            cur.execute("UPDATE mmagent_schema SET version=%s", (SCHEMA_VERSION,))
    return found


class PostgresSessionStore:
    """Sessions and turns in PostgreSQL; satisfies :class:`agent.store_api.SessionStoreProtocol`."""

    shared = True   # several processes write it: the agent resumes sessions from here, not memory

    def __init__(self, url: str, *, retention_days: float = 30.0, store_media: bool = False,
                 pool_size: int = 8, connect_timeout_s: float = 10.0) -> None:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.url = url
        self.retention_s = retention_days * 86400.0
        self.store_media = store_media
        self._errors: tuple[type[BaseException], ...] = (psycopg.OperationalError,)
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=False, timeout=connect_timeout_s,
                                    kwargs={"row_factory": dict_row, "autocommit": True},
                                    name="mmagent-sessions")
        self._closed = threading.Event()
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except Exception as exc:   # PoolTimeout: the server is down or refuses us
            self._pool.close()
            raise StoreError(f"cannot connect to the session store at {_redact(url)}: {exc}") from exc
        with self._connection() as conn:
            migrate(conn)
        self.expire()

    def _connection(self) -> Any:
        """A pooled connection (autocommit: each statement is its own transaction unless wrapped
        in ``conn.transaction()``); a dropped server becomes :class:`StoreError`."""
        return _Checkout(self)

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._pool.close()

    # -- sessions -------------------------------------------------------------------------------

    def create_session(self, session_id: str | None = None, *, pack: str | None = None,
                       meta: dict[str, Any] | None = None, owner: str | None = None) -> Session:
        """A new session; ``owner``: the principal that may resume it."""
        sid = session_id or new_session_id()
        now = time.time()
        with self._connection() as conn:
            conn.execute("INSERT INTO sessions(id, created_at, updated_at, pack, meta, owner)"
                         " VALUES (%s,%s,%s,%s,%s,%s)", (sid, now, now, pack, json.dumps(meta or {}), owner))
        return Session(sid, created_at=now, store=self, meta=meta)

    def owner_of(self, session_id: str) -> str | None:
        """The owner of a live session (None: created before owners were stored); an unknown or
        expired id raises :class:`SessionError`."""
        with self._connection() as conn:
            row = conn.execute("SELECT owner, updated_at FROM sessions WHERE id=%s", (session_id,)).fetchone()
        if row is None or row["updated_at"] < time.time() - self.retention_s:
            raise SessionError(f"unknown session id {session_id!r}")
        return None if row["owner"] is None else str(row["owner"])

    def load_dialogue_state(self, session_id: str) -> dict[str, Any]:
        """The dialogue manager's stored state of a session ({} if none yet)."""
        with self._connection() as conn:
            row = conn.execute("SELECT state FROM dialogue_state WHERE session_id=%s", (session_id,)).fetchone()
        return dict(json.loads(row["state"])) if row is not None else {}

    def exists(self, session_id: str) -> bool:
        with self._connection() as conn:
            return conn.execute("SELECT 1 FROM sessions WHERE id=%s", (session_id,)).fetchone() is not None

    def load_session(self, session_id: str) -> Session:
        """The session with all its turns; :class:`SessionError` if unknown or expired."""
        with self._connection() as conn, conn.transaction():   # one snapshot: the row and its turns
            row = conn.execute("SELECT * FROM sessions WHERE id=%s", (session_id,)).fetchone()
            if row is None:
                raise SessionError(f"unknown session id {session_id!r}")
            if row["updated_at"] < time.time() - self.retention_s:
                expired = True
            else:
                expired = False
                turns = self._turns(conn, session_id)
                state = conn.execute("SELECT state FROM dialogue_state WHERE session_id=%s",
                                     (session_id,)).fetchone()
        if expired:
            self.delete_session(session_id)
            raise SessionError(f"session {session_id!r} expired")
        session = Session(session_id, created_at=row["created_at"], turns=turns, store=self,
                          meta=json.loads(row["meta"] or "{}"))
        session.dialogue_state = dict(json.loads(state["state"])) if state is not None else {}
        return session

    def load_turns(self, session_id: str) -> list[TurnRecord]:
        with self._connection() as conn:
            return self._turns(conn, session_id)

    def _turns(self, conn: Any, session_id: str) -> list[TurnRecord]:
        rows = conn.execute("SELECT * FROM turns WHERE session_id=%s ORDER BY idx", (session_id,)).fetchall()
        return [turn_from_row(r) for r in rows]

    def save_turn(self, session_id: str, t: TurnRecord, *, dialogue_state: dict[str, Any] | None = None) -> None:
        """Write one finished turn and touch its session, in one transaction (with the session's
        dialogue state after the turn, when given)."""
        data, vec, media = turn_blobs(t, self.store_media)
        with self._connection() as conn, conn.transaction():
            # SQLite's INSERT OR REPLACE: a row with the same (session, index) or turn id is replaced.
            conn.execute("DELETE FROM turns WHERE (session_id=%s AND idx=%s) OR turn_id=%s",
                         (session_id, t.index, t.turn_id))
            conn.execute(
                "INSERT INTO turns(session_id, idx, turn_id, created_at, status, text, typed_text,"
                " transcript, data, fused_vector, media, barge_in)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (session_id, t.index, t.turn_id, t.created_at, t.status, t.text, t.typed_text, t.transcript,
                 data, vec, media, bool(t.barge_in)))
            conn.execute("UPDATE sessions SET updated_at=%s WHERE id=%s", (time.time(), session_id))
            if dialogue_state is not None:
                conn.execute("INSERT INTO dialogue_state(session_id, state, updated_at) VALUES (%s,%s,%s)"
                             " ON CONFLICT (session_id) DO UPDATE SET state=EXCLUDED.state,"
                             " updated_at=EXCLUDED.updated_at", (session_id, json.dumps(dialogue_state), time.time()))

    def set_barge_in(self, session_id: str, turn_id: str, flag: bool = True) -> None:
        with self._connection() as conn:
            conn.execute("UPDATE turns SET barge_in=%s WHERE session_id=%s AND turn_id=%s",
                         (bool(flag), session_id, turn_id))

    def delete_session(self, session_id: str) -> None:
        with self._connection() as conn:
            conn.execute("DELETE FROM sessions WHERE id=%s", (session_id,))   # turns: ON DELETE CASCADE

    def expire(self, now: float | None = None) -> int:
        """Delete sessions idle for longer than the retention; return how many."""
        cutoff = (now if now is not None else time.time()) - self.retention_s
        with self._connection() as conn:
            cur = conn.execute("DELETE FROM sessions WHERE updated_at < %s", (cutoff,))
            return int(cur.rowcount or 0)

    # -- operators --------------------------------------------------------------------------------

    def list_sessions(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT s.id, s.created_at, s.updated_at, s.pack, s.owner, COUNT(t.idx) AS turns FROM sessions s"
                " LEFT JOIN turns t ON t.session_id = s.id GROUP BY s.id ORDER BY s.updated_at DESC LIMIT %s",
                (limit,)).fetchall()
        return [dict(r) for r in rows]

    def previews(self, session_ids: list[str]) -> dict[str, dict[str, str | None]]:
        """For each session: its first user text and its last reply (``mmagent sessions list``)."""
        out: dict[str, dict[str, str | None]] = {}
        with self._connection() as conn:
            for sid in session_ids:
                first = conn.execute("SELECT COALESCE(text, transcript, typed_text) AS t FROM turns"
                                     " WHERE session_id=%s ORDER BY idx LIMIT 1", (sid,)).fetchone()
                last = conn.execute("SELECT data::json->>'reply' AS r FROM turns WHERE session_id=%s"
                                    " AND COALESCE(data::json->>'reply', '') != '' ORDER BY idx DESC LIMIT 1",
                                    (sid,)).fetchone()
                out[sid] = {"first_text": first["t"] if first else None, "last_reply": last["r"] if last else None}
        return out

    def export(self, session_id: str) -> dict[str, Any]:
        """The whole session as JSON-ready data (what ``mmagent sessions export`` prints)."""
        with self._connection() as conn:
            row = conn.execute("SELECT * FROM sessions WHERE id=%s", (session_id,)).fetchone()
            if row is None:
                raise SessionError(f"unknown session id {session_id!r}")
            turns = self._turns(conn, session_id)
        return {"id": row["id"], "created_at": row["created_at"], "updated_at": row["updated_at"],
                "pack": row["pack"], "owner": row["owner"], "meta": json.loads(row["meta"] or "{}"),
                "turns": [t.to_json() for t in turns]}

    def integrity_check(self) -> str:
        """"ok" when the schema is at this code's version and no turn lacks its session (the
        server keeps its own files consistent; this checks what the application relies on)."""
        with self._connection() as conn:
            version = conn.execute("SELECT version FROM mmagent_schema").fetchone()["version"]
            orphans = conn.execute("SELECT COUNT(*) AS n FROM turns t LEFT JOIN sessions s"
                                   " ON s.id = t.session_id WHERE s.id IS NULL").fetchone()["n"]
        if version != SCHEMA_VERSION:
            return f"schema version {version}, expected {SCHEMA_VERSION}"
        return "ok" if orphans == 0 else f"{orphans} turns without a session"

    def schema_version(self) -> int:
        with self._connection() as conn:
            return int(conn.execute("SELECT version FROM mmagent_schema").fetchone()["version"])


class _Checkout:
    """``with store._connection() as conn``: a pooled connection; connection failures become
    :class:`StoreError` (a clear error on the wire rather than a psycopg traceback)."""

    def __init__(self, store: PostgresSessionStore) -> None:
        self.store = store
        self._cm: Any = None

    def __enter__(self) -> Any:
        if self.store._closed.is_set():
            raise StoreError("the session store is closed")
        self._cm = self.store._pool.connection()
        try:
            return self._cm.__enter__()
        except Exception as exc:
            raise StoreError(f"session store unavailable: {exc}") from exc

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        try:
            self._cm.__exit__(et, ev, tb)
        except self.store._errors as exc:
            raise StoreError(f"session store unavailable: {exc}") from exc
        if ev is not None and isinstance(ev, self.store._errors):
            raise StoreError(f"session store unavailable: {ev}") from ev


def _redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
