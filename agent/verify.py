"""The verifier: a model's reply may state only the facts this turn selected.

Every fact-bearing token of a sentence is checked against the turn's :class:`~agent.dialogue.Plan`
(its selected entries, yes/no facts and hours):

- prices (``$4.49``, ``12 dollars``): one of the selected entries' prices, and the price of the
  product the sentence names when it names one;
- clock times (``9 pm``, ``21:00``, ``noon``): one of the selected hours, of the day the sentence
  names (``Monday to Saturday`` is a range), as an opening time after "open/from" and a closing
  time after "close/until/to" — so swapped or borrowed hours fail;
- other numbers (aisles, "30 days", "2 hours"): in the selected entries (or the question), and
  ``aisle N`` is the aisle of the product the sentence names;
- weekdays: ones the selected hours speak of;
- yes/no policy words (cheques, cash, cards…): the selected fact's value, read from the clause's
  negation ("we do not accept cheques");
- a product the selected entries do not mention; insults; the pack's blocked patterns; internal
  labels (intent names, "Facts:", "Detected intent", camera labels); a customer's slip read back
  ("we accept apple pie"): never.

:meth:`Verifier.check` returns the reason a sentence fails (None when it passes);
:meth:`Verifier.missing` the required values a whole reply leaves out. The agent streams a
model's reply sentence by sentence through it (agent/agent.py, ``_verified_stream``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .dialogue import Plan
from .guard import PRICE_RE
from .pack import WEEKDAYS, KnowledgePack
from .understand import Question, Understander, stem

_TIME_RE = re.compile(r"\b(\d{1,2})(?:[:.](\d{2}))?\s*(a\.?m\.?|p\.?m\.?)(?![a-z])|\b([01]?\d|2[0-3]):([0-5]\d)\b|"
                      r"\b(noon|midday|midnight)\b", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\w.$€£])(\d+(?:[.,]\d+)?)(?![\d])")
_AISLE_RE = re.compile(r"\baisles?\s+(?:number\s+)?(\d+)", re.IGNORECASE)
_CLOSE_CUES = {"close", "closes", "closing", "closed", "until", "till", "til", "to", "shut", "shuts", "-", "–"}
_OPEN_CUES = {"open", "opens", "opening", "from", "start", "starts"}
_INTERNAL_RE = re.compile(r"(detected intent|intent:|\bfacts?:|\bcontext:|\bquestion:|camera sees|input weights|"
                          r"\bconfidence\b|\bemotion:|\[(?:user|assistant|system)\]|<\|)", re.IGNORECASE)
_CLAUSE_RE = re.compile(r"[,;]|\bbut\b|\bhowever\b|\bwhile\b|\bwhereas\b", re.IGNORECASE)
_NEGATION_RE = re.compile(r"\b(not|no|never|cannot|can't|don't|doesn't|won't|isn't|aren't|unable)\b|n't\b",
                          re.IGNORECASE)
# An entry's text that negates or restricts: restating it negatively may be true.
_RESTRICTION_RE = re.compile(_NEGATION_RE.pattern + r"|\b(only|except|unless|without)\b", re.IGNORECASE)
_CARD_RE = re.compile(r"(?<!\d)(?:\d[ -]?){12,19}(?!\d)")


def time_value(m: re.Match[str]) -> int:
    """Minutes after midnight of a _TIME_RE match."""
    if m.group(6):
        return {"noon": 720, "midday": 720, "midnight": 0}[m.group(6).lower()]
    if m.group(4) is not None:
        return int(m.group(4)) * 60 + int(m.group(5))
    h, mins = int(m.group(1)) % 12, int(m.group(2) or 0)
    if m.group(3).lower().startswith("p"):
        h += 12
    return h * 60 + mins


def times_in(text: str) -> list[int]:
    return [time_value(m) for m in _TIME_RE.finditer(text)]


def _numbers(text: str) -> list[float]:
    """Numbers that are neither a price nor a clock time."""
    masked = _TIME_RE.sub(" ", PRICE_RE.sub(" ", text))
    return [float(n.replace(",", ".")) for n in _NUMBER_RE.findall(masked)]


class Verifier:
    """Checks sentences against one turn's plan. ``question``: the customer's words (a number
    they said may be repeated); ``labels``: words that must never be recited (camera labels)."""

    def __init__(self, pack: KnowledgePack, understander: Understander, plan: Plan, *, question: str = "",
                 labels: Iterable[str] = ()) -> None:
        self.pack, self.u, self.plan = pack, understander, plan
        texts = [e.text for e in plan.entries] + [plan.text]
        self.selected_text = " ".join(texts).lower()
        self.prices = {round(p, 2) for t in texts for p in _prices(t)} | \
            {round(e.price, 2) for e in plan.entries if e.price is not None}
        self.numbers = {n for t in texts for n in _numbers(t)} | {float(e.aisle) for e in plan.entries
                                                                   if isinstance(e.aisle, int)}
        self.numbers |= set(_numbers(question))
        # hours: weekday → (open, close) minutes, from the selected entries
        self.hours: dict[str, tuple[int, int]] = {}
        self.holiday: tuple[int, int] | None = None
        for e in plan.entries:
            for d, (o, c) in e.hours.items():
                self.hours[d] = (times_in(o)[0], times_in(c)[0])
            if e.holidays and e.holidays.open and e.holidays.close:
                self.holiday = (times_in(e.holidays.open)[0], times_in(e.holidays.close)[0])
        self.times = {t for oc in self.hours.values() for t in oc} | set(self.holiday or ()) | \
            {t for s in texts for t in times_in(s)}
        self.spoken_days = set(plan.days) or set(self.hours)
        self.selected_ids = {e.id for e in plan.entries}
        self.selected_facts = {(f.id, f.value) for f in plan.facts} | \
            {(f.id, f.value) for e in plan.entries for f in e.facts}
        self.labels = [lb.lower() for lb in labels if lb and len(lb) > 2]
        # The customer's slips ("apple pie" for "apple pay", "batter ease"): a reply repeating one
        # would read back a misheard word as if it were something the shop offers.
        # The plan already understood the question; a plan built elsewhere is understood here.
        asked = plan.understanding or (understander.understand(question) if question else None)
        self.slips = set(asked.corrections) if asked else set()
        lex = understander.lex
        self.insults = [a for a in (*lex.acts.get("abusive", ()), *lex.acts.get("rude", ()))]
        self.internal = [i.lower() for i in pack.intents] + [i.replace("_", " ") for i in pack.intents
                                                              if "_" in i and i != "other"]

    # -- one sentence -------------------------------------------------------------------------

    def check(self, sentence: str) -> str | None:
        """Why ``sentence`` may not be said (None: it may)."""
        low = sentence.lower()
        if _INTERNAL_RE.search(sentence):
            return "internal_label"
        for name in self.internal:
            if ("_" in name and name in low) or (" " in name and re.search(rf"\b{re.escape(name)}\b", low)):
                return f"internal_label:{name}"
        for lb in self.labels:
            if re.search(rf"\b{re.escape(lb)}\b", low) and lb not in self.selected_text:
                return f"camera_label:{lb}"
        words = " " + " ".join(stem(w) for w in re.findall(r"[a-z']+", low)) + " "
        for bad in self.insults:
            if f" {' '.join(stem(w) for w in bad.split())} " in words:
                return f"insult:{bad}"
        for pat in self.pack.blocked_patterns:
            if pat.search(sentence):
                return f"blocked:{pat.pattern}"
        if _CARD_RE.search(sentence):
            return "card_number"
        # "No, we cannot return it" where the answer is not a no (and the same for yes)
        lead = re.match(r"\s*(yes|no|yeah|yep|nope)\b", low)
        if lead:
            said_yes = lead.group(1) not in ("no", "nope")
            composed = re.match(r"\s*(yes|no)\b", self.plan.text.lower())
            if composed is None or (composed.group(1) == "yes") != said_yes:
                return f"yes_no:{lead.group(1)}"
        u = self.u.understand(sentence)
        for heard in u.corrections:
            if heard in self.slips:
                return f"repeats_slip:{heard}"
        named = [self.pack.entry(i) for q in u.questions for i in q.entries]
        products = []
        for e in (e for e in named if e.kind == "product"):
            if e.id in self.selected_ids:
                products.append(e)
            elif not any(re.search(rf"\b{re.escape(a.lower())}\b", self.selected_text) for a in e.aliases):
                return f"unselected_product:{e.id}"   # (named by a selected entry: "by the batteries")
        # prices
        for p in _prices(sentence):
            if round(p, 2) not in self.prices:
                return f"price:{p}"
            if len(products) == 1 and products[0].price is not None and abs(products[0].price - p) > 0.005:
                return f"price_of:{products[0].id}"
        # aisles
        for a in _AISLE_RE.findall(sentence):
            if float(a) not in self.numbers:
                return f"aisle:{a}"
            if len(products) == 1 and products[0].aisle is not None and str(products[0].aisle) != a:
                return f"aisle_of:{products[0].id}"
        for n in _numbers(sentence):
            if n not in self.numbers:
                return f"number:{n:g}"
        # weekdays and times
        days = self._days(low)
        holiday = "holiday" in low
        for d in days:
            if d not in self.spoken_days and self.weekday_label(d).lower() not in self.selected_text:
                return f"day:{d}"
        for m in _TIME_RE.finditer(sentence):
            t = time_value(m)
            if t not in self.times:
                return f"time:{m.group(0)}"
            role = self._role(sentence[:m.start()])
            pool: list[tuple[int, int]] = []
            if holiday and self.holiday:
                pool.append(self.holiday)
            scope = days or ([] if holiday else sorted(self.spoken_days))
            pool += [self.hours[d] for d in scope if d in self.hours]
            if pool:
                allowed = {oc[0] for oc in pool} if role == "open" else {oc[1] for oc in pool} if role == "close" \
                    else {x for oc in pool for x in oc}
                if t not in allowed:
                    return f"time_of_day:{m.group(0)}"
        # yes/no facts, clause by clause
        done, rest = split_sentences(sentence)
        for clause in (c for part in [*done, rest] for c in _CLAUSE_RE.split(part)):
            cu = self.u.understand(clause)
            negated = bool(_NEGATION_RE.search(clause))
            for q in cu.questions:
                for fid in q.facts:
                    values = {v for (i, v) in self.selected_facts if i == fid}
                    if not values:
                        if not any(a in self.selected_text for a in self._fact_aliases(fid)):
                            return f"unselected_fact:{fid}"
                        continue
                    if (not negated) not in values:
                        return f"fact:{fid}={'no' if negated else 'yes'}"
            if negated:
                denied = self._denied_entry(cu.questions)
                if denied:
                    return f"negated:{denied}"
        return None

    def _denied_entry(self, questions: list[Question]) -> str | None:
        """An entry a negated clause names whose own text denies nothing: "we don't offer
        refunds" where the returns policy says refunds go back to the card, "we don't sell
        batteries" where the pack has them. Facts declared yes/no are checked above; this covers
        the plain-text entries. An entry whose text restricts ("store credit only") or negates
        may be restated negatively; one superseded by another named or selected entry ("without
        a receipt" over the general returns policy) is judged by that one."""
        if any(q.facts for q in questions):
            return None                      # judged by its yes/no facts
        named = [self.pack.entry(i) for q in questions for i in q.entries]
        overriding = {s for e in named for s in e.supersedes} | \
            {s for e in self.plan.entries for s in e.supersedes}
        for e in named:
            if e.id not in overriding and not _RESTRICTION_RE.search(e.text):
                return e.id
        return None

    def missing(self, text: str) -> list[str]:
        """The plan's required values that ``text`` does not state."""
        low = text.lower()
        prices = {round(p, 2) for p in _prices(text)}
        times = set(times_in(text))
        numbers = set(_numbers(text)) | {float(a) for a in _AISLE_RE.findall(text)}
        out = []
        for r in self.plan.required:
            if PRICE_RE.search(r):
                ok = round(_prices(r)[0], 2) in prices
            elif _TIME_RE.search(r):
                ok = times_in(r)[0] in times
            elif r.isdigit():
                ok = float(r) in numbers
            else:
                fact = next((f for f in self.plan.facts if f.say == r), None)
                if fact is not None:
                    ok = any(re.search(rf"\b{re.escape(a)}", low) for a in fact.aliases)
                else:
                    ok = r.lower() in low
            if not ok:
                out.append(r)
        return out

    # -- helpers ------------------------------------------------------------------------------

    def weekday_label(self, key: str) -> str:
        return self.pack.weekday_names[WEEKDAYS.index(key)]

    def _days(self, low: str) -> list[str]:
        names = [n.lower() for n in self.pack.weekday_names]
        found: list[str] = []
        for m in re.finditer(rf"\b({'|'.join(names)})s?\b(?:\s+(?:to|through|until|till|-|–)\s+({'|'.join(names)}))?",
                             low):
            a = names.index(m.group(1))
            b = names.index(m.group(2)) if m.group(2) else a
            for k in range(a, (b if b >= a else b + 7) + 1):
                d = WEEKDAYS[k % 7]
                if d not in found:
                    found.append(d)
        return found

    @staticmethod
    def _role(before: str) -> str | None:
        """Whether the time after ``before`` is said as an opening or a closing time."""
        words = re.findall(r"[a-z]+|[-–]", before.lower())[-4:]
        for w in reversed(words):
            if w in _CLOSE_CUES:
                return "close"
            if w in _OPEN_CUES:
                return "open"
        return None

    def _fact_aliases(self, fact_id: str) -> list[str]:
        return [a.lower() for e in self.pack.entries for f in e.facts if f.id == fact_id for a in f.aliases]


def _prices(text: str) -> list[float]:
    return [float((m.group(1) or m.group(2)).replace(",", ".")) for m in PRICE_RE.finditer(text)]


# Sentence ends: . ! ? followed by space (a decimal point or "a.m." inside a sentence is not one).
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[$€£])")


def split_sentences(text: str) -> tuple[list[str], str]:
    """Complete sentences of ``text`` (each with its trailing space) and the unfinished rest."""
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END_RE.finditer(text):
        out.append(text[start:m.end()])
        start = m.end()
    return out, text[start:]


__all__ = ["Verifier", "split_sentences", "time_value", "times_in"]
