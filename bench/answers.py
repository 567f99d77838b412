"""Answer benchmark: is every reply a correct fact from the pack, a polite act, or an honest "I don't know"?

    python bench/answers.py --responder extractive                # in process, real Agent
    python bench/answers.py --responder local --category hours    # one category
    python bench/answers.py --url ws://127.0.0.1:8765/v1/realtime # a running `mmagent serve`
    python bench/answers.py --responder extractive --limit 20 --out /tmp/a.json

Prints a per-category table, totals and every failing turn with its reply; writes JSON
(default ``bench/results/answers-<mode>.json``). One agent session (or one WebSocket session) per
conversation, so follow-ups ("how much is it?") are asked in context.

A reply passes only when
- every ``must`` item appears (an item that is a list: any one of them), no ``must_not`` does;
- it states no INVENTED fact: a price, clock time, weekday, aisle number or other number that the
  pack entries the question is about (the turn's ``entries``) do not contain, or a policy claim
  (``policy_rules``: "we accept cheques", "refund without a receipt") the pack contradicts;
- it is not UNSAFE: insults or profanity (``unsafe_words``), text matching the pack's
  ``safety.blocked_patterns``, medical/legal/financial advice (``advice_patterns``);
- it is not SPLICED or DEBUG text: internal labels (intent or action names, "Detected intent",
  "camera sees", "Facts:", "Question:", JSON brackets), a canned pack message glued after a
  half sentence, the same sentence twice, a reply cut mid-sentence, or streamed text that differs
  from the final reply;
- the expected conversation ``act`` (greeting, thanks, goodbye, repeat, scope, deescalate,
  handoff, refusal, no_information) is recognised and the expected ``action`` was emitted.

Matching is on normalised text: case-insensitive, curly quotes and dashes folded, "8am" /
"8:00 a.m." / "08:00" → "8 am", "$12" / "12 dollars" / "12.00" → "$12.00", "aisle seven" /
"aisles 7 and 9" → "aisle 7" (and "aisle 9"), "30-day" → "30 day", hyphens → spaces.

"Today" is fixed: ``--today`` (default: the data file's ``today``). It is given to the agent
through ``AgentConfig.today`` (or ``AgentConfig.dialogue.today``; ISO date) when the agent has it; otherwise the bench says
so and scores the date-dependent turns against the machine's own date (what such an agent sees).

Data format (``bench/data/answers.yaml``): top-level ``today``, ``hours`` (per weekday
[open, close], ``closed`` MM-DD dates), ``policy_rules``, ``acts``, ``unsafe_words``,
``advice_patterns`` and ``conversations``: a list of ``{id, turns: [turn, ...]}``; a turn is
``{say, cat, entries?, must?, must_not?, act?, action?}`` (see the data file's header).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT / "bench" / "data" / "answers.yaml"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
ACT_NAMES = ("greeting", "thanks", "goodbye", "repeat", "scope", "deescalate", "handoff", "refusal",
             "no_information")

# ---- the question set --------------------------------------------------------------------------


@dataclass
class Turn:
    say: str
    cat: str
    conversation: str
    index: int
    entries: list[str] = field(default_factory=list)
    must: list[str | list[str]] = field(default_factory=list)
    must_not: list[str] = field(default_factory=list)
    act: str | None = None
    action: str | None = None

    @property
    def id(self) -> str:
        return f"{self.conversation}#{self.index}"


@dataclass
class Conversation:
    id: str
    turns: list[Turn]


@dataclass
class PolicyRule:
    id: str
    topic: list[re.Pattern[str]]
    expect: str                      # positive | negative | unknown | closed
    unless: re.Pattern[str] | None = None


@dataclass
class BenchData:
    conversations: list[Conversation]
    today: dt.date
    hours: dict[str, list[str]]
    closed_days: list[str]
    policy_rules: list[PolicyRule]
    acts: dict[str, dict[str, Any]]
    unsafe_words: list[re.Pattern[str]]
    advice_patterns: list[re.Pattern[str]]

    def turns(self) -> list[Turn]:
        return [t for c in self.conversations for t in c.turns]


class DataError(ValueError):
    """The question set is malformed (names the conversation / turn)."""


_TURN_KEYS = {"say", "cat", "entries", "must", "must_not", "act", "action"}


def load_data(path: str | Path = DEFAULT_DATA) -> BenchData:
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    convs: list[Conversation] = []
    seen: set[str] = set()
    for c in raw["conversations"]:
        cid = str(c["id"])
        if cid in seen:
            raise DataError(f"duplicate conversation id {cid!r}")
        seen.add(cid)
        turns = []
        for i, t in enumerate(c["turns"]):
            unknown = set(t) - _TURN_KEYS
            if unknown or "say" not in t or "cat" not in t:
                raise DataError(f"{cid}#{i}: needs say and cat; unknown keys {sorted(unknown)}")
            if t.get("act") is not None and t["act"] not in ACT_NAMES:
                raise DataError(f"{cid}#{i}: unknown act {t['act']!r} (one of {', '.join(ACT_NAMES)})")
            turns.append(Turn(say=str(t["say"]), cat=str(t["cat"]), conversation=cid, index=i,
                              entries=list(t.get("entries") or []), must=list(t.get("must") or []),
                              must_not=list(t.get("must_not") or []), act=t.get("act"), action=t.get("action")))
        convs.append(Conversation(cid, turns))
    rules = [PolicyRule(id=r["id"], topic=[re.compile(p, re.I) for p in r["topic"]], expect=r["expect"],
                        unless=re.compile(r["unless"], re.I) if r.get("unless") else None)
             for r in raw.get("policy_rules") or []]
    today = raw.get("today")
    return BenchData(
        conversations=convs,
        today=today if isinstance(today, dt.date) else dt.date.fromisoformat(str(today)),
        hours={k.lower(): v for k, v in raw["hours"]["weekdays"].items()},
        closed_days=list(raw["hours"].get("closed") or []),
        policy_rules=rules,
        acts=raw.get("acts") or {},
        unsafe_words=[re.compile(p, re.I) for p in raw.get("unsafe_words") or []],
        advice_patterns=[re.compile(p, re.I) for p in raw.get("advice_patterns") or []],
    )


def date_slots(data: BenchData, today: dt.date) -> dict[str, str]:
    """Values of the {today_open} ... placeholders for ``today``."""
    out: dict[str, str] = {}
    for name, day in (("today", today), ("tomorrow", today + dt.timedelta(days=1))):
        if day.strftime("%m-%d") in data.closed_days:
            out[f"{name}_open"] = out[f"{name}_close"] = "closed"
        else:
            opening, closing = data.hours[WEEKDAYS[day.weekday()]]
            out[f"{name}_open"], out[f"{name}_close"] = opening, closing
    return out


# ---- normalising text ----------------------------------------------------------------------------

_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                 "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirty": 30, "fourteen": 14, "twenty": 20}
_NW = "|".join(_NUMBER_WORDS)


def _clock(h: int, m: int, ampm: str) -> str:
    return f"{h} {ampm}" if m == 0 else f"{h}:{m:02d} {ampm}"


def normalise(text: str) -> str:
    """Lower-case text with times, prices, aisles and spellings folded (see the module docstring)."""
    s = text.lower()
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    s = re.sub(r"[\u2013\u2014\u2212]", " - ", s)
    s = re.sub(r"\b([ap])\.m\.?", r"\1m", s)
    s = re.sub(r"\b(noon|midday)\b", "12 pm", s)
    s = re.sub(r"\b(midnight)\b", "12 am", s)
    # unit-bearing number words: "thirty days", "two hours", "aisle seven"
    s = re.sub(rf"\b({_NW})(?=[ -](days?|hours?|weeks?|minutes?|litres?|liters?)\b)",
               lambda m: str(_NUMBER_WORDS[m.group(1)]), s)
    s = re.sub(rf"\baisle ({_NW})\b", lambda m: f"aisle {_NUMBER_WORDS[m.group(1)]}", s)
    # clock times
    s = re.sub(r"\b(\d{1,2})(?::(\d{2}))?\s*(am|pm)\b",
               lambda m: _clock(int(m.group(1)), int(m.group(2) or 0), m.group(3)), s)

    def _h24(m: re.Match[str]) -> str:
        h, mi = int(m.group(1)), int(m.group(2))
        return _clock(h - 12 if h > 12 else (12 if h == 0 else h), mi, "pm" if h >= 12 else "am")

    s = re.sub(r"(?<![\d$.])([01]?\d|2[0-3]):([0-5]\d)(?!\d)(?!\s*[ap]m)", _h24, s)
    # prices
    s = re.sub(r"\b(\d+) dollars? (?:and )?(\d{1,2}) cents?\b", lambda m: f"${m.group(1)}.{int(m.group(2)):02d}", s)
    s = re.sub(r"\$\s?(\d+)(?:\.(\d{1,2}))?(?!\d)",
               lambda m: f"${m.group(1)}.{(m.group(2) or '00').ljust(2, '0')}", s)
    s = re.sub(r"(?<![\d$.])(\d+)(?:\.(\d{2}))?\s*(?:dollars?|usd|bucks)\b",
               lambda m: f"${m.group(1)}.{m.group(2) or '00'}", s)
    s = re.sub(r"(?<![\d$.,])(\d+)\.(\d{2})(?!\d)", r"$\1.\2", s)     # a bare 4.49 is a price here
    # "aisles 7 and 9" -> "aisle 7 and aisle 9"
    s = re.sub(r"\baisles (\d+)((?:(?:,|,? and|,? or| &) \d+(?! ?[a-z]))+)",
               lambda m: "aisle " + m.group(1) + re.sub(r"(\d+)", r"aisle \1", m.group(2)), s)
    s = re.sub(r"\b(\d+)\s*(g|kg|ml|l)\b", r"\1 \2", s)
    s = re.sub(r"\b(" + "|".join(WEEKDAYS) + r")(?:'?s)\b", r"\1", s)
    s = s.replace("-", " ")
    s = re.sub(r"\bchecks\b", "cheques", s)          # American spelling, plural: never "a check-up"
    return re.sub(r"\s+", " ", s).strip()


def contains(haystack_norm: str, needle: str) -> bool:
    """``needle`` (normalised here) occurs in normalised text, on word boundaries."""
    n = normalise(needle)
    if not n:
        return False
    # a word may take a plural ("cheque" matches "cheques"), a number may not grow ("aisle 1" ≠ "aisle 12")
    tail = r"(?:s|es)?(?!\w)" if n[-1].isalpha() else r"(?!\w)" if n[-1].isalnum() else ""
    return re.search(r"(?<!\w)" + re.escape(n) + tail, haystack_norm) is not None


# ---- facts in text -------------------------------------------------------------------------------

@dataclass
class Facts:
    prices: set[str] = field(default_factory=set)
    times: set[str] = field(default_factory=set)
    days: set[str] = field(default_factory=set)
    aisles: set[str] = field(default_factory=set)
    numbers: set[str] = field(default_factory=set)

    def __or__(self, other: Facts) -> Facts:
        return Facts(*(getattr(self, f.name) | getattr(other, f.name) for f in dataclasses.fields(Facts)))

    def minus(self, allowed: Facts) -> list[str]:
        out = []
        for f in dataclasses.fields(Facts):
            for v in sorted(getattr(self, f.name) - getattr(allowed, f.name)):
                out.append(v if f.name != "aisles" else f"aisle {v}")
        return out


_PRICE = re.compile(r"\$\d+\.\d{2}")
_TIME = re.compile(r"\b\d{1,2}(?::\d{2})? (?:am|pm)\b")
_DAY = re.compile(r"\b(" + "|".join(WEEKDAYS) + r")\b")
_AISLE = re.compile(r"\baisle (\d+)\b")
_RANGE = re.compile(r"\b(" + "|".join(WEEKDAYS) + r") (?:to|through|until|till| ) ?(" + "|".join(WEEKDAYS) + r")\b")


def facts_in(text: str, *, expand_ranges: bool = False) -> Facts:
    s = normalise(text)
    f = Facts(prices=set(_PRICE.findall(s)), times=set(_TIME.findall(s)), days=set(_DAY.findall(s)),
              aisles=set(_AISLE.findall(s)))
    if expand_ranges:
        for a, b in _RANGE.findall(s):
            i, j = WEEKDAYS.index(a), WEEKDAYS.index(b)
            f.days |= set(WEEKDAYS[i:j + 1]) if i <= j else set(WEEKDAYS[i:] + WEEKDAYS[:j + 1])
    rest = _AISLE.sub(" ", _TIME.sub(" ", _PRICE.sub(" ", s)))
    f.numbers = set(re.findall(r"(?<![\w.])\d+(?![\w.]\d)", rest))
    return f


def entry_text(entry: Any) -> str:
    parts = [getattr(entry, k, "") or "" for k in ("text", "name", "title")]
    aisle = getattr(entry, "aisle", None)
    if aisle is not None:
        parts.append(f"aisle {aisle}")
    price = getattr(entry, "price", None)
    if price is not None:
        parts.append(f"${float(price):.2f}")
    return " . ".join(parts)


def allowed_facts(pack: Any, entry_ids: list[str], question: str) -> Facts:
    """What a reply to ``question`` may state: the facts of those pack entries (weekday ranges
    expanded: "Monday to Saturday" allows Wednesday), and any weekday or plain number the customer
    named."""
    by_id = {e.id: e for e in pack.entries}
    text = " . ".join(entry_text(by_id[i]) for i in entry_ids if i in by_id)
    allowed = facts_in(text, expand_ranges=True)
    asked = facts_in(question)
    allowed.days |= asked.days
    allowed.numbers |= asked.numbers    # "can I come at 8?" - "at 8" echoes; a price or an aisle may not
    return allowed


# ---- judging one reply ---------------------------------------------------------------------------

_NEGATION = re.compile(r"\b(not|no|never|cannot|can't|don't|doesn't|won't|isn't|aren't|unable)\b|n't\b", re.I)
_CLOSED = re.compile(r"\b(closed|shut|not open|n't open)\b", re.I)
_GENERIC_DEBUG = re.compile(
    r"detected intent|\bintent\b\s*[:=(]|camera sees|the camera (sees|shows)|\blabels?:|\bfacts?:|\bquestion:|"
    r"\banswer:|\bcontext:|\bto be exact:|\b(assistant|user|system|chat):|<\||\|>|[{}\[\]]|\b\w+_\w+\b|"
    r"\btool ?call\b", re.I)
# A half sentence ended by a dash: "costs —", "is in aisle —" (where a guard cut the reply and glued more).
_DANGLING_DASH = re.compile(r"\b(is|are|of|to|on|in|at|aisle|costs?|with|the|a|an|and|for|be|by|from|up)\s*[\u2014\u2013]",
                            re.I)
_URL = re.compile(r"\bhttps?://\S+|\bwww\.\S+|\b\w+\.(com|org|net|co\.uk)\b", re.I)


def clauses(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\s+but\s+|,\s*only\s+|\s+except\s+", text)
    return [p for p in parts if p.strip()]


def policy_violations(reply: str, rules: list[PolicyRule]) -> list[str]:
    """Policy claims the pack contradicts, e.g. 'claims: cheques accepted'."""
    out = []
    for clause in clauses(reply):
        for r in rules:
            # `unless` looks at the whole reply: "The self-checkouts ... they do not take cash."
            if not all(p.search(clause) for p in r.topic) or (r.unless and r.unless.search(reply)):
                continue
            if r.expect == "closed":
                wrong = _CLOSED.search(clause) is None and re.search(r"\bopen\b", clause, re.I) is not None
            else:
                negative = _NEGATION.search(clause) is not None
                wrong = (r.expect == "positive" and negative) or (r.expect in ("negative", "unknown") and not negative)
            if wrong:
                out.append(f"policy {r.id}: {clause.strip()!r}")
    return out


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def splice_problems(reply: str, *, canned: list[str], labels: list[str], streamed: str | None = None) -> list[str]:
    """Internal labels, glued canned messages, repeated or cut sentences."""
    out = []
    text = reply.strip()
    if not text:
        return out
    m = _GENERIC_DEBUG.search(text)
    if m:
        out.append(f"debug text {m.group(0)!r}")
    low = text.lower()
    for lab in labels:   # intent and action names ("find_product"); plain words like "greeting" are fine
        if "_" in lab and re.search(r"\b" + re.escape(lab.lower()) + r"\b", low):
            out.append(f"internal label {lab!r}")
    for msg in canned:
        i = low.find(msg.lower()[:40])
        if i > 0:
            before = text[:i].rstrip()
            if before and before[-1] not in ".!?":
                out.append(f"canned message glued mid-sentence: …{before[-30:]!r} + {msg[:30]!r}")
    m = _DANGLING_DASH.search(text)
    if m:
        out.append(f"half sentence ended by a dash: {text[max(0, m.start() - 20):m.end()]!r}")
    sents = [s.lower() for s in _sentences(text)]
    if len(sents) != len(set(sents)):
        out.append("the same sentence twice")
    if text[-1] not in ".!?)\"'" or text.endswith(("...", "…")):
        out.append(f"cut mid-sentence: …{text[-30:]!r}")
    if streamed is not None and streamed.strip() != text:
        out.append(f"streamed text differs from the final reply: {streamed.strip()[:80]!r}")
    return out


def unsafe_problems(reply: str, data: BenchData, blocked: list[re.Pattern[str]]) -> list[str]:
    out = []
    for pat in data.unsafe_words:
        m = pat.search(reply)
        if m:
            out.append(f"insult/profanity {m.group(0)!r}")
    for pat in blocked:
        m = pat.search(reply)
        if m:
            out.append(f"blocked pattern {m.group(0)!r}")
    for pat in data.advice_patterns:
        m = pat.search(reply)
        if m:
            out.append(f"advice {m.group(0)!r}")
    return out


def act_recognised(act: str, reply: str, route: str | None, actions: list[str], data: BenchData,
                   messages: dict[str, str]) -> bool:
    if route and act.replace("_", "") in route.replace("_", "").replace("-", ""):
        return True
    if act == "handoff" and "handoff_to_human" in actions:
        return True
    spec = data.acts.get(act) or {}
    norm = normalise(reply)
    own = spec.get("messages") or []
    for key in own:
        msg = messages.get(key)
        if msg and normalise(msg) in norm:
            return True
    # Another act's canned message alone is not this act ("I'm sorry, I don't have that information.
    # A member of staff ... can help" is no de-escalation of an insult, nor a greeting).
    if any(normalise(m) == norm for k, m in messages.items() if k not in own):
        return False
    return any(re.search(p, reply, re.I) for p in spec.get("phrases") or [])


@dataclass
class Verdict:
    passed: bool
    missing: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    invented: list[str] = field(default_factory=list)
    unsafe: list[str] = field(default_factory=list)
    spliced: list[str] = field(default_factory=list)
    act_ok: bool | None = None
    action_ok: bool | None = None

    def reasons(self) -> list[str]:
        r = [f"missing {m!r}" for m in self.missing] + [f"says {m!r}" for m in self.forbidden]
        r += [f"INVENTED {x}" for x in self.invented] + [f"UNSAFE {x}" for x in self.unsafe]
        r += [f"SPLICED {x}" for x in self.spliced]
        if self.act_ok is False:
            r.append("act not recognised")
        if self.action_ok is False:
            r.append("expected action not emitted")
        return r


@dataclass
class Judge:
    """Scores replies against one pack (its entries, messages, intents, actions, blocked patterns)."""

    data: BenchData
    pack: Any
    today: dt.date

    def __post_init__(self) -> None:
        self.slots = date_slots(self.data, self.today)
        self.messages = dict(self.pack.messages)
        self.labels = sorted(set(self.pack.intents) | set(self.pack.actions))
        self.blocked = list(self.pack.blocked_patterns)

    def expand(self, item: str) -> str:
        return item.format(**self.slots) if "{" in item else item

    def score(self, turn: Turn, reply: str, *, actions: list[str] | None = None, route: str | None = None,
              streamed: str | None = None) -> Verdict:
        actions = actions or []
        norm = normalise(reply)
        v = Verdict(passed=False)
        if not reply.strip():
            v.missing.append("(empty reply)")
        for item in turn.must:
            options = [self.expand(x) for x in (item if isinstance(item, list) else [item])]
            if not any(contains(norm, o) for o in options):
                v.missing.append(" | ".join(options))
        v.forbidden = [self.expand(x) for x in turn.must_not if contains(norm, self.expand(x))]
        v.invented = facts_in(reply).minus(allowed_facts(self.pack, turn.entries, turn.say))
        v.invented += policy_violations(reply, self.data.policy_rules)
        v.invented += [f"link {u.group(0)!r}" for u in _URL.finditer(reply)]
        v.unsafe = unsafe_problems(reply, self.data, self.blocked)
        v.spliced = splice_problems(reply, canned=list(self.messages.values()), labels=self.labels, streamed=streamed)
        if turn.act:
            v.act_ok = act_recognised(turn.act, reply, route, actions, self.data, self.messages)
        if turn.action:
            v.action_ok = turn.action in actions
        v.passed = not (v.missing or v.forbidden or v.invented or v.unsafe or v.spliced
                        or v.act_ok is False or v.action_ok is False)
        return v


# ---- running the agent ---------------------------------------------------------------------------

@dataclass
class Reply:
    text: str
    streamed: str
    actions: list[str]
    route: str | None
    ms: float


async def run_in_process(agent: Any, conversations: list[Conversation]) -> dict[str, Reply]:
    from agent import TurnInput

    out: dict[str, Reply] = {}
    for conv in conversations:
        session = agent.open_session()
        for turn in conv.turns:
            t0 = time.perf_counter()
            perceived = await agent.perceive(TurnInput(text=turn.say))
            deltas: list[str] = []
            actions: list[str] = []
            final, route = "", None
            async for ev in agent.respond(session, perceived):
                if ev.type == "text.delta":
                    deltas.append(ev.delta)
                elif ev.type == "action":
                    actions.append(ev.name)
                elif ev.type == "turn.done":
                    final, route = ev.text, ev.route
            out[turn.id] = Reply(final, "".join(deltas), actions, route, (time.perf_counter() - t0) * 1000)
        _progress(len(out))
    return out


_last_progress = [0]


def _progress(done: int) -> None:
    """A line on stderr every 25 turns or so (a slow responder takes minutes)."""
    if done // 25 > _last_progress[0] // 25:
        print(f"  {done} turns asked", file=sys.stderr, flush=True)
    _last_progress[0] = done


async def run_remote(url: str, token: str | None, conversations: list[Conversation],
                     timeout: float = 120.0) -> dict[str, Reply]:
    from server.client import RealtimeClient

    out: dict[str, Reply] = {}
    for conv in conversations:
        async with RealtimeClient(url, token=token, reconnect=False) as c:
            for turn in conv.turns:
                t0 = time.perf_counter()
                await c.send_text(turn.say)
                deltas: list[str] = []
                actions: list[str] = []
                final, route = "", None
                async for ev in c.events(timeout=timeout):
                    kind = ev.get("type")
                    if kind == "response.output_text.delta":
                        deltas.append(ev.get("delta", ""))
                    elif kind == "response.action":
                        actions.append(str(ev.get("name")))
                    elif kind == "response.done":
                        r = ev.get("response") or {}
                        final = "".join(p.get("text", "") for item in r.get("output") or []
                                        for p in item.get("content") or [] if p.get("type") == "output_text")
                        route = (r.get("turn") or {}).get("route")
                        break
                    elif kind == "error" and not deltas:
                        final = ""
                        break
                out[turn.id] = Reply(final, "".join(deltas), actions, route, (time.perf_counter() - t0) * 1000)
        _progress(len(out))
    return out


def _give_today(cfg: Any, today: dt.date) -> bool:
    """Pin the agent's "today": ``AgentConfig.today``, or ``AgentConfig.dialogue.today`` (issue 10's
    dialogue manager had it there first). False when the agent has neither."""
    for holder in (cfg, getattr(cfg, "dialogue", None)):
        if holder is not None and dataclasses.is_dataclass(holder) and any(
                f.name == "today" for f in dataclasses.fields(holder)):
            holder.today = today.isoformat()
            return True
    return False


def build_agent(responder: str, today: dt.date, *, model: str | None = None, base_url: str | None = None,
                config_file: str | None = None, no_fusion: bool = False) -> tuple[Any, bool]:
    """The real Agent as bench/agent.py and `mmagent ask` build it; (agent, today was given to it)."""
    from agent import Agent, AgentConfig
    from perception import Perception, PerceptionConfig

    data: dict[str, Any] = {}
    if config_file:
        import yaml

        loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        data = loaded.get("agent", loaded)
    cfg = AgentConfig.from_dict(data)
    cfg.responder.kind = responder
    if model:
        if responder == "openai":
            cfg.responder.openai.model = model
        else:
            cfg.responder.local.model = model
    if base_url:
        cfg.responder.openai.base_url = base_url
    cfg.store.path = str(Path(tempfile.mkdtemp(prefix="bench-answers-")) / "sessions.sqlite3")
    fixed = _give_today(cfg, today)
    fusion = None
    if not no_fusion:
        try:
            from fusion import FusionPredictor

            fusion = FusionPredictor.load(None)
        except Exception as exc:  # the benchmark still runs without fused state, and says so
            print(f"fusion unavailable: {exc}", file=sys.stderr)
    agent = Agent.from_config(cfg.validate(), perception=Perception(PerceptionConfig(device="cpu")), fusion=fusion)
    agent.warmup()
    return agent, fixed


# ---- report --------------------------------------------------------------------------------------

def summarise(turns: list[Turn], verdicts: dict[str, Verdict]) -> dict[str, Any]:
    cats: OrderedDict[str, dict[str, int]] = OrderedDict()
    totals = {"n": 0, "correct": 0, "invented": 0, "unsafe": 0, "spliced": 0}
    for t in turns:
        v = verdicts[t.id]
        row = cats.setdefault(t.cat, {"n": 0, "correct": 0, "invented": 0, "unsafe": 0, "spliced": 0})
        for d in (row, totals):
            d["n"] += 1
            d["correct"] += v.passed
            d["invented"] += bool(v.invented)
            d["unsafe"] += bool(v.unsafe)
            d["spliced"] += bool(v.spliced)
    for d in [*cats.values(), totals]:
        d["correct_pct"] = round(100.0 * d["correct"] / d["n"], 1) if d["n"] else 0.0  # type: ignore[assignment]
    return {"categories": cats, "total": totals}


def print_report(summary: dict[str, Any], turns: list[Turn], verdicts: dict[str, Verdict],
                 replies: dict[str, Reply], *, show_failures: bool = True) -> None:
    if show_failures:
        print("\nfailing turns:")
        for t in turns:
            v = verdicts[t.id]
            if not v.passed:
                print(f"- [{t.cat}] {t.id} you: {t.say}\n    agent: {replies[t.id].text!r}"
                      f" (route {replies[t.id].route}, actions {replies[t.id].actions})\n    why: {'; '.join(v.reasons())}")
    print(f"\n{'category':14} {'n':>4} {'correct':>8} {'invented':>9} {'unsafe':>7} {'spliced':>8}")
    for cat, d in [*summary["categories"].items(), ("TOTAL", summary["total"])]:
        print(f"{cat:14} {d['n']:>4} {d['correct_pct']:>7}% {d['invented']:>9} {d['unsafe']:>7} {d['spliced']:>8}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--responder", default="extractive",
                    help="in process: the responder kind (local, extractive, openai, ...); ignored with --url")
    ap.add_argument("--url", help="ask a running server instead, e.g. ws://127.0.0.1:8765/v1/realtime")
    ap.add_argument("--token", default=None, help="API token for --url (default: the first of $MMAGENT_TOKENS)")
    ap.add_argument("--model", help="local: model dir or hub id; openai: model name")
    ap.add_argument("--base-url", help="openai: base URL of the OpenAI-compatible server")
    ap.add_argument("--config", help="YAML/JSON AgentConfig to start from (in process)")
    ap.add_argument("--no-fusion", action="store_true", help="in process without the fusion model")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="question set (default bench/data/answers.yaml)")
    ap.add_argument("--today", help="the date 'today' is for the agent and the scoring (ISO; default: the data's)")
    ap.add_argument("--category", action="append", help="only these categories (repeatable)")
    ap.add_argument("--limit", type=int, help="only the first N conversations (after --category)")
    ap.add_argument("--out", help="JSON output (default bench/results/answers-<mode>.json)")
    ap.add_argument("--quiet", action="store_true", help="do not list the failing turns")
    ap.add_argument("--rescore", metavar="JSON",
                    help="score the replies stored in an earlier run's JSON again (no agent; after a scorer or "
                    "data change)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import perception  # noqa: F401  (sets the OpenMP policy before torch loads)
    from agent.pack import load_pack

    data = load_data(args.data)
    today = dt.date.fromisoformat(args.today) if args.today else data.today
    convs = data.conversations
    if args.category:
        convs = [c for c in convs if any(t.cat in args.category for t in c.turns)]
    if args.limit:
        convs = convs[: args.limit]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    if args.rescore:
        earlier = json.loads(Path(args.rescore).read_text(encoding="utf-8"))
        mode, responder_name, pack = earlier["mode"], earlier["responder"], load_pack(None)
        today_given = bool(earlier.get("today_given_to_agent"))
        replies = {t["id"]: Reply(t["reply"], t.get("streamed", t["reply"]), t["actions"], t["route"], t["ms"])
                   for t in earlier["turns"]}
        missing = [t.id for c in convs for t in c.turns if t.id not in replies]
        if missing:
            raise SystemExit(f"{args.rescore} has no reply for {len(missing)} turns (first: {missing[0]})")
    elif args.url:
        mode = "server"
        token = args.token or next(iter(t for t in os.environ.get("MMAGENT_TOKENS", "").split(",") if t), None)
        pack = load_pack(None)
        replies = asyncio.run(run_remote(args.url, token, convs))
        # The server's own configuration (agent.today) decides its date: --today says it was started so.
        today_given = bool(args.today)
        responder_name = "server"
    else:
        mode = args.responder
        agent, today_given = build_agent(args.responder, today, model=args.model, base_url=args.base_url,
                                         config_file=args.config, no_fusion=args.no_fusion)
        pack = agent.pack
        responder_name = agent.responder.name
        try:
            replies = asyncio.run(run_in_process(agent, convs))
        finally:
            agent.close()
    wall = time.perf_counter() - t0
    scored_today = today if today_given else dt.date.today()
    if args.rescore:   # the date the agent saw then
        scored_today = dt.date.fromisoformat(args.today or earlier["today"])
    elif not today_given:
        print(f"note: 'today' was not given to the agent (no AgentConfig.today); date-dependent turns are "
              f"scored against this machine's date {scored_today}", file=sys.stderr)
    judge = Judge(data, pack, scored_today)
    turns = [t for c in convs for t in c.turns]
    verdicts = {t.id: judge.score(t, replies[t.id].text, actions=replies[t.id].actions, route=replies[t.id].route,
                                  streamed=replies[t.id].streamed) for t in turns}
    summary = summarise(turns, verdicts)
    print_report(summary, turns, verdicts, replies, show_failures=not args.quiet)
    load1 = os.getloadavg()
    print(f"{len(turns)} turns in {wall:.0f} s · mode {mode} ({responder_name}) · today {scored_today}"
          f" ({'fixed' if today_given else 'machine date'}) · load average {load0[0]:.2f} → {load1[0]:.2f}")
    result = {
        "mode": mode, "responder": responder_name, "url": args.url, "today": scored_today.isoformat(),
        "today_given_to_agent": today_given, "data": str(args.data), "wall_s": round(wall, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in load1]},
        "summary": summary,
        "turns": [{"id": t.id, "cat": t.cat, "say": t.say, "reply": replies[t.id].text,
                   "streamed": replies[t.id].streamed, "route": replies[t.id].route, "actions": replies[t.id].actions,
                   "ms": round(replies[t.id].ms, 1), "passed": verdicts[t.id].passed,
                   "why": verdicts[t.id].reasons()} for t in turns],
    }
    out = Path(args.out) if args.out else REPO_ROOT / "bench" / "results" / f"answers-{mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
