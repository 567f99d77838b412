"""Key-term rescoring: let Whisper itself judge whether a pack term was said where it misheard one.

Biasing Whisper with the pack's glossary (``speech_vocabulary``) fixes most misheard terms, but
greedy decoding of a small model still writes other real words where an accent or a fast voice
blurs the term: "The law where is the same as desk, please." for "Hello, where is the service
desk please?". Decoding commits to one word at a time; scoring a whole sentence does not. So
after decoding, for the terms that *sound* close to a stretch of the transcript:

1. **Candidates** — each term and each run of 1 to (term words + 2) transcript words are compared
   as espeak-ng phonemes (edit distance over IPA symbols, stress and length marks dropped,
   divided by the longer length). A term's closest run within ``max_distance`` gives one
   candidate transcript: the run replaced by the term ("The law where is the service desk,
   please."). The closest ``max_candidates`` over all terms are kept.
2. **Whisper's verdict** — the transcript and its candidates are force-decoded by the same
   Whisper over the same encoder output (CTranslate2's ``align``, one batched call, no prompt),
   which gives log P(text | audio) for each. A candidate replaces the transcript only when its
   log-probability plus ``bonus`` (the prior that a customer names the pack's terms, in nats)
   beats the transcript's. "The law where is the same as desk" scores -11.2, the candidate with
   "service desk," -11.3: taken with any bonus above 0.1; "… where are the toilets please"
   scores -26: never taken, however close its phonemes.

Up to ``rounds`` terms are repaired per transcript, one per round. Terms the transcript already
holds are not candidates, and runs holding one are never rewritten. espeak-ng runs as a separate
program (GPL-3.0, never linked): one process for a transcript's words, the terms' phonemes
cached. Cost: about 25 ms (espeak-ng) + 15 ms per candidate on tiny.en (2 cores).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, ModelLoadError

ESPEAK = "espeak-ng"
TIMEOUT_S = 10.0
# Marks that say how, not what, is said: stress, length, syllable breaks, ties.
_PROSODIC = re.compile("[ˈˌː.ˑ‿͡_\u0361\u035c]")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9']*")


@dataclass(frozen=True)
class TermRepair:
    """One repaired term: ``heard`` (the transcript's words) became ``term``; scores in nats."""

    term: str
    heard: str
    distance: float
    logprob_heard: float
    logprob_term: float


@dataclass(frozen=True)
class RescoreResult:
    text: str
    repairs: tuple[TermRepair, ...]
    candidates: int           # candidate transcripts Whisper scored


class EspeakWords:
    """Phonemes of single words or short phrases from one ``espeak-ng`` process per call."""

    def __init__(self, voice: str = "en-us", *, binary: str = ESPEAK) -> None:
        path = shutil.which(binary)
        if path is None:
            raise ModelLoadError(f"{binary!r} is not installed; key-term rescoring compares phonemes with it "
                                 f"(scripts/setup.sh installs Debian's espeak-ng), or set speech_term_rescore: false")
        self.binary, self.voice = path, voice
        self._cached_phrase = functools.lru_cache(maxsize=8192)(self._phrase)

    def phrase(self, text: str) -> str:
        """Phoneme string of ``text`` (no spaces, no prosodic marks); cached."""
        return self._cached_phrase(" ".join(text.split()))

    def _phrase(self, text: str) -> str:
        lines = self.lines([text])
        return "".join(lines[0].split()) if lines else ""

    def lines(self, phrases: list[str]) -> list[str]:
        """One phoneme string per phrase (commas make espeak-ng print one line per clause);
        [] when espeak-ng's lines do not match the phrases one to one."""
        if not phrases:
            return []
        text = ", ".join(p.replace(",", " ") for p in phrases) + "."
        try:
            res = subprocess.run([self.binary, "-q", "-v", self.voice, "--ipa", "--", text],
                                 capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return []
        if res.returncode != 0:
            return []
        out = [_PROSODIC.sub("", unicodedata.normalize("NFD", line.strip())) for line in res.stdout.splitlines()]
        out = [line for line in out if line]
        return out if len(out) == len(phrases) else []


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two symbol strings."""
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        diag, row[0] = row[0], i
        for j in range(1, len(b) + 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1]))
    return row[len(b)]


def _prefix_distances(target: str, run: str) -> dict[int, int]:
    """Edit distance of ``target`` to each prefix of ``run``: {prefix length: distance}."""
    column = list(range(len(target) + 1))          # distances of target[:i] to run[:0]
    out = {}
    for k, symbol in enumerate(run, start=1):
        previous, column = column, [k] + [0] * len(target)
        for i in range(1, len(target) + 1):
            column[i] = min(previous[i] + 1, column[i - 1] + 1, previous[i - 1] + (target[i - 1] != symbol))
        out[k] = column[-1]
    return out


def term_form(text: str) -> str:
    """Lower case, hyphens as spaces, words only, padded: ``" self checkout "``."""
    return " " + " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower().replace("-", " ")).split()) + " "


@dataclass(frozen=True)
class _Word:
    text: str
    start: int          # character span in the transcript
    end: int


class TermRescorer:
    """Repairs misheard pack terms in a Whisper transcript by Whisper's own sentence scores.

    ``model``: the CTranslate2 ``Whisper`` that decoded the transcript; ``tokenizer``:
    faster-whisper's tokenizer for it. :meth:`rescore` takes the transcript and the encoder
    output it was decoded from.
    """

    def __init__(self, terms: tuple[str, ...] | list[str], model: Any, tokenizer: Any, *,
                 max_distance: float = 0.4, bonus: float = 2.0, max_candidates: int = 8, rounds: int = 2,
                 phonemes: EspeakWords | None = None) -> None:
        if not 0.0 < max_distance < 1.0:
            raise ConfigError(f"speech_term_rescore_distance must be in (0, 1), got {max_distance}")
        if not 0.0 <= bonus <= 20.0:
            raise ConfigError(f"speech_term_rescore_bonus must be in [0, 20] nats, got {bonus}")
        if max_candidates < 1 or rounds < 1:
            raise ConfigError(f"term rescoring needs max_candidates ≥ 1 and rounds ≥ 1, got "
                              f"{max_candidates}, {rounds}")
        self.model, self.tokenizer = model, tokenizer
        self.max_distance, self.bonus = max_distance, bonus
        self.max_candidates, self.rounds = max_candidates, rounds
        self.phonemes = phonemes or EspeakWords()
        seen: set[str] = set()
        unique = []
        for term in terms:
            t = " ".join(term.split())
            if t and term_form(t) not in seen and term_form(t).strip():
                seen.add(term_form(t))
                unique.append(t)
        self.terms = tuple(unique)
        # One espeak-ng call for every term (chunks keep the command line short).
        self.term_phonemes: dict[str, str] = {}
        for i in range(0, len(self.terms), 64):
            chunk = list(self.terms[i:i + 64])
            lines = self.phonemes.lines(chunk) or [self.phonemes.phrase(t) for t in chunk]
            for term, line in zip(chunk, lines, strict=True):
                self.term_phonemes[term] = "".join(line.split())
        self.start_sequence = [*tokenizer.sot_sequence, tokenizer.no_timestamps]

    # ---- candidates ----------------------------------------------------------------------------

    def candidates(self, text: str) -> list[tuple[float, str, str, str]]:
        """(distance, term, heard words, candidate transcript), closest first, at most
        ``max_candidates``."""
        words = [_Word(m.group(0), m.start(), m.end()) for m in _WORD.finditer(text)]
        if not words:
            return []
        spoken = self.phonemes.lines([w.text for w in words])
        if not spoken:
            return []
        spoken = ["".join(s.split()) for s in spoken]
        present = term_form(text)
        # Where the transcript already holds a term, a run over it may only become a term that
        # contains it ("milk" → "whole milk", never "milk" → "toilets").
        held: list[tuple[int, int, str]] = []
        for term in self.terms:
            tf = term_form(term).split()
            for i in range(len(words) - len(tf) + 1):
                if [term_form(w.text).strip() for w in words[i:i + len(tf)]] == tf:
                    held.append((i, i + len(tf) - 1, term_form(term)))
        grams = {"".join(spoken)[k:k + 2] for k in range(len("".join(spoken)) - 1)}
        best: dict[str, tuple[float, int, int]] = {}
        for term in self.terms:
            form = term_form(term)
            if form in present:
                continue
            target = self.term_phonemes.get(term, "")
            if len(target) < 3:
                continue
            # Cheap filter: a term within max_distance shares most of its phoneme pairs with the
            # transcript; the rest is never worth an edit distance.
            pairs = [target[k:k + 2] for k in range(len(target) - 1)]
            if sum(g in grams for g in pairs) < (1 - 2 * self.max_distance) * len(pairs):
                continue
            longest = len(form.split()) + 2
            for i in range(len(words)):
                ends = [j for j in range(i, min(len(words), i + longest))
                        if not any(a <= j and i <= b and h not in form for a, b, h in held)]
                if not ends:
                    continue
                run, cuts = "", {}          # run length at the end of word j → j
                for j in range(i, ends[-1] + 1):
                    run += spoken[j]
                    cuts[len(run)] = j
                    if len(run) > 2 * len(target):
                        break
                # One edit-distance table of the term against the whole run gives its distance to
                # every run that starts at word i (the last row, at the word ends).
                for size, dist in _prefix_distances(target, run).items():
                    end = cuts.get(size)
                    if end is None or end not in ends:
                        continue
                    d = dist / max(len(target), size)
                    if d <= self.max_distance and (term not in best or d < best[term][0]):
                        best[term] = (d, i, end)
        ranked = sorted((d, term, i, j) for term, (d, i, j) in best.items())[:self.max_candidates]
        out = []
        for d, term, i, j in ranked:
            start, end = words[i].start, words[j].end
            replacement = term[:1].upper() + term[1:] if start == 0 else term
            out.append((d, term, text[start:end], text[:start] + replacement + text[end:]))
        return out

    # ---- Whisper's verdict ---------------------------------------------------------------------

    def logprobs(self, texts: list[str], encoder_output: np.ndarray, num_frames: int,
                 glossary: list[str] | None = None) -> list[float]:
        """log P(text | audio) of each text: force-decoded in one batch, end-of-text included;
        with ``glossary``, conditioned on the prompt "Glossary: a, b." as decoding is."""
        import ctranslate2

        start = self.start_sequence
        if glossary:
            prompt = self.tokenizer.encode(" Glossary: " + ", ".join(glossary) + ".")
            start = [self.tokenizer.sot_prev, *prompt, *start]
        tokens = [self.tokenizer.encode(" " + t.strip()) for t in texts]
        batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(
            np.repeat(encoder_output[:1], len(texts), axis=0)))
        results = self.model.align(batch, start, tokens, num_frames)
        return [float(np.log(np.maximum(np.asarray(r.text_token_probs, dtype=np.float64), 1e-12)).sum())
                for r in results]

    def rescore(self, text: str, encoder_output: np.ndarray, num_frames: int) -> RescoreResult:
        """``text`` decoded from ``encoder_output`` ((1, T, D) float32) → the repaired text."""
        repairs: list[TermRepair] = []
        scored = 0
        current = text.strip()
        for _ in range(self.rounds):
            cands = self.candidates(current)
            if not cands:
                break
            scores = self.logprobs([current] + [c[3] for c in cands], encoder_output, num_frames)
            scored += len(cands)
            base = scores[0]
            k = int(np.argmax(scores[1:]))
            if scores[1 + k] + self.bonus <= base:
                break
            d, term, heard, candidate = cands[k]
            repairs.append(TermRepair(term, heard, round(d, 3), round(base, 3), round(scores[1 + k], 3)))
            current = candidate
        return RescoreResult(current, tuple(repairs), scored)
