"""Phonemes from Debian's ``espeak-ng``, run as a separate program (it is GPL-3.0; this project is
Apache-2.0, so it is never linked or imported, only executed).

``espeak-ng -q -v VOICE --ipa TEXT`` prints IPA, one line per clause it finds, and drops the
punctuation. Piper voices were trained on espeak-ng's IPA with the clause punctuation kept, so
the caller splits clauses itself (voice/text.py) and puts each terminator back
(:func:`clause_phonemes`).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import unicodedata

from .errors import PhonemizerError

ESPEAK = "espeak-ng"
TIMEOUT_S = 10.0
# Spellings espeak-ng misreads, rewritten to ones it says right. "A" after "double"/"triple"
# ("double A batteries", as voice/text.py writes "AA") is read as the article "uh"; "eh" is the
# letter's sound.
_RESPELL = ((re.compile(r"\b((?i:double|triple))\s+A\b"), r"\1 eh"),)


class EspeakPhonemizer:
    """IPA for a clause of text, from one ``espeak-ng`` process per call (~10 ms; cached)."""

    def __init__(self, voice: str, *, binary: str = ESPEAK) -> None:
        path = shutil.which(binary)
        if path is None:
            raise PhonemizerError(f"{binary!r} is not installed; Piper voices need it for phonemes "
                                  f"(scripts/setup.sh installs Debian's espeak-ng)")
        self.binary, self.voice = path, voice
        probe = subprocess.run([path, "-q", "-v", voice, "--ipa", "test"], capture_output=True, text=True,
                               timeout=TIMEOUT_S, check=False)
        if probe.returncode != 0 or not probe.stdout.strip():
            raise PhonemizerError(f"espeak-ng cannot speak voice {voice!r}: {probe.stderr.strip() or 'no output'}")
        self._cached = functools.lru_cache(maxsize=4096)(self._run)

    def phonemize(self, text: str) -> str:
        """IPA of ``text`` (espeak-ng's clauses joined by spaces), NFD-decomposed as Piper expects."""
        text = " ".join(text.split())
        for pattern, spoken in _RESPELL:
            text = pattern.sub(spoken, text)
        return self._cached(text) if text else ""

    def _run(self, text: str) -> str:
        # "--" ends the options: a reply that starts with "-" is text, not a flag.
        try:
            res = subprocess.run([self.binary, "-q", "-v", self.voice, "--ipa", "--", text],
                                 capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PhonemizerError(f"espeak-ng took longer than {TIMEOUT_S} s on {text[:60]!r}") from exc
        if res.returncode != 0:
            raise PhonemizerError(f"espeak-ng failed ({res.returncode}) on {text[:60]!r}: {res.stderr.strip()}")
        lines = [line.strip().replace("_", "") for line in res.stdout.splitlines()]
        return unicodedata.normalize("NFD", " ".join(line for line in lines if line))


def clause_phonemes(phonemes: str, terminator: str, last: bool) -> str:
    """One clause's IPA with its punctuation put back, as piper's own phonemizer does: the
    terminator follows the phonemes, and a space separates it from the next clause."""
    return phonemes + terminator + ("" if last else " ")
