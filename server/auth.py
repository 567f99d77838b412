"""Who a connection is, and where it may come from: principals, Host and Origin checks.

A *principal* is what owns a session. With no API tokens configured every client is the one
principal ``"local"``; with tokens, a token's principal is ``tok_`` + the first 16 hex digits of
HMAC-SHA256(key, token), the key a random secret kept in ``<state_dir>/principal.key`` (made on
first start, mode 0600). The store and the logs only ever see principals, never tokens, and a
principal cannot be turned back into its token without that key.

DNS rebinding: a web page on ``http://evil.example:PORT`` whose name the attacker re-points at
127.0.0.1 reaches a loopback server with ``Host: evil.example:PORT`` and a matching Origin, so a
same-host Origin check is not enough. Without an explicit ``allowed_origins``, a server bound to
loopback therefore accepts only loopback Host names (``127.0.0.1`` and the rest of 127/8,
``localhost``, ``[::1]``, any port) and only loopback Origins (or none), on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

LOCAL_PRINCIPAL = "local"
KEY_FILE = "principal.key"


def load_key(state_dir: str | os.PathLike[str]) -> bytes:
    """The principal key of this state folder (created on first use, readable by the owner only)."""
    path = Path(state_dir) / KEY_FILE
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    try:   # two servers starting at once on one folder: the first key written wins
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def principal_of(token: str | None, key: bytes, *, tokens_configured: bool) -> str:
    """The principal of an authenticated connection (``token`` already checked)."""
    if not tokens_configured or not token:
        return LOCAL_PRINCIPAL
    return "tok_" + hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:16]


def is_loopback_host(host: str) -> bool:
    """``host`` (a name or address, without port; IPv6 with or without brackets) is loopback."""
    h = host.strip().lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h in ("localhost", "::1", "0:0:0:0:0:0:0:1") or h.endswith(".localhost"):
        return True
    parts = h.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and int(p) < 256 for p in parts)


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header value, without its port (``[::1]:8765`` → ``[::1]``)."""
    value = host_header.strip()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end > 0 else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_loopback_origin(origin: str) -> bool:
    """An ``http(s)://`` Origin whose host is loopback."""
    try:
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.hostname is not None \
            and is_loopback_host(parts.hostname)
    except ValueError:
        return False


def request_allowed(*, bound_to_loopback: bool, allowed_origins: list[str], host: str | None,
                    origin: str | None, upgrade: bool) -> str | None:
    """None when the request may go on, else the error code (``host_not_allowed`` or
    ``origin_not_allowed``). See the module docstring and docs/protocol.md ("Origin and Host")."""
    if allowed_origins:   # the operator's allowlist decides
        if origin is None or "*" in allowed_origins or origin in allowed_origins:
            return None
        return "origin_not_allowed" if upgrade else None
    if bound_to_loopback:
        if host is None or not is_loopback_host(host_name(host)):
            return "host_not_allowed"
        if origin is not None and not is_loopback_origin(origin):   # "null" (a sandboxed frame) too
            return "origin_not_allowed"
        return None
    if upgrade and origin is not None:
        try:
            same = urlsplit(origin).netloc == (host or "")
        except ValueError:
            same = False
        return None if same else "origin_not_allowed"
    return None
