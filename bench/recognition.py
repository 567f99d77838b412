"""Recognition benchmark: word error rate and key-term recall of the pack's vocabulary.

Kiosk questions that name the demo pack's products, places and services are spoken by
espeak-ng in 8 voices at two speeds, clean and with white noise at each ``--snr-db`` (20 and
10 dB, relative to the speech's RMS), then transcribed by each configuration:

- tiny.en plain, tiny.en biased (the pack's vocabulary as Whisper's prompt only),
  tiny.en biased + rescoring (the server's default: perception/term_rescore.py), the same with
  beam search of 3 (``speech_beam_size: 3``),
- base plain, base biased and base biased + rescoring (the multilingual Whisper base,
  ``speech_model: whisper-base``).

Sentences that name no pack term (``NEGATIVES``) are spoken the same way; "false terms" counts
the clips of theirs whose transcript holds a pack term (what biasing or rescoring invented).

Key-term recall: the share of the pack terms said in a question that the transcript contains
(lower case, hyphens as spaces: "self-checkout" = "self checkout"). Entry recall: the share whose
pack entry the transcript names by any of its names or aliases ("toilet" for "toilets",
"checkout" for "self-checkout": what the agent's retrieval needs to find the right entry). False terms: pack terms in a
transcript that were not said (what a prompt could make Whisper invent). WER after Whisper's
English normaliser. Accuracy does not depend on the machine's load; times do.

    .venv/bin/python bench/recognition.py [--snr-db 20 10] [--configs tiny tiny-biased ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RATE = 16000
# (question, the pack terms it says)
QUESTIONS = [
    ("Hello, where is the service desk please?", ["service desk"]),
    ("Where can I find the AA batteries?", ["AA batteries"]),
    ("How much is the whole milk?", ["whole milk"]),
    ("Is the sourdough bread fresh today?", ["sourdough bread"]),
    ("Where do you keep the ground coffee?", ["ground coffee"]),
    ("I need a folding umbrella.", ["folding umbrella"]),
    ("Do you sell a USB-C phone charger?", ["USB-C phone charger"]),
    ("What are your opening hours?", ["opening hours"]),
    ("Can I use the self-checkout with cash?", ["self-checkout"]),
    ("Excuse me, where are the toilets?", ["toilets"]),
    ("Is there parking behind the store?", ["parking"]),
    ("Which payment methods do you accept?", ["payment methods"]),
]
# Said at a kiosk, naming no pack term (checked at start): nothing of the pack may be heard in them.
NEGATIVES = [
    "What is the weather like outside?", "My name is Sarah and I am new here.", "Thank you very much for your help.",
    "Can you say that again more slowly?", "I am waiting for my friend.", "Is it going to rain this afternoon?",
    "Good morning, how are you today?", "My son lost his blue jacket.", "Do you know a good place to eat nearby?",
    "I think I left my keys in the car.", "Could you speak a little louder?", "That is all, have a nice day.",
]
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029", "en-us+f3", "en-gb+m3"]
SPEEDS = [150, 185]
CONFIGS = {   # label, speech_model, biased, key-term rescoring, beam size
    "tiny": ("tiny.en plain", None, False, False, 1),
    "tiny-biased": ("tiny.en prompt", None, True, False, 1),
    "tiny-rescore": ("tiny.en prompt+rescore", None, True, True, 1),
    "tiny-rescore-beam3": ("tiny prompt+rescore b3", None, True, True, 3),
    "base": ("base plain", "whisper-base", False, False, 1),
    "base-biased": ("base prompt", "whisper-base", True, False, 1),
    "base-rescore": ("base prompt+rescore", "whisper-base", True, True, 1),
}


def speak(text: str, voice: str, speed: int) -> np.ndarray:
    raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], check=True,
                         capture_output=True).stdout
    pcm = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(RATE), "-c", "1", "-e", "signed-integer",
                          "-b", "16", "-"], input=raw, check=True, capture_output=True).stdout
    x = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    pad = np.zeros(RATE // 2, np.float32)
    return np.concatenate([pad, x, pad])


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    voiced = x[np.abs(x) > 0.01]
    rms = float(np.sqrt(np.mean(voiced ** 2))) if voiced.size else 0.1
    noise = rng.standard_normal(x.size).astype(np.float32) * rms * 10 ** (-snr_db / 20)
    return np.clip(x + noise, -1.0, 1.0)


def term_form(text: str) -> str:
    return " " + " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower().replace("-", " ")).split()) + " "


def normalise(text: str) -> list[str]:
    from whisper.normalizers import EnglishTextNormalizer

    return str(EnglishTextNormalizer()(text)).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    ref, hyp = normalise(reference), normalise(hypothesis)
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        diag, row[0] = row[0], i
        for j in range(1, len(hyp) + 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (ref[i - 1] != hyp[j - 1]))
    return row[len(hyp)], len(ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snr-db", type=float, nargs="*", default=[20.0, 10.0],
                    help="white-noise SNRs of the noisy copies (dB, relative to the speech's RMS)")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--out", default=str(REPO / "artifacts" / "bench_recognition.json"))
    args = ap.parse_args()

    from agent.pack import load_pack
    from agent.vocabulary import entry_terms, pack_vocabulary
    from perception import Perception, PerceptionConfig

    load_avg_start = os.getloadavg()
    pack = load_pack()
    vocabulary = tuple(pack_vocabulary(pack))
    entries = entry_terms(pack)
    # Each question term → every way of naming its entry.
    forms_of = {}
    for _, terms in QUESTIONS:
        for t in terms:
            entry = next((e for e in entries if term_form(t) in {term_form(f) for f in e}), None)
            if entry is None:
                raise SystemExit(f"question term {t!r} names no pack entry")
            forms_of[t] = [term_form(f) for f in entry]
    for text in NEGATIVES:
        said = [t for t in vocabulary if term_form(t) in term_form(text)]
        if said:
            raise SystemExit(f"negative sentence {text!r} names pack terms {said}")
    rng = np.random.default_rng(0)
    clips = []
    for text, terms in QUESTIONS + [(n, []) for n in NEGATIVES]:
        for voice in VOICES:
            for speed in SPEEDS:
                clean = speak(text, voice, speed)
                clips.append((text, terms, voice, speed, "clean", clean))
                for snr in args.snr_db:
                    clips.append((text, terms, voice, speed, f"noise {snr:g} dB", add_noise(clean, snr, rng)))
    results: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    conditions = ["clean", *(f"noise {snr:g} dB" for snr in args.snr_db), "all"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(results: dict[str, Any], samples: dict[str, Any], load_avg_end: tuple[float, ...]) -> None:
        out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                   "load_avg_start": load_avg_start, "load_avg_end": load_avg_end,
                                   "snr_db": args.snr_db, "voices": VOICES, "speeds": SPEEDS,
                                   "vocabulary": vocabulary, "results": results, "samples": samples}, indent=1))

    for key in args.configs:
        label, model, biased, rescore, beam = CONFIGS[key]
        p = Perception(PerceptionConfig(speech_model=model, speech_vocabulary=vocabulary if biased else (),
                                        speech_term_rescore=rescore, speech_beam_size=beam))
        p.warmup(("speech",))
        rows: dict[str, dict[str, float]] = {}
        times, detail = [], []
        for text, terms, voice, speed, condition, audio in clips:
            t0 = time.perf_counter()
            heard = p.encode_speech(audio, RATE).transcript
            times.append(time.perf_counter() - t0)
            errors, words = word_errors(text, heard)
            found = sum(term_form(t) in term_form(heard) for t in terms)
            entry_found = sum(any(f in term_form(heard) for f in forms_of[t]) for t in terms)
            invented = sum(term_form(t) in term_form(heard) and term_form(t) not in term_form(text) for t in vocabulary)
            for group in (condition, "all"):
                r = rows.setdefault(group, {"errors": 0, "words": 0, "terms": 0, "found": 0, "entry_found": 0,
                                            "invented": 0, "clips": 0, "negatives": 0, "false_term_clips": 0})
                if not terms:        # a negative: only whether a pack term was heard in it counts
                    r["negatives"] += 1
                    r["false_term_clips"] += invented > 0
                    continue
                r["errors"] += errors
                r["words"] += words
                r["terms"] += len(terms)
                r["found"] += found
                r["entry_found"] += entry_found
                r["invented"] += invented
                r["clips"] += 1
            detail.append({"text": text, "voice": voice, "speed": speed, "condition": condition, "heard": heard,
                           "terms_found": found, "entries_found": entry_found})
        results[key] = {"label": label, "median_ms": 1000 * statistics.median(times),
                        **{g: {"wer": r["errors"] / r["words"], "term_recall": r["found"] / r["terms"],
                               "entry_recall": r["entry_found"] / r["terms"],
                               "invented_terms": r["invented"], "clips": r["clips"], "negatives": r["negatives"],
                               "false_term_clips": r["false_term_clips"]} for g, r in rows.items()}}
        samples[key] = detail
        r = results[key]     # each configuration's row as soon as it is done (a full run takes long)
        print(f"{r['label']:24s} " + " ".join(f"{c} {r[c]['wer']:.3f} / {100 * r[c]['term_recall']:.1f}% "
                                              f"(entry {100 * r[c]['entry_recall']:.1f}%)" for c in conditions)
              + f" median {r['median_ms']:.0f} ms", flush=True)
        write(dict(results), dict(samples), os.getloadavg())
    load_avg_end = os.getloadavg()

    snrs = " / ".join(f"{snr:g}" for snr in args.snr_db)
    print(f"\nRecognition: ({len(QUESTIONS)} kiosk questions + {len(NEGATIVES)} without pack terms) × {len(VOICES)} "
          f"espeak-ng voices × {len(SPEEDS)} speeds × clean + white noise at {snrs} dB SNR = {len(clips)} clips per "
          f"configuration; demo pack vocabulary ({len(vocabulary)} terms); load average {load_avg_start[0]:.2f} → "
          f"{load_avg_end[0]:.2f}")
    print("WER / key-term recall (entry recall) per condition (questions); invented = pack terms in a question's "
          "transcript that were not said; false = negatives' clips with a pack term heard, per condition")
    print(f"{'configuration':24s} " + " ".join(f"{c:>20s}" for c in conditions) + f" {'invented':>9s} "
          f"{'false':>14s} {'median ms':>10s}")
    for key in args.configs:
        r = results[key]
        cells = " ".join(f"{r[c]['wer']:9.3f} / {100 * r[c]['term_recall']:5.1f}% ({100 * r[c]['entry_recall']:5.1f}%)"
                         for c in conditions)
        false = "/".join(str(r[c]["false_term_clips"]) for c in conditions[:-1])
        print(f"{r['label']:24s} {cells} {r['all']['invented_terms']:>9d} {false:>14s} {r['median_ms']:10.0f}")
    if "tiny" in samples and "tiny-biased" in samples:
        print("\nService desk, en-gb 150 wpm, clean: plain →", next(
            d["heard"] for d in samples["tiny"] if d["voice"] == "en-gb" and d["speed"] == 150
            and d["condition"] == "clean" and "service desk" in d["text"]), "| biased →", next(
            d["heard"] for d in samples["tiny-biased"] if d["voice"] == "en-gb" and d["speed"] == 150
            and d["condition"] == "clean" and "service desk" in d["text"]))
    write(results, samples, load_avg_end)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
