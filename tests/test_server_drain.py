"""Draining a front end (what SIGTERM does): /healthz turns 503, new sessions are refused with 503,
the turn in flight finishes and reaches the client, then the session is closed with 1012 so the
client reconnects elsewhere; a session with nothing in flight is closed at once."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from server.client import RealtimeClient
from tests.conftest import ARTIFACTS, start_server

pytestmark = pytest.mark.slow
# start_server()'s default store (the same settings as the session's server: the models are shared)
STORE = ARTIFACTS / "server_state" / "sessions.sqlite3"


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_drain_finishes_the_turn_in_flight_then_closes_1012() -> None:
    srv: Any = start_server()
    try:
        status, health = _get(srv.url + "healthz")
        assert status == 200 and health["status"] == "ok" and health["ready"] is True

        async def main() -> None:
            from websockets.asyncio.client import connect
            from websockets.exceptions import InvalidStatus

            busy = RealtimeClient(srv.ws_url, reconnect=False)
            idle = RealtimeClient(srv.ws_url, reconnect=False)
            await busy.connect()
            await idle.connect()
            await busy.send_text("What are your opening hours on Sunday?")
            await busy.wait_for("response.created", timeout=60)
            drain = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(srv.server.drain(60), srv.loop))
            await asyncio.sleep(0.2)
            status, health = await asyncio.to_thread(_get, srv.url + "healthz")
            assert status == 503 and health["status"] == "draining" and health["ready"] is False
            with pytest.raises(InvalidStatus) as refused:
                await connect(srv.ws_url + "?v=1")
            assert refused.value.response.status_code == 503
            assert json.loads(refused.value.response.body)["error"]["code"] == "server_draining"
            # the idle session is told to go at once; the busy one only after its reply is out
            await asyncio.wait_for(idle._finished.wait(), 10)
            assert (idle.close_code, idle.close_reason) == (1012, "service_restart")
            done = await busy.wait_for("response.done", timeout=90)
            assert done["response"]["status"] == "completed"
            text = done["response"]["output"][0]["content"][0]["text"]
            assert text.strip()
            await asyncio.wait_for(busy._finished.wait(), 10)
            assert busy.close_code == 1012
            closed = await drain
            assert closed == {"idle": 2, "cut": 0}
            # the completed turn is in the store: another front end would resume it
            from agent import SessionStore

            store = SessionStore(STORE)
            assert busy.session_id is not None
            turns = store.load_session(busy.session_id).turns
            assert [(t.status, t.reply) for t in turns] == [("completed", text)]
            store.close()

        asyncio.run(main())
    finally:
        srv.stop()


def test_drain_deadline_cuts_a_turn_and_marks_it() -> None:
    """A turn still running at the drain deadline is stopped and the session closed with 1012;
    the store keeps the turn as cancelled, never as completed. The local model writes the reply
    (seconds on this CPU; the dialogue manager is off, else the off-topic "poem" is answered at
    once from the pack), so the turn is still running when the drain's deadline passes."""
    srv: Any = start_server(agent={"responder": {"kind": "local"}, "dialogue": {"enabled": False}})
    try:
        async def main() -> None:
            c = RealtimeClient(srv.ws_url, reconnect=False)
            await c.connect()
            await c.send_text("Can you write me a poem about batteries and headphones?")
            # the first delta: the turn is committed (shown), and the language model is still writing
            await c.wait_for("response.output_text.delta", timeout=60)
            closed = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(srv.server.drain(0.0), srv.loop))
            assert closed == {"idle": 0, "cut": 1}
            await asyncio.wait_for(c._finished.wait(), 10)
            assert c.close_code == 1012
            from agent import SessionStore

            store = SessionStore(STORE)
            assert c.session_id is not None
            for _ in range(50):   # the server stores the stopped turn as it shuts the session down
                turns = store.load_turns(c.session_id)
                if turns:
                    break
                await asyncio.sleep(0.1)
            assert [t.status for t in turns] == ["cancelled"]
            store.close()

        asyncio.run(main())
    finally:
        srv.stop()
