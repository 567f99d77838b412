"""Drive a running mmagent server with the official OpenAI Python SDK (``openai[realtime]``),
as an existing Realtime client would: only the base URL and the key are ours.

Runs in the SDK's own virtual environment (.venv-openai/, tests/conformance/requirements.lock),
started by tests/conformance/test_openai_sdk.py. Every server event is validated against the
SDK's pydantic models (``openai.types.realtime.RealtimeServerEvent``); the report (JSON on
stdout) lists each scenario's outcome, the event counts and every validation error.

    .venv-openai/bin/python tests/conformance/sdk_driver.py --base-url http://127.0.0.1:PORT/v1 \
        --key KEY --speech speech.pcm
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import traceback
from collections import Counter
from typing import Any

import pydantic
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent

ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RealtimeServerEvent)
EXTENSIONS = {"perception.updated", "turn.fused", "response.action"}   # documented mmagent events


class Recorder:
    """Validates every raw server event; keeps the counts and the errors."""

    def __init__(self) -> None:
        self.types: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []
        self.extensions: Counter[str] = Counter()

    def check(self, raw: bytes | str, *, strict: bool) -> dict[str, Any]:
        data = json.loads(raw)
        kind = data.get("type", "?")
        if not strict and kind in EXTENSIONS:
            self.extensions[kind] += 1
            return data
        self.types[kind] += 1
        try:
            ADAPTER.validate_python(data)
        except pydantic.ValidationError as exc:
            self.errors.append({"type": kind, "errors": exc.errors(include_url=False)[:5],
                                "event": json.dumps(data)[:600]})
        return data


class Session:
    """One SDK connection whose events all pass through the recorder."""

    def __init__(self, conn: Any, rec: Recorder, strict: bool) -> None:
        self.conn, self.rec, self.strict = conn, rec, strict
        self.seen: list[dict[str, Any]] = []

    async def next(self, timeout: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv_bytes(), timeout)
        ev = self.rec.check(raw, strict=self.strict)
        self.seen.append(ev)
        return ev

    async def until(self, kind: str, timeout: float = 120.0, pred: Any = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            ev = await self.next(max(0.1, deadline - time.monotonic()))
            if ev["type"] == "error" and kind != "error":
                raise AssertionError(f"error while waiting for {kind}: {ev['error']}")
            if ev["type"] == kind and (pred is None or pred(ev)):
                return ev

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Every event within ``seconds`` (none expected, typically)."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(await self.next(left))
            except TimeoutError:
                break
        return out

    async def text(self, text: str) -> None:
        await self.conn.conversation.item.create(item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})

    async def append(self, pcm: bytes, *, chunk_ms: int = 40, speed: float = 4.0) -> None:
        step = 24000 * 2 * chunk_ms // 1000
        for i in range(0, len(pcm), step):
            await self.conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + step]).decode())
            await asyncio.sleep(chunk_ms / 1000 / speed)


def reply_text(done: dict[str, Any]) -> str:
    return "".join(c.get("text") or c.get("transcript") or "" for o in done["response"]["output"]
                   if o["type"] == "message" for c in o["content"])


# ---- scenarios ----------------------------------------------------------------------------------

async def text_turn(s: Session) -> dict[str, Any]:
    created = await s.until("session.created")
    assert created["session"]["type"] == "realtime"
    await s.text("What are your opening hours?")
    await s.until("conversation.item.added")
    await s.conn.response.create()
    done = await s.until("response.done")
    kinds = [e["type"] for e in s.seen]
    for k in ("response.created", "response.output_item.added", "response.content_part.added",
              "response.output_text.delta", "response.output_text.done", "response.content_part.done",
              "response.output_item.done", "conversation.item.done"):
        assert k in kinds, k
    assert done["response"]["status"] == "completed" and reply_text(done).strip()
    assert done["response"]["usage"]["total_tokens"] > 0
    return {"reply": reply_text(done), "usage": done["response"]["usage"]}


async def vad_audio_turn(s: Session, speech: bytes) -> dict[str, Any]:
    await s.until("session.created")
    await s.conn.session.update(session={"type": "realtime", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500, "create_response": True}}}})
    await s.until("session.updated")
    await s.append(speech + b"\x00\x00" * 24000)
    await s.until("input_audio_buffer.speech_started")
    await s.until("input_audio_buffer.speech_stopped")
    tr = await s.until("conversation.item.input_audio_transcription.completed")
    done = await s.until("response.done")
    assert done["response"]["status"] == "completed"
    return {"transcript": tr["transcript"], "reply": reply_text(done)}


async def manual_commit(s: Session, speech: bytes) -> dict[str, Any]:
    await s.until("session.created")
    await s.conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    await s.until("session.updated")
    await s.append(speech)
    await s.conn.input_audio_buffer.commit()
    await s.until("input_audio_buffer.committed")
    tr = await s.until("conversation.item.input_audio_transcription.completed")
    extra = await s.quiet(1.5)
    assert not [e for e in extra if e["type"].startswith("response.")], "a commit alone must not start a response"
    await s.conn.response.create()
    done = await s.until("response.done")
    assert done["response"]["status"] == "completed"
    return {"transcript": tr["transcript"], "reply": reply_text(done)}


async def cancel(s: Session) -> dict[str, Any]:
    await s.until("session.created")
    await s.text("Tell me about your return policy for shoes and electronics in detail.")
    await s.conn.response.create()
    created = await s.until("response.created")
    await s.conn.response.cancel(response_id=created["response"]["id"])
    done = await s.until("response.done")
    assert done["response"]["status"] == "cancelled", done["response"]["status"]
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    return {"status": done["response"]["status"]}


async def truncate_retrieve_delete(s: Session) -> dict[str, Any]:
    await s.until("session.created")
    await s.text("Hello!")
    await s.conn.response.create()
    done = await s.until("response.done")
    item = next(o for o in done["response"]["output"] if o["type"] == "message")
    await s.conn.conversation.item.truncate(item_id=item["id"], content_index=0, audio_end_ms=0)
    tr = await s.until("conversation.item.truncated")
    await s.conn.conversation.item.retrieve(item_id=item["id"])
    got = await s.until("conversation.item.retrieved")
    assert got["item"]["content"][0]["text"] == ""   # nothing of it was heard
    await s.conn.conversation.item.delete(item_id=item["id"])
    await s.until("conversation.item.deleted")
    return {"truncated": tr["item_id"]}


async def function_call(s: Session) -> dict[str, Any]:
    created = await s.until("session.created")
    tools = [t["name"] for t in created["session"]["tools"]]
    assert "show_on_map" in tools, tools
    await s.text("Where can I find the batteries?")
    await s.conn.response.create()
    args = await s.until("response.function_call_arguments.done")
    done = await s.until("response.done")
    calls = [o for o in done["response"]["output"] if o["type"] == "function_call"]
    assert calls and calls[0]["call_id"] == args["call_id"]
    await s.conn.conversation.item.create(item={"type": "function_call_output", "call_id": args["call_id"],
                                                "output": json.dumps({"shown": True, "aisle": 7})})
    added = await s.until("conversation.item.added")
    assert added["item"]["type"] == "function_call_output"
    await s.conn.response.create()
    after = await s.until("response.done")
    assert after["response"]["status"] == "completed" and reply_text(after).strip()
    return {"call": {"name": args["name"], "arguments": args["arguments"]}, "continued": reply_text(after)}


async def out_of_band(s: Session) -> dict[str, Any]:
    await s.until("session.created")
    await s.conn.response.create(response={
        "conversation": "none", "instructions": "Answer briefly.", "max_output_tokens": 8,
        "metadata": {"purpose": "classification"}, "output_modalities": ["text"],
        "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "Do you sell umbrellas?"}]}]})
    done = await s.until("response.done")
    r = done["response"]
    assert r["status"] == "completed" and r["metadata"] == {"purpose": "classification"}, r
    assert r["conversation_id"] is None and r["max_output_tokens"] == 8, r
    added = [e for e in s.seen if e["type"] == "conversation.item.added"]
    assert not added, "an out-of-band response adds nothing to the conversation"
    return {"reply": reply_text(done)}


async def settings(s: Session) -> dict[str, Any]:
    await s.until("session.created")
    out = {}
    for label, inp in (("semantic_vad", {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}),
                       ("pcm16k", {"format": {"type": "audio/pcm", "rate": 16000}}),
                       ("pcmu", {"format": {"type": "audio/pcmu"}}),
                       ("pcma", {"format": {"type": "audio/pcma"}})):
        await s.conn.session.update(session={"type": "realtime", "audio": {"input": inp}})
        ev = await s.until("session.updated")
        out[label] = ev["session"]["audio"]["input"]
    return out


async def with_extensions(s: Session) -> dict[str, Any]:
    """Default session (extensions on): GA events still validate; the others are the documented ones."""
    await s.until("session.created")
    await s.text("What are your opening hours?")
    await s.conn.response.create()
    await s.until("response.done")
    return {"extension_events": sorted(set(s.rec.extensions))}


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--speech", required=True, help="PCM16 24 kHz mono of a spoken question")
    args = ap.parse_args()
    with open(args.speech, "rb") as f:
        speech = f.read()
    client = AsyncOpenAI(api_key=args.key, base_url=args.base_url)
    rec = Recorder()
    report: dict[str, Any] = {"scenarios": {}}
    plan: list[tuple[str, Any, bool]] = [
        ("text_turn", text_turn, True), ("audio_turn_server_vad", lambda s: vad_audio_turn(s, speech), True),
        ("manual_commit", lambda s: manual_commit(s, speech), True), ("cancel", cancel, True),
        ("truncate_retrieve_delete", truncate_retrieve_delete, True), ("function_call", function_call, True),
        ("out_of_band", out_of_band, True), ("session_settings", settings, True),
        ("with_extensions", with_extensions, False)]
    for name, fn, strict in plan:
        t0 = time.monotonic()
        try:
            query = {"extensions": "off"} if strict else {}
            async with client.realtime.connect(model="mmagent", extra_query=query) as conn:
                result = await fn(Session(conn, rec, strict))
            report["scenarios"][name] = {"ok": True, "s": round(time.monotonic() - t0, 1), "result": result}
        except Exception as exc:  # one failing scenario must not hide the others
            report["scenarios"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                         "trace": traceback.format_exc()[-1500:]}
    report["events_validated"] = sum(rec.types.values())
    report["event_types"] = dict(sorted(rec.types.items()))
    report["extension_events"] = dict(rec.extensions)
    report["validation_errors"] = rec.errors
    import openai

    report["sdk"] = {"openai": openai.__version__, "websockets": __import__("websockets").__version__}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
