"""Understanding one customer turn: normalised words → acts, slots, entities, days, per question.

Deterministic and fast (< 1 ms a turn): phrase matching on the pack's vocabulary (entry aliases,
policy facts, closed days) and a per-language lexicon (``agent/lexicons/<language>.yaml``: act
phrases, slot cues, day names, stopwords). Misspelt or mis-heard words are corrected to the
closest vocabulary word (``difflib``; a word is only corrected when it is not already a known
word and the match is close: ratio ≥ 0.8).

A turn can hold several questions ("where is the milk and how much is it?"): the text is cut at
``and``/``also``/punctuation between matches, and each part becomes a :class:`Question` with the
slots, entities and days found in it. Parts without their own slot inherit the previous part's
("where are the batteries and the chargers?"); parts without an entity point to the previous
part's ("…and how much is it?"). Across turns the dialogue manager does the same with its state.

>>> u = Understander(load_pack())                    # doctest: +SKIP
>>> [ (q.slots, q.entries) for q in u.understand("wher is the milk and how much is it").questions ]
[({'where'}, ['milk']), ({'price'}, ['milk'])]
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .errors import PackError
from .pack import KnowledgePack

LEXICON_DIR = Path(__file__).resolve().parent / "lexicons"
# Acts the lexicon defines, in the order they win when a turn holds several and asks nothing.
ACTS = ("unsafe", "abusive", "rude", "staff", "repeat", "goodbye", "thanks", "greeting", "acknowledge", "off_topic",
        "noise")
SLOTS = ("where", "price", "size", "exists", "opens", "closes", "hours", "duration", "whether")
# Slots that ask something by themselves (a part with only "whether" asks nothing yet).
ASKING_SLOTS = ("where", "price", "size", "exists", "opens", "closes", "hours", "duration")
# Hesitations and noise a transcript may hold ("uhh", "mmm hnn"): a turn of only these is not heard.
_FILLER_RE = re.compile(r"^(u+h*m*|u+m+|m+h*|h+m+|e+r+m*|e+h+|a+h+|h+n+|n+|o+h+|hm+|mhm+|uh+huh|huh+|s+h+)$")
_SPLIT_WORDS = {"and", "also", "plus", "or", "then", "but", "as well as", "&"}
# 12-19 digits in groups (a payment card number), spaces or dashes between.
_CARD_NUMBER_RE = re.compile(r"(?<!\d)(?:\d[ -]?){12,19}(?!\d)")
_WORD_RE = re.compile(r"[a-z0-9]+(?:['’\-][a-z0-9]+)*|[?.!;,&]")
# Modifiers that do not change which product is meant ("fresh bread", "some milk").
_MODIFIERS = {"fresh", "cold", "warm", "new", "good", "nice", "big", "small", "large", "little", "plain", "regular",
              "normal", "standard", "basic", "spare", "extra", "some", "cheapest", "best", "cheap", "the", "a", "an",
              "any", "more", "few", "couple", "two", "three", "four", "pack", "packet", "box", "bottle", "carton",
              "of", "my", "your", "for", "replacement", "decent", "quick"}


def stem(word: str) -> str:
    """A light English singular, applied to the text and to the vocabulary alike."""
    w = word.replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ses", "xes", "ches", "shes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


@dataclass(frozen=True)
class Lexicon:
    rewrite: dict[str, str]
    slots: dict[str, tuple[str, ...]]
    days: dict[str, tuple[str, ...]]
    acts: dict[str, tuple[str, ...]]
    pronouns: frozenset[str]
    negations: frozenset[str]
    stopwords: frozenset[str]


@lru_cache(maxsize=8)
def load_lexicon(language: str) -> Lexicon:
    """The lexicon of ``language`` (``agent/lexicons/<language>.yaml``); :class:`PackError` if none."""
    path = LEXICON_DIR / f"{language}.yaml"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in LEXICON_DIR.glob("*.yaml")))
        raise PackError(f"no dialogue lexicon for language {language!r} (have: {have})", file="pack.yaml",
                        field="language")
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))

    def tup(xs: Any) -> tuple[str, ...]:
        return tuple(str(x).lower() for x in xs or ())

    return Lexicon(rewrite={str(k).lower(): str(v).lower() for k, v in (data.get("rewrite") or {}).items()},
                   slots={k: tup(v) for k, v in data["slots"].items()},
                   days={k: tup(v) for k, v in data["days"].items()},
                   acts={k: tup(v) for k, v in data["acts"].items()},
                   pronouns=frozenset(tup(data.get("pronouns"))), negations=frozenset(tup(data.get("negations"))),
                   stopwords=frozenset(stem(w) for w in tup(data.get("stopwords"))))


@dataclass
class Question:
    """One question of a turn. ``entries``: entry ids named (aliases); ``facts``: yes/no fact ids
    named; ``days``: weekday names, ``today``, ``tomorrow``, ``weekend``, ``weekdays``, ``holiday``;
    ``closed_days``: named closed days (``Christmas Day``); ``unknown``: things asked about that
    the pack does not name ("lawnmowers", "oat milk"); ``pronoun``: "it", "them"…"""

    slots: set[str] = field(default_factory=set)
    entries: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    days: list[str] = field(default_factory=list)
    closed_days: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    pronoun: bool = False
    negated: bool = False
    text: str = ""
    continues: bool = False   # joined to an asking part by "and"/"or" ("how much is the milk and a torch")

    def asks(self) -> bool:
        """Whether this part asks anything (else it is only words around an act)."""
        return bool(self.entries or self.facts or self.days or self.closed_days or self.unknown
                    or self.slots & set(ASKING_SLOTS))

    def to_json(self) -> dict[str, Any]:
        return {"slots": sorted(self.slots), "entries": self.entries, "facts": self.facts, "days": self.days,
                "closed_days": self.closed_days, "unknown": self.unknown, "pronoun": self.pronoun}


@dataclass
class Understanding:
    text: str                       # normalised (and corrected) words
    acts: list[str]                 # conversation acts found, in ACTS order
    questions: list[Question]       # the parts that ask something
    corrections: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "acts": self.acts, "questions": [q.to_json() for q in self.questions],
                "corrections": self.corrections}


@dataclass(frozen=True)
class _Match:
    start: int
    end: int
    kind: str        # entry | fact | closed | day | slot | act | pronoun | negation | split
    key: str


class Understander:
    """Builds the phrase index of one pack + its language's lexicon once; ``understand`` per turn."""

    def __init__(self, pack: KnowledgePack) -> None:
        self.pack = pack
        self.lex = load_lexicon(pack.language)
        self.index: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        for e in pack.entries:
            for a in e.aliases:
                self._add(a, "entry", e.id)
            for f in e.facts:
                for a in f.aliases:
                    self._add(a, "fact", f.id)
            if e.holidays:
                for c in e.holidays.closed:
                    for a in (c.name, *c.aliases):
                        self._add(a, "closed", c.name)
        for day, phrases in self.lex.days.items():
            for ph in phrases:
                self._add(ph, "day", day)
        for slot, phrases in self.lex.slots.items():
            for ph in phrases:
                self._add(ph, "slot", slot)
        for act, phrases in self.lex.acts.items():
            for ph in phrases:
                self._add(ph, "act", act)
        for w in self.lex.pronouns:
            self._add(w, "pronoun", w)
        for w in self.lex.negations:
            self._add(w, "negation", w)
        for w in _SPLIT_WORDS:
            self._add(w, "split", w)
        self.max_len = max(len(k) for k in self.index)
        # Words a misspelling may be corrected to: the pack's names and the lexicon's cue words.
        self.known = {w for k in self.index for w in k} | set(self.lex.stopwords)
        self.targets = sorted({w for k, vals in self.index.items() for w in k
                               if len(w) >= 4 and any(kind in ("entry", "fact", "closed", "day", "slot")
                                                      for kind, _ in vals)} | {w for w in self.lex.stopwords if len(w) >= 4})
        self.slot_words = {w for k, vals in self.index.items() for w in k
                           if all(kind == "slot" for kind, _ in vals)}
        # Names of two or more words, for a mis-heard pair ("apple pie" → "apple pay") and one
        # word heard as two ("batter ease" → "batteries"): spelled out, before stemming.
        self.phrases: dict[str, tuple[str, ...]] = {}
        for e in pack.entries:
            for a in (*e.aliases, *(a for f in e.facts for a in f.aliases)):
                low = a.lower()
                if len(low) >= 7:
                    self.phrases[low] = tuple(stem(w) for w in _WORD_RE.findall(low))

    def _close(self, word: str) -> str | None:
        """The vocabulary word ``word`` is a misspelling of, or None. Short words need a closer
        match (one letter in five); a word containing a vocabulary word is a compound ("iphone",
        "cashback"), not a misspelling of it."""
        cutoff = 0.88 if len(word) <= 5 else 0.8
        for cand in difflib.get_close_matches(word, self.targets, n=3, cutoff=cutoff):
            if cand in word and cand != word:
                continue
            # a question word is corrected only when very close ("nearest" is not "earliest")
            if cand in self.slot_words and difflib.SequenceMatcher(None, word, cand).ratio() < 0.85:
                continue
            return cand
        return None

    def _add(self, phrase: str, kind: str, key: str) -> None:
        raw: list[str] = []
        for w in _WORD_RE.findall(phrase.lower().replace("’", "'")):   # the text's own rewriting
            rep = self.lex.rewrite.get(w)
            raw.extend(rep.split() if rep else [w])
        words = tuple(stem(w) for w in raw if w not in "?.!;,")
        if words:
            vals = self.index.setdefault(words, [])
            if (kind, key) not in vals:
                vals.append((kind, key))

    # -- normalising --------------------------------------------------------------------------

    def normalise(self, text: str) -> tuple[list[str], dict[str, str]]:
        """Lower-cased words (punctuation kept as its own token), rewritten, stemmed, corrected."""
        raw = _WORD_RE.findall(text.lower().replace("’", "'"))
        words: list[str] = []
        for w in raw:
            rep = self.lex.rewrite.get(w)
            words.extend(rep.split() if rep else [w])
        out: list[str] = []
        corrections: dict[str, str] = {}
        slot_fixes: list[tuple[int, str, str]] = []    # (position in out, word, its stem)
        k = 0
        while k < len(words):
            w = words[k]
            s = stem(w)
            unknown = not (s in self.known or w in self.known or len(s) < 4 or s.isdigit() or w in "?.!;,&")
            if k + 1 < len(words) and words[k + 1] not in "?.!;,&":
                nxt = words[k + 1]
                nxt_unknown = not (stem(nxt) in self.known or nxt in self.known or nxt.isdigit())
                if unknown or nxt_unknown:
                    pair = self._pair(w, nxt)
                    if pair is not None:
                        corrections[f"{w} {nxt}"] = " ".join(pair)
                        out.extend(pair)
                        k += 2
                        continue
            if not unknown:
                out.append(s)
            else:
                close = self._close(w) or self._close(s)
                if close:
                    corrections[w] = close
                    if close in self.slot_words:
                        slot_fixes.append((len(out), w, s))
                out.append(close or s)
            k += 1
        # A word corrected to a question word ("rice" → "price") is kept as heard when the turn
        # already asks that ("how much is a bag of rice": "how much" is the price question, so
        # "rice" is a product the pack may not have, not a second "price").
        for pos, word, heard in slot_fixes:
            asked = {key for kind, key in self.index.get((out[pos],), []) if kind == "slot"}
            trial = [*out[:pos], heard, *out[pos + 1:]]
            if asked & {m.key for m in self._matches(trial) if m.kind == "slot"}:
                out = trial
                corrections.pop(word, None)
        return out, corrections

    def _pair(self, a: str, b: str) -> tuple[str, ...] | None:
        """Two heard words that are one name of the pack: a mis-heard pair or a split word."""
        joined = difflib.get_close_matches(f"{a} {b}", list(self.phrases), n=1, cutoff=0.75)
        # only when one word is heard right and is a word of its own ("apple pie" → "apple pay";
        # not "my house" → "my phone")
        if joined and " " in joined[0]:
            first, second = joined[0].split(" ", 1)
            right = (a == first and len(a) >= 4 and a not in self.lex.stopwords) or \
                (b == second and len(b) >= 4 and b not in self.lex.stopwords)
            if right:
                return self.phrases[joined[0]]
        glued = difflib.get_close_matches(a + b, [p for p in self.phrases if " " not in p], n=1, cutoff=0.8)
        if glued and len(a + b) >= 7:
            return self.phrases[glued[0]]
        return None

    def _matches(self, words: list[str]) -> list[_Match]:
        """Longest phrase matches, left to right; unmatched words are left out."""
        out: list[_Match] = []
        i = 0
        while i < len(words):
            for n in range(min(self.max_len, len(words) - i), 0, -1):
                vals = self.index.get(tuple(words[i:i + n]))
                if vals:
                    if any(kind in ("entry", "fact") for kind, _ in vals) and any(k == "slot" for k, _ in vals):
                        # "till": the tills — unless it reads as "until" ("open till what time?")
                        nxt = words[i + n] if i + n < len(words) else ""
                        prev = words[i - 1] if i else ""
                        as_slot = nxt in ("what", "when", "how", "late", "midnight") or nxt[:1].isdigit() \
                            or prev in ("open", "opened") or i == 0
                        vals = [(kind, key) for kind, key in vals if (kind == "slot") == as_slot]
                    for kind, key in vals:
                        out.append(_Match(i, i + n, kind, key))
                    i += n
                    break
            else:
                i += 1
        return out

    # -- one turn -----------------------------------------------------------------------------

    def understand(self, text: str) -> Understanding:
        card_number = bool(_CARD_NUMBER_RE.search(text))
        words, corrections = self.normalise(text)
        matches = self._matches(words)
        covered: dict[int, list[_Match]] = {}
        for m in matches:
            for k in range(m.start, m.end):
                covered.setdefault(k, []).append(m)

        # Cut points: punctuation, and "and"/"also"/… outside any longer phrase.
        cuts = [k for k, w in enumerate(words) if w in "?.!;,&"]
        cuts += [m.start for m in matches if m.kind == "split"]
        acts: set[str] = set()
        questions: list[Question] = []
        start = 0
        split_at = {m.start for m in matches if m.kind == "split"}
        joined = False
        for cut in [*sorted(set(cuts)), len(words)]:
            part = range(start, cut)
            start = cut + 1
            prev_joined, joined = joined, cut in split_at
            if not part:
                continue
            q = Question(text=" ".join(words[k] for k in part))
            q.continues = prev_joined and bool(questions) and bool(
                questions[-1].slots & set(ASKING_SLOTS) or questions[-1].continues)
            part_matches = [m for m in matches if part.start <= m.start < part.stop]
            for m in part_matches:
                if m.kind == "act":
                    acts.add(m.key)
                elif m.kind == "slot":
                    q.slots.add(m.key)
                elif m.kind == "day" and m.key not in q.days:
                    q.days.append(m.key)
                elif m.kind == "closed" and m.key not in q.closed_days:
                    q.closed_days.append(m.key)
                elif m.kind == "fact" and m.key not in q.facts:
                    q.facts.append(m.key)
                elif m.kind == "entry" and m.key not in q.entries:
                    q.entries.append(m.key)
                elif m.kind == "pronoun":
                    q.pronoun = True
                elif m.kind == "negation":
                    q.negated = True
            q.unknown = self._unknown(words, part, covered, q)
            if prev_joined and questions and q.facts and set(q.facts) <= set(questions[-1].facts) \
                    and not (q.slots or q.entries or q.days or q.closed_days or q.unknown):
                continue      # "notes and coins": two names of one fact, one question
            questions.append(q)
        if "acknowledge" in acts and any(q.unknown for q in questions):
            acts.discard("acknowledge")   # "a good restaurant": not an "okay, good"
        if card_number:   # a payment card number typed or read out: never taken, never repeated
            acts.add("unsafe")
        content = [w for w in words if w not in "?.!;,&"]
        if content and all(_FILLER_RE.match(w) for w in content):
            acts.add("noise")
        asked = [q for q in questions if q.asks() or (q.pronoun and q.slots)]
        return Understanding(" ".join(words), [a for a in ACTS if a in acts], asked, corrections)

    def _unknown(self, words: list[str], part: range, covered: dict[int, list[_Match]], q: Question) -> list[str]:
        """Content words of a part that nothing matched: a thing the pack does not name. A
        product alias with such a word right next to it ("oat milk", "toilet paper") is not that
        product: the entry is dropped from the part and the whole phrase is unknown."""
        unknown: list[str] = []
        k = part.start
        while k < part.stop:
            w = words[k]
            if k in covered or w in self.lex.stopwords or w.isdigit() or len(w) < 2 or w in "?.!;,&":
                k += 1
                continue
            j = k
            while j + 1 < part.stop and (j + 1) not in covered and words[j + 1] not in self.lex.stopwords \
                    and words[j + 1] not in "?.!;,&":
                j += 1
            phrase = words[k:j + 1]
            # a product alias right after or before the unknown words is a different product
            for neighbour in (k - 1, j + 1):
                for m in covered.get(neighbour, []):
                    # products: "oat milk", "milk chocolate"; places and services: "toilet paper"
                    named = q.entries if m.kind == "entry" else q.facts if m.kind == "fact" else None
                    if named is not None and m.key in named and ((m.kind == "entry" and self._is_product(m.key))
                                                                 or neighbour < k) \
                            and not (set(phrase) <= _MODIFIERS):
                        named.remove(m.key)
                        alias = words[m.start:m.end]
                        phrase = [*phrase, *alias] if neighbour > j else [*alias, *phrase]
            if not set(phrase) <= _MODIFIERS and not all(_FILLER_RE.match(w) for w in phrase):
                unknown.append(" ".join(phrase))
            k = j + 1
        return unknown

    def _is_product(self, entry_id: str) -> bool:
        return self.pack.entry(entry_id).kind == "product"


__all__ = ["ACTS", "SLOTS", "Lexicon", "Question", "Understander", "Understanding", "load_lexicon", "stem"]
