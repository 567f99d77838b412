"""Errors of the agent layer (drawn in the tree of :mod:`perception.errors`)."""

from __future__ import annotations

from perception.errors import MMAgentError


class PackError(MMAgentError):
    """A knowledge pack fails validation; the message names the file and the field."""

    code = "invalid_pack"

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        where = ": ".join(p for p in (file, field) if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.field = field


class ResponderError(MMAgentError):
    """A language-model backend failed, stalled past its timeout or broke its stream."""

    code = "responder_failed"


class ActionError(MMAgentError):
    """An action's name is unknown to the pack or its arguments fail the pack's JSON Schema."""

    code = "invalid_action"


class SessionError(MMAgentError):
    """An unknown or expired session id."""

    code = "session_not_found"


class StoreError(MMAgentError):
    """The session store's server cannot be reached or refused a statement (PostgreSQL)."""

    code = "store_unavailable"
