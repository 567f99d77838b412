"""Text before phonemes: clauses from a streaming reply, and words for numbers, prices and times.

espeak-ng reads "$4.49" as "dollar four point four nine" and "1.5 kg" as "one point five K G".
A kiosk that states prices must say them right, so :func:`normalize` rewrites them into words
first ("four dollars forty-nine", "one point five kilograms"). It runs on one clause at a time,
after splitting, so the splitter sees the original punctuation ("$4.49." ends a sentence; the
first "." does not).

:class:`ClauseSplitter` takes a reply's text deltas as they stream from the language model and
returns each clause as soon as it is complete (its terminator and the whitespace after it have
arrived), so synthesis can start at the first clause.

>>> normalize("Milk is in aisle 2 and costs $1.29; we open at 8 am.")
'Milk is in aisle two and costs one dollar twenty-nine; we open at eight a.m.'
>>> s = ClauseSplitter(); s.feed("Hello, the batt"), s.feed("eries are in aisle 7. Th")
([Clause(text='Hello', terminator=',', sentence_end=False)], [Clause(text='the batteries are in aisle 7', terminator='.', sentence_end=True)])
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .numbers import MAX_CARDINAL, cardinal, digits, ordinal

# ---- clauses -----------------------------------------------------------------------------------

CLAUSE_TERMINATORS = ",;:"
SENTENCE_TERMINATORS = ".!?"
TERMINATORS = CLAUSE_TERMINATORS + SENTENCE_TERMINATORS
# Closing marks that may sit between a terminator and the whitespace after it: 'fine." Then'.
_CLOSERS = "\"')]}”’"
# Words before a "." that do not end a sentence. Titles never do; the others only when a
# lowercase word follows ("at 8 a.m. tomorrow" vs "we open at 8 a.m. Come in").
_TITLES = {"mr", "mrs", "ms", "dr", "st", "mt", "no", "vs", "jr", "sr", "prof", "approx", "dept", "e.g", "i.e"}
_ABBREVIATIONS = {"a.m", "p.m", "etc", "inc", "ltd", "co"}
# A clause that is too long to wait for (a list without commas): split at the last space.
MAX_CLAUSE_CHARS = 300
# Cutting a clause early (a reply's first chunk): words a phrase should not stop on, words that
# start a new phrase (a natural place to break), and how far past the minimum to look for one.
EARLY_CUT_SLACK = 4
_PHRASE_STARTS = frozenset({"with", "within", "at", "in", "on", "to", "for", "from", "by", "and", "or", "but",
                            "because", "so", "which", "where", "when", "if", "next", "near", "behind", "before",
                            "after", "until", "unless", "while"})
_WEAK_ENDINGS = frozenset({"a", "an", "the", "to", "of", "and", "or", "but", "in", "on", "at", "for", "with",
                           "from", "by", "is", "are", "was", "your", "my", "our", "their", "its", "this", "that"})


@dataclass(frozen=True)
class Clause:
    """One clause of a reply: its text (stripped, original spelling), its terminator ("," "." "?"
    ... or "" for the end of the reply / a forced split), and whether it ends a sentence."""

    text: str
    terminator: str
    sentence_end: bool


def _word_before(text: str, end: int) -> str:
    start = end
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "."):
        start -= 1
    return text[start:end].lower()


class ClauseSplitter:
    """Incremental clause splitter: ``feed`` deltas, get complete clauses; ``flush`` the rest."""

    def __init__(self, max_clause_chars: int = MAX_CLAUSE_CHARS) -> None:
        self.max_clause_chars = max_clause_chars
        self._buf = ""
        self._scan = 0          # characters of _buf already known not to end a clause

    def feed(self, delta: str) -> list[Clause]:
        """Add a text delta; return the clauses it completed (possibly none)."""
        self._buf += delta
        out: list[Clause] = []
        i = self._scan
        while i < len(self._buf):
            ch = self._buf[i]
            if ch == "\n":
                out += self._cut(i, "", i + 1, sentence_end=True)
                i = 0
                continue
            if ch in TERMINATORS:
                j = i + 1
                while j < len(self._buf) and (self._buf[j] in _CLOSERS or self._buf[j] in TERMINATORS):
                    j += 1
                if j >= len(self._buf):
                    break                     # undecided until the next character arrives
                if self._buf[j].isspace() and self._is_boundary(i, j):
                    term = self._buf[i:j].strip(_CLOSERS)
                    out += self._cut(i, term[-1] if term else ch, j, sentence_end=ch in SENTENCE_TERMINATORS)
                    i = 0
                    continue
            i += 1
        self._scan = max(0, min(i, len(self._buf)))
        if len(self._buf) > self.max_clause_chars:
            cut = self._buf.rfind(" ", 0, self.max_clause_chars)
            if cut > 0:
                out += self._cut(cut, "", cut + 1, sentence_end=False)
                out += self.feed("")
        return out

    def _is_boundary(self, i: int, j: int) -> bool:
        if self._buf[i] != ".":
            return True
        word = _word_before(self._buf, i)
        if word in _TITLES or (len(word) == 1 and self._buf[i - 1].isupper()):
            return False                      # "Dr. Smith", "J. Smith"
        if word in _ABBREVIATIONS:
            k = j
            while k < len(self._buf) and self._buf[k].isspace():
                k += 1
            if k >= len(self._buf):
                return True                   # may be the end: decide for the end (flush stays correct)
            return not self._buf[k].islower()
        return True

    def _cut(self, end: int, terminator: str, resume: int, *, sentence_end: bool) -> list[Clause]:
        text = self._buf[:end].strip()
        self._buf = self._buf[resume:].lstrip()
        self._scan = 0
        if not _speakable(text):
            return []
        return [Clause(text, terminator, sentence_end)]

    def cut_words(self, words: int) -> list[Clause]:
        """Cut the unfinished clause early, at a phrase break after at least ``words`` complete
        words (a reply's first chunk must not wait for a long first sentence to stream in).

        The break is before a preposition or conjunction ("You can return unused items | within
        30 days"); with none within ``words + EARLY_CUT_SLACK`` words, after the last word there
        that a phrase may end on. Nothing while too few complete words have arrived.
        """
        complete = self._buf if self._buf[-1:].isspace() else self._buf[:max(0, self._buf.rfind(" "))]
        tokens = complete.split()

        def plain(tok: str) -> str:
            return tok.lower().strip("\"'()")

        cut = 0
        for j in range(max(1, words), len(tokens)):          # a break between tokens[j-1] and tokens[j]
            if plain(tokens[j]) in _PHRASE_STARTS and plain(tokens[j - 1]) not in _WEAK_ENDINGS:
                cut = j
                break
        if not cut and len(tokens) >= words + EARLY_CUT_SLACK:
            cut = next((k for k in range(words + EARLY_CUT_SLACK, 0, -1) if plain(tokens[k - 1]) not in _WEAK_ENDINGS), 0)
        if not cut:
            return []
        end = 0
        for tok in tokens[:cut]:
            end = self._buf.index(tok, end) + len(tok)
        return self._cut(end, "", end, sentence_end=False)

    def flush(self) -> list[Clause]:
        """The reply is complete: return what is left as a final clause."""
        text = self._buf.strip()
        self._buf, self._scan = "", 0
        if not _speakable(text):
            return []
        term = text[-1] if text[-1] in TERMINATORS else ""
        if term:
            text = text[:-1].rstrip()
        return [Clause(text, term, sentence_end=True)] if _speakable(text) else []


def _speakable(text: str) -> bool:
    return any(c.isalnum() for c in text)


def split_early(clause: Clause, words: int) -> list[Clause]:
    """``clause`` cut at a phrase break after ``words`` words (ClauseSplitter.cut_words), or whole."""
    splitter = ClauseSplitter()
    head = splitter.feed(clause.text + " ") or splitter.cut_words(words)
    rest = splitter.flush()
    if not head or not rest:
        return [clause]
    return [head[0], Clause(" ".join(c.text for c in rest), clause.terminator, clause.sentence_end)]


def split_clauses(text: str) -> list[Clause]:
    """All clauses of a complete text."""
    s = ClauseSplitter()
    return s.feed(text) + s.flush()


# ---- normalisation -----------------------------------------------------------------------------

_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence")}
_NUM = r"\d{1,3}(?:,\d{3})+|\d+"
_MONEY = re.compile(rf"([$€£])\s?({_NUM})(?:\.(\d{{1,2}}))?(?!\d)(\s*(?:million|billion|thousand)\b)?")
_TIME = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*([ap])\.?\s?m\b\.?", re.IGNORECASE)
_CLOCK = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s?%")
_UNITS = {"kg": ("kilogram", "kilograms"), "g": ("gram", "grams"), "mg": ("milligram", "milligrams"),
          "km": ("kilometre", "kilometres"), "m": ("metre", "metres"), "cm": ("centimetre", "centimetres"),
          "mm": ("millimetre", "millimetres"), "l": ("litre", "litres"), "ml": ("millilitre", "millilitres"),
          "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"), "oz": ("ounce", "ounces"),
          "ft": ("foot", "feet"), "in": ("inch", "inches"), "mph": ("mile per hour", "miles per hour"),
          "kmh": ("kilometre per hour", "kilometres per hour")}
# "in" and "m" only right after the number, never "2 in stock" or "I'm 5 m away" spelled apart.
_UNIT = re.compile(r"(\d+(?:\.\d+)?)(?:\s?(kg|mg|km|cm|mm|ml|lbs|lb|oz|ft|mph|kmh)|(g|l|m|in))\b")
_PHONE = re.compile(r"\b(\d{3})[-.](\d{3,4})(?:[-.](\d{4}))?\b")
_DECIMAL = re.compile(r"\b(\d+)\.(\d+)\b")
_INTEGER = re.compile(rf"\b(?:{_NUM})\b")
_SYMBOLS = (("&", " and "), ("+", " plus "), ("@", " at "), ("#", " number "), ("°C", " degrees Celsius"),
            ("°F", " degrees Fahrenheit"), ("°", " degrees"))


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def _say_int(s: str) -> str:
    n = _int(s)
    if n > MAX_CARDINAL:
        return digits(s)
    return cardinal(n)


def _money(m: re.Match[str]) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[m.group(1)]
    whole, frac, scale = _int(m.group(2)), m.group(3), (m.group(4) or "").strip()
    if scale:                                          # "$2.5 million" → "two point five million dollars"
        number = cardinal(whole) + (f" point {digits(frac)}" if frac else "")
        return f"{number} {scale} {many}"
    cents = int(frac.ljust(2, "0")) if frac else 0
    unit = one if whole == 1 else many
    if cents == 0:
        return f"{cardinal(whole)} {unit}"
    sub = sub_one if cents == 1 else sub_many
    if whole == 0:
        return f"{cardinal(cents)} {sub}"
    if cents < 10:                                     # "$1.05": "one dollar and five cents"
        return f"{cardinal(whole)} {unit} and {cardinal(cents)} {sub}"
    return f"{cardinal(whole)} {unit} {cardinal(cents)}"   # "$4.49": "four dollars forty-nine"


def _minutes(mm: str) -> str:
    m = int(mm)
    return f"oh {cardinal(m)}" if 0 < m < 10 else cardinal(m)


def _time(m: re.Match[str]) -> str:
    hour, mm, half = int(m.group(1)), m.group(2), m.group(3).lower()
    if not 0 <= hour <= 12:
        return m.group(0)
    spoken = cardinal(hour) + (f" {_minutes(mm)}" if mm and int(mm) else "")
    return f"{spoken} {half}.m."


def _clock(m: re.Match[str]) -> str:
    hour, minute = int(m.group(1)), int(m.group(2))
    if hour > 24 or minute > 59:
        return m.group(0)
    if minute == 0:
        return f"{cardinal(hour)} o'clock" if hour <= 12 else f"{cardinal(hour)} hundred"
    return f"{cardinal(hour)} {_minutes(m.group(2))}"


def _unit(m: re.Match[str]) -> str:
    number = m.group(1)
    one, many = _UNITS[(m.group(2) or m.group(3)).lower()]
    return f"{number} {one if number == '1' else many}"


def _decimal(m: re.Match[str]) -> str:
    return f"{_say_int(m.group(1))} point {digits(m.group(2))}"


# Battery sizes and similar letter pairs are said the way shop staff say them ("double A"),
# which a listener (and Whisper) follows; espeak-ng would read "AA" as a long vowel.
_DOUBLE_LETTER = re.compile(r"\b([A-Z])\1\b")
_TRIPLE_LETTER = re.compile(r"\b([A-Z])\1\1\b")
# A parenthesis is heard as a pause: "(pack of 4)" is said ", pack of four,".
_PAREN = re.compile(r"\s*\(([^()]*)\)")


def normalize(text: str) -> str:
    """Rewrite prices, times, ordinals, percentages, units and numbers as English words."""
    for sym, word in _SYMBOLS:
        text = text.replace(sym, word)
    text = _TRIPLE_LETTER.sub(lambda m: f"triple {m.group(1)}", text)
    text = _DOUBLE_LETTER.sub(lambda m: f"double {m.group(1)}", text)
    text = _PAREN.sub(lambda m: f", {m.group(1).strip()},", text)
    text = re.sub(r",\s*([,.;:!?])", r"\1", text)
    text = _MONEY.sub(_money, text)
    text = _TIME.sub(_time, text)
    text = _CLOCK.sub(_clock, text)
    text = _ORDINAL.sub(lambda m: ordinal(_int(m.group(1))) if _int(m.group(1)) <= MAX_CARDINAL
                        else m.group(0), text)
    text = _PERCENT.sub(lambda m: f"{m.group(1)} percent", text)
    text = _UNIT.sub(_unit, text)
    text = _PHONE.sub(lambda m: ", ".join(digits(g) for g in m.groups() if g), text)
    text = _DECIMAL.sub(_decimal, text)
    text = _INTEGER.sub(lambda m: _say_int(m.group(0)), text)
    return re.sub(r"\s+", " ", text).strip()
