"""Reliability suite of the realtime server (issue 11): hostile and careless clients, crashes, load.

Parts (each against a real ``mmagent serve`` subprocess on localhost, real models):

- ``fuzz``: ≥ 10,000 malformed events over every client event type and binary frames (mutated
  fields, wrong types, lone surrogates, deep nesting, truncated JSON, random bytes, bad binary
  headers); counts 1011 closes, messages with object reprs / paths / tracebacks, undocumented codes
- ``never_reading``: a raw socket that sends and never reads: when its slot is freed, server RSS
- ``vanishing``: sessions whose TCP connection is dropped mid-turn: time until every slot is free
- ``cross_token``: token B resuming token A's sessions (refused %, timing next to unknown ids)
- ``bypass``: inline audio / images over the append budgets, an over-budget PNG, a rebinding Host
- ``sigkill``: SIGKILL mid-turn ×3: SQLite integrity, completed turns stored vs completed, resume
- ``soak``: N sessions doing mixed typed, spoken (inline espeak-ng audio) and camera (a photo with the question) turns for M seconds: first-delta p95 of admitted turns,
  server_busy latency, turns lost (completed on the client vs stored)

Prints a table and writes ``artifacts/bench_reliability.json``::

    .venv/bin/python bench/reliability.py [--fuzz 10000] [--soak-n 100] [--soak-s 60] [--parts ...]

``fuzz()`` is also imported by the test suite (a 500-event subset).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.serve_process import ServeProcess  # noqa: E402
from server import protocol as P  # noqa: E402

LEAK = re.compile(r"0x[0-9a-fA-F]{6,}|<[^<>]* at 0x|Traceback|File \"|(?:^|[\s'\"(])/(?:[\w.\-]+/)+[\w.\-]*")
DOCUMENTED = set(P.ERROR_TYPES)

# ---- fuzzing ---------------------------------------------------------------------------------

_TEXT_ITEM = {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": "hello"}]}}
TEMPLATES: list[dict[str, Any]] = [
    {"type": "session.update", "session": {"instructions": "be brief", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": {"type": "server_vad"}}},
        "tools": [{"type": "function", "name": "x", "parameters": {"type": "object"}}]}},
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x00\x01" * 240).decode()},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "input_image_buffer.append", "image": base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 64).decode()},
    _TEXT_ITEM,
    {"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "c1", "output": "{}"}},
    {"type": "conversation.item.delete", "item_id": "item_x"},
    {"type": "conversation.item.retrieve", "item_id": "item_x"},
    {"type": "conversation.item.truncate", "item_id": "item_x", "content_index": 0, "audio_end_ms": 10},
    {"type": "response.create", "response": {"conversation": "none", "metadata": {"a": "b"},
                                             "input": [{"type": "item_reference", "id": "item_x"}]}},
    {"type": "response.cancel", "response_id": "resp_x"},
]
WEIRD: list[Any] = [None, 0, -1, 1.5, 10**30, float("inf"), "", "x" * 5000, "\ud800", "\udfff tail", [], {},
                    True, False, [1, 2], {"a": {"b": {}}}, "data:image/png;base64,!!", "/etc/passwd",
                    "<object at 0x7f00>", "😀" * 100]


def _deep(n: int) -> str:
    """A marker that :func:`_dumps` turns into ``n`` nested arrays/objects (too deep for json.dumps)."""
    return f"__DEEP_{n}__"


def _mutate(obj: Any, rng: random.Random, depth: int = 0) -> Any:
    """One random change somewhere in a copy of ``obj``."""
    if isinstance(obj, dict) and obj and (depth == 0 or rng.random() < 0.7):
        obj = dict(obj)
        key = rng.choice(list(obj))
        r = rng.random()
        if r < 0.2:
            del obj[key]
        elif r < 0.55 or not isinstance(obj[key], dict | list):
            obj[key] = rng.choice(WEIRD) if rng.random() < 0.9 else _deep(rng.choice((40, 200, 2000)))
        else:
            obj[key] = _mutate(obj[key], rng, depth + 1)
        if rng.random() < 0.1:
            obj[rng.choice(["\ud800", "extra", "x" * 300])] = rng.choice(WEIRD)
        return obj
    if isinstance(obj, list) and obj:
        obj = list(obj)
        i = rng.randrange(len(obj))
        obj[i] = _mutate(obj[i], rng, depth + 1) if rng.random() < 0.5 else rng.choice(WEIRD)
        return obj
    return rng.choice(WEIRD)


def _dumps(obj: Any) -> str:
    text = json.dumps(obj, allow_nan=True, ensure_ascii=True)   # \ud800 travels as an escape
    for n in (40, 200, 2000):
        text = text.replace(f'"__DEEP_{n}__"', '{"a":' * (n // 2) + "[" * (n // 2) + "1" + "]" * (n // 2)
                            + "}" * (n // 2))
    return text


def malformed(rng: random.Random) -> str | bytes:
    """One malformed client message (text or binary)."""
    kind = rng.random()
    t = rng.choice(TEMPLATES)
    if kind < 0.55:
        msg = _mutate(t, rng)
        if rng.random() < 0.3:
            msg = _mutate(msg, rng)
        return _dumps(msg)
    if kind < 0.62:
        s = _dumps(_mutate(t, rng))
        return s[: rng.randrange(1, max(2, len(s)))]          # truncated JSON
    if kind < 0.67:
        return rng.choice(['{"type":' + "[" * 5000, "[" * 100_000, "null", "42", '"str"', "{}", '{"type":1}',
                           '{"type":"nope"}', '{"type":"session.update","event_id":5}', "\x00\x01"])
    if kind < 0.72:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))   # random binary
    # binary frames: header length / JSON / type / payload broken in one way
    header = rng.choice([{"type": "input_audio_buffer.append"}, {"type": "input_image_buffer.append"}])
    payload = rng.choice([b"", b"\x00", b"\xff\xd8\xff" + bytes(50), b"\x89PNG\r\n\x1a\n" + bytes(30),
                          os.urandom(rng.randrange(1, 2000))])
    sub = rng.random()
    if sub < 0.25:
        head = _dumps(_mutate(header, rng)).encode()
    elif sub < 0.4:
        head = (b'{"type":"input_audio_buffer.append","x":' + b"[" * 3000 + b"]" * 3000 + b"}")
    elif sub < 0.5:
        head = b'{"type":"input_image_buffer.append","event_id":"\\ud800"}'
    elif sub < 0.6:
        head = b"\xff\xfe not json"
    else:
        head = _dumps(header).encode()
    n = len(head)
    if rng.random() < 0.2:
        n = rng.choice([0, 1, 65535, len(head) + 10_000])   # a length that lies
    return struct.pack(">H", n & 0xFFFF) + head + payload


async def fuzz(ws_url: str, n: int = 10_000, *, seed: int = 0, connections: int = 4) -> dict[str, Any]:
    """Send ``n`` malformed messages over ``connections`` sessions (reconnecting after any close);
    every server message is checked. The server should allow many errors per 10 s
    (``limits.max_errors_per_10s``), else 1008 closes are counted as policy closes."""
    from websockets.asyncio.client import connect

    stats: dict[str, Any] = {"sent": 0, "errors": 0, "closes": {}, "leaks": [], "undocumented": [],
                             "codes": {}}
    rng = random.Random(seed)
    messages = [malformed(rng) for _ in range(n)]
    per = [messages[i::connections] for i in range(connections)]

    async def worker(batch: list[str | bytes]) -> None:
        i = 0
        while i < len(batch):
            async with connect(ws_url, max_size=None) as ws:
                first = json.loads(await ws.recv())
                assert first["type"] == "session.created", first

                async def reader() -> None:
                    async for raw in ws:
                        ev = json.loads(raw)
                        if ev["type"] != "error" and "error" not in ev:
                            continue
                        err = ev.get("error") or {}
                        code, message = str(err.get("code")), str(err.get("message"))
                        stats["errors"] += 1
                        stats["codes"][code] = stats["codes"].get(code, 0) + 1
                        if LEAK.search(message):
                            stats["leaks"].append(message[:200])
                        if code not in DOCUMENTED:
                            stats["undocumented"].append(code)

                task = asyncio.get_running_loop().create_task(reader())
                try:
                    while i < len(batch):
                        await ws.send(batch[i])
                        stats["sent"] += 1
                        i += 1
                        if i % 50 == 0:
                            await asyncio.sleep(0.05)   # let the frame/audio budgets refill a bit
                    await ws.send(json.dumps({"type": "input_audio_buffer.clear", "event_id": "end"}))
                    await asyncio.sleep(0.5)
                except Exception:   # closed by the server: counted below
                    pass
                await ws.close()
                await asyncio.gather(task, return_exceptions=True)
                code = ws.close_code
                stats["closes"][str(code)] = stats["closes"].get(str(code), 0) + 1

    await asyncio.gather(*(worker(b) for b in per))
    stats["closes_1011"] = stats["closes"].get("1011", 0)
    stats["leak_count"] = len(stats["leaks"])
    stats["leaks"] = stats["leaks"][:5]
    stats["undocumented"] = sorted(set(stats["undocumented"]))
    return stats


# ---- the server ----------------------------------------------------------------------------------

class ServerProcess(ServeProcess):
    """``mmagent serve`` in a subprocess with ``config``; ``ws_url``, ``url``, ``rss()``."""

    def __init__(self, config: dict[str, Any], state_dir: str, name: str = "rel") -> None:
        super().__init__(config, state_dir, name)

    def rss_mb(self) -> float:
        import psutil

        return float(psutil.Process(self.proc.pid).memory_info().rss) / 2**20

    def sessions(self) -> int:
        return int(json.loads(urllib.request.urlopen(self.url + "healthz", timeout=10).read())["sessions"])

    def metrics(self) -> str:
        return urllib.request.urlopen(self.url + "metrics", timeout=10).read().decode()



def typed(text: str) -> str:
    return json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})


RESPOND = json.dumps({"type": "response.create"})


def spoken(pcm16_24k: bytes) -> str:
    """A spoken turn: the question's audio (PCM16, 24 kHz, the session's input rate) inline."""
    return json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_audio", "audio": base64.b64encode(pcm16_24k).decode()}]}})


def shown(text: str, jpeg: bytes) -> str:
    """A camera turn: a photo with the typed question, as a kiosk sends what its camera sees."""
    return json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_image", "image_url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()},
                    {"type": "input_text", "text": text}]}})


def soak_media() -> tuple[list[bytes], list[bytes]]:
    """espeak-ng questions (PCM16 at 24 kHz) and scikit-image's photos as JPEGs: media nobody on
    the project made, the same kind the test suite uses."""
    import io

    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    voices = []
    for q in QUESTIONS[:4]:
        wav = subprocess.run(["espeak-ng", "-s", "160", "--stdout", q], check=True, capture_output=True).stdout
        rate = int.from_bytes(wav[24:28], "little")
        pcm = np.frombuffer(wav[44:], dtype="<i2").astype(np.float32)
        n = int(len(pcm) * 24000 / rate)
        resampled = np.interp(np.linspace(0, len(pcm) - 1, n), np.arange(len(pcm)), pcm)
        voices.append(resampled.astype("<i2").tobytes())
    jpegs = []
    for img in (skdata.astronaut(), skdata.coffee(), skdata.chelsea()):
        buf = io.BytesIO()
        Image.fromarray(img).convert("RGB").resize((320, 240)).save(buf, "JPEG", quality=85)
        jpegs.append(buf.getvalue())
    return voices, jpegs
QUESTIONS = ["where are the batteries?", "when do you open on sunday?", "do you sell umbrellas?",
             "where is the pharmacy?", "how much is the coffee?", "can I return a jacket?"]


async def _until(ws: Any, type_: str, timeout: float = 300.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            ev = json.loads(await ws.recv())
            out.append(ev)
            if ev["type"] == type_:
                return out


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def raw_socket(port: int, rcvbuf: int = 4096) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    return sock


def masked(payload: bytes) -> bytes:
    n = len(payload)
    head = b"\x81" + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                      if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
    mask = os.urandom(4)
    body = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return head + mask + body


# ---- parts ---------------------------------------------------------------------------------------

def part_fuzz(state: str, n: int) -> dict[str, Any]:
    srv = ServerProcess({"limits": {"max_errors_per_10s": 1_000_000, "max_sessions": 64},
                         "pipeline": {"max_output_tokens": 8}}, state, "fuzz")
    try:
        rss0 = srv.rss_mb()
        t0 = time.perf_counter()
        stats = asyncio.run(fuzz(srv.ws_url, n))
        stats["seconds"] = round(time.perf_counter() - t0, 1)
        stats["rss_mb_before_after"] = [round(rss0), round(srv.rss_mb())]
        stats["server_alive"] = srv.proc.poll() is None and srv.sessions() >= 0
    finally:
        srv.stop()
    return stats


def part_never_reading(state: str, timeout_s: float = 10.0) -> dict[str, Any]:
    srv = ServerProcess({"limits": {"slow_client_timeout_s": timeout_s}}, state, "slow")
    try:
        rss0 = srv.rss_mb()
        update = masked(json.dumps({"type": "session.update", "session": {"instructions": "be kind " * 450}}).encode())
        results = []
        for _ in range(3):
            sock = raw_socket(srv.port)
            sock.settimeout(0.2)
            deadline = time.time() + 20
            while srv.sessions() == 0 and time.time() < deadline:
                time.sleep(0.05)
            t0 = time.monotonic()
            stalled_at, peak_rss, sent = None, 0.0, 0
            while time.monotonic() - t0 < 120:
                try:
                    sock.sendall(update)
                    sent += len(update)
                except TimeoutError:
                    stalled_at = stalled_at or time.monotonic()
                except OSError:
                    break
                peak_rss = max(peak_rss, srv.rss_mb())
                if stalled_at and srv.sessions() == 0:
                    break
            released = time.monotonic()
            sock.close()
            time.sleep(1.0)
            results.append({"bytes_sent_mb": round(sent / 2**20, 2),
                            "stall_to_release_s": round(released - (stalled_at or released), 2),
                            "rss_peak_over_baseline_mb": round(peak_rss - rss0, 1),
                            "rss_after_over_baseline_mb": round(srv.rss_mb() - rss0, 1)})
        found = re.search(r"^mmagent_slow_clients_dropped_total (\S+)$", srv.metrics(), flags=re.M)
        return {"timeout_s": timeout_s, "runs": results, "slot_released": srv.sessions() == 0,
                "dropped": int(float(found.group(1))) if found else 0}
    finally:
        srv.stop()


def part_vanishing(state: str, k: int = 20) -> dict[str, Any]:
    srv = ServerProcess({"pipeline": {"max_waiting_turns": 0}}, state, "vanish")
    try:
        socks = []
        for i in range(k):
            s = raw_socket(srv.port)
            s.sendall(masked(typed(QUESTIONS[i % len(QUESTIONS)]).encode()))
            s.sendall(masked(RESPOND.encode()))
            socks.append(s)
        deadline = time.time() + 60
        while srv.sessions() < k and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)   # turns under way
        t0 = time.monotonic()
        for s in socks:   # gone without a close frame (RST)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        while srv.sessions() > 0 and time.monotonic() - t0 < 60:
            time.sleep(0.02)
        return {"sessions": k, "all_released": srv.sessions() == 0,
                "release_s": round(time.monotonic() - t0, 2), "server_alive": srv.proc.poll() is None}
    finally:
        srv.stop()


def part_cross_token(state: str, tries: int = 30) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    srv = ServerProcess({"tokens": ["token-a-1234", "token-b-5678"]}, state, "tokens")

    async def main() -> dict[str, Any]:
        refused, foreign_ms, unknown_ms, a_intact = 0, [], [], 0
        for _ in range(tries):
            a = await connect(srv.ws_url + "?token=token-a-1234")
            sid = json.loads(await a.recv())["session"]["id"]
            for target, bucket in ((sid, foreign_ms), ("sess_" + os.urandom(16).hex(), unknown_ms)):
                t0 = time.perf_counter()
                b = await connect(srv.ws_url + f"?token=token-b-5678&session_id={target}")
                created = json.loads(await b.recv())
                err = json.loads(await b.recv())
                bucket.append(1000 * (time.perf_counter() - t0))
                if target == sid and created["session"]["id"] != sid and not created["session"]["resumed"] \
                        and err["error"]["code"] == "session_not_found":
                    refused += 1
                await b.close()
            await a.send(json.dumps({"type": "input_audio_buffer.clear"}))
            if json.loads(await a.recv())["type"] == "input_audio_buffer.cleared":
                a_intact += 1
            await a.close()
        return {"tries": tries, "refused": refused, "owner_connection_intact": a_intact,
                "foreign_ms_p50": round(pct(foreign_ms, 0.5) or 0, 1),
                "unknown_ms_p50": round(pct(unknown_ms, 0.5) or 0, 1)}

    try:
        return asyncio.run(main())
    finally:
        srv.stop()


def part_bypass(state: str) -> dict[str, Any]:
    import io
    import zlib

    from PIL import Image
    from websockets.asyncio.client import connect

    srv = ServerProcess({}, state, "bypass")

    def png_declaring(w: int, h: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (1, 1)).save(buf, format="PNG")
        d = bytearray(buf.getvalue())
        d[16:24] = struct.pack(">II", w, h)
        d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])) & 0xFFFFFFFF)
        return bytes(d)

    async def codes(ws: Any, n: int) -> list[str]:
        out: list[str] = []
        async with asyncio.timeout(120):
            while len(out) < n:
                ev = json.loads(await ws.recv())
                if ev["type"] == "conversation.item.added":
                    out.append("added")
                elif ev["type"] == "error":
                    out.append(ev["error"]["code"])
        return out

    async def main() -> dict[str, Any]:
        res: dict[str, Any] = {}
        off = json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
        pcm = base64.b64encode(os.urandom(2) * (24000 * 20)).decode()
        item = json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                           "content": [{"type": "input_audio", "audio": pcm}]}})
        async with connect(srv.ws_url, max_size=None) as ws:
            await ws.recv()
            await ws.send(off)
            await _until(ws, "session.updated")
            for _ in range(4):
                await ws.send(item)
            got = await codes(ws, 4)
            res["inline_audio_4x20s_refused"] = sum(c != "added" for c in got)
        buf = io.BytesIO()
        Image.new("RGB", (640, 480), (120, 30, 200)).save(buf, format="JPEG")
        jpeg = buf.getvalue() + bytes(1_400_000 - len(buf.getvalue()))
        img = json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                          "content": [{"type": "input_image",
                                       "image_url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}]}})
        rss0 = srv.rss_mb()
        async with connect(srv.ws_url, max_size=None) as ws:
            await ws.recv()
            for _ in range(100):
                await ws.send(img)
            got = await codes(ws, 100)
            res["inline_images_100_accepted"] = got.count("added")
            res["inline_images_rss_over_baseline_mb"] = round(srv.rss_mb() - rss0, 1)
            huge = base64.b64encode(png_declaring(6000, 6000)).decode()
            await ws.send(json.dumps({"type": "input_image_buffer.append", "image": huge}))
            got = await codes(ws, 1)
            res["png_6000x6000"] = got[0]
        port = srv.port
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall((f"GET /v1/realtime HTTP/1.1\r\nHost: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        res["rebinding_status"] = int(s.recv(100).split(b" ")[1])
        s.close()
        return res

    try:
        return asyncio.run(main())
    finally:
        srv.stop()


def part_sigkill(state: str, rounds: int = 3) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    out = []
    for r in range(rounds):
        sdir = str(Path(state) / f"kill{r}")
        srv = ServerProcess({}, sdir, "kill")
        completed = 0

        async def turns(srv: ServerProcess = srv) -> str:
            nonlocal completed
            ws = await connect(srv.ws_url)
            sid = str(json.loads(await ws.recv())["session"]["id"])
            for q in QUESTIONS[:3]:
                await ws.send(typed(q))
                await ws.send(RESPOND)
                evs = await _until(ws, "response.done")
                if evs[-1]["response"]["status"] == "completed":
                    completed += 1
            await ws.send(typed("tell me about the pharmacy and the opening hours"))
            await ws.send(RESPOND)
            await _until(ws, "response.output_text.delta")
            srv.kill()   # mid-turn: the reply is streaming
            return sid

        sid = asyncio.run(turns())
        db = Path(sdir) / "sessions.sqlite3"
        conn = sqlite3.connect(db)
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        stored = conn.execute("SELECT COUNT(*) FROM turns WHERE session_id=? AND status='completed'",
                              (sid,)).fetchone()[0]
        conn.close()
        srv2 = ServerProcess({}, sdir, "kill")

        async def resume(srv2: ServerProcess = srv2, sid: str = sid) -> bool:
            ws = await connect(srv2.ws_url + f"?session_id={sid}")
            ev = json.loads(await ws.recv())
            await ws.close()
            return bool(ev["session"]["resumed"])

        resumed = asyncio.run(resume())
        srv2.stop()
        out.append({"integrity": integrity, "completed": completed, "stored_completed": stored, "resumed": resumed})
    return {"rounds": out, "completed_turns_lost": sum(max(0, o["completed"] - o["stored_completed"]) for o in out),
            "integrity_ok": all(o["integrity"] == "ok" for o in out), "resumed": sum(o["resumed"] for o in out)}


def part_soak(state: str, n: int, seconds: float) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    srv = ServerProcess({"limits": {"max_sessions": max(256, n), "max_sessions_per_token": max(256, n)},
                         "agent": {"responder": {"local": {"max_new_tokens": 24}}}}, state, "soak")
    first: list[float] = []
    busy: list[float] = []
    other_errors: dict[str, int] = {}
    completed: dict[str, int] = {}
    kinds: dict[str, int] = {"typed": 0, "spoken": 0, "camera": 0}
    voices, jpegs = soak_media()
    stop_at = time.monotonic() + seconds

    async def session(i: int) -> None:
        rng = random.Random(i)
        await asyncio.sleep(rng.uniform(0, 3))
        async with connect(srv.ws_url) as ws:
            sid = json.loads(await ws.recv())["session"]["id"]
            completed[sid] = 0
            pending = False
            while time.monotonic() < stop_at:
                if not pending:   # half typed, a quarter spoken, a quarter with a camera frame
                    kind = rng.choice(("typed", "typed", "spoken", "camera"))
                    kinds[kind] += 1
                    if kind == "spoken":
                        await ws.send(spoken(rng.choice(voices)))
                    elif kind == "camera":
                        await ws.send(shown(rng.choice(QUESTIONS), rng.choice(jpegs)))
                    else:
                        await ws.send(typed(rng.choice(QUESTIONS)))
                    await _until(ws, "conversation.item.done")
                    pending = True
                t0 = time.perf_counter()
                await ws.send(RESPOND)
                got_first = False
                while True:
                    ev = json.loads(await asyncio.wait_for(ws.recv(), 300))
                    if ev["type"] == "error":
                        code = ev["error"]["code"]
                        if code == "server_busy":
                            busy.append(time.perf_counter() - t0)
                            await asyncio.sleep(ev["error"]["retry_after_ms"] / 1000 * rng.uniform(1, 2))
                            break
                        other_errors[code] = other_errors.get(code, 0) + 1
                    elif ev["type"] == "response.output_text.delta" and not got_first:
                        got_first = True
                        first.append(time.perf_counter() - t0)
                    elif ev["type"] == "response.done":
                        if ev["response"]["status"] == "completed":
                            completed[sid] += 1
                        pending = False
                        await asyncio.sleep(rng.uniform(0.5, 2.0))   # reading the reply
                        break

    async def main() -> None:
        await asyncio.gather(*(session(i) for i in range(n)), return_exceptions=False)

    import psutil

    peak = [0.0]
    sampling = [True]

    def sample() -> None:
        p = psutil.Process(srv.proc.pid)
        while sampling[0]:
            peak[0] = max(peak[0], p.memory_info().rss / 2**20)
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    load0 = os.getloadavg()[0]
    try:
        asyncio.run(main())
        time.sleep(1.0)
        sampling[0] = False
        metrics = srv.metrics()
    finally:
        srv.stop()
    conn = sqlite3.connect(Path(state) / "sessions.sqlite3")
    stored = 0
    for sid in completed:
        stored += conn.execute("SELECT COUNT(*) FROM turns WHERE session_id=? AND status='completed'",
                               (sid,)).fetchone()[0]
    conn.close()
    shed = re.search(r'mmagent_turns_shed_total\{reason="max_waiting_turns"\} (\S+)', metrics)
    return {"sessions": n, "seconds": seconds, "turn_kinds": kinds, "admitted_turns": len(first), "completed": sum(completed.values()),
            "stored_completed": stored, "turns_lost": max(0, sum(completed.values()) - stored),
            "first_delta_p50_s": round(pct(first, 0.5) or 0, 2), "first_delta_p95_s": round(pct(first, 0.95) or 0, 2),
            "server_busy": len(busy), "server_busy_p50_ms": round(1000 * (pct(busy, 0.5) or 0), 1),
            "server_busy_p95_ms": round(1000 * (pct(busy, 0.95) or 0), 1), "other_errors": other_errors,
            "shed_metric": float(shed.group(1)) if shed else 0.0, "server_peak_rss_mb": round(peak[0]),
            "load_avg_1m_start": round(load0, 2), "load_avg_1m_end": round(os.getloadavg()[0], 2)}


# ---- main ----------------------------------------------------------------------------------------

def table(res: dict[str, Any]) -> str:
    rows = ["| part | load | bad inputs / faults | survived | errors (unexpected) | turns lost | numbers |",
            "|---|---|---|---|---|---|---|"]
    f = res.get("fuzz")
    if f:
        rows.append(f"| fuzz | {f['sent']} malformed messages, 4 sessions, {f['seconds']} s | {f['sent']} | "
                    f"closes {f['closes']} (1011: {f['closes_1011']}) | leaks {f['leak_count']}, undocumented "
                    f"codes {len(f['undocumented'])} | — | {f['errors']} error events, RSS {f['rss_mb_before_after']} MB |")
    s = res.get("never_reading")
    if s:
        runs = s["runs"]
        rows.append(f"| never-reading client | {len(runs)} raw sockets sending, never reading | {len(runs)} | slot "
                    f"released: {s['slot_released']}, dropped {s['dropped']} | — | — | stall → release "
                    f"{[r['stall_to_release_s'] for r in runs]} s (timeout {s['timeout_s']:g} s), RSS peak over "
                    f"baseline {[r['rss_peak_over_baseline_mb'] for r in runs]} MB, after "
                    f"{[r['rss_after_over_baseline_mb'] for r in runs]} MB |")
    v = res.get("vanishing")
    if v:
        rows.append(f"| vanishing clients | {v['sessions']} sessions mid-turn, TCP reset | {v['sessions']} | all "
                    f"released: {v['all_released']} | — | — | released in {v['release_s']} s |")
    c = res.get("cross_token")
    if c:
        rows.append(f"| cross-token resume | {c['tries']} tries | {c['tries']} | owner intact "
                    f"{c['owner_connection_intact']}/{c['tries']} | — | — | refused {c['refused']}/{c['tries']}; p50 "
                    f"{c['foreign_ms_p50']} ms (foreign) vs {c['unknown_ms_p50']} ms (unknown id) |")
    b = res.get("bypass")
    if b:
        rows.append(f"| limit bypasses | inline audio, 100 × 1.4 MB images, 6000×6000 PNG, rebinding | 4 | — | — | — | "
                    f"4×20 s audio: {b['inline_audio_4x20s_refused']} refused; images accepted "
                    f"{b['inline_images_100_accepted']}/100 (RSS +{b['inline_images_rss_over_baseline_mb']} MB); PNG → "
                    f"{b['png_6000x6000']}; rebinding → {b['rebinding_status']} |")
    k = res.get("sigkill")
    if k:
        rows.append(f"| SIGKILL mid-turn | {len(k['rounds'])} rounds | {len(k['rounds'])} | integrity ok: "
                    f"{k['integrity_ok']}, resumed {k['resumed']}/{len(k['rounds'])} | — | "
                    f"{k['completed_turns_lost']} | stored/completed {[(r['stored_completed'], r['completed']) for r in k['rounds']]} |")
    o = res.get("soak")
    if o:
        rows.append(f"| soak | {o['sessions']} sessions × {o['seconds']:g} s mixed turns {o.get('turn_kinds')} (load {o['load_avg_1m_start']}"
                    f"→{o['load_avg_1m_end']}) | — | — | {o['other_errors']} | {o['turns_lost']} | admitted "
                    f"{o['admitted_turns']}, first delta p50/p95 {o['first_delta_p50_s']}/{o['first_delta_p95_s']} s; "
                    f"server_busy {o['server_busy']} in p50/p95 {o['server_busy_p50_ms']}/{o['server_busy_p95_ms']} ms; "
                    f"peak RSS {o['server_peak_rss_mb']} MB |")
    return "\n".join(rows)


def run_part(name: str, state: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "fuzz":
        return part_fuzz(state, args.fuzz)
    if name == "never_reading":
        return part_never_reading(state)
    if name == "vanishing":
        return part_vanishing(state)
    if name == "cross_token":
        return part_cross_token(state)
    if name == "bypass":
        return part_bypass(state)
    if name == "sigkill":
        return part_sigkill(state)
    return part_soak(state, args.soak_n, args.soak_s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parts = ["fuzz", "never_reading", "vanishing", "cross_token", "bypass", "sigkill", "soak"]
    ap.add_argument("--parts", nargs="+", default=parts, choices=parts)
    ap.add_argument("--fuzz", type=int, default=10_000, help="malformed messages")
    ap.add_argument("--soak-n", type=int, default=100)
    ap.add_argument("--soak-s", type=float, default=60.0)
    ap.add_argument("--out", default=str(REPO / "artifacts" / "bench_reliability.json"))
    args = ap.parse_args()
    res: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs", "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="mmagent-rel-") as tmp:
        for name in args.parts:
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            state = str(Path(tmp) / name)
            try:
                res[name] = run_part(name, state, args)
            except Exception as exc:   # one broken part must not hide the others' numbers
                res[name] = None
                res.setdefault("failed_parts", {})[name] = repr(exc)[:500]
            print(json.dumps(res[name], default=str)[:1500], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    res["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    print(table(res))
    for name, why in res.get("failed_parts", {}).items():
        print(f"part {name} failed: {why}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
