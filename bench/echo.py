"""Echo: does the agent's own voice, fed back into its microphone, interrupt it?

Each trial is one session with a spoken reply (output_modalities ["audio"], 24 kHz) to a typed
question. The client "plays" the reply in real time from its first audio delta and streams, as
its microphone, that playout delayed by ``delay`` ms and scaled by ``level`` dB (a speaker
heard by the kiosk's own microphone), plus a faint noise floor (-60 dBFS), in 20 ms chunks.

- echo only: any ``input_audio_buffer.speech_started`` while the reply plays is a false
  barge-in (target: 0);
- echo + a person: 1.5 s into the reply an espeak-ng voice says "Excuse me, I have a question"
  over it, at ``--user-db`` relative to the reply's own level (0 dB: as loud at the microphone as
  the voice coming out of the speaker); it should barge in (speech_started within its words).
  A client that hears speech_started stops playing, as the page does.

Run with the server's echo gate on (vad.echo_gate, the default) and off. Writes
``artifacts/bench_echo.json`` and prints a table.

    .venv/bin/python bench/echo.py [--delays 50 150 250] [--levels -6 -12 -20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from voice_common import CHUNK_S, RATE, REPO, RealtimeClient, Server, espeak, machine

QUESTION = "How do I return an item I bought last week?"
USER_AT_S = 1.5


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean((x.astype(np.float32) / 32768) ** 2))) if len(x) else 0.0


async def trial(url: str, delay_ms: int, level_db: float, user: np.ndarray | None, user_db: float,
                seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    async with RealtimeClient(url, reconnect=False, open_timeout=120) as c:
        await c.speak(RATE)
        await c.wait_for("session.updated")
        played = bytearray()
        started: list[float] = []         # speech_started clock times
        t_first: float | None = None
        done = asyncio.Event()
        stopped = False

        async def reader() -> None:
            nonlocal t_first, stopped
            async for ev in c.events():
                kind = ev["type"]
                if kind == "response.output_audio.delta" and not stopped:
                    if t_first is None:
                        t_first = time.perf_counter()
                    played.extend(base64.b64decode(ev["delta"]))
                elif kind == "input_audio_buffer.speech_started":
                    started.append(time.perf_counter())
                    stopped = True            # the client stops playing, as the page does
                elif kind == "response.done" and ev["response"]["output_modalities"] == ["audio"] \
                        and t_first is not None:
                    done.set()

        task = asyncio.ensure_future(reader())
        await c.send_text(QUESTION)
        while t_first is None:
            await asyncio.sleep(0.005)
        gain = 10 ** (level_db / 20)
        step = int(RATE * CHUNK_S)
        d = int(RATE * delay_ms / 1000)
        user_scaled: np.ndarray | None = None
        k = 0
        t0 = t_first
        while True:
            now = time.perf_counter()
            audio = np.frombuffer(bytes(played), dtype="<i2")
            if user is not None and user_scaled is None and len(audio) > RATE:
                ref = rms(audio[: RATE])       # the reply's level, to set the person's by
                user_scaled = (user.astype(np.float32) * (ref / max(1e-6, rms(user))) * 10 ** (user_db / 20))
            end = k * step + step
            pos = np.arange(k * step, end) - d       # what the speaker played `delay` ago
            echo = np.zeros(step, np.float32)
            ok = (pos >= 0) & (pos < len(audio))
            if not stopped:
                echo[ok] = audio[pos[ok]].astype(np.float32) * gain
            mic = echo + rng.normal(0, 32768 * 1e-3, step)
            if user_scaled is not None:
                u0 = int(USER_AT_S * RATE)
                upos = np.arange(k * step, end) - u0
                uok = (upos >= 0) & (upos < len(user_scaled))
                mic[uok] += user_scaled[upos[uok]]
            await c.append_audio(np.clip(mic, -32768, 32767).astype(np.int16))
            k += 1
            reply_over = done.is_set() and (k * step > len(audio) + d + RATE // 2)
            if reply_over or (stopped and k * step > (USER_AT_S + 3) * RATE) or now - t0 > 60:
                break
            await asyncio.sleep(max(0.0, t0 + k * CHUNK_S - time.perf_counter()))
        task.cancel()
        reply_s = len(np.frombuffer(bytes(played), dtype="<i2")) / RATE
    rel = [round(s - t0, 2) for s in started]
    out: dict[str, Any] = {"delay_ms": delay_ms, "level_db": level_db, "reply_played_s": round(reply_s, 2),
                           "speech_started_s": rel}
    if user is None:
        out["false_barge_ins"] = len(rel)
    else:
        user_end = USER_AT_S + len(user) / RATE + 0.5
        out["user_db"] = user_db
        out["barged_in"] = any(USER_AT_S <= s <= user_end for s in rel)
        out["false_barge_ins"] = sum(1 for s in rel if s < USER_AT_S)
        out["barge_in_after_s"] = round(min((s - USER_AT_S for s in rel if s >= USER_AT_S), default=-1), 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delays", type=int, nargs="+", default=[50, 150, 250])
    ap.add_argument("--levels", type=float, nargs="+", default=[-6, -12, -20])
    ap.add_argument("--user-db", type=float, nargs="+", default=[0, -6])
    ap.add_argument("--gate", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--out", default=str(REPO / "artifacts" / "bench_echo.json"))
    args = ap.parse_args()
    user = espeak("Excuse me, I have a question.")
    state = tempfile.mkdtemp(prefix="mmagent-bench-echo-")
    results: dict[str, Any] = {"machine_before": machine(), "question": QUESTION, "runs": {}}
    for gate in args.gate:
        # Replies capped at 48 tokens (about 6-8 s of speech): the trials fit in a few minutes.
        srv = Server({"vad": {"echo_gate": gate == "on"}, "pipeline": {"max_output_tokens": 48}}, state,
                     f"echo_{gate}")
        rows: list[dict[str, Any]] = []
        try:
            seed = 0
            for d in args.delays:
                for lv in args.levels:
                    seed += 1
                    r = asyncio.run(trial(srv.ws_url, d, lv, None, 0, seed))
                    print(json.dumps({"gate": gate, **r}), flush=True)
                    rows.append(r)
                for udb in args.user_db:
                    seed += 1
                    r = asyncio.run(trial(srv.ws_url, d, -6, user, udb, seed))
                    print(json.dumps({"gate": gate, **r}), flush=True)
                    rows.append(r)
        finally:
            srv.stop()
        results["runs"][gate] = rows
    results["machine_after"] = machine()
    summary = {}
    for gate, rows in results["runs"].items():
        echo = [r for r in rows if "user_db" not in r]
        users = [r for r in rows if "user_db" in r]
        summary[gate] = {"echo_trials": len(echo), "false_barge_ins": sum(r["false_barge_ins"] for r in rows),
                         "user_trials": len(users), "user_barged_in": sum(r["barged_in"] for r in users)}
    results["summary"] = summary
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    m = results["machine_before"]
    print(f"\n{m['cpu']} ({m['cores']} cores), load average before {m['loadavg_1_5_15']}")
    print("| echo gate | echo-only trials | false barge-ins (all trials) | a person over it: barged in |")
    print("|---|---|---|---|")
    for gate, s in summary.items():
        print(f"| {gate} | {s['echo_trials']} | {s['false_barge_ins']} | {s['user_barged_in']} / {s['user_trials']} |")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
