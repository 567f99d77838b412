"""The kiosk greeting fires on a face's arrival while presence updates are on (real server, real
face detector): the wordless turn the kiosk page sends when someone steps up is answered by the
agent with the pack's greeting, not left empty because a presence update saw the face first."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest

from tests.conftest import start_server


def _jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = start_server(state_dir=str(tmp_path_factory.mktemp("greet_state")),
                       agent={"responder": {"kind": "extractive"}})
    yield srv
    srv.stop()


async def _presence(c: Any, timeout: float = 60.0) -> dict[str, Any]:
    async for ev in c.events(timeout=timeout):
        if ev.get("type") == "perception.updated" and ev.get("source") == "frame":
            return ev
        assert ev.get("type") != "error", ev
    raise AssertionError("no presence update")


async def _respond(c: Any) -> dict[str, Any]:
    await c.create_response()
    async for ev in c.events(timeout=60):
        if ev.get("type") == "response.done":
            r: dict[str, Any] = ev["response"]
            return r
    raise AssertionError("no response.done")


def _text(r: dict[str, Any]) -> str:
    return "".join(p.get("text", "") for item in r.get("output") or [] for p in item.get("content") or []
                   if p.get("type") == "output_text")


def test_greeting_fires_after_presence_saw_the_face(server: Any) -> None:
    from skimage import data

    from agent.pack import load_pack
    from server.client import RealtimeClient

    greeting = load_pack(None).messages["greeting"]
    blank = _jpeg(np.full((480, 640, 3), 128, np.uint8))
    face = _jpeg(data.astronaut())

    async def go() -> None:
        async with RealtimeClient(server.ws_url, reconnect=False) as c:
            assert (c.session or {}).get("vision", {}).get("presence_updates", True)
            await c.send_frame(blank)
            assert (await _presence(c))["face_count"] == 0          # nobody in view
            await asyncio.sleep(1.1)                                # one presence interval
            await c.send_frame(face)
            assert (await _presence(c))["face_count"] >= 1          # presence saw the person first
            r = await _respond(c)                                   # the page's wordless "greet" turn
            assert r["status"] == "completed"
            assert (r.get("turn") or {}).get("route") == "greeting", r.get("turn")
            assert _text(r) == greeting
            # The same person still there: a second wordless turn is not greeted again.
            await asyncio.sleep(1.1)
            await c.send_frame(face)
            await _presence(c)
            again = await _respond(c)
            assert _text(again) == "" and (again.get("turn") or {}).get("route") != "greeting"
            # They leave (presence sees the empty view) and come back: greeted again.
            await asyncio.sleep(1.1)
            await c.send_frame(blank)
            assert (await _presence(c))["face_count"] == 0
            await asyncio.sleep(1.1)
            await c.send_frame(face)
            assert (await _presence(c))["face_count"] >= 1
            back = await _respond(c)
            assert _text(back) == greeting

    asyncio.run(go())
