"""Hardening of the real server (issue 11): session ownership, Origin/Host, input hygiene, one
budget for every way data enters, slow clients, overload. A real server on a loopback port."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.conftest import ARTIFACTS, start_server

pytestmark = pytest.mark.slow


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def recv_json(ws: Any, timeout: float = 30.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return dict(json.loads(await ws.recv()))


async def until(ws: Any, type_: str, timeout: float = 120.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            ev = json.loads(await ws.recv())
            out.append(ev)
            if ev["type"] == type_:
                return out


def typed(text: str) -> str:
    return json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})


RESPOND = json.dumps({"type": "response.create"})


@pytest.fixture(scope="module")
def two_token_server() -> Any:
    srv = start_server(tokens=["token-a-secret", "token-b-secret"],
                       state_dir=str(ARTIFACTS / "hardening_state"))
    yield srv
    srv.stop()


# ---- 1. session ownership ------------------------------------------------------------------------

def test_another_token_cannot_resume_a_session(two_token_server: Any) -> None:
    """The issue's reproduction: B resumes A's id → exactly what an unknown id gets; A's connection
    stays open and A's history is unchanged; A itself can still resume."""
    base = two_token_server.ws_url

    async def main() -> None:
        a = await connect(base + "?token=token-a-secret")
        created = await recv_json(a)
        sid = created["session"]["id"]
        assert len(sid) >= len("sess_") + 32            # 128 random bits, hex
        await a.send(typed("my order number is 4417, where is the pharmacy?"))
        await a.send(RESPOND)
        await until(a, "response.done")
        store = two_token_server.server.engine.agent.store
        before = [t.to_json() for t in store.load_turns(sid)]
        assert len(before) == 1

        async def refused(session_id: str) -> tuple[dict[str, Any], dict[str, Any], float]:
            t0 = time.perf_counter()
            b = await connect(base + f"?token=token-b-secret&session_id={session_id}")
            got = await recv_json(b)
            err = await recv_json(b)
            took = time.perf_counter() - t0
            await b.send(typed("what is my order number?"))
            await b.send(RESPOND)
            done = await until(b, "response.done")
            assert "4417" not in json.dumps(done)
            await b.close()
            return got, err, took

        got, err, _ = await refused(sid)
        assert got["session"]["id"] != sid and got["session"]["resumed"] is False
        assert err["error"]["code"] == "session_not_found"
        unknown_got, unknown_err, _ = await refused("sess_" + "0" * 32)
        assert unknown_got["session"]["resumed"] is False
        # The same code and the same message, but for the id echoed back and the new id.
        assert unknown_err["error"]["code"] == err["error"]["code"]
        def shape(message: str) -> str:
            return re.sub(r"sess_[0-9a-f]+", "sess_X", message)

        assert shape(unknown_err["error"]["message"]) == shape(err["error"]["message"])
        assert unknown_err["error"]["type"] == err["error"]["type"]
        # A's connection was not replaced: it still answers.
        await a.send(typed("thank you"))
        await a.send(RESPOND)
        evs = await until(a, "response.done")
        assert not any(e["type"] == "error" and e["error"]["code"] == "session_replaced" for e in evs)
        after = [t.to_json() for t in store.load_turns(sid)]
        assert after[:1] == before and len(after) == 2
        assert all("order number?" not in t["text"] for t in after)
        await a.close()
        # The owner resumes it.
        again = await connect(base + f"?token=token-a-secret&session_id={sid}")
        resumed = await recv_json(again)
        assert resumed["session"]["id"] == sid and resumed["session"]["resumed"] is True
        await again.close()
        owners = {s["id"]: s["owner"] for s in store.list_sessions(500)}
        assert owners[sid].startswith("tok_") and "token-a-secret" not in json.dumps(owners)

    run(main())


def test_store_migrates_version_1_databases(tmp_path: Path) -> None:
    """A version-1 database (no owner column) opens, gains the column, keeps its sessions with
    owner NULL; the no-token principal may resume them, a token principal may not."""
    from agent.errors import SessionError
    from agent.store import SessionStore

    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE sessions (id TEXT PRIMARY KEY, created_at REAL NOT NULL, updated_at REAL NOT NULL,
                               pack TEXT, meta TEXT NOT NULL DEFAULT '{}');
        PRAGMA user_version = 1;""")
    now = time.time()
    conn.execute("INSERT INTO sessions VALUES ('sess_old', ?, ?, 'demo', '{}')", (now, now))
    conn.commit()
    conn.close()
    store = SessionStore(db)
    assert store._conn().execute("PRAGMA user_version").fetchone()[0] == 2
    assert store.owner_of("sess_old") is None
    assert store.list_sessions()[0]["owner"] is None
    new = store.create_session(owner="tok_abc")
    assert store.owner_of(new.id) == "tok_abc"
    with pytest.raises(SessionError):
        store.owner_of("sess_missing")
    store.close()


# ---- 2. Origin and Host ------------------------------------------------------------------------------

def raw_handshake(port: int, host: str, origin: str | None, path: str = "/v1/realtime") -> tuple[int, bytes]:
    """Send a WebSocket upgrade with these Host and Origin headers; (HTTP status, rest)."""
    import base64
    import os
    import socket

    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        if b"\r\n\r\n" in data and not data.startswith(b"HTTP/1.1 101"):
            head = data.split(b"\r\n\r\n", 1)[0].decode()
            length = int(next((ln.split(":")[1] for ln in head.split("\r\n") if ln.lower().startswith(
                "content-length:")), "0"))
            while len(data.split(b"\r\n\r\n", 1)[1]) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_dns_rebinding_is_refused(mm_server: Any) -> None:
    """Bound to loopback without allowed_origins: a foreign Host (the DNS-rebinding request) is
    refused with 403 host_not_allowed, on the WebSocket and on plain HTTP; a foreign Origin with a
    loopback Host is refused too; loopback names with any port and no Origin are served."""
    port = mm_server.server.port
    status, body = raw_handshake(port, f"evil.example:{port}", f"http://evil.example:{port}")
    assert status == 403 and b"host_not_allowed" in body
    status, body = raw_handshake(port, f"evil.example:{port}", None, path="/metrics")
    assert status == 403 and b"host_not_allowed" in body
    status, body = raw_handshake(port, f"127.0.0.1:{port}", f"http://evil.example:{port}")
    assert status == 403 and b"origin_not_allowed" in body
    status, _ = raw_handshake(port, f"127.0.0.1:{port}", "null")
    assert status == 403
    for host, origin in ((f"127.0.0.1:{port}", None), (f"localhost:{port}", f"http://localhost:{port}"),
                         (f"[::1]:{port}", f"http://[::1]:{port}"), ("localhost", "http://127.0.0.1:9999")):
        status, _ = raw_handshake(port, host, origin)
        assert status == 101, (host, origin, status)


# ---- 3. input hygiene ----------------------------------------------------------------------------------

LEAK = re.compile(r"0x[0-9a-fA-F]{6,}|<[^<>]* at 0x|Traceback|File \"|(?:^|\s)/(?:[\w.\-]+/)+")


def png_declaring(w: int, h: int) -> bytes:
    """A real 1x1 PNG whose IHDR is patched to declare w x h (CRC fixed): tiny, huge when decoded."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def test_bad_input_gets_a_code_a_readable_message_and_the_session_lives(mm_server: Any) -> None:
    """Lone surrogates in any text field → invalid_text; deep nesting in a text event or a binary
    header → invalid_event; an undecodable or over-budget image → a message without reprs or
    paths; never a 1011, and the session answers afterwards."""
    import base64
    import struct

    def binary(header: bytes, payload: bytes = b"") -> bytes:
        return struct.pack(">H", len(header)) + header + payload

    deep = '{"type":"session.update","session":' + '{"a":' * 60 + '1' + '}' * 61
    deep_header = b'{"type":"input_image_buffer.append","x":' + b"[" * 3000 + b"]" * 3000 + b"}"
    bad_png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
    huge = png_declaring(6000, 6000)
    cases: list[tuple[str | bytes, str]] = [
        ('{"type":"conversation.item.create","item":{"type":"message","role":"user","content":'
         '[{"type":"input_text","text":"hi \\ud800 there"}]}}', "invalid_text"),
        ('{"type":"session.update","session":{"instructions":"\\udfff"}}', "invalid_text"),
        ('{"type":"response.create","response":{"metadata":{"\\ud800":"x"}}}', "invalid_text"),
        ('{"type":"input_audio_buffer.commit","event_id":"\\ud800"}', "invalid_text"),
        (deep, "invalid_event"),
        ("[" * 100_000, "invalid_event"),
        (binary(deep_header), "invalid_event"),
        (binary(b'{"type":"input_image_buffer.append","event_id":"\\ud800"}', bad_png), "invalid_text"),
        (binary(b'{"type":"input_image_buffer.append"}', bad_png), "invalid_image"),
        (json.dumps({"type": "input_image_buffer.append", "image": base64.b64encode(huge).decode()}),
         "image_too_large"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64," + base64.b64encode(huge).decode()}]}}),
         "image_too_large"),
    ]

    async def main() -> None:
        async with connect(mm_server.ws_url, max_size=None) as ws:
            await recv_json(ws)
            for message, code in cases:
                await ws.send(message)
                ev = await recv_json(ws)
                assert ev["type"] == "error" and ev["error"]["code"] == code, (str(message)[:80], ev)
                assert not LEAK.search(ev["error"]["message"]), ev
            await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "be brief"}}))
            assert (await recv_json(ws))["type"] == "session.updated"

    run(main())


def test_perception_refuses_an_over_budget_png_before_decoding() -> None:
    """The library check: max_decoded_pixels from the header; the message names no object."""
    from perception import PerceptionConfig
    from perception.errors import ImageTooLargeError, InvalidImageError
    from perception.images import load_image

    with pytest.raises(ImageTooLargeError) as info:
        load_image(png_declaring(6000, 6000), PerceptionConfig())
    assert "max_decoded_pixels" in str(info.value)
    with pytest.raises(InvalidImageError) as bad:
        load_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, PerceptionConfig())
    assert not LEAK.search(str(bad.value)), str(bad.value)


def test_eval_of_a_text_only_manifest(tmp_path: Path) -> None:
    """`mmagent eval --manifest` on text rows only: scores for text, "n/a" where nothing was scored."""
    import subprocess
    import sys

    rows = [{"id": f"r{i}", "text": t, "intent": it} for i, (t, it) in enumerate(
        [("where are the batteries", "find_product"), ("hello there", "greeting"), ("thanks, bye", "goodbye")])]
    manifest = tmp_path / "text.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([sys.executable, "-m", "server.cli", "eval", "--manifest", str(manifest),
                          "--out-dir", str(tmp_path / "ev")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    table = (tmp_path / "ev" / "eval.md").read_text()
    assert "| speech | 0 | n/a" in table
    scores = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert "NaN" not in json.dumps(scores)


# ---- 4. one budget for every way data enters ----------------------------------------------------------

def test_inline_audio_and_images_share_the_append_budgets(mm_server: Any) -> None:
    """Defaults: audio burst 60 s, frames 5/s burst 5, 8 pending images. Inline audio: 3 x 20 s
    fills the burst, the 4th 20 s in the same second is audio_rate_exceeded; after a 20 s append
    the 3rd inline 20 s already is. 100 inline 1.4 MB images sent at once: the frame budget
    refuses most, and never more than max_pending_images wait."""
    import base64
    import os

    def audio_item(seconds: float) -> str:
        pcm = (os.urandom(2) * int(24000 * seconds))   # 24 kHz PCM16, a constant tone
        return json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                           "content": [{"type": "input_audio", "audio": base64.b64encode(pcm).decode()}]}})

    async def codes_of(ws: Any, sent: int, settle_s: float = 1.5) -> list[str]:
        """Item ids added and error codes, one per item sent (in order)."""
        out: list[str] = []
        async with asyncio.timeout(120):
            while len(out) < sent:
                ev = json.loads(await ws.recv())
                if ev["type"] == "conversation.item.added":
                    out.append("added")
                elif ev["type"] == "error":
                    out.append(ev["error"]["code"])
        return out

    async def main() -> None:
        off = json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
        async with connect(mm_server.ws_url, max_size=None) as ws:
            await recv_json(ws)
            await ws.send(off)
            await until(ws, "session.updated")
            t0 = time.monotonic()
            for _ in range(4):
                await ws.send(audio_item(20.0))
            assert time.monotonic() - t0 < 1.0
            got = await codes_of(ws, 4)
            assert got[:3] == ["added"] * 3 and got[3] in ("audio_rate_exceeded", "audio_buffer_full"), got
        async with connect(mm_server.ws_url, max_size=None) as ws:
            await recv_json(ws)
            await ws.send(off)
            await until(ws, "session.updated")
            pcm = os.urandom(2) * (24000 * 20)
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))
            for _ in range(3):
                await ws.send(audio_item(20.0))
            got = await codes_of(ws, 3)
            assert got[:2] == ["added"] * 2 and got[2] in ("audio_rate_exceeded", "audio_buffer_full"), got
        # 100 inline images of ~1.4 MB (a real JPEG padded after its end marker is still one JPEG).
        import io

        import numpy as np
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(
            buf, format="JPEG", quality=95)
        jpeg = buf.getvalue() + b"\x00" * max(0, 1_400_000 - len(buf.getvalue()))
        url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        item = json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                           "content": [{"type": "input_image", "image_url": url}]}})
        async with connect(mm_server.ws_url, max_size=None) as ws:
            await recv_json(ws)
            for _ in range(100):
                await ws.send(item)
            got = await codes_of(ws, 100)
            # The burst and what refilled while sending, never more than max_pending_images.
            assert got.count("added") <= 8, got
            assert set(got) <= {"added", "frame_rate_exceeded", "too_many_images"}, set(got)
            assert "frame_rate_exceeded" in got

    run(main())


# ---- 5. slow clients -----------------------------------------------------------------------------------

def masked_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One client WebSocket frame (FIN, masked, as RFC 6455 requires of clients)."""
    import os
    import struct

    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
        (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return head + mask + body


def open_raw(port: int, rcvbuf: int = 4096) -> Any:
    """A raw socket after a WebSocket handshake that will never read another byte."""
    import base64
    import os
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 101"), data[:200]
    return sock


@pytest.fixture(scope="module")
def slow_server() -> Any:
    srv = start_server(limits={"slow_client_timeout_s": 1.0, "max_outgoing_bytes": 65536})
    yield srv
    srv.stop()


def test_a_client_that_never_reads_is_dropped(slow_server: Any) -> None:
    """A raw socket sends session.update (each answered with the whole session, a few KB) and never
    reads: the server stops reading it once its queue is full, drops it after slow_client_timeout_s
    (1 s here) with 4410, frees its slot, and never holds more than the bound; others go on."""
    import socket

    server = slow_server.server
    update = masked_frame(json.dumps({"type": "session.update", "session": {
        "instructions": "be brief and kind " * 200}}).encode())   # 3600 characters
    sock = open_raw(server.port)
    sock.settimeout(0.2)
    deadline = time.monotonic() + 30
    while not server.sessions and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.sessions
    t0 = time.monotonic()
    sent, peak = 0, 0
    try:
        while time.monotonic() - t0 < 30:
            try:
                sock.sendall(update)
                sent += 1
            except TimeoutError:
                pass          # the server stopped reading us: its queue is full
            except OSError:
                break         # dropped
            conns = list(server.sessions.values())
            peak = max([peak, *(c.queued_bytes for c in conns)])
            if not conns:
                break
        dropped_after = time.monotonic() - t0
    finally:
        sock.close()
    assert not server.sessions, "the never-reading client still holds its slot"
    assert dropped_after < 20, dropped_after
    assert peak <= 65536 + 64 * 1024, peak      # the bound plus the messages of one read
    assert server.metrics.slow_clients.value() >= 1
    metrics = server.metrics.render()
    assert 'mmagent_errors_total{code="slow_client"}' in metrics

    async def still_serves() -> None:
        async with connect(slow_server.ws_url) as ws:
            assert (await recv_json(ws))["type"] == "session.created"

    run(still_serves())
    del socket


# ---- 6. overload --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def busy_server() -> Any:
    srv = start_server(pipeline={"max_waiting_turns": 2, "respond_timeout_s": 30.0})
    yield srv
    srv.stop()


def test_overload_is_shed_with_server_busy(busy_server: Any) -> None:
    """max_waiting_turns = 2, eight sessions ask at once: two are admitted and answered, the others
    get server_busy with retry_after_ms at once (their text stays pending: a retry answers it);
    /metrics shows the shed turns and the waiting-turns gauge."""
    async def one(i: int) -> tuple[str, float, dict[str, Any]]:
        ws = await connect(busy_server.ws_url)
        await recv_json(ws)
        await ws.send(typed(f"where are the batteries? ({i})"))
        await until(ws, "conversation.item.done")
        t0 = time.perf_counter()
        await ws.send(RESPOND)
        async with asyncio.timeout(120):
            while True:
                ev = json.loads(await ws.recv())
                if ev["type"] == "response.created":
                    await until(ws, "response.done")
                    await ws.close()
                    return "answered", time.perf_counter() - t0, ev
                if ev["type"] == "error":
                    took = time.perf_counter() - t0
                    assert ev["error"]["code"] == "server_busy", ev
                    # Its text is still pending: a retry later answers it.
                    await asyncio.sleep(ev["error"]["retry_after_ms"] / 1000)
                    for _ in range(60):
                        await ws.send(RESPOND)
                        got = json.loads(await ws.recv())
                        if got["type"] == "response.created":
                            break
                        await asyncio.sleep(0.5)
                    done = await until(ws, "response.done")
                    assert done[-1]["response"]["status"] == "completed"
                    await ws.close()
                    return "busy", took, ev

    async def main() -> list[tuple[str, float, dict[str, Any]]]:
        return list(await asyncio.gather(*(one(i) for i in range(8))))

    results = run(main())
    kinds = [k for k, _, _ in results]
    assert kinds.count("answered") >= 2 and kinds.count("busy") >= 1, kinds
    for kind, took, ev in results:
        if kind == "busy":
            assert 250 <= ev["error"]["retry_after_ms"] <= 10_000
            assert took < 5.0, took   # refused at once (the bench measures it; this only bounds it)
    metrics = busy_server.server.metrics.render()
    assert 'mmagent_turns_shed_total{reason="max_waiting_turns"}' in metrics
    assert "mmagent_turns_waiting 0" in metrics


def test_respond_timeout_is_enforced_on_the_real_pipeline() -> None:
    """respond_timeout_s = 0.2 s: a real reply (longer than that) fails with response_timeout."""
    srv = start_server(pipeline={"respond_timeout_s": 0.2})
    try:
        async def main() -> None:
            async with connect(srv.ws_url) as ws:  # type: ignore[attr-defined]
                await recv_json(ws)
                await ws.send(typed("tell me everything about the store opening hours and the pharmacy"))
                await ws.send(RESPOND)
                evs = await until(ws, "response.done")
                codes = [e["error"]["code"] for e in evs if e["type"] == "error"]
                assert codes == ["response_timeout"], codes
                assert evs[-1]["response"]["status"] == "failed"

        run(main())
    finally:
        srv.stop()  # type: ignore[attr-defined]
