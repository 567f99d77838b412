"""Scale-out on this machine: PostgreSQL 15 in a temporary directory, the model tier on a local Ray
cluster (``mmagent models serve``: the encoders and the language model as Ray Serve deployments),
two ``mmagent serve`` front ends sharing both (``serving.engine: ray``), HAProxy
(deploy/haproxy.cfg) in front, the Python client through the balancer.

One session lives through everything a fleet does to it: a typed turn and a spoken turn; its
front end is SIGKILLed with a turn in flight (the client resumes on the other one and the
completed turns are all there); the killed one comes back; the survivor is drained with SIGTERM
while a turn is in flight (that turn finishes and reaches the client, the session is told 1012,
the client resumes on the restarted front end). The store is read behind the front ends' backs:
every completed turn, in order, one row each — each front end read what the other wrote.
``pytest -m scale`` runs it alone. Timings are written to artifacts/scale_test.json.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest

from server.client import RealtimeClient
from tests.conftest import ARTIFACTS, synth_speech

pytestmark = [pytest.mark.scale, pytest.mark.slow]


async def _until(c: RealtimeClient, type_: str, timeout: float = 120.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for ev in c.events():
            out.append(ev)
            if ev["type"] == type_:
                return out
    raise AssertionError(f"session ended before {type_}: {[e['type'] for e in out]}")


def _reply(done: dict[str, Any]) -> str:
    return "".join(c.get("text", "") for o in done["response"]["output"] for c in o.get("content", []))


async def _typed(c: RealtimeClient, text: str) -> dict[str, Any]:
    await c.send_text(text)
    evs = await _until(c, "response.done")
    assert "error" not in [e["type"] for e in evs], evs
    return evs[-1]


def _serving(stack: Any) -> Any:
    """The front end that holds the (single) open session."""
    for _ in range(50):
        holders = [fe for fe in stack.front_ends if fe.sessions() == 1]
        if len(holders) == 1:
            return holders[0]
        time.sleep(0.1)
    raise AssertionError(f"sessions per front end: {[fe.sessions() for fe in stack.front_ends]}")


_TIER_CHECK = """
import json, sys
import ray
from ray import serve
from server.config import load_config
from server.engine import perception_config_for
from server.serving.engine import RemotePerception
from perception import Perception
from perception.errors import MMAgentError
ray.init(address=sys.argv[1], log_to_driver=False, include_dashboard=False)
config = load_config(None, env={})
handles = {m: serve.get_app_handle("mmagent-" + m) for m in ("text", "speech", "vision")}
remote, local = RemotePerception(perception_config_for(config), handles), Perception(perception_config_for(config))
a = remote.encode_text(["where are the batteries?", "opening hours"])
b = local.encode_text(["where are the batteries?", "opening hours"])
out = {"cos": [float((x.embedding * y.embedding).sum()) for x, y in zip(a, b)]}
try:
    remote.encode_text([""])
except MMAgentError as exc:
    out["empty_text"] = exc.code
try:
    remote.encode_frames([b"\\xff\\xd8 not a jpeg"])
except MMAgentError as exc:
    out["bad_image"] = exc.code
print(json.dumps(out))
"""


def _check_model_tier_directly(address: str) -> None:
    """The deployments answer like the in-process encoders, and a bad input comes back as the
    project's error with its code (another process, as a front end would call them)."""
    import os
    import subprocess
    import sys

    from tests.scale_stack import RAY_CLIENT_ENV, REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **RAY_CLIENT_ENV}
    proc = subprocess.run([sys.executable, "-c", _TIER_CHECK, address], capture_output=True, text=True, env=env,
                          timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(c > 0.999 for c in out["cos"]), out
    assert out["empty_text"] == "invalid_text" and out["bad_image"] == "invalid_image", out


def test_two_front_ends_behind_haproxy_share_sessions_and_survive_kill_and_drain(pg_server: Any) -> None:
    from tests.scale_stack import ScaleStack

    t_start = time.monotonic()
    # Ray's scheduling CPUs: a quarter each, so all three deployments fit a small CI machine.
    small = {"num_cpus": 0.25}
    stack = ScaleStack(2, pg=pg_server, ray=True,
                       extra={"serving": {"text": small, "speech": small, "vision": small, "llm": small},
                              # the local model writes the replies (on the Ray tier): seconds
                              # per reply, so the kill and the drain land mid-turn (the dialogue
                              # manager off: it would answer the off-topic "poem" from the pack at once)
                              "agent": {"responder": {"kind": "local"}, "dialogue": {"enabled": False}}})
    timings: dict[str, float] = {}
    try:
        stack.start()
        assert stack.lb is not None
        timings["stack_start_s"] = time.monotonic() - t_start
        assert stack.models is not None
        _check_model_tier_directly(stack.models.gcs_address)
        completed: list[dict[str, Any]] = []   # response.done of every completed turn, in order

        async def main() -> None:
            assert stack.lb is not None
            c = RealtimeClient(stack.lb.ws_url, max_reconnect_s=60)
            await c.connect()
            sid = c.session_id
            assert sid and c.session and c.session["resumed"] is False
            reconnects: list[float] = []
            lost_at: list[float] = []

            def on_disconnect(ev: dict[str, Any]) -> None:
                lost_at.append(time.monotonic())

            def on_reconnect(ev: dict[str, Any]) -> None:
                reconnects.append(time.monotonic() - lost_at[-1])

            c.on("client.disconnected", on_disconnect)
            c.on("client.reconnected", on_reconnect)

            # 1. a typed turn and a spoken turn through the balancer
            done = await _typed(c, "What time do you open on Saturday?")
            assert done["response"]["status"] == "completed" and _reply(done).strip()
            completed.append(done)
            x, sr = synth_speech("Where can I find the batteries?", sample_rate=24000)
            pcm = np.concatenate([np.zeros(sr // 2, np.float32), x, np.zeros(sr * 3 // 2, np.float32)])
            chunk, t0 = sr // 50, time.perf_counter()
            for i, start in enumerate(range(0, len(pcm), chunk)):
                await c.append_audio(pcm[start:start + chunk])
                await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.perf_counter()))
            evs = await _until(c, "response.done")
            heard = next(e for e in evs if e["type"] == "conversation.item.input_audio_transcription.completed")
            assert "batter" in heard["transcript"].lower()
            assert evs[-1]["response"]["status"] == "completed"
            completed.append(evs[-1])

            # 2. SIGKILL the session's front end while a turn is being answered
            first = await asyncio.to_thread(_serving, stack)
            other = next(fe for fe in stack.front_ends if fe is not first)
            await c.send_text("Can you write me a poem about batteries and headphones?")
            await c.wait_for("response.output_text.delta", timeout=60)
            await asyncio.to_thread(first.kill)
            ev = await c.wait_for("client.reconnected", timeout=60)
            assert ev["session_id"] == sid and c.session and c.session["id"] == sid and c.session["resumed"] is True
            assert await asyncio.to_thread(_serving, stack) is other
            timings["resume_after_kill_s"] = reconnects[-1]
            done = await _typed(c, "And where are the headphones?")
            assert done["response"]["status"] == "completed"
            completed.append(done)

            # 3. the killed front end comes back; then the survivor is drained mid-turn
            await asyncio.to_thread(first.start)
            t_restart = time.monotonic()
            await asyncio.to_thread(first.wait_ready)
            timings["front_end_restart_s"] = time.monotonic() - t_restart
            await asyncio.sleep(2.5)   # two health checks: the balancer sees it up again
            await c.send_text("Can you write me a poem about batteries and headphones?")
            await c.wait_for("response.output_text.delta", timeout=60)
            await asyncio.to_thread(other.terminate)
            evs = await _until(c, "response.done")
            assert evs[-1]["response"]["status"] == "completed", "the turn in flight finishes on SIGTERM"
            completed.append(evs[-1])
            ev = await c.wait_for("client.reconnected", timeout=60)
            assert c.close_code == 1012 and c.close_reason == "service_restart"
            assert c.session and c.session["id"] == sid and c.session["resumed"] is True
            timings["resume_after_drain_s"] = reconnects[-1]
            assert other.proc is not None
            assert await asyncio.to_thread(other.proc.wait, 60) == 0, other.tail()
            assert await asyncio.to_thread(_serving, stack) is first
            done = await _typed(c, "Thank you, goodbye!")
            assert done["response"]["status"] == "completed"
            completed.append(done)
            await c.close()

            # 4. the store, read directly: every completed turn once, in order, nothing else completed
            rows = stack.pg.execute(stack.db, "SELECT idx, turn_id, status, data FROM turns WHERE session_id=%s"
                                    " ORDER BY idx", (sid,))
            stored_completed = [(r[1], json.loads(r[3])["reply"]) for r in rows if r[2] == "completed"]
            assert stored_completed == [(d["response"]["turn"]["turn_id"], _reply(d)) for d in completed]
            assert [r[0] for r in rows] == list(range(len(rows)))   # indices continue across front ends
            assert len(rows) == len(completed), rows   # the turn cut by SIGKILL was never stored

        asyncio.run(main())
        timings["total_s"] = time.monotonic() - t_start
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "scale_test.json").write_text(json.dumps(timings, indent=2))
        print("scale test timings:", json.dumps(timings))
    except BaseException:
        for fe in stack.front_ends:
            print(f"---- {fe.name} log\n{fe.tail()}")
        if stack.models is not None:
            print(f"---- models log\n{stack.models.tail()}")
        raise
    finally:
        stack.stop()
