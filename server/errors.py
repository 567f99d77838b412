"""Errors of the server layer: one ``ProtocolError`` per wire problem, each with a stable code.

Codes, error types and close codes are listed in ``docs/protocol.md`` ("Errors"); the constants
live in :mod:`server.protocol`. A ``ProtocolError`` becomes an ``error`` event; when ``close_code``
is set the session is closed with it after that event.
"""

from __future__ import annotations

import logging
import re

from perception.errors import MMAgentError

log = logging.getLogger(__name__)

# What must never reach a client: object reprs and heap addresses, tracebacks, file paths.
_LEAKS = re.compile(
    r"<[^<>]{0,200}\bat 0x[0-9a-fA-F]+>"        # <_io.BytesIO object at 0x7f94…>
    r"|\b0x[0-9a-fA-F]{8,}\b"                   # a bare address
    r"|Traceback \(most recent call last\)|File \"[^\"]+\", line \d+"
    r"|(?:^|[\s'\"(=\[])(?:~|\.{1,2})?/(?:[\w.+\-]+/)+[\w.+\-]*"   # /usr/lib/…, ./x/y, ~/…
    r"|\b[A-Za-z]:\\[\w\\. \-]+")                 # C:\\…
_GENERIC = {
    "invalid_image": "the image could not be decoded (send a JPEG or PNG file)",
    "invalid_audio": "the audio could not be decoded",
    "invalid_text": "the text could not be read",
}


def client_message(code: str, message: str) -> str:
    """``message`` as a client may see it: unchanged when it is written for people, else a
    plain sentence for ``code`` (the original goes to the server log). Every error message
    the server sends passes through here (the codec's error events, refusals, failed turns)."""
    if not _LEAKS.search(message):
        return message
    log.warning("error %s: message withheld from the client: %s", code, message[:2000])
    return _GENERIC.get(code, f"the request failed ({code}); the server log has the details")


class ProtocolError(MMAgentError):
    """A client event the server cannot accept (bad input, out of order, a limit exceeded)."""

    code = "invalid_request"

    def __init__(self, code: str, message: str, *, param: str | None = None,
                 event_id: str | None = None, close_code: int | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param
        self.event_id = event_id
        self.close_code = close_code
