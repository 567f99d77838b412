"""Errors of the server layer: one ``ProtocolError`` per wire problem, each with a stable code.

Codes, error types and close codes are listed in ``docs/protocol.md`` ("Errors"); the constants
live in :mod:`server.protocol`. A ``ProtocolError`` becomes an ``error`` event; when ``close_code``
is set the session is closed with it after that event.
"""

from __future__ import annotations

from perception.errors import MMAgentError


class ProtocolError(MMAgentError):
    """A client event the server cannot accept (bad input, out of order, a limit exceeded)."""

    code = "invalid_request"

    def __init__(self, code: str, message: str, *, param: str | None = None,
                 event_id: str | None = None, close_code: int | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param
        self.event_id = event_id
        self.close_code = close_code
