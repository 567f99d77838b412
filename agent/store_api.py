"""The session store's interface, and the one place that picks an implementation from the config.

Two implementations satisfy :class:`SessionStoreProtocol`:

- :class:`agent.store.SessionStore`: SQLite, one file, the embedded default (one process);
- :class:`agent.store_postgres.PostgresSessionStore`: PostgreSQL, shared by any number of front
  ends (``store.url: postgresql://user@host:port/db``), so any of them can resume any session.

Both write a turn once, when it ends, in one transaction with its session's ``updated_at``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .config import StoreConfig
    from .session import Session, TurnRecord

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@runtime_checkable
class SessionStoreProtocol(Protocol):
    """What the agent, the server and ``mmagent sessions`` need from a session store.

    Every method may be called from any thread; each blocks on I/O (call it from a worker thread
    on an event loop). Unknown or expired ids raise :class:`agent.errors.SessionError`.
    """

    retention_s: float
    store_media: bool

    def create_session(self, session_id: str | None = None, *, pack: str | None = None,
                       meta: dict[str, Any] | None = None, owner: str | None = None) -> Session: ...

    def exists(self, session_id: str) -> bool: ...

    def owner_of(self, session_id: str) -> str | None:
        """The principal that may resume the session (None: stored before owners were)."""
        ...

    def load_dialogue_state(self, session_id: str) -> dict[str, Any]: ...

    def load_session(self, session_id: str) -> Session: ...

    def load_turns(self, session_id: str) -> list[TurnRecord]: ...

    def save_turn(self, session_id: str, t: TurnRecord, *, dialogue_state: dict[str, Any] | None = None) -> None:
        """Write one finished turn (and the session's dialogue state) and touch its session, in one
        transaction."""
        ...

    def set_barge_in(self, session_id: str, turn_id: str, flag: bool = True) -> None: ...

    def delete_session(self, session_id: str) -> None: ...

    def expire(self, now: float | None = None) -> int: ...

    def list_sessions(self, limit: int = 50) -> list[dict[str, Any]]: ...

    def previews(self, session_ids: list[str]) -> dict[str, dict[str, str | None]]:
        """For each session: its first user text and its last reply (``mmagent sessions list``)."""
        ...

    def export(self, session_id: str) -> dict[str, Any]: ...

    def integrity_check(self) -> str: ...

    def close(self) -> None: ...


def is_postgres_url(target: str | None) -> bool:
    return bool(target) and str(target).startswith(POSTGRES_SCHEMES)


def store_target(config: StoreConfig) -> str:
    """The configured store: a PostgreSQL URL (``store.url``, else ``MMAGENT_SESSIONS_URL``) or
    the SQLite file's path."""
    url = config.url or os.environ.get("MMAGENT_SESSIONS_URL")
    return url if url else str(config.resolved_path())


def open_store(config: StoreConfig) -> SessionStoreProtocol:
    """The store ``config`` names: PostgreSQL for a ``postgresql://`` URL, else SQLite."""
    target = store_target(config)
    if is_postgres_url(target):
        from .store_postgres import PostgresSessionStore

        return PostgresSessionStore(target, retention_days=config.retention_days,
                                    store_media=config.store_media, pool_size=config.pool_size)
    from .store import SessionStore

    return SessionStore(target, retention_days=config.retention_days, store_media=config.store_media)
