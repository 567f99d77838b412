"""Load benchmark of the realtime server: N concurrent simulated clients on localhost.

Each client (a kiosk) sends a camera frame every second and does ``--turns`` turns, alternating
a spoken turn (espeak-ng speech streamed at real time in 40 ms chunks, then silence until the
server's VAD ends the turn) and a typed turn. Measured on the client side:

- end of speech → first reply delta (the time the last voiced sample was sent → first delta;
  espeak-ng's own ~345 ms of trailing silence is cut from the clips, so this includes the whole
  of the VAD's silence_duration_ms, 500 ms by default; until 2026-11-27 the reference was the end
  of the clip, ~345 ms later)
- text turn (response.create sent) → first delta
- turns per minute, error events, server peak RSS (sampled every 0.2 s)

for N = 1, 8, 32 with micro-batching on, then off; the server runs in a subprocess
(``mmagent serve``). Writes ``artifacts/bench_server.json`` and prints a table.

    .venv/bin/python bench/server.py [--n 1 8 32] [--turns 2] [--max-new-tokens 32]

``--url ws://host:port/v1/realtime`` runs the same load against servers already running there
(e.g. the balanced setup of bench/scale_out.py: HAProxy, front ends, Ray Serve, PostgreSQL);
the server-side columns (RSS, stages, prompt tokens) are then left empty.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.serve_process import ServeProcess  # noqa: E402
from server.client import RealtimeClient  # noqa: E402

RATE = 24000
CHUNK_S = 0.04
QUESTIONS = ["Where are the batteries?", "What are your opening hours?", "Can I return shoes without a receipt?",
             "How much is a coffee?", "Hello there!", "Can I pay by card?"]
SPOKEN = ["Hello, what are your opening hours?", "Where can I find the batteries?",
          "Can I return these shoes?"]


def speech(text: str) -> np.ndarray:
    raw = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "--stdout", text], check=True,
                         capture_output=True).stdout
    pcm = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(RATE), "-c", "1", "-e", "signed-integer",
                          "-b", "16", "-"], input=raw, check=True, capture_output=True).stdout
    return trim_trailing_silence(np.frombuffer(pcm, dtype=np.int16))


def trim_trailing_silence(x: np.ndarray, frame_s: float = 0.01, rel: float = 0.02) -> np.ndarray:
    """Cut the silence espeak-ng puts after the voice (~345 ms), keeping one 10 ms frame: the
    clip's last sample is then the end of speech, the reference of the latency measured."""
    w = int(RATE * frame_s)
    n = len(x) // w
    energy = np.sqrt(np.mean(x[: n * w].astype(np.float32).reshape(n, w) ** 2, axis=1))
    voiced = np.flatnonzero(energy > rel * energy.max())
    return x[: min(len(x), (int(voiced[-1]) + 2) * w)] if voiced.size else x


def frames() -> list[bytes]:
    from PIL import Image
    from skimage import data

    out = []
    for img in (data.chelsea(), data.astronaut(), data.coffee()):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=80)
        out.append(buf.getvalue())
    return out


class ServerProcess(ServeProcess):
    """``mmagent serve`` in a subprocess on a free port; RSS sampled in a thread."""

    def __init__(self, batching: bool, max_new_tokens: int, state_dir: str, prompt_cache: int | None = None,
                 group_prefill: bool = False, threads: int | None = None) -> None:
        local: dict[str, Any] = {"max_new_tokens": max_new_tokens, "group_prefill": group_prefill}
        perception: dict[str, Any] = {}
        if threads:
            local["threads"] = threads
            perception = {"torch_threads": threads, "speech_cpu_threads": threads}
        if prompt_cache is not None:
            local["prompt_cache_entries"] = prompt_cache
        cfg = {"port": 0, "state_dir": state_dir, "limits": {"max_sessions": 256, "max_sessions_per_token": 256},
               "agent": {"responder": {"local": local}}, "perception": perception}
        super().__init__(cfg, state_dir, f"bench_{'on' if batching else 'off'}",
                         args=() if batching else ("--no-batching",))
        self.peak_rss = 0
        self._sampling = False

    def sample_rss(self) -> None:
        import psutil

        p = psutil.Process(self.proc.pid)
        self.peak_rss = 0
        self._sampling = True

        def run() -> None:
            while self._sampling:
                self.peak_rss = max(self.peak_rss, p.memory_info().rss)
                time.sleep(0.2)

        threading.Thread(target=run, daemon=True).start()

    def stop_sampling(self) -> int:
        self._sampling = False
        time.sleep(0.25)
        return self.peak_rss



async def client(url: str, idx: int, turns: int, voices: list[np.ndarray], jpegs: list[bytes],
                 res: dict[str, list[Any]], start_delay: float = 0.0) -> None:
    await asyncio.sleep(start_delay)
    async with RealtimeClient(url, reconnect=False, open_timeout=120) as c:
        stop = asyncio.Event()

        async def camera() -> None:
            k = idx
            while not stop.is_set():
                await c.send_frame(jpegs[k % len(jpegs)])
                k += 1
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass

        cam = asyncio.ensure_future(camera())
        try:
            for t in range(turns):
                spoken = (t + idx) % 2 == 0
                first: float | None = None
                t_ref = 0.0
                if spoken:
                    pcm = np.concatenate([np.zeros(int(RATE * 0.3), np.int16), voices[(idx + t) % len(voices)]])
                    tail = np.zeros(int(RATE * 2.0), np.int16)
                    step = int(RATE * CHUNK_S)
                    t0 = time.perf_counter()
                    for i, s in enumerate(range(0, len(pcm), step)):
                        await c.append_audio(pcm[s:s + step])
                        await asyncio.sleep(max(0.0, t0 + (i + 1) * CHUNK_S - time.perf_counter()))
                    t_ref = time.perf_counter()   # the last voiced sample has been sent
                    tail_task = asyncio.ensure_future(_stream(c, tail, step))
                else:
                    tail_task = None
                    await c.send_text(QUESTIONS[(idx + t) % len(QUESTIONS)], respond=False)
                    t_ref = time.perf_counter()
                    await c.create_response()
                async with asyncio.timeout(600):
                    async for ev in c.events():
                        if ev["type"] == "error":
                            res["errors"].append(ev["error"]["code"])
                        elif ev["type"] == "response.output_text.delta" and first is None:
                            first = time.perf_counter()
                        elif ev["type"] == "response.done":
                            status = ev["response"]["status"]
                            if status == "completed" and first is not None:
                                res["speech" if spoken else "text"].append(first - t_ref)
                                res["done"].append(time.perf_counter())
                            else:
                                res["errors"].append(f"response_{status}")
                            break
                if tail_task is not None:
                    await tail_task
        finally:
            stop.set()
            await cam


async def _stream(c: RealtimeClient, pcm: np.ndarray, step: int) -> None:
    """Send ``pcm`` at real time in ``step``-sample chunks (silence after the speech, as a mic would)."""
    t1 = time.perf_counter()
    for i, s in enumerate(range(0, len(pcm), step)):
        await c.append_audio(pcm[s:s + step])
        await asyncio.sleep(max(0.0, t1 + (i + 1) * CHUNK_S - time.perf_counter()))


def scrape(ws_url: str) -> dict[str, float]:
    """The server's /metrics as {series: value}."""
    import urllib.request

    http = "http" + ws_url[2:].rsplit("/v1/realtime", 1)[0] + "/metrics"
    out: dict[str, float] = {}
    for line in urllib.request.urlopen(http, timeout=10).read().decode().splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def stage_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Mean ms per stage and mean batch size per model during one run."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        m = re.match(r'mmagent_stage_seconds_sum\{stage="([a-z_]+)"\}', key)
        if m:
            count_key = key.replace("_sum", "_count")
            n = after.get(count_key, 0) - before.get(count_key, 0)
            if n:
                out[f"{m.group(1)}_mean_ms"] = round(1000 * (value - before.get(key, 0)) / n, 1)
        m = re.match(r'mmagent_batch_size_sum\{model="([a-z]+)"\}', key)
        if m:
            count_key = key.replace("_sum", "_count")
            n = after.get(count_key, 0) - before.get(count_key, 0)
            if n:
                out[f"{m.group(1)}_mean_batch"] = round((value - before.get(key, 0)) / n, 2)
                out[f"{m.group(1)}_forward_passes"] = int(n)
    return out


def _turn_rows(state: str, after: int) -> list[tuple[int, str]]:
    import sqlite3

    db = Path(state) / "sessions.sqlite3"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return list(con.execute("SELECT rowid, data FROM turns WHERE rowid > ? ORDER BY rowid", (after,)))


def max_rowid(state: str) -> int:
    rows = _turn_rows(state, 0)
    return rows[-1][0] if rows else 0


def prompt_stats(state: str, after: int) -> dict[str, Any]:
    """Prompt tokens of the turns stored since row ``after``: total and actually run (not taken
    from a KV cache), medians, from each turn's stored timings."""
    total, run = [], []
    for _, data in _turn_rows(state, after):
        t = json.loads(data).get("timings") or {}
        if "prompt_tokens" in t:
            total.append(t["prompt_tokens"])
            run.append(t["prompt_tokens"] - t.get("cached_prompt_tokens", 0.0))
    return {"turns": len(total), "prompt_median": float(np.median(total)) if total else None,
            "prefilled_median": float(np.median(run)) if run else None}


def pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)) * 1000, 1) if xs else None


async def run_load(url: str, n: int, turns: int, voices: list[np.ndarray], jpegs: list[bytes],
                   arrival: str = "burst", stagger_s: float = 4.0) -> dict[str, Any]:
    """``arrival``: "burst" = every client starts at once (turns end in lockstep: the worst case);
    "staggered" = client start times spread uniformly over ``stagger_s`` (seeded), as kiosks
    whose visitors arrive independently."""
    res: dict[str, list[Any]] = {"speech": [], "text": [], "errors": [], "done": []}
    rng = np.random.default_rng(n)
    delays = [0.0] * n if arrival == "burst" or n == 1 else sorted(rng.uniform(0, stagger_s, n).tolist())
    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(client(url, i, turns, voices, jpegs, res, delays[i]) for i in range(n)),
                                    return_exceptions=True)
    wall = time.perf_counter() - t0
    for o in outcomes:
        if isinstance(o, BaseException):
            res["errors"].append(f"client:{type(o).__name__}:{o}"[:120])
    return {
        "n": n, "arrival": arrival, "wall_s": round(wall, 1), "turns": len(res["done"]),
        "turns_per_min": round(60 * len(res["done"]) / wall, 1),
        "speech_first_delta_ms": {"p50": pct(res["speech"], 50), "p95": pct(res["speech"], 95),
                                  "count": len(res["speech"])},
        "text_first_delta_ms": {"p50": pct(res["text"], 50), "p95": pct(res["text"], 95), "count": len(res["text"])},
        "errors": len(res["errors"]), "error_codes": sorted(set(map(str, res["errors"]))),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--turns", type=int, default=2, help="turns per client (alternating spoken / typed)")
    ap.add_argument("--n1-turns", type=int, default=10, help="turns of the single client (N=1: the baseline)")
    ap.add_argument("--arrival", nargs="+", default=["burst", "staggered"], choices=["burst", "staggered"],
                    help="clients start together, or spread over --stagger-s (N > 1)")
    ap.add_argument("--stagger-s", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads per model call (torch and CTranslate2; default: theirs)")
    ap.add_argument("--group-prefill", action="store_true",
                    help="prefill LLM replies arriving together in one pass (agent.responder.local.group_prefill)")
    ap.add_argument("--prompt-cache", type=int, default=None,
                    help="agent.responder.local.prompt_cache_entries (default: the server's, 8; 0 = off)")
    ap.add_argument("--max-new-tokens", type=int, default=24, help="reply length cap of the local LLM")
    ap.add_argument("--modes", nargs="+", default=["on", "off"], choices=["on", "off"], help="micro-batching")
    ap.add_argument("--out", default=str(REPO / "artifacts" / "bench_server.json"))
    ap.add_argument("--url", help="load servers already running at this WebSocket URL instead of starting them")
    ap.add_argument("--label", default="external", help="the runs' name in the table with --url")
    args = ap.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng and sox are needed (scripts/setup.sh)")
    voices = [speech(t) for t in SPOKEN]
    jpegs = frames()
    results: dict[str, Any] = {"config": {"n": args.n, "turns": args.turns, "n1_turns": args.n1_turns,
                                          "arrival": args.arrival, "stagger_s": args.stagger_s,
                                          "prompt_cache_entries": args.prompt_cache,
                                          "max_new_tokens": args.max_new_tokens,
                                          "cpu_count": os.cpu_count(), "machine": os.uname().machine},
                               "runs": {}}
    if args.url:
        return _external(args, voices, jpegs, results)
    state = tempfile.mkdtemp(prefix="mmagent-bench-")
    # Both servers stay up and the modes alternate for each N, so that load from other jobs on a
    # shared machine falls on both alike.
    servers: dict[str, ServerProcess] = {}
    try:
        for mode in args.modes:
            print(f"== micro-batching {mode}: starting the server", flush=True)
            servers[mode] = ServerProcess(mode == "on", args.max_new_tokens, state, args.prompt_cache,
                                          args.group_prefill, args.threads)
        plan = [(n, a) for n in args.n for a in (["burst"] if n == 1 else args.arrival)]
        for n, arrival in plan:
            for mode, srv in servers.items():
                before = scrape(srv.ws_url)
                last_row = max_rowid(state)
                srv.sample_rss()
                turns = args.n1_turns if n == 1 else args.turns
                r = asyncio.run(run_load(srv.ws_url, n, turns, voices, jpegs, arrival, args.stagger_s))
                r["server_peak_rss_mb"] = round(srv.stop_sampling() / 2**20, 1)
                r["batching"] = mode
                r["server_stages"] = stage_deltas(before, scrape(srv.ws_url))
                r["prompt_tokens"] = prompt_stats(state, last_row)
                print(json.dumps(r), flush=True)
                results["runs"].setdefault(mode, []).append(r)
    finally:
        for srv in servers.values():
            srv.stop()
    if "on" in results["runs"] and "off" in results["runs"]:
        ratios = []
        for on, off in zip(results["runs"]["on"], results["runs"]["off"], strict=True):
            ratios.append({"n": on["n"], "arrival": on["arrival"], "turns_per_min_on_over_off":
                           round(on["turns_per_min"] / off["turns_per_min"], 2) if off["turns_per_min"] else None,
                           "text_p50_off_over_on": _ratio(off["text_first_delta_ms"]["p50"],
                                                          on["text_first_delta_ms"]["p50"]),
                           "speech_p50_off_over_on": _ratio(off["speech_first_delta_ms"]["p50"],
                                                            on["speech_first_delta_ms"]["p50"])})
        results["batching_ratio"] = ratios
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwritten to {args.out}")
    return 0


def run_external(url: str, label: str, ns: list[int], turns: int, n1_turns: int, arrivals: list[str],
                 stagger_s: float, voices: list[Any], jpegs: list[bytes]) -> list[dict[str, Any]]:
    """The load plan against servers already running at ``url`` (client-side numbers only)."""
    out = []
    plan = [(k, a) for k in ns for a in (["burst"] if k == 1 else arrivals)]
    for n, arrival in plan:
        load = os.getloadavg()[0]
        r = asyncio.run(run_load(url, n, n1_turns if n == 1 else turns, voices, jpegs, arrival, stagger_s))
        r.update({"batching": label, "server_peak_rss_mb": None, "server_stages": {}, "prompt_tokens": {},
                  "loadavg_1m_before": round(load, 2)})
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


def _external(args: argparse.Namespace, voices: list[Any], jpegs: list[bytes], results: dict[str, Any]) -> int:
    results["config"]["url"] = args.url
    results["runs"][args.label] = run_external(args.url, args.label, args.n, args.turns, args.n1_turns,
                                               args.arrival, args.stagger_s, voices, jpegs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwritten to {args.out}")
    return 0


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def print_table(results: dict[str, Any]) -> None:
    print("\n| batching | N | arrival | speech→1st delta p50 / p95 ms | text→1st delta p50 / p95 ms | turns/min | "
          "errors | server peak RSS MB | frames: passes, mean batch, ms/pass | speech ms/pass | "
          "prompt / prefilled tokens (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, runs in results["runs"].items():
        for r in runs:
            s, t = r["speech_first_delta_ms"], r["text_first_delta_ms"]
            st = r.get("server_stages", {})
            fr = f"{st.get('frames_forward_passes')}, {st.get('frames_mean_batch')}, {st.get('frames_batch_mean_ms')}"
            pt = r.get("prompt_tokens", {})
            print(f"| {mode} | {r['n']} | {r.get('arrival', 'burst')} | {s['p50']} / {s['p95']} | {t['p50']} / "
                  f"{t['p95']} | {r['turns_per_min']} | {r['errors']} | {r['server_peak_rss_mb']} | {fr} | "
                  f"{st.get('speech_batch_mean_ms')} | {pt.get('prompt_median')} / {pt.get('prefilled_median')} |")
    for r in results.get("batching_ratio", []):
        print(f"N={r['n']} ({r.get('arrival', 'burst')}): turns/min on/off = {r['turns_per_min_on_over_off']}, "
              f"text p50 off/on = {r['text_p50_off_over_on']}, speech p50 off/on = {r['speech_p50_off_over_on']}")
    for line in target_lines(results):
        print(line)


def target_lines(results: dict[str, Any]) -> list[str]:
    """The issue's targets, with batching on: N=1 speech p50 ≤ 900 ms; N=8 speech p95 ≤ 3 × that."""
    runs = results["runs"].get("on", [])
    base = next((r for r in runs if r["n"] == 1), None)
    if base is None or base["speech_first_delta_ms"]["p50"] is None:
        return []
    p50 = base["speech_first_delta_ms"]["p50"]
    out = [f"target N=1 end of speech → first delta p50 ≤ 900 ms: {p50} ms → {'met' if p50 <= 900 else 'NOT met'}"]
    for r in runs:
        p95 = r["speech_first_delta_ms"]["p95"]
        if r["n"] == 8 and p95 is not None:
            ok = p95 <= 3 * p50
            out.append(f"target N=8 ({r['arrival']}) p95 ≤ 3 × N=1 p50 = {3 * p50:.0f} ms: {p95} ms → "
                       f"{'met' if ok else 'NOT met'} (ratio {p95 / p50:.2f})")
    errors = sum(r["errors"] for rs in results["runs"].values() for r in rs)
    out.append(f"target zero errors: {errors} → {'met' if errors == 0 else 'NOT met'}")
    return out


if __name__ == "__main__":
    sys.exit(main())
