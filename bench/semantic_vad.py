"""End of turn through the real server: ``server_vad`` (500 ms of silence) vs ``semantic_vad``.

A server (``mmagent serve`` in a subprocess) and one WebSocket session per utterance; the
utterance is streamed at real time in 20 ms chunks of 24 kHz PCM16, as a microphone would send
it, with ``create_response: false`` (only the turn detection is measured). Piper speech, held-out
sentences of ``bench/turn_taking.py`` (written before any detector ran on them):

- complete: a question or request, then silence. End of turn (EoT) = ``speech_stopped``'s
  ``audio_end_ms`` − the end of the voice; "held" = EoT ≥ the long limit minus 100 ms;
- paused: an unfinished phrase said alone ("Is it possible to"), a pause of ``--pauses`` ms,
  then the rest ("order this online?"). A false cut-in = the server ended the turn in the pause
  (two ``speech_stopped`` instead of one).

Unlike ``bench/turn_taking.py`` (the detectors alone, their compute timed and added), this is
the whole server path: Silero VAD, the speculative transcript (Whisper with key-term rescoring),
Smart Turn and the text model in their own thread, and the event that ends the turn.

    .venv/bin/python bench/semantic_vad.py [--pauses 400 1000] [--limit N] [--modes ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.turn_taking import HELDOUT_COMPLETE, HELDOUT_PAUSED
from bench.voice_common import RATE, Server, machine, pct
from server.client import RealtimeClient

MODES = {"server_vad 500 ms": {"type": "server_vad", "silence_duration_ms": 500},
         "semantic_vad auto": {"type": "semantic_vad", "eagerness": "auto"}}
LONG_LIMIT_MS = 4000       # semantic_vad auto's long limit
LEAD_S, TAIL_S = 0.3, 4.5


def voiced(tts: Any, text: str) -> np.ndarray:
    """Piper speech of ``text`` at RATE (float32), trimmed to its voice."""
    x = tts.synthesize(text, output_rate=RATE)[0].astype(np.float32) / 32768.0
    idx = np.flatnonzero(np.abs(x) > 0.01)
    return x[idx[0]:idx[-1] + 1]


def room(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, 10 ** (-60 / 20), n).astype(np.float32)     # a -60 dBFS noise floor


def pcm16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1, 1) * 32767).astype(np.int16)


async def one(url: str, audio: np.ndarray, td: dict[str, Any], stop_after_first: bool) -> list[int]:
    """Stream ``audio``; the ``audio_end_ms`` of each speech_stopped (stops early once the first
    came, when ``stop_after_first``)."""
    async with RealtimeClient(url, reconnect=False, open_timeout=120) as c:
        await c.update_session(output_modalities=["text"], audio={"input": {
            "format": {"type": "audio/pcm", "rate": RATE}, "turn_detection": {**td, "create_response": False}}})
        await c.wait_for("session.updated")
        stops: list[int] = []

        async def reader() -> None:
            async for ev in c.events():
                if ev["type"] == "input_audio_buffer.speech_stopped":
                    stops.append(int(ev["audio_end_ms"]))

        task = asyncio.ensure_future(reader())
        step = int(RATE * 0.02)
        t0 = time.perf_counter()
        for i, s in enumerate(range(0, len(audio), step)):
            if stop_after_first and stops:
                break
            await c.append_audio(audio[s:s + step])
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.perf_counter()))
        await asyncio.sleep(0.3)
        task.cancel()
        return stops


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pauses", type=int, nargs="+", default=[400, 1000], help="pause lengths (ms)")
    ap.add_argument("--limit", type=int, default=None, help="first N sentences of each list only")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--out", default="artifacts/bench_semantic_vad.json")
    ap.add_argument("--verbose", action="store_true",
                    help="run the server with -v and keep its end-of-turn timing lines (Smart Turn, transcript, "
                         "text model) in the JSON")
    args = ap.parse_args()

    from voice import Synthesizer, VoiceConfig

    rng = np.random.default_rng(args.seed)
    tts = Synthesizer(VoiceConfig())
    complete = HELDOUT_COMPLETE[:args.limit]
    paused = HELDOUT_PAUSED[:args.limit]
    lead, tail = room(int(LEAD_S * RATE), rng), room(int(TAIL_S * RATE), rng)
    utts: list[tuple[str, str, int, np.ndarray, float]] = []      # kind, text, pause ms, pcm, voice end s
    for text in complete:
        v = voiced(tts, text)
        utts.append(("complete", text, 0, pcm16(np.concatenate([lead, v, tail])), (lead.size + v.size) / RATE))
    for pause_ms in args.pauses:
        for first, rest in paused:
            a, b = voiced(tts, first), voiced(tts, rest)
            gap = room(int(pause_ms / 1000 * RATE), rng)
            x = np.concatenate([lead, a, gap, b, tail])
            utts.append(("paused", f"{first} … {rest}", pause_ms, pcm16(x), (x.size - tail.size) / RATE))
    tts.close()

    start = machine()
    rows, detail = [], []
    with tempfile.TemporaryDirectory() as state:
        srv = Server({"pipeline": {"max_output_tokens": 16}}, state, "semantic_vad",
                     verbose=args.verbose)
        try:
            # Warm-up: the first semantic_vad session starts loading Smart Turn and SmolLM2.
            warm = utts[0][3]
            for name in args.modes:
                asyncio.run(one(srv.ws_url, warm, MODES[name], True))
            time.sleep(30)
            asyncio.run(one(srv.ws_url, warm, MODES["semantic_vad auto"], True))
            for name in args.modes:
                td = MODES[name]
                eot, held, cuts = [], 0, {p: 0 for p in args.pauses}
                for kind, text, pause_ms, pcm, end_s in utts:
                    stops = asyncio.run(one(srv.ws_url, pcm, td, kind == "complete"))
                    detail.append({"mode": name, "kind": kind, "text": text, "pause_ms": pause_ms,
                                   "voice_end_ms": round(end_s * 1000), "speech_stopped_ms": stops})
                    if kind == "complete" and stops:
                        ms = stops[0] - end_s * 1000
                        eot.append(ms)
                        held += ms >= LONG_LIMIT_MS - 100
                    elif kind == "paused":
                        cuts[pause_ms] += len(stops) >= 2
                row = {"mode": name, "complete": len(complete), "eot_ms_p50": pct(eot, 50), "eot_ms_p95": pct(eot, 95),
                       "complete_held_long_limit": held, "complete_never_ended": len(complete) - len(eot),
                       "false_cut_ins": {str(p): cuts[p] for p in args.pauses}, "paused_per_pause": len(paused)}
                rows.append(row)
                print(f"{name:20s} EoT p50 {row['eot_ms_p50']} ms  p95 {row['eot_ms_p95']} ms  held {held}/"
                      f"{len(complete)}  false cut-ins " + "  ".join(f"{p} ms: {cuts[p]}/{len(paused)}"
                                                                   for p in args.pauses), flush=True)
        finally:
            srv.stop()
    timings = [line.strip() for line in srv.log if "end of turn" in line]
    for line in timings[-12:]:
        print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine_start": start, "machine_end": machine(), "rows": rows, "detail": detail,
                               "end_of_turn_log": timings},
                              indent=1))
    print(f"machine {start} → load {machine()['loadavg_1_5_15']}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
