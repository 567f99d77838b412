"""The Realtime GA surface through the real server, agent and store (the SDK's view of the same
is tests/conformance/): the issue's reproduction, a device result the agent continues from, and
items deleted or truncated out of the stored history."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from server.client import RealtimeClient
from tests.conftest import synth_speech
from tests.test_server_e2e import collect_until, types_of

pytestmark = pytest.mark.slow


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_pause_then_turn_detection_off_stores_nothing_unseen(mm_server: Any) -> None:
    """Speak, pause mid-sentence (a preemptive reply starts), switch turn detection off: the client
    sees only speech_started and session.updated, and the agent stores no turn."""
    a, sr = synth_speech("Where can I find", sample_rate=24000)
    voiced = np.nonzero(np.abs(a) > 0.01)[0]
    a = a[: voiced[-1] + 1]   # espeak-ng ends with ~345 ms of silence: cut it, pause 250 ms (< 500)
    pcm = np.concatenate([np.zeros(sr // 2, np.float32), a, np.zeros(sr // 4, np.float32)])

    async def main() -> str:
        async with RealtimeClient(mm_server.ws_url) as c:
            t0 = time.perf_counter()
            for i, start in enumerate(range(0, len(pcm), sr // 50)):
                await c.append_audio(pcm[start:start + sr // 50])
                await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.perf_counter()))
            await c.update_session(audio={"input": {"turn_detection": None}})
            evs = await collect_until(c, "session.updated")
            with pytest.raises(TimeoutError):
                evs += await collect_until(c, "response.done", timeout=4.0)
            ts = [t for t in types_of(evs) if t != "session.created"]
            assert ts == ["input_audio_buffer.speech_started", "session.updated"], ts
            assert c.session_id is not None
            return c.session_id

    sid = run(main())
    assert mm_server.server.engine.agent.store.load_turns(sid) == []
    assert mm_server.server.engine.metrics.preemptive.value(outcome="discarded") >= 1


def test_action_result_and_item_edits_reach_the_stored_turns(mm_server: Any) -> None:
    """A function call, its result, the agent's continuation; deleting an answered item takes its
    turn out of the history; truncating a text reply at 0 ms empties the stored reply."""
    async def main() -> str:
        async with RealtimeClient(mm_server.ws_url) as c:
            await c.send_text("Where can I find the batteries?")
            evs = await collect_until(c, "response.done")
            call = next(e for e in evs if e["type"] == "response.function_call_arguments.done")
            action = next(e for e in evs if e["type"] == "response.action")
            assert call["call_id"] == action["call_id"] and action["name"] == "show_on_map"
            await c.send_action_result(call["call_id"], {"ok": False, "error": "map screen offline"})
            done = (await collect_until(c, "response.done"))[-1]["response"]
            assert done["status"] == "completed" and done["turn"]["route"] == "tool_result"
            text = done["output"][0]["content"][0]["text"]
            assert "map screen offline" in text, text
            first = evs[-1]["response"]["output"][0]["id"]
            await c.send({"type": "conversation.item.truncate", "item_id": first, "content_index": 0,
                          "audio_end_ms": 0})
            await collect_until(c, "conversation.item.truncated")
            user = next(e for e in evs if e["type"] == "conversation.item.added"
                        and e["item"]["role"] == "user")["item"]["id"]
            await c.send({"type": "conversation.item.delete", "item_id": user})
            await collect_until(c, "conversation.item.deleted")
            await asyncio.sleep(0.5)
            assert c.session_id is not None
            return c.session_id

    sid = run(main())
    turns = mm_server.server.engine.agent.store.load_turns(sid)
    assert [t.route for t in turns] == ["local", "tool_result"] or turns[1].route == "tool_result"
    assert turns[0].status == "deleted" and turns[0].reply == "" and turns[0].barge_in


def test_recording_uploaded_faster_than_real_time(mm_server: Any) -> None:
    """A recorded question sent at once — one append of the whole file, or 40 ms chunks with no
    pause — is accepted (the audio burst) and answered, with no rate error."""
    x, sr = synth_speech("Hello. Where can I return a pair of shoes?", sample_rate=24000)
    pcm = np.concatenate([np.zeros(sr // 2, np.float32), x, np.zeros(sr * 3 // 2, np.float32)])

    async def main(chunked: bool) -> None:
        async with RealtimeClient(mm_server.ws_url) as c:
            if chunked:
                for start in range(0, len(pcm), sr // 25):
                    await c.append_audio(pcm[start:start + sr // 25])
            else:
                await c.append_audio(pcm, binary=False)
            evs = await collect_until(c, "response.done")
            ts = types_of(evs)
            assert "error" not in ts, [e for e in evs if e["type"] == "error"]
            assert ts.count("input_audio_buffer.speech_started") == 1
            tr = next(e for e in evs if e["type"] == "conversation.item.input_audio_transcription.completed")
            assert "return" in tr["transcript"].lower() and evs[-1]["response"]["status"] == "completed"

    run(main(False))
    run(main(True))
