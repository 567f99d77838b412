"""Knowledge packs: a directory describing one deployment, loaded and validated in one place.

A pack is four files (each ``.yaml``, ``.yml`` or ``.json``; format in docs/agent.md)::

    pack.yaml        name, persona, instructions, canned messages, few-shot examples,
                     escalation, safety
    knowledge.yaml   entries: facts, FAQ answers, products (what retrieval searches)
    intents.yaml     intent names with descriptions and example phrasings
    actions.yaml     device actions with the JSON Schema of their arguments
    map.yaml         optional: the store map the kiosk draws (agent/store_map.py)

Every problem raises :class:`~agent.errors.PackError` naming the file and the field
(``knowledge.yaml: entries[3].text: 'text' is a required property``).

>>> pack = load_pack()          # the demo kiosk pack
>>> pack.entry("service_desk").text[:21]
'The service desk is a'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .config import DEFAULT_PACK_DIR
from .errors import ActionError, PackError
from .store_map import StoreMap, load_store_map

PACK_FILES = ("pack", "knowledge", "intents", "actions")
_EXTS = (".yaml", ".yml", ".json")
ENTRY_KINDS = ("fact", "faq", "product")
MESSAGE_KEYS = ("greeting", "repeat_request", "no_information", "handoff", "refusal")
# Messages of the dialogue manager (agent/dialogue.py): optional in the schema; a pack without
# them gets a clear error only when the dialogue manager needs one (load_pack checks they exist
# when the pack has templates, i.e. is meant for the dialogue manager).
DIALOGUE_MESSAGE_KEYS = ("thanks", "goodbye", "acknowledge", "off_topic", "deescalate", "deescalate_short",
                         "clarify", "nothing_to_repeat")
TEMPLATE_KEYS = ("where", "price", "size", "location", "when_day", "when_today", "when_tomorrow", "hours", "opens",
                 "closes", "holiday_hours", "holiday_closed", "fact_yes", "fact_no")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# A clock time as packs write it: "8 am", "9:30 pm", "10am", or 24-hour "08:00", "21:30".
TIME_RE = re.compile(r"^(\d{1,2})(?::(\d{2}))?\s?(am|pm)?$", re.IGNORECASE)

_STR = {"type": "string", "minLength": 1}
_STRS = {"type": "array", "items": _STR}
_IDENT = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.-]*$"}
_TEMPLATE = {"oneOf": [_STR, {"type": "object", "required": ["one", "many"], "additionalProperties": False,
                               "properties": {"one": _STR, "many": _STR}}]}
_DAY_HOURS = {"type": "object", "required": ["open", "close"], "additionalProperties": False,
              "properties": {"open": _STR, "close": _STR}}

# Structure of each file (semantic cross-checks follow in _cross_check).
FILE_SCHEMAS: dict[str, dict[str, Any]] = {
    "pack": {
        "type": "object",
        "required": ["name", "persona", "instructions", "messages"],
        "additionalProperties": False,
        "properties": {
            "name": _IDENT, "version": {"type": ["integer", "string"]}, "language": _STR,
            "persona": _STR, "instructions": _STR,
            "messages": {"type": "object", "required": list(MESSAGE_KEYS), "additionalProperties": False,
                         "properties": {k: _STR for k in (*MESSAGE_KEYS, *DIALOGUE_MESSAGE_KEYS)}},
            "templates": {"type": "object", "additionalProperties": False,
                          "properties": {k: _TEMPLATE for k in TEMPLATE_KEYS}},
            "currency": _STR,
            "weekdays": {**_STRS, "minItems": 7, "maxItems": 7},
            "escalation": {"type": "object", "additionalProperties": False, "properties": {
                "action": _IDENT, "intents": _STRS, "negative_turns": {"type": "integer", "minimum": 1}}},
            "safety": {"type": "object", "additionalProperties": False, "properties": {
                "rules": _STRS, "blocked_patterns": _STRS}},
            "examples": {"type": "array", "items": {
                "type": "object", "required": ["facts", "question", "answer"], "additionalProperties": False,
                "properties": {"facts": _STRS, "question": _STR, "answer": _STR}}},
        },
    },
    "knowledge": {
        "type": "object", "required": ["entries"], "additionalProperties": False,
        "properties": {"entries": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["id", "kind", "text"], "additionalProperties": False,
            "properties": {
                "id": _IDENT, "kind": {"enum": list(ENTRY_KINDS)}, "text": _STR, "title": _STR,
                "question": _STR, "name": _STR, "intents": _STRS, "keywords": _STRS,
                "aisle": {"type": ["integer", "string"]}, "price": {"type": "number", "minimum": 0},
                "action": {"type": "object", "required": ["name"], "additionalProperties": False,
                           "properties": {"name": _IDENT, "arguments": {"type": "object"}}},
                "aliases": _STRS, "supersedes": {"type": "array", "items": _IDENT},
                "subject": _STR, "plural": {"type": "boolean"}, "unit": _STR, "location": _STR,
                "hours": {"type": "object", "additionalProperties": False,
                          "properties": {d: _DAY_HOURS for d in WEEKDAYS}},
                "holidays": {"type": "object", "additionalProperties": False, "properties": {
                    "open": _STR, "close": _STR,
                    "closed": {"type": "array", "items": {
                        "type": "object", "required": ["name"], "additionalProperties": False,
                        "properties": {"name": _STR, "aliases": _STRS,
                                       "date": {"type": "string", "pattern": "^(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"}}}}}},
                "facts": {"type": "array", "items": {
                    "type": "object", "required": ["id", "value", "say", "aliases"], "additionalProperties": False,
                    "properties": {"id": _IDENT, "value": {"type": "boolean"}, "say": _STR,
                                   "aliases": {**_STRS, "minItems": 1}}}},
            },
            "if": {"properties": {"kind": {"const": "product"}}},
            "then": {"required": ["name"]},
        }}},
    },
    "intents": {
        "type": "object", "required": ["intents"], "additionalProperties": False,
        "properties": {"intents": {"type": "object", "minProperties": 1, "additionalProperties": {
            "type": "object", "required": ["examples"], "additionalProperties": False,
            "properties": {"description": _STR, "examples": {**_STRS, "minItems": 1}}}}},
    },
    "actions": {
        "type": "object", "required": ["actions"], "additionalProperties": False,
        "properties": {"actions": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["description", "parameters"], "additionalProperties": False,
            "properties": {"description": _STR, "parameters": {"type": "object"}}}}},
    },
}


@dataclass(frozen=True)
class ClosedDay:
    """A named day the store is closed (``Christmas Day``), with the words people use for it."""

    name: str
    aliases: tuple[str, ...] = ()
    date: str | None = None     # "MM-DD" when it falls on the same date every year


@dataclass(frozen=True)
class Holidays:
    """Opening on public holidays (``open``/``close`` None: no holiday hours) and named closed days."""

    open: str | None = None
    close: str | None = None
    closed: tuple[ClosedDay, ...] = ()


@dataclass(frozen=True)
class PolicyFact:
    """A yes/no fact (``accepts cheques: no``): the words that name it and the sentence saying it."""

    id: str
    value: bool
    say: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class Entry:
    """One retrievable piece of knowledge. ``text`` is what is quoted to the model and the user.

    Structured fields (all optional) let the dialogue manager answer one slot of a question
    (docs/agent.md): ``aliases``, ``supersedes``; products ``subject`` (how an answer names it),
    ``plural``, ``unit``, ``location``; ``hours`` (weekday → (open, close)); ``holidays``;
    ``facts`` (yes/no policy facts)."""

    id: str
    kind: str
    text: str
    title: str = ""
    question: str = ""
    name: str = ""
    intents: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    aisle: str | int | None = None
    price: float | None = None
    action: tuple[str, dict[str, Any]] | None = None
    aliases: tuple[str, ...] = ()
    supersedes: tuple[str, ...] = ()
    subject: str = ""
    plural: bool = False
    unit: str = ""
    location: str = ""
    hours: dict[str, tuple[str, str]] = field(default_factory=dict)
    holidays: Holidays | None = None
    facts: tuple[PolicyFact, ...] = ()

    def __hash__(self) -> int:
        return hash(self.id)

    def search_text(self) -> str:
        """The text embedded for retrieval: what a person would ask plus the answer."""
        parts = [self.title or self.name, self.question, " ".join(self.keywords), self.text]
        return " ".join(p for p in parts if p)


@dataclass(frozen=True)
class ActionSpec:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class IntentSpec:
    name: str
    description: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Example:
    """A few-shot demonstration: facts and a question, and the answer the model should give."""

    facts: tuple[str, ...]
    question: str
    answer: str


@dataclass
class KnowledgePack:
    """A validated pack. Build with :func:`load_pack`."""

    directory: Path
    name: str
    persona: str
    instructions: str
    messages: dict[str, str]
    entries: list[Entry]
    intents: dict[str, IntentSpec]
    actions: dict[str, ActionSpec]
    handoff_action: str | None = None
    handoff_intents: tuple[str, ...] = ()
    negative_turns: int | None = None
    safety_rules: tuple[str, ...] = ()
    blocked_patterns: tuple[re.Pattern[str], ...] = ()
    language: str = "en"
    examples: tuple[Example, ...] = ()
    store_map: StoreMap | None = None
    templates: dict[str, str | dict[str, str]] = field(default_factory=dict)
    currency: str = "$"
    weekday_names: tuple[str, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
                                      "Sunday")
    _validators: dict[str, Any] = field(default_factory=dict, repr=False)

    def entry(self, entry_id: str) -> Entry:
        for e in self.entries:
            if e.id == entry_id:
                return e
        raise KeyError(entry_id)

    def validate_action(self, name: str, arguments: Any) -> dict[str, Any]:
        """Check ``arguments`` against the action's JSON Schema; raise :class:`ActionError` if not."""
        spec = self.actions.get(name)
        if spec is None:
            raise ActionError(f"unknown action {name!r} (pack {self.name!r} has: {', '.join(sorted(self.actions))})")
        if not isinstance(arguments, dict):
            raise ActionError(f"action {name!r}: arguments must be an object, got {type(arguments).__name__}")
        validator = self._validators.get(name)
        if validator is None:
            validator = jsonschema.Draft202012Validator(spec.parameters)
            self._validators[name] = validator
        err = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if err is not None:
            where = _path(err.absolute_path) or "arguments"
            raise ActionError(f"action {name!r}: {where}: {err.message}")
        return arguments

    def tools(self) -> list[dict[str, Any]]:
        """The actions in OpenAI ``tools`` format (for responders that support tool calls)."""
        return [{"type": "function", "function": {"name": a.name, "description": a.description,
                                                  "parameters": a.parameters}}
                for a in self.actions.values()]


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _find_file(directory: Path, stem: str) -> Path:
    found = [directory / f"{stem}{ext}" for ext in _EXTS if (directory / f"{stem}{ext}").is_file()]
    if not found:
        raise PackError(f"missing pack file (expected {stem}.yaml, {stem}.yml or {stem}.json)",
                        file=str(directory / f"{stem}.yaml"))
    if len(found) > 1:
        raise PackError(f"ambiguous: {', '.join(p.name for p in found)} all exist", file=str(found[0]))
    return found[0]


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PackError(f"cannot read: {exc}", file=path.name) from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PackError(f"not valid {path.suffix[1:].upper()}: {exc}", file=path.name) from exc
    return data if data is not None else {}


def _check_structure(stem: str, path: Path, data: Any) -> None:
    validator = jsonschema.Draft202012Validator(FILE_SCHEMAS[stem])
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        err = jsonschema.exceptions.best_match(errors) or errors[0]
        field_name = _path(err.absolute_path) or "(top level)"
        if err.validator == "required" or err.validator == "additionalProperties":
            # name the missing/extra key itself, not just its parent
            m = re.search(r"'([^']+)'", err.message)
            if m:
                field_name = f"{field_name}.{m.group(1)}" if err.absolute_path else m.group(1)
        raise PackError(err.message, file=path.name, field=field_name)


def load_pack(directory: str | Path | None = None) -> KnowledgePack:
    """Load and validate the pack in ``directory`` (None = the demo kiosk pack)."""
    root = Path(directory) if directory is not None else DEFAULT_PACK_DIR
    if not root.is_dir():
        raise PackError("not a directory", file=str(root))
    raw: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    for stem in PACK_FILES:
        paths[stem] = _find_file(root, stem)
        raw[stem] = _read(paths[stem])
        _check_structure(stem, paths[stem], raw[stem])

    actions = {name: ActionSpec(name, spec["description"], spec["parameters"])
               for name, spec in raw["actions"]["actions"].items()}
    for name, spec in actions.items():
        try:
            jsonschema.Draft202012Validator.check_schema(spec.parameters)
        except jsonschema.exceptions.SchemaError as exc:
            raise PackError(f"not a valid JSON Schema: {exc.message}", file=paths["actions"].name,
                            field=f"actions.{name}.parameters") from exc
    intents = {name: IntentSpec(name, spec.get("description", ""), tuple(spec["examples"]))
               for name, spec in raw["intents"]["intents"].items()}

    p = raw["pack"]
    esc = p.get("escalation", {})
    safety = p.get("safety", {})
    pack = KnowledgePack(
        directory=root, name=p["name"], persona=p["persona"].strip(), instructions=p["instructions"].strip(),
        messages=dict(p["messages"]), entries=[], intents=intents, actions=actions,
        handoff_action=esc.get("action"), handoff_intents=tuple(esc.get("intents", ())),
        negative_turns=esc.get("negative_turns"), safety_rules=tuple(safety.get("rules", ())),
        language=p.get("language", "en"),
        examples=tuple(Example(tuple(x["facts"]), x["question"], x["answer"]) for x in p.get("examples", ())),
        templates=dict(p.get("templates", {})), currency=p.get("currency", "$"),
    )
    if "weekdays" in p:
        pack.weekday_names = tuple(p["weekdays"])
    pname0 = paths["pack"].name
    if pack.templates:
        for key in TEMPLATE_KEYS:
            if key not in pack.templates:
                raise PackError(f"'{key}' is required when the pack has templates (the dialogue manager uses it)",
                                file=pname0, field=f"templates.{key}")
        for key in DIALOGUE_MESSAGE_KEYS:
            if key not in pack.messages:
                raise PackError(f"'{key}' is required when the pack has templates (the dialogue manager uses it)",
                                file=pname0, field=f"messages.{key}")
    pname = paths["pack"].name
    if pack.handoff_action is not None and pack.handoff_action not in actions:
        raise PackError(f"names action {pack.handoff_action!r}, not defined in {paths['actions'].name}",
                        file=pname, field="escalation.action")
    for i, name in enumerate(pack.handoff_intents):
        if name not in intents:
            raise PackError(f"unknown intent {name!r}", file=pname, field=f"escalation.intents[{i}]")
    patterns = []
    for i, pat in enumerate(safety.get("blocked_patterns", ())):
        try:
            patterns.append(re.compile(pat, re.IGNORECASE))
        except re.error as exc:
            raise PackError(f"not a valid regular expression: {exc}", file=pname,
                            field=f"safety.blocked_patterns[{i}]") from exc
    pack.blocked_patterns = tuple(patterns)

    kname = paths["knowledge"].name
    seen: set[str] = set()
    for i, e in enumerate(raw["knowledge"]["entries"]):
        where = f"entries[{i}]"
        if e["id"] in seen:
            raise PackError(f"duplicate entry id {e['id']!r}", file=kname, field=f"{where}.id")
        seen.add(e["id"])
        for j, name in enumerate(e.get("intents", ())):
            if name not in intents:
                raise PackError(f"unknown intent {name!r} (not in {paths['intents'].name})", file=kname,
                                field=f"{where}.intents[{j}]")
        action = None
        if "action" in e:
            aname, args = e["action"]["name"], e["action"].get("arguments", {})
            try:
                pack.validate_action(aname, args)
            except ActionError as exc:
                raise PackError(str(exc), file=kname, field=f"{where}.action") from exc
            action = (aname, dict(args))
        hours: dict[str, tuple[str, str]] = {}
        for day, oc in e.get("hours", {}).items():
            for k in ("open", "close"):
                if not TIME_RE.match(oc[k].strip()):
                    raise PackError(f"not a clock time: {oc[k]!r} (write e.g. '8 am', '9:30 pm' or '21:30')",
                                    file=kname, field=f"{where}.hours.{day}.{k}")
            hours[day] = (oc["open"].strip(), oc["close"].strip())
        holidays = None
        if "holidays" in e:
            h = e["holidays"]
            for k in ("open", "close"):
                if k in h and not TIME_RE.match(h[k].strip()):
                    raise PackError(f"not a clock time: {h[k]!r} (write e.g. '8 am', '9:30 pm' or '21:30')",
                                    file=kname, field=f"{where}.holidays.{k}")
            if ("open" in h) != ("close" in h):
                raise PackError("give both 'open' and 'close', or neither", file=kname, field=f"{where}.holidays")
            holidays = Holidays(h.get("open"), h.get("close"),
                                tuple(ClosedDay(c["name"], tuple(c.get("aliases", ())), c.get("date")) for c in h.get("closed", ())))
        fact_ids: set[str] = set()
        for j, f in enumerate(e.get("facts", ())):
            if f["id"] in fact_ids:
                raise PackError(f"duplicate fact id {f['id']!r}", file=kname, field=f"{where}.facts[{j}].id")
            fact_ids.add(f["id"])
        if e["kind"] == "product" and ("aisle" not in e or "price" not in e) and e.get("aliases"):
            raise PackError("a product with aliases needs 'aisle' and 'price' (answers are composed from them)",
                            file=kname, field=f"{where}.aisle" if "aisle" not in e else f"{where}.price")
        pack.entries.append(Entry(
            id=e["id"], kind=e["kind"], text=e["text"].strip(), title=e.get("title", ""),
            question=e.get("question", ""), name=e.get("name", ""), intents=tuple(e.get("intents", ())),
            keywords=tuple(e.get("keywords", ())), aisle=e.get("aisle"), price=e.get("price"), action=action,
            aliases=tuple(a.strip() for a in e.get("aliases", ())), supersedes=tuple(e.get("supersedes", ())),
            subject=e.get("subject", ""), plural=bool(e.get("plural", False)), unit=e.get("unit", ""),
            location=e.get("location", ""), hours=hours, holidays=holidays,
            facts=tuple(PolicyFact(f["id"], bool(f["value"]), f["say"], tuple(f["aliases"]))
                        for f in e.get("facts", ()))))
    for i, e in enumerate(raw["knowledge"]["entries"]):
        for j, other in enumerate(e.get("supersedes", ())):
            if other not in seen:
                raise PackError(f"unknown entry id {other!r}", file=kname, field=f"entries[{i}].supersedes[{j}]")
    pack.store_map = load_store_map(pack)
    return pack
