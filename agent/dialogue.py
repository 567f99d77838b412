"""The dialogue manager: an understood turn + the session's dialogue state → a :class:`Plan`.

A plan is either a conversation act answered from the pack's ``messages`` (greeting, thanks,
goodbye, repeat, off-topic, de-escalation, handoff, refusal, clarification, no information), or
an answer: the entries and structured fields this turn's questions select, and the answer text
composed from them with the pack's ``templates``. The composed text is what the ``grounded``
responder says; a language model may phrase the same selected facts instead, and is checked
against them (agent/verify.py).

State kept per session (:class:`DialogueState`, stored with the session): the entry in focus,
the last question's slots and days, the number of hostile turns, the last reply (for "say that
again"). Follow-ups resolve against it: "how much is it?" (focus), "which aisle?", "and the
chargers?" (the last slots, a new entity), "what about Sunday?" (the last hours slot, a new day).

"Today" is ``clock()`` (default: the local date; ``DialogueConfig.today`` pins it, for tests and
the benchmark).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .pack import WEEKDAYS, Entry, KnowledgePack, PolicyFact
from .understand import Question, Understander, Understanding

HOURS_SLOTS = {"opens", "closes", "hours"}
PRODUCT_SLOTS = {"where", "price", "size", "exists"}
# A hostile turn (rude or abusive) is de-escalated; this many in a session hand off to staff.
HOSTILE_TURNS_FOR_HANDOFF = 2


@dataclass
class DialogueState:
    """What a session remembers between turns (JSON round trip: ``to_json``/``from_json``)."""

    focus: str | None = None                 # entry id in focus
    slots: list[str] = field(default_factory=list)
    days: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    hostile: int = 0                         # rude/abusive turns since the last handoff
    last_reply: str = ""
    turns: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> DialogueState:
        if not data:
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Plan:
    """What to say this turn. ``route``: greeting | thanks | goodbye | acknowledge | repeat_last |
    off_topic | deescalate | handoff | refuse | clarify | no_information | answer.
    ``entries``: the selected entries (the facts a reply may state); ``facts``: the selected
    yes/no facts; ``hours``: the selected (day label, open, close); ``required``: values an
    answer must state (a model's reply that leaves one out is replaced by ``text``)."""

    route: str
    text: str
    entries: list[Entry] = field(default_factory=list)
    facts: list[PolicyFact] = field(default_factory=list)
    hours: list[tuple[str, str, str]] = field(default_factory=list)
    required: list[str] = field(default_factory=list)
    actions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    understanding: Understanding | None = None
    days: list[str] = field(default_factory=list)   # weekday keys the answer speaks of

    @property
    def answers_facts(self) -> bool:
        return self.route == "answer"

    def to_json(self) -> dict[str, Any]:
        return {"route": self.route, "entries": [e.id for e in self.entries], "facts": [f.id for f in self.facts],
                "hours": [list(h) for h in self.hours], "required": self.required,
                "understanding": self.understanding.to_json() if self.understanding else None}


Retrieve = Callable[[], Sequence[tuple[Entry, float]]]


class DialogueManager:
    """One per agent (pack). ``clock`` returns today's date; ``fallback_min_cosine``: a turn
    nothing lexical matches is answered from the best embedding hit only at this cosine or more
    (calibration: docs/agent.md, "Retrieval")."""

    def __init__(self, pack: KnowledgePack, *, clock: Callable[[], dt.date] | None = None,
                 fallback_min_cosine: float = 0.62) -> None:
        self.pack = pack
        self.understander = Understander(pack)
        self.clock: Callable[[], dt.date] = clock or dt.date.today
        self.fallback_min_cosine = fallback_min_cosine
        self.msgs = pack.messages
        self.hours_entry = next((e for e in pack.entries if e.hours), None)
        self.holiday_entry = next((e for e in pack.entries if e.holidays), None)

    # -- the turn -----------------------------------------------------------------------------

    def plan(self, text: str, state: DialogueState, *, retrieve: Retrieve | None = None,
             intent: str | None = None) -> Plan:
        """The plan for one turn's text; updates ``state`` (the caller stores it)."""
        u = self.understander.understand(text)
        plan = self._plan(u, state, retrieve)
        plan.understanding = u
        state.turns += 1
        return plan

    def _plan(self, u: Understanding, state: DialogueState, retrieve: Retrieve | None) -> Plan:
        acts = set(u.acts)
        m = self.msgs
        # Parts that name only things the pack does not know, and ask nothing ("I bought a kettle
        # last week", "that's helpful"), are context: dropped when something else is asked or said.
        informative = [q for q in u.questions if q.entries or q.facts or q.days or q.closed_days
                       or q.slots & (PRODUCT_SLOTS | HOURS_SLOTS) or (q.unknown and q.continues)]
        questions = informative if (informative or acts) else u.questions
        # "ok bye for now", "see you tomorrow", "have a nice weekend": a day said with a goodbye
        # is a farewell, not a question about the opening hours of that day.
        if "goodbye" in acts and all(q.days and not (q.entries or q.facts or q.closed_days or q.unknown
                                                    or q.slots & (PRODUCT_SLOTS | HOURS_SLOTS))
                                     for q in questions):
            questions = []
        if "unsafe" in acts:
            return Plan("refuse", m["refusal"])
        prefix = ""
        if acts & {"rude", "abusive"}:
            state.hostile += 1
            if state.hostile >= HOSTILE_TURNS_FOR_HANDOFF:
                state.hostile = 0
                return self._handoff("negative_emotion")
            if not questions:
                return Plan("deescalate", m["deescalate"])
            prefix = m["deescalate_short"]
        if "staff" in acts:
            return self._handoff("requested")
        if "noise" in acts and not questions:
            return Plan("repeat", m["repeat_request"])
        if "off_topic" in acts and not any(q.entries or q.facts or q.closed_days or q.slots & HOURS_SLOTS
                                           for q in questions):
            return Plan("off_topic", m["off_topic"])
        if not questions:
            if "repeat" in acts:
                return Plan("repeat_last", state.last_reply or m["nothing_to_repeat"])
            for act in ("goodbye", "thanks", "greeting", "acknowledge"):
                if act in acts:
                    return Plan(act, m[act])
            fallback = self._fallback(retrieve)
            return fallback if fallback is not None else Plan("no_information", m["no_information"])
        plan = self._answer(questions, state, retrieve)
        if prefix:
            plan.text = f"{prefix} {plan.text}"
        return plan

    def _handoff(self, reason: str) -> Plan:
        actions = [(self.pack.handoff_action, {"reason": reason})] if self.pack.handoff_action else []
        return Plan("handoff", self.msgs["handoff"], actions=actions)

    def _fallback(self, retrieve: Retrieve | None) -> Plan | None:
        """Nothing the lexicon or the pack's aliases know: the embedding retriever's best entry,
        only when it is very close (else the honest no-information answer)."""
        if retrieve is None:
            return None
        hits = list(retrieve())
        if not hits or hits[0][1] < self.fallback_min_cosine:
            return None
        entry = hits[0][0]
        plan = Plan("answer", entry.text, entries=[entry], required=[])
        if entry.action is not None:
            plan.actions.append(entry.action)
        return plan

    # -- answers ------------------------------------------------------------------------------

    def _answer(self, questions: list[Question], state: DialogueState, retrieve: Retrieve | None) -> Plan:
        plan = Plan("answer", "")
        sentences: list[str] = []
        prev_slots = set(state.slots)
        prev_entity = state.focus
        prev_days = list(state.days)
        unknown_only = True
        # "I don't have my receipt. Can I still return this?": the no-receipt answer, for the turn
        superseded = {s for q in questions for i in q.entries for s in self.pack.entry(i).supersedes}
        for q in questions:
            asking = q.slots & (PRODUCT_SLOTS | HOURS_SLOTS)
            entries = self._entries(q, superseded)
            # "can I get cashback at the till?": asked whether about a thing the pack does not
            # name, at a place it does — the place's text would not answer it
            if q.unknown and q.slots & {"exists", "whether"} and not q.facts \
                    and not any(e.kind == "product" for e in entries):
                entries = []
            days = list(q.days)
            # slots: this part's own, else the previous part's / the last turn's
            if not asking and (entries or days or q.closed_days or q.facts):
                if entries or q.facts:
                    asking = prev_slots & PRODUCT_SLOTS if any(e.kind == "product" for e in entries) else set()
                else:
                    asking = (prev_slots & HOURS_SLOTS) or {"hours"}
            # entity: this part's own, else the previous one (follow-up, pronoun)
            if not entries and not q.facts and not days and not q.closed_days and not q.unknown \
                    and not (asking & HOURS_SLOTS) and prev_entity is not None \
                    and prev_entity not in superseded:
                entries = [self.pack.entry(prev_entity)]
                if not asking and prev_slots:
                    asking = set(prev_slots)
            out = self._answer_one(q, entries, asking, days, plan)
            if out is None:
                if q.unknown and not entries:
                    out = [self.msgs["no_information"]]
                else:
                    fb = self._fallback(retrieve) if not q.unknown else None
                    if fb is not None and len(questions) == 1:
                        return fb
                    out = [self.msgs["clarify"] if not q.unknown else self.msgs["no_information"]]
            else:
                unknown_only = False
            for s in out:
                if s not in sentences:
                    sentences.append(s)
            if entries:
                prev_entity = entries[-1].id
            if asking:
                prev_slots = set(asking)
            if days:
                prev_days = days
        state.focus = prev_entity
        state.slots = sorted(prev_slots)
        state.days = prev_days
        state.facts = [f.id for f in plan.facts]
        plan.text = " ".join(sentences)
        if unknown_only:
            plan.route = "no_information" if self.msgs["no_information"] in sentences else "clarify"
            plan.entries, plan.facts, plan.hours, plan.required, plan.actions = [], [], [], [], []
        return plan

    def _entries(self, q: Question, superseded: set[str] = frozenset()) -> list[Entry]:  # type: ignore[assignment]
        entries = [self.pack.entry(i) for i in q.entries]
        dropped = {s for e in entries for s in e.supersedes} | superseded
        return [e for e in entries if e.id not in dropped]

    def _select(self, plan: Plan, entry: Entry) -> None:
        if entry not in plan.entries:
            plan.entries.append(entry)

    def _act(self, plan: Plan, entry: Entry) -> None:
        if entry.action is not None and all(a[0] != entry.action[0] for a in plan.actions):
            plan.actions.append(entry.action)

    def _answer_one(self, q: Question, entries: list[Entry], asking: set[str], days: list[str],
                    plan: Plan) -> list[str] | None:
        out: list[str] = []
        # "a charger for my phone": a product named, no payment place — not a payment question
        if q.facts and any(e.kind == "product" for e in entries) and not any(e.facts for e in entries):
            q.facts = []
        # yes/no facts ("do you take cheques?", "can I pay cash at the self-checkout?")
        if q.facts:
            for fid in q.facts:
                fact, owner = self._fact(fid, entries)
                if fact is None or owner is None:
                    continue
                self._select(plan, owner)
                if fact not in plan.facts:
                    plan.facts.append(fact)
                out.append(self._t("fact_yes" if fact.value else "fact_no", say=fact.say))
                plan.required.append(fact.say)
            entries = [e for e in entries if not e.facts]
            if out and not entries:
                return out
        hours_q = bool(asking & HOURS_SLOTS) or bool(days) or bool(q.closed_days)
        hours_entries = [e for e in entries if e.hours or e.holidays]
        if hours_q and not [e for e in entries if e.kind == "product"]:
            out += self._hours(q, asking, days, plan, named=hours_entries)
            entries = [e for e in entries if e not in hours_entries]
        for e in entries:
            self._select(plan, e)
            if e.kind == "product" and e.aisle is not None and e.price is not None:
                out += self._product(e, asking, plan)
            else:
                out.append(e.text)
                self._act(plan, e)
                plan.required += self._numbers(e.text)
        return out or None

    @staticmethod
    def _numbers(text: str) -> list[str]:
        """The numbers an entry's text states ("30 days", "aisle 12", "2 hours"): a paraphrase
        of the text must keep them."""
        return [n for n in re.findall(r"(?<![\d.$])\d+(?![\d.:])", text)]

    def _fact(self, fact_id: str, entries: list[Entry]) -> tuple[PolicyFact | None, Entry | None]:
        owners = [(f, e) for e in self.pack.entries for f in e.facts if f.id == fact_id]
        if not owners:
            return None, None
        default = owners[0]
        # A more specific entry named in the question owns it first ("cash at the self-checkout":
        # the self-checkout's answer, not the store's payment methods).
        for f, e in owners[1:]:
            if e in entries:
                return f, e
        return default

    def _product(self, e: Entry, asking: set[str], plan: Plan) -> list[str]:
        where, price = "where" in asking, "price" in asking
        subject = e.subject or e.name
        if "size" in asking and not where and not price:
            if not e.unit:
                self._act(plan, e)
                return [e.text]
            plan.required.append(e.unit)
            return [self._t("size", e.plural, Subject=subject, unit=e.unit)]
        fields = {"Subject": subject, "subject": subject[:1].lower() + subject[1:], "aisle": str(e.aisle),
                  "price": self.price(e.price or 0.0),
                  "location": self._t("location", location=e.location) if e.location else ""}
        plural = e.plural
        if where and not price:
            plan.required.append(str(e.aisle))
            self._act(plan, e)
            return [self._t("where", plural, **fields)]
        if price and not where:
            plan.required.append(self.price(e.price or 0.0))
            return [self._t("price", plural, **fields)]
        plan.required += [str(e.aisle), self.price(e.price or 0.0)]
        self._act(plan, e)
        return [e.text]

    def price(self, value: float) -> str:
        return f"{self.pack.currency}{value:.2f}"

    # -- hours --------------------------------------------------------------------------------

    def weekday_name(self, key: str) -> str:
        return self.pack.weekday_names[WEEKDAYS.index(key)]

    def today(self) -> dt.date:
        return self.clock()

    def _hours(self, q: Question, asking: set[str], days: list[str], plan: Plan,
               named: list[Entry]) -> list[str]:
        out: list[str] = []
        he, hol = self.hours_entry, self.holiday_entry
        if hol is not None and hol.holidays is not None:
            for name in q.closed_days:
                self._select(plan, hol)
                out.append(self._t("holiday_closed", name=name))
                plan.required.append(name)
        resolved: list[tuple[str, str]] = []   # (when template, weekday key)
        today = self.today()
        for d in days:
            if d in WEEKDAYS:
                resolved.append(("when_day", d))
            elif d in ("today", "tomorrow"):
                date = today + dt.timedelta(days=1 if d == "tomorrow" else 0)
                closed = self._closed_on(date)
                if closed is not None and hol is not None:
                    self._select(plan, hol)
                    out.append(self._t("holiday_closed", name=closed))
                    plan.required.append(closed)
                    continue
                resolved.append(("when_" + d, WEEKDAYS[date.weekday()]))
            elif d == "weekend":
                resolved += [("when_day", "saturday"), ("when_day", "sunday")]
            elif d == "weekdays":
                resolved += [("when_day", w) for w in WEEKDAYS[:5]]
            elif d == "holiday" and hol is not None and hol.holidays is not None:
                self._select(plan, hol)
                h = hol.holidays
                if h.open and h.close:
                    out.append(self._t("holiday_hours", open=h.open, close=h.close))
                    plan.hours.append(("holiday", h.open, h.close))
                    plan.required += [h.open, h.close]
                for closed_day in h.closed:
                    if not q.closed_days:
                        out.append(self._t("holiday_closed", name=closed_day.name))
        if resolved and he is not None:
            self._select(plan, he)
            self._act(plan, he)
            # Monday..Friday with the same hours read as one range
            if len(resolved) == 5 and len({he.hours.get(d) for _, d in resolved}) == 1:
                first, last = self.weekday_name(resolved[0][1]), self.weekday_name(resolved[-1][1])
                resolved_labels = [(f"{first} to {last}", resolved[0][1], "when_day")]
            else:
                resolved_labels = [(self.weekday_name(d), d, w) for w, d in resolved]
            for label, d, when_key in resolved_labels:
                if d not in he.hours:
                    continue
                o, c = he.hours[d]
                when = self._t(when_key, day=label)
                if d not in plan.days:
                    plan.days.append(d)
                plan.hours.append((d, o, c))
                # "are you open on Sunday?" → the day's hours; "when do you open?" → the opening time
                whether_open = "whether" in q.slots and "hours" not in q.slots
                if asking & {"opens", "closes"} == {"opens"} and not whether_open:
                    out.append(self._t("opens", When=when, open=o))
                    plan.required.append(o)
                elif asking & {"opens", "closes"} == {"closes"}:
                    out.append(self._t("closes", When=when, close=c))
                    plan.required.append(c)
                else:
                    out.append(self._t("hours", When=when, open=o, close=c))
                    plan.required += [o, c]
        if not out:
            # no day named: the whole week (or the holiday entry when it was named)
            targets = named or ([he] if he is not None else [])
            for e in targets:
                self._select(plan, e)
                self._act(plan, e)
                out.append(e.text)
                if e.hours:
                    plan.days += [d for d in WEEKDAYS if d not in plan.days]
                    plan.hours += [(d, *e.hours[d]) for d in WEEKDAYS if d in e.hours]
        return out

    def _closed_on(self, date: dt.date) -> str | None:
        hol = self.holiday_entry
        if hol is None or hol.holidays is None:
            return None
        for c in hol.holidays.closed:
            if c.date == date.strftime("%m-%d"):
                return c.name
        return None

    # -- templates ----------------------------------------------------------------------------

    def _t(self, key: str, plural: bool = False, **values: str) -> str:
        tpl = self.pack.templates[key]
        if isinstance(tpl, dict):
            tpl = tpl["many" if plural else "one"]
        text = tpl.format_map(_Blank(values))
        return text[:1].upper() + text[1:] if text else text


class _Blank(dict):  # type: ignore[type-arg]
    """format_map values: a placeholder the template uses but this answer lacks is left empty."""

    def __missing__(self, key: str) -> str:
        return ""


__all__ = ["DialogueManager", "DialogueState", "Plan"]
