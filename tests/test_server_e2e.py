"""The realtime server end to end: a real server on a free localhost port with the real models."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import time
import urllib.error
import urllib.request
import zlib
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.client import RealtimeClient, pcm16
from tests.conftest import start_server, synth_speech

pytestmark = pytest.mark.slow


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def jpeg(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def huge_png_header(w: int = 20000, h: int = 20000) -> bytes:
    """A real 1×1 PNG whose header is patched to claim w × h pixels (the CRC fixed up)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", w, h)                     # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


async def collect_until(c: RealtimeClient, type_: str, timeout: float = 90.0,
                        pred: Any = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for ev in c.events():
            out.append(ev)
            if ev["type"] == type_ and (pred is None or pred(ev)):
                return out
    raise AssertionError(f"session ended before {type_}: {[e['type'] for e in out]}")


def torch_cos(a: Any, b: Any) -> Any:
    import torch

    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)


def count_tokens(text: str) -> int:
    """Tokens of ``text`` for the server's local language model (shared by every test server)."""
    from server.engine import _MODELS

    agent = next(iter(_MODELS.values()))[2]
    return int(agent.responder.count_tokens(text))


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def assert_in_order(seq: list[str], expected: list[str]) -> None:
    it = iter(seq)
    for name in expected:
        assert any(s == name for s in it), f"{name} missing or out of order in {seq}"


# ---- HTTP ----------------------------------------------------------------------------------

def test_http_endpoints(mm_server: Any) -> None:
    """/healthz, /metrics and the web client's index are served on the WebSocket port."""
    base = mm_server.url
    health = json.loads(urllib.request.urlopen(base + "healthz", timeout=10).read())
    assert health["status"] == "ok" and health["protocol_version"] == 1
    metrics = urllib.request.urlopen(base + "metrics", timeout=10).read().decode()
    assert "mmagent_sessions_open" in metrics and "# TYPE mmagent_stage_seconds histogram" in metrics
    index = urllib.request.urlopen(base, timeout=10)
    assert index.headers["Content-Type"].startswith("text/html")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(base + "nope/../../etc/passwd", timeout=10)
    assert info.value.code == 404


def test_origin_not_allowed_is_403(mm_server: Any) -> None:
    """A browser Origin from another host is refused before the upgrade."""
    async def main() -> None:
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as info:
            await connect(mm_server.ws_url, origin="http://evil.example")  # type: ignore[arg-type]
        assert info.value.response.status_code == 403
        host = mm_server.url.split("//")[1].rstrip("/")
        ws = await connect(mm_server.ws_url, origin=f"http://{host}")  # type: ignore[arg-type]
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.close()

    run(main())


# ---- turns ---------------------------------------------------------------------------------

def test_text_turn(mm_server: Any) -> None:
    """A typed-text turn streams deltas between response.created and response.done."""
    async def main() -> None:
        async with RealtimeClient(mm_server.ws_url) as c:
            assert c.session and c.session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
            await c.send_text("What are your opening hours?")
            evs = await collect_until(c, "response.done")
            ts = types_of(evs)
            assert_in_order(ts, ["session.created", "conversation.item.added", "response.created",
                                 "perception.updated", "turn.fused", "response.output_text.delta",
                                 "response.output_text.done", "response.done"])
            assert "error" not in ts
            done = evs[-1]["response"]
            assert done["status"] == "completed" and done["output"][0]["content"][0]["text"].strip()
            fused = next(e for e in evs if e["type"] == "turn.fused")
            assert set(fused["modality_weights"]) <= {"text", "speech", "vision", "context"}
            assert fused["intent"] and 0 <= fused["emotion_confidence"] <= 1

    run(main())


def test_session_max_output_tokens_caps_the_reply(llm_server: Any) -> None:
    """session.max_output_tokens = 2 caps the local model at two tokens for this session only."""
    mm_server = llm_server
    async def reply(c: RealtimeClient) -> tuple[int, str]:
        await c.send_text("Tell me about your opening hours and the service desk.")
        evs = await collect_until(c, "response.done")
        deltas = [e["delta"] for e in evs if e["type"] == "response.output_text.delta"]
        assert evs[-1]["response"]["status"] == "completed"
        return len(deltas), "".join(deltas)

    async def main() -> None:
        async with RealtimeClient(mm_server.ws_url) as c:
            await c.update_session(max_output_tokens=2)
            n, text = await reply(c)
            assert 1 <= n <= 2, (n, text)         # one delta per token at most
            assert count_tokens(text) <= 3, text  # re-tokenising the decoded text may split a token
        async with RealtimeClient(mm_server.ws_url) as c:   # another session: the server's default
            n, text = await reply(c)
            assert n > 2 and count_tokens(text) > 4, text

    run(main())


def test_text_prefetch_is_reused(mm_server: Any) -> None:
    """A text encoded ahead (as during a turn's end-of-turn silence) is not encoded again."""
    engine = mm_server.server.engine

    async def probe() -> tuple[Any, Any, Any]:
        engine.prefetch_text("Where is the service desk, please?")
        a = await engine.encode_text("Where is the service desk, please?")
        b = await engine.encode_text("Where is the service desk, please?")
        c = await engine.encode_text("Where are the toilets, please?")
        return a, b, c

    a, b, c = asyncio.run_coroutine_threadsafe(probe(), mm_server.loop).result(60)
    assert a is b and c is not a
    assert float(torch_cos(a.embedding, c.embedding)) < 0.99


def test_speech_turn_streamed_at_real_time(mm_server: Any) -> None:
    """espeak-ng speech in 20 ms chunks at real time: VAD, transcript, fused turn, deltas, done — in order."""
    x, sr = synth_speech("Hello. Where can I return a pair of shoes?", sample_rate=24000)
    pcm = np.concatenate([np.zeros(sr // 2, np.float32), x, np.zeros(sr * 3 // 2, np.float32)])
    chunk = sr // 50

    async def main() -> None:
        async with RealtimeClient(mm_server.ws_url) as c:
            t0 = time.perf_counter()
            for i, start in enumerate(range(0, len(pcm), chunk)):
                await c.append_audio(pcm[start:start + chunk], binary=bool(i % 2))  # both encodings
                await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.perf_counter()))
            evs = await collect_until(c, "response.done")
            ts = types_of(evs)
            assert_in_order(ts, ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                                 "input_audio_buffer.committed",
                                 "conversation.item.input_audio_transcription.completed", "turn.fused",
                                 "response.output_text.delta", "response.done"])
            assert ts.count("response.output_text.delta") >= 2 and "error" not in ts
            tr = next(e for e in evs if e["type"] == "conversation.item.input_audio_transcription.completed")
            assert "return" in tr["transcript"].lower() and 0 < tr["confidence"] <= 1
            fused = next(e for e in evs if e["type"] == "turn.fused")
            assert "speech" in fused["modality_weights"]
            assert evs[-1]["response"]["status"] == "completed"

    run(main())


def test_preemptive_response_is_dropped_when_speech_resumes(mm_server: Any) -> None:
    """A pause mid-sentence starts a preemptive response; the speech going on drops it without a
    trace (no event, no stored turn); the real end of the turn releases the next one: exactly one
    response, after the whole transcript."""
    a, sr = synth_speech("Where can I find", sample_rate=24000)
    b, _ = synth_speech("the service desk?", sample_rate=24000)
    pcm = np.concatenate([np.zeros(sr // 2, np.float32), a, np.zeros(sr // 10, np.float32), b,
                          np.zeros(sr * 3 // 2, np.float32)])
    chunk = sr // 50
    engine = mm_server.server.engine
    before = {k: engine.metrics.preemptive.value(outcome=k) for k in ("released", "discarded")}

    async def main() -> str:
        async with RealtimeClient(mm_server.ws_url) as c:
            assert c.session is not None
            t0 = time.perf_counter()
            for i, start in enumerate(range(0, len(pcm), chunk)):
                await c.append_audio(pcm[start:start + chunk])
                await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.perf_counter()))
            evs = await collect_until(c, "response.done")
            ts = types_of(evs)
            assert ts.count("response.created") == 1 and ts.count("input_audio_buffer.speech_started") == 1
            assert_in_order(ts, ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                                 "conversation.item.input_audio_transcription.completed", "response.created",
                                 "turn.fused", "response.output_text.delta", "response.done"])
            tr = next(e for e in evs if e["type"] == "conversation.item.input_audio_transcription.completed")
            assert "desk" in tr["transcript"].lower() and "find" in tr["transcript"].lower()
            assert evs[-1]["response"]["status"] == "completed" and "error" not in ts
            return str(c.session["id"])

    sid = run(main())
    after = {k: engine.metrics.preemptive.value(outcome=k) for k in ("released", "discarded")}
    assert after["released"] == before["released"] + 1
    assert after["discarded"] >= before["discarded"] + 1
    stored = engine.agent.store.load_session(sid).turns
    assert len(stored) == 1 and "desk" in stored[0].text.lower()


def test_frame_and_text_turn_names_the_cat(mm_server: Any) -> None:
    """A camera frame of skimage's chelsea + a question: perception.updated names a cat; vision is weighed."""
    from skimage import data

    async def main() -> None:
        async with RealtimeClient(mm_server.ws_url) as c:
            await c.send_frame(jpeg(data.chelsea()))
            presence = await collect_until(c, "perception.updated")
            assert presence[-1]["source"] == "frame" and presence[-1]["face_count"] == 0
            await c.send_text("What animal is this?")
            evs = await collect_until(c, "response.done")
            p = next(e for e in evs if e["type"] == "perception.updated" and e["source"] == "turn")
            names = " ".join(lb["name"].lower() for lb in p["labels"][:3])
            assert "cat" in names, names
            assert p["text"]["text"] == "What animal is this?"
            fused = next(e for e in evs if e["type"] == "turn.fused")
            assert fused["modality_weights"].get("vision", 0) > 0

    run(main())


def test_astronaut_face_presence(mm_server: Any) -> None:
    """Frames with a face report faces_present (the kiosk's attract screen uses it)."""
    from skimage import data

    async def main() -> None:
        async with RealtimeClient(mm_server.ws_url) as c:
            await c.send_frame(jpeg(data.astronaut()), binary=False)
            evs = await collect_until(c, "perception.updated")
            assert evs[-1]["faces_present"] is True and evs[-1]["face_count"] >= 1

    run(main())


@pytest.fixture(scope="module")
def llm_server() -> Any:
    """The real pipeline with the local language model streaming its replies token by token, for
    the tests that interrupt a reply while it streams: the dialogue manager is off (with it the
    default grounded responder answers at once, and a model's text is sent in verified
    sentences — tests/test_dialogue.py — so there is little left to interrupt)."""
    srv = start_server(agent={"responder": {"kind": "local"}, "dialogue": {"enabled": False}})
    yield srv
    srv.stop()


def test_response_cancel(llm_server: Any) -> None:
    mm_server = llm_server
    """response.cancel ends the active response as cancelled; a second cancel has nothing to cancel."""
    async def main() -> None:
        async with RealtimeClient(mm_server.ws_url) as c:
            await c.send_text("Tell me about your return policy for shoes and electronics in detail.")
            created = (await collect_until(c, "response.created"))[-1]
            await c.cancel_response(created["response"]["id"])
            evs = await collect_until(c, "response.done")
            done = evs[-1]["response"]
            assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
            assert "response.output_text.done" not in types_of(evs)
            await c.cancel_response()
            err = (await collect_until(c, "error"))[-1]
            assert err["error"]["code"] == "response_cancel_not_active"

    run(main())


def test_barge_in_cancels_streaming_reply(llm_server: Any) -> None:
    """Speech that starts while a reply streams cancels it (turn_detected) and the stored turn says so."""
    mm_server = llm_server
    x, sr = synth_speech("Stop, please wait a moment.", sample_rate=24000)
    pcm = np.concatenate([x, np.zeros(sr, np.float32)])

    async def main() -> None:
        async with RealtimeClient(mm_server.ws_url) as c:
            await c.send_text("Can you explain how returns and refunds work here, step by step?")
            evs = await collect_until(c, "response.output_text.delta")
            rid = evs[-1]["response_id"]
            # Speak now: the first second fits the audio burst, the rest follows at real time.
            await c.append_audio(pcm[: sr])
            for start in range(sr, len(pcm), sr // 50):
                await c.append_audio(pcm[start:start + sr // 50])
                await asyncio.sleep(0.02)
            evs = await collect_until(c, "response.done", pred=lambda e: e["response"]["id"] == rid)
            ts = types_of(evs)
            assert "input_audio_buffer.speech_started" in ts
            done = evs[-1]["response"]
            assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
            turn_id = done["turn"]["turn_id"] if done["turn"] else None
            # The new spoken turn then gets its own response.
            await collect_until(c, "response.done", pred=lambda e: e["response"]["id"] != rid)
            sid = c.session_id
        store = mm_server.server.engine.agent.store
        turns = store.load_turns(sid)
        cancelled = [t for t in turns if t.turn_id == turn_id] if turn_id else turns[:1]
        assert cancelled and cancelled[0].barge_in and cancelled[0].status == "cancelled"

    run(main())


# ---- bad input -------------------------------------------------------------------------------

BAD_EVENTS: list[tuple[Any, str]] = [
    ("{not json", "invalid_json"),
    ("[1, 2]", "invalid_event"),
    ({"no_type": 1}, "invalid_event"),
    ({"type": "input_audio_buffer.apend"}, "unknown_event_type"),
    ({"type": "input_audio_buffer.append", "audio": 5}, "invalid_value"),
    ({"type": "input_audio_buffer.append"}, "missing_required_parameter"),
    ({"type": "input_audio_buffer.append", "audio": "!!not base64!!"}, "invalid_audio"),
    ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}, "invalid_audio"),
    ({"type": "input_image_buffer.append", "image": "%%%"}, "invalid_image"),
    ({"type": "input_image_buffer.append", "image": base64.b64encode(b"hello").decode()}, "invalid_image"),
    (b"\x00", "invalid_binary_frame"),
    ({"type": "session.update", "session": {"audio": {"input": {"format": {"rate": 11025}}}}},
     "unsupported_audio_format"),
    ({"type": "session.update", "session": "x"}, "invalid_value"),
    ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty"),
    ({"type": "response.cancel"}, "response_cancel_not_active"),
    ({"type": "response.create"}, "empty_turn"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                   "content": [{"type": "input_text", "text": " "}]}},
     "invalid_text"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                   "content": [{"type": "input_text", "text": "a" * 4001}]}},
     "text_too_long"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "assistant",
                                                   "content": [{"type": "input_text", "text": "hi"}]}},
     "invalid_value"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                   "content": [{"type": "input_image", "image_url": "http://x"}]}},
     "invalid_image"),
]


def test_each_bad_input_gets_its_code_and_the_session_survives(mm_server: Any) -> None:
    """Every bad event gets an error with its code and the offending event_id; the session stays usable."""
    async def main() -> None:
        async with connect(mm_server.ws_url) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            for i, (bad, code) in enumerate(BAD_EVENTS):
                if isinstance(bad, dict):
                    bad = json.dumps({**bad, "event_id": f"bad{i}"})
                await ws.send(bad)
                ev = json.loads(await ws.recv())
                assert ev["type"] == "error" and ev["error"]["code"] == code, (bad, ev)
                assert "Traceback" not in ev["error"]["message"]
                if isinstance(bad, str) and bad.startswith("{\"") and code not in ("invalid_event",):
                    assert ev["error"]["event_id"] == f"bad{i}", ev
            # Out of order: changing the rate while push-to-talk audio is buffered.
            await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
                "turn_detection": None}}}}))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(b"\x00\x01" * 480).decode()}))
            await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 16000}}}}}))
            ev = json.loads(await ws.recv())
            assert ev["error"]["code"] == "invalid_state"
            # Images that pass the magic check but fail decoding, or are too large, fail in perception.
            await ws.send(json.dumps({"type": "input_image_buffer.append", "event_id": "img1",
                                      "image": base64.b64encode(b"\xff\xd8\xff" + b"junk" * 100).decode()}))
            ev = json.loads(await ws.recv())
            assert ev["error"]["code"] == "invalid_image" and ev["error"]["event_id"] == "img1"
            await asyncio.sleep(1.1)   # past the presence interval
            await ws.send(json.dumps({"type": "input_image_buffer.append", "event_id": "img2",
                                      "image": base64.b64encode(huge_png_header()).decode()}))
            ev = json.loads(await ws.recv())
            assert ev["error"]["code"] == "image_too_large" and ev["error"]["event_id"] == "img2"
            await ws.send(json.dumps({"type": "session.update", "session": {}}))
            assert json.loads(await ws.recv())["type"] == "session.updated"

    run(main())


def test_handler_failure_closes_only_that_session(mm_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in one session's handler closes it with 1011 (no traceback sent); others keep working."""
    from server.core.conversation import Conversation
    from server.core.events import SessionUpdate

    original = Conversation.on_session_update

    def buggy(self: Conversation, ev: SessionUpdate) -> None:
        if ev.session.get("crash"):
            raise RuntimeError("simulated handler bug")
        original(self, ev)

    monkeypatch.setattr(Conversation, "on_session_update", buggy)

    async def main() -> None:
        async with connect(mm_server.ws_url) as bad, RealtimeClient(mm_server.ws_url) as good:
            await bad.recv()
            await bad.send(json.dumps({"type": "session.update", "session": {"crash": True}}))
            with pytest.raises(ConnectionClosed):
                while True:
                    msg = await bad.recv()
                    assert "Traceback" not in str(msg)
            assert bad.close_code == 1011
            await good.update_session(vision={"presence_updates": True})
            assert (await collect_until(good, "session.updated"))[-1]["type"] == "session.updated"

    run(main())


# ---- limits, auth, versions, resume ------------------------------------------------------------

@pytest.fixture(scope="module")
def strict_server() -> Any:
    srv = start_server(tokens=["tok", "tok2", "tok3"], limits={
        "max_message_bytes": 60_000, "hard_max_message_bytes": 200_000, "max_frames_per_s": 1.0,
        "frame_burst": 1.0, "max_audio_seconds_per_s": 1.0, "audio_burst_s": 0.5, "max_pending_audio_s": 1.0,
        "idle_timeout_s": 2.0, "max_sessions": 3, "max_sessions_per_token": 2, "max_errors_per_10s": 10})
    yield srv
    srv.stop()


async def _refused(url: str, **kw: Any) -> tuple[dict[str, Any], int | None]:
    async with connect(url, **kw) as ws:
        ev = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return ev, ws.close_code


def test_auth_and_version_refusals(strict_server: Any) -> None:
    """Missing/wrong token → 4401 unauthorized; unknown version → 4400; token by query, subprotocol, header."""
    url = strict_server.ws_url

    async def main() -> None:
        ev, code = await _refused(url)
        assert ev["error"]["code"] == "unauthorized" and code == 4401
        ev, code = await _refused(url + "?token=wrong")
        assert ev["error"]["code"] == "unauthorized" and code == 4401
        ev, code = await _refused(url + "?token=tok&v=2")
        assert ev["error"]["code"] == "unsupported_version" and code == 4400 and "[1]" in ev["error"]["message"]
        ev, code = await _refused(url, subprotocols=["mmagent.v9", "mmagent.token.tok"])
        assert ev["error"]["code"] == "unsupported_version" and code == 4400
        async with connect(url, subprotocols=["mmagent.v1", "mmagent.token.tok"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "mmagent.v1"
            assert json.loads(await ws.recv())["type"] == "session.created"
        async with connect(url, additional_headers={"Authorization": "Bearer tok2"}) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"

    run(main())


def test_limits_each_with_its_code(strict_server: Any) -> None:
    """Message size, frame rate, audio rate and pending audio limits answer with their codes."""
    url = strict_server.ws_url + "?token=tok"
    img = jpeg(np.zeros((8, 8, 3), np.uint8))

    async def main() -> None:
        async with connect(url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "session.update", "session": {"vision": {"presence_updates": False},
                                      "audio": {"input": {"turn_detection": None}}}}))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            await ws.send(json.dumps({"type": "response.create", "pad": "x" * 70_000}))
            assert json.loads(await ws.recv())["error"]["code"] == "message_too_large"
            b64 = base64.b64encode(img).decode()
            await ws.send(json.dumps({"type": "input_image_buffer.append", "image": b64}))
            await ws.send(json.dumps({"type": "input_image_buffer.append", "image": b64, "event_id": "f2"}))
            ev = json.loads(await ws.recv())
            assert ev["error"]["code"] == "frame_rate_exceeded" and ev["error"]["event_id"] == "f2"
            from server.protocol import encode_binary

            await ws.send(encode_binary({"type": "input_audio_buffer.append"}, b"\x00\x00" * 24000))  # 1 s > burst
            assert json.loads(await ws.recv())["error"]["code"] == "audio_rate_exceeded"
            codes = []
            for _ in range(3):   # 0.4 s chunks at real time: the third would exceed 1 s pending
                await ws.send(encode_binary({"type": "input_audio_buffer.append"}, b"\x00\x00" * 9600))
                await asyncio.sleep(0.45)
            with pytest.raises(TimeoutError):
                while True:
                    async with asyncio.timeout(0.5):
                        codes.append(json.loads(await ws.recv())["error"]["code"])
            assert codes == ["audio_buffer_full"]
            await ws.send(encode_binary({"type": "response.create"}, b""))
            assert json.loads(await ws.recv())["error"]["code"] == "invalid_binary_frame"
            await ws.send(b"\x00" * 300_000)   # over the hard limit: the socket closes with 1009
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
            assert ws.close_code == 1009

    run(main())


def test_idle_timeout_and_error_flood_close(strict_server: Any) -> None:
    """Idle sessions close with 4408; a client causing too many errors is closed with 1008."""
    url = strict_server.ws_url + "?token=tok"

    async def main() -> None:
        async with connect(url) as ws:
            await ws.recv()
            ev = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert ev["error"]["code"] == "idle_timeout"
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4408
        async with connect(url) as ws:
            await ws.recv()
            codes = []
            with pytest.raises(ConnectionClosed):
                for _ in range(100):
                    try:
                        await ws.send("nope")
                    except ConnectionClosed:
                        pass   # closed by the server: read what it sent before closing
                    codes.append(json.loads(await ws.recv())["error"]["code"])
            assert codes[-1] == "too_many_errors" and ws.close_code == 1008
            assert codes.count("invalid_json") == 11   # the budget is 10 errors per 10 s

    run(main())


def test_session_caps_per_token_and_total(strict_server: Any) -> None:
    """max_sessions_per_token and max_sessions refuse extra sessions with 4429."""
    base = strict_server.ws_url

    async def main() -> None:
        a = await connect(base + "?token=tok")
        b = await connect(base + "?token=tok")
        for ws in (a, b):
            await ws.recv()
        ev, code = await _refused(base + "?token=tok")
        assert ev["error"]["code"] == "too_many_sessions" and code == 4429
        c = await connect(base + "?token=tok2")
        await c.recv()
        ev, code = await _refused(base + "?token=tok2")
        assert ev["error"]["code"] == "too_many_sessions" and code == 4429 and "max_sessions" in ev["error"]["message"]
        for ws in (a, b, c):
            await ws.close()

    run(main())


def test_resume_replace_and_unknown_session(strict_server: Any) -> None:
    """Resuming by id keeps the id; a second connection replaces the first (4409); unknown ids get a new one."""
    base = strict_server.ws_url + "?token=tok3"

    async def main() -> None:
        first = await connect(base)
        created = json.loads(await first.recv())
        sid = created["session"]["id"]
        second = await connect(base + f"&session_id={sid}")
        again = json.loads(await second.recv())
        assert again["session"]["id"] == sid and again["session"]["resumed"] is True
        ev = json.loads(await first.recv())
        assert ev["error"]["code"] == "session_replaced"
        with pytest.raises(ConnectionClosed):
            await first.recv()
        assert first.close_code == 4409
        await second.close()
        third = await connect(base + "&session_id=sess_doesnotexist")
        created = json.loads(await third.recv())
        assert created["session"]["id"] != "sess_doesnotexist" and created["session"]["resumed"] is False
        assert json.loads(await third.recv())["error"]["code"] == "session_not_found"
        await third.close()

    run(main())


def test_client_reconnects_and_resumes(mm_server: Any) -> None:
    """The Python client reconnects after a dropped connection and resumes the same session."""
    async def main() -> None:
        async with RealtimeClient(mm_server.ws_url) as c:
            sid = c.session_id
            server_session = mm_server.server.sessions[sid]
            fut = asyncio.run_coroutine_threadsafe(server_session.ws.close(1012, "restart"), mm_server.loop)
            await asyncio.wrap_future(fut)
            evs = await collect_until(c, "client.reconnected", timeout=20)
            assert "client.disconnected" in types_of(evs)
            assert c.session_id == sid and c.session and c.session["resumed"] is True
            await c.send_text("hello")
            await collect_until(c, "response.done")

    run(main())


# ---- concurrency -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short_reply_server() -> Any:
    """The real pipeline with replies capped at 8 tokens (the local LLM generates one reply at a time).
    Admission control off (max_waiting_turns 0): the 20 turns of its test all wait and all complete;
    shedding them is tested in tests/test_server_hardening.py."""
    srv = start_server(agent={"responder": {"kind": "local", "local": {"max_new_tokens": 8}}},
                       pipeline={"max_waiting_turns": 0})
    yield srv
    srv.stop()


def test_twenty_sessions_complete_while_one_floods(short_reply_server: Any) -> None:
    """20 concurrent text turns complete without error while another session floods invalid events."""
    mm_server = short_reply_server
    questions = ["Where are the batteries?", "What are your opening hours?", "Can I return shoes?",
                 "How much is the coffee?", "Hello!"]

    async def one(i: int) -> dict[str, Any]:
        async with RealtimeClient(mm_server.ws_url, reconnect=False) as c:
            await c.send_text(questions[i % len(questions)])
            evs = await collect_until(c, "response.done", timeout=240)
            assert "error" not in types_of(evs), [e for e in evs if e["type"] == "error"]
            return evs[-1]["response"]

    async def flood(stop: asyncio.Event) -> int:
        sent = 0
        async with connect(mm_server.ws_url) as ws:
            await ws.recv()
            try:
                while not stop.is_set():
                    await ws.send('{"type": "bogus"}' if sent % 2 else "{{{")
                    sent += 1
                    if sent % 20 == 0:
                        await asyncio.sleep(0.01)
            except ConnectionClosed:
                pass
        return sent

    async def main() -> None:
        stop = asyncio.Event()
        flooder = asyncio.ensure_future(flood(stop))
        results = await asyncio.gather(*(one(i) for i in range(20)))
        stop.set()
        assert await flooder > 50
        assert all(r["status"] == "completed" for r in results)

    run(main())
    assert pcm16(np.zeros(2, np.float32)) == b"\x00" * 4


def test_disconnect_cancels_the_turn(llm_server: Any) -> None:
    """A client that disconnects mid-reply: its session is dropped and the agent stores the turn as cancelled."""
    mm_server = llm_server
    async def main() -> str:
        c = RealtimeClient(mm_server.ws_url, reconnect=False)
        await c.connect()
        await c.send_text("Please describe all the products you sell, one by one.")
        await collect_until(c, "response.output_text.delta")
        sid = c.session_id
        assert sid is not None
        await c.close()
        return sid

    sid = run(main())
    store = mm_server.server.engine.agent.store
    deadline = time.time() + 5
    while time.time() < deadline:
        turns = store.load_turns(sid)
        if sid not in mm_server.server.sessions and turns:
            break
        time.sleep(0.1)
    assert sid not in mm_server.server.sessions
    assert [t.status for t in store.load_turns(sid)] == ["cancelled"]


def test_serve_cli_prints_url_and_masks_secrets(tmp_path: Any) -> None:
    """`mmagent serve` summarises its config without the token and prints the URL to open; remote
    binds need a token."""
    import subprocess
    import sys
    import threading

    from tests.conftest import REPO_ROOT

    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", "0", "--lazy", "--token", "s3cret-token"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    watchdog = threading.Timer(120, proc.kill)   # a server that never says it is ready fails, not hangs
    watchdog.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "— open http" in line:
                break
        out = "".join(lines)
        assert "— open http" in out, out
        assert "s3cret-token" not in out and "access: 1 token" in out
        url = out.split("— open ", 1)[1].split("?", 1)[0].split(" ", 1)[0].strip()
        assert json.loads(urllib.request.urlopen(url + "healthz", timeout=10).read())["models_loaded"] is False
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(30)
    refused = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--lazy"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                             env={**__import__("os").environ, "MMAGENT_TOKENS": ""})
    assert refused.returncode == 1 and "invalid_config" in refused.stderr and "token" in refused.stderr


def test_event_loop_stays_responsive_while_a_reply_generates(mm_server: Any) -> None:
    """While one session's LLM generates, another session's round trips stay fast (model calls are off the loop)."""
    async def main() -> None:
        async with RealtimeClient(mm_server.ws_url) as a, RealtimeClient(mm_server.ws_url) as b:
            await a.send_text("Can you explain how returns and refunds work here, step by step?")
            await collect_until(a, "response.created")
            rtts = []
            for _ in range(5):
                t0 = time.perf_counter()
                await b.update_session(vision={"presence_updates": True})
                await collect_until(b, "session.updated", timeout=10)
                rtts.append(time.perf_counter() - t0)
                await asyncio.sleep(0.1)
            done = (await collect_until(a, "response.done"))[-1]
            assert done["response"]["status"] == "completed"
            assert max(rtts) < 1.0, rtts

    run(main())


def test_metrics_after_turns(mm_server: Any) -> None:
    """After a turn, an audio chunk and a bad event, /metrics counts turns, errors by code and stage latencies."""
    async def main() -> None:
        async with RealtimeClient(mm_server.ws_url) as c:
            await c.append_audio(np.zeros(4800, np.int16))
            await c.send({"type": "bogus.event"})
            await c.send_text("Hello!")
            await collect_until(c, "response.done")

    run(main())
    text = urllib.request.urlopen(mm_server.url + "metrics", timeout=10).read().decode()
    assert 'mmagent_turns_total{status="completed"}' in text
    assert 'mmagent_errors_total{code="unknown_event_type"}' in text
    for stage in ("vad", "text", "frames", "first_delta", "turn"):
        assert f'mmagent_stage_seconds_count{{stage="{stage}"}}' in text, stage
    assert 'mmagent_batch_size_count{model="text"}' in text
