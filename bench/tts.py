"""Voice benchmark: time to first audio and real-time factor of the Piper voice, per sentence
length, under N concurrent replies, with 1 or 2 ONNX threads; whether batching clauses into one
ONNX call helps; and what a listener hears (Whisper tiny.en transcribes the audio back).

- time to first audio: from feeding a whole reply to its stream to the first AudioChunk
  (the first clause synthesised, resampled to 24 kHz);
- real-time factor: synthesis time / audio duration of the whole reply;
- concurrent: N replies opened at once on one Synthesizer (one worker thread): first-audio
  p50/p95 over the replies, total audio / wall time, and playout stalls (a chunk ready later than
  the moment its audio is due when played from the reply's first chunk on).

    .venv/bin/python bench/tts.py [--repeats 5] [--concurrency 1 2 4 8] [--out artifacts/bench_tts.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

REPLIES = {
    "short (3 words)": "Aisle seven, please.",
    "medium (1 sentence, 15 words)": "The batteries are in aisle 7, next to the light bulbs, and cost $4.49.",
    "long (2 sentences, 30 words)": "You can return unused items within 30 days with the receipt at the service desk. "
                                    "Refunds go back to the original payment method, usually within three days.",
    "very long (4 sentences, 55 words)": "We are open Monday to Saturday from 8 am to 9 pm, and Sunday from 10 am to "
                                         "6 pm. On public holidays we open from 10 am to 4 pm. The service desk is at "
                                         "the front of the store, to the left of the main entrance. Free parking is "
                                         "behind the store, for up to 2 hours.",
}
BATCH_CLAUSES = ["the batteries are in aisle seven", "next to the light bulbs", "they cost four dollars forty-nine",
                 "the service desk is at the front of the store", "to the left of the main entrance",
                 "we are open from eight a.m.", "to nine p.m. every day", "is there anything else"]


def reply_timing(tts: Any, text: str, rate: int = 24000) -> dict[str, float]:
    stream = tts.open_stream(rate)
    t0 = time.perf_counter()
    stream.feed(text)
    stream.finish()
    first = None
    for _ in stream.chunks(timeout=120):
        if first is None:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    audio_s = stream.audio_ms / 1000
    return {"first_audio_ms": 1000 * (first or total), "synth_s": total, "audio_s": audio_s, "rtf": total / audio_s}


def concurrent(tts: Any, n: int, text: str) -> dict[str, Any]:
    """N replies at once; each chunk's readiness against its playout deadline."""
    results: list[dict[str, Any]] = [{} for _ in range(n)]
    barrier = threading.Barrier(n)

    def one(k: int) -> None:
        barrier.wait()
        stream = tts.open_stream(24000)
        t0 = time.perf_counter()
        stream.feed(text)
        stream.finish()
        first, stalls = None, 0
        for chunk in stream.chunks(timeout=300):
            now = time.perf_counter() - t0
            if first is None:
                first = now
            elif now > first + chunk.start_ms / 1000:
                stalls += 1
        results[k] = {"first_ms": 1000 * (first or 0.0), "audio_s": stream.audio_ms / 1000, "stalls": stalls}

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    firsts = [r["first_ms"] for r in results]
    return {"n": n, "first_audio_ms_p50": float(np.percentile(firsts, 50)),
            "first_audio_ms_p95": float(np.percentile(firsts, 95)),
            "aggregate_rtf": wall / sum(r["audio_s"] for r in results), "wall_s": wall,
            "replies_with_stalls": sum(r["stalls"] > 0 for r in results)}


def batching(tts: Any, repeats: int) -> list[dict[str, float]]:
    voice = tts.voice
    ids = [voice.phoneme_ids(tts.phonemizer.phonemize(c) + ".") for c in BATCH_CLAUSES]
    voice.synthesize(ids[0])
    rows = []
    for b in (1, 2, 4, 8):
        seq, bat = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for x in ids[:b]:
                voice.synthesize(x)
            seq.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            voice.synthesize_batch(ids[:b])
            bat.append(time.perf_counter() - t0)
        rows.append({"clauses": b, "sequential_ms": 1000 * min(seq), "one_call_ms": 1000 * min(bat)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--out", default=str(REPO / "artifacts" / "bench_tts.json"))
    args = ap.parse_args()

    from perception import Perception, PerceptionConfig
    from voice import Synthesizer, VoiceConfig

    load_avg_start = os.getloadavg()
    out: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                           "load_avg_start": load_avg_start}
    per_length: dict[str, Any] = {}
    for threads in (1, 2):
        with Synthesizer(VoiceConfig(threads=threads)) as tts:
            tts.synthesize("Warm up.")
            for name, text in REPLIES.items():
                runs = [reply_timing(tts, text) for _ in range(args.repeats)]
                per_length[f"{name}|{threads}"] = {
                    "threads": threads, "length": name,
                    "first_audio_ms": statistics.median(r["first_audio_ms"] for r in runs),
                    "rtf": statistics.median(r["rtf"] for r in runs),
                    "audio_s": statistics.median(r["audio_s"] for r in runs)}
    out["per_length"] = list(per_length.values())
    with Synthesizer(VoiceConfig(threads=1)) as tts:
        tts.synthesize("Warm up.")
        out["concurrent"] = [concurrent(tts, n, REPLIES["long (2 sentences, 30 words)"]) for n in args.concurrency]
        out["batching"] = batching(tts, args.repeats)
        # Judge as a listener: what does Whisper hear?
        asr = Perception(PerceptionConfig())
        heard = []
        for text in REPLIES.values():
            audio, _ = tts.synthesize(text, output_rate=16000)
            heard.append({"text": text, "heard": asr.encode_speech(audio, 16000).transcript})
        out["heard"] = heard
    out["load_avg_end"] = os.getloadavg()

    print(f"\nVoice: Piper en_US-joe-medium via onnxruntime, 24 kHz out; {os.cpu_count()} CPUs; load average "
          f"{load_avg_start[0]:.2f} → {out['load_avg_end'][0]:.2f}; medians of {args.repeats}")
    print(f"{'reply':36s} {'threads':>7s} {'audio s':>8s} {'first audio ms':>15s} {'RTF':>6s}")
    for r in out["per_length"]:
        print(f"{r['length']:36s} {r['threads']:>7d} {r['audio_s']:8.2f} {r['first_audio_ms']:15.0f} {r['rtf']:6.3f}")
    print("\nConcurrent replies (the 30-word reply each, one synthesis thread, 1 ONNX thread)")
    print(f"{'N':>3s} {'first audio p50 ms':>19s} {'p95 ms':>8s} {'aggregate RTF':>14s} {'replies with stalls':>20s}")
    for r in out["concurrent"]:
        print(f"{r['n']:>3d} {r['first_audio_ms_p50']:19.0f} {r['first_audio_ms_p95']:8.0f} {r['aggregate_rtf']:14.3f} "
              f"{r['replies_with_stalls']:>20d}")
    print("\nBatching clauses in one ONNX call (best of repeats)")
    print(f"{'clauses':>7s} {'one call each ms':>17s} {'one call for all ms':>20s}")
    for r in out["batching"]:
        print(f"{r['clauses']:>7d} {r['sequential_ms']:17.0f} {r['one_call_ms']:20.0f}")
    print("\nWhat Whisper tiny.en hears")
    for h in out["heard"]:
        print(f"  said:  {h['text']}\n  heard: {h['heard']}")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
