"""End of speech → first audio byte of the spoken reply, beside end of speech → first text.

N concurrent clients (kiosks) on localhost each do ``--turns`` spoken turns: espeak-ng speech
streamed at real time in 20 ms chunks over the WebSocket, then silence until the server's VAD
ends the turn. The reply comes as the server's voice (output_modalities ["audio"], PCM16 24 kHz)
or, for the comparison, as text only (today's text sessions). Measured on the client from the
time the last voiced sample was sent:

- first ``response.output_audio.delta`` (the person could hear the answer from here)
- first ``response.output_audio_transcript.delta`` (audio sessions) / ``response.output_text.delta``

Each client waits until the previous reply would have finished playing before its next turn.
Writes ``artifacts/bench_voice_latency.json`` and prints a table.

    .venv/bin/python bench/voice_latency.py [--n 1 8] [--turns 6] [--n-turns 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from voice_common import RATE, REPO, RealtimeClient, Server, espeak, machine, pct, stream

SPOKEN = ["Where can I find the batteries?", "What are your opening hours?", "Can I return these shoes?",
          "How much is a coffee?"]


async def client(url: str, idx: int, turns: int, voices: list[np.ndarray], audio: bool,
                 res: dict[str, list[Any]], turn_detection: str = "server_vad") -> None:
    async with RealtimeClient(url, reconnect=False, open_timeout=120) as c:
        if turn_detection != "server_vad":
            await c.update_session(audio={"input": {"turn_detection": {"type": turn_detection}}})
            await c.wait_for("session.updated")
        if audio:
            await c.speak(RATE)
            await c.wait_for("session.updated")
        for t in range(turns):
            pcm = np.concatenate([np.zeros(int(RATE * 0.3), np.int16), voices[(idx + t) % len(voices)]])
            t_end = await stream(c, pcm)
            tail = asyncio.ensure_future(stream(c, np.zeros(int(RATE * 2.0), np.int16)))
            first_audio = first_text = None
            audio_s = 0.0
            async with asyncio.timeout(300):
                async for ev in c.events():
                    kind = ev["type"]
                    if kind == "response.output_audio.delta":
                        if first_audio is None:
                            first_audio = time.perf_counter()
                        audio_s += len(ev["delta"]) * 3 / 4 / 2 / RATE
                    elif kind in ("response.output_audio_transcript.delta", "response.output_text.delta"):
                        first_text = first_text or time.perf_counter()
                    elif kind == "error":
                        res["errors"].append(ev["error"]["code"])
                    elif kind == "response.done":
                        if ev["response"]["status"] != "completed":
                            res["errors"].append("response_" + ev["response"]["status"])
                        break
            await tail
            if first_text is not None:
                res["text"].append(1000 * (first_text - t_end))
            if first_audio is not None:
                res["audio"].append(1000 * (first_audio - t_end))
                # Let the reply play out before the next question (a person waits for it).
                await asyncio.sleep(max(0.0, first_audio + audio_s - time.perf_counter()))


async def run(url: str, n: int, turns: int, voices: list[np.ndarray], audio: bool,
              turn_detection: str = "server_vad") -> dict[str, Any]:
    res: dict[str, list[Any]] = {"audio": [], "text": [], "errors": []}
    await asyncio.gather(*(client(url, i, turns, voices, audio, res, turn_detection) for i in range(n)))
    return {"n": n, "output": "audio" if audio else "text", "turn_detection": turn_detection,
            "turns": len(res["text"]),
            "first_audio_ms": {"p50": pct(res["audio"], 50), "p95": pct(res["audio"], 95)},
            "first_text_ms": {"p50": pct(res["text"], 50), "p95": pct(res["text"], 95)},
            "errors": res["errors"], "raw": {k: [round(v, 1) for v in res[k]] for k in ("audio", "text")}}


def text_model_batches(url: str) -> dict[str, float]:
    """From the server's /metrics: SmolLM2's end-of-turn passes and the transcripts they served
    (sessions pausing together share a pass)."""
    import re
    import urllib.request

    text = urllib.request.urlopen(url + "metrics", timeout=10).read().decode()
    values = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^mmagent_batch_size_(sum|count)\{model="turn_text"\} (\S+)$', text, re.MULTILINE)}
    passes, served = values.get("count", 0.0), values.get("sum", 0.0)
    return {"passes": passes, "transcripts": served, "mean_batch": round(served / passes, 2) if passes else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--turns", type=int, default=8, help="turns of the single client (N=1)")
    ap.add_argument("--n-turns", type=int, default=2, help="turns per client for N > 1")
    ap.add_argument("--turn-detection", nargs="+", default=["server_vad"], choices=["server_vad", "semantic_vad"],
                    help="the sessions' turn_detection type (semantic_vad: Smart Turn + SmolLM2 decide)")
    ap.add_argument("--no-rescore", action="store_true",
                    help="the server without key-term rescoring (perception.speech_term_rescore false)")
    ap.add_argument("--beam", type=int, default=None, help="the server's Whisper beam (perception.speech_beam_size)")
    ap.add_argument("--out", default=str(REPO / "artifacts" / "bench_voice_latency.json"))
    args = ap.parse_args()
    voices = [espeak(t) for t in SPOKEN]
    state = tempfile.mkdtemp(prefix="mmagent-bench-voice-")
    results: dict[str, Any] = {"machine_before": machine(), "runs": []}
    perception: dict[str, Any] = {}
    if args.no_rescore:
        perception["speech_term_rescore"] = False
    if args.beam is not None:
        perception["speech_beam_size"] = args.beam
    cfg: dict[str, Any] = {"perception": perception} if perception else {}
    results["config"] = cfg
    srv = Server(cfg, state, "voice_latency")
    try:
        if "semantic_vad" in args.turn_detection:   # load the end-of-turn models (in the background)
            asyncio.run(run(srv.ws_url, 1, 1, voices, False, "semantic_vad"))
            time.sleep(20)
        for n in args.n:
            for td, audio in ((td, audio) for td in args.turn_detection for audio in (True, False)):
                r = asyncio.run(run(srv.ws_url, n, args.turns if n == 1 else args.n_turns, voices, audio, td))
                r["loadavg_after"] = machine()["loadavg_1_5_15"]
                print(json.dumps({k: v for k, v in r.items() if k != "raw"}), flush=True)
                results["runs"].append(r)
        if "semantic_vad" in args.turn_detection:
            results["turn_text_batches"] = text_model_batches(srv.url)
            print("text end-of-turn model passes:", results["turn_text_batches"])
    finally:
        srv.stop()
    results["machine_after"] = machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    m = results["machine_before"]
    print(f"\n{m['cpu']} ({m['cores']} cores), load average before {m['loadavg_1_5_15']}")
    print("| N | turn detection | reply | turns | end of speech → first audio p50 / p95 (ms) | → first text p50 / p95 (ms) |")
    print("|---|---|---|---|---|---|")
    for r in results["runs"]:
        fa, ft = r["first_audio_ms"], r["first_text_ms"]
        audio_cell = f"{fa['p50']} / {fa['p95']}" if r["output"] == "audio" else "—"
        print(f"| {r['n']} | {r['turn_detection']} | {r['output']} | {r['turns']} | {audio_cell} | "
              f"{ft['p50']} / {ft['p95']} |")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
