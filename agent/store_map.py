"""The store map of a knowledge pack: the optional file ``map.yaml`` (or ``.yml`` / ``.json``).

The kiosk draws it and highlights an aisle when the agent sends ``show_on_map``. Coordinates are
in the map's own units (``size``: width × height, origin at the top-left corner, x to the right,
y down; the entrance side is usually the bottom edge). Format, in docs/agent.md::

    size: {width: 100, height: 64}
    you_are_here: {x: 30, y: 56}              # where the kiosk stands (optional)
    aisles:                                   # number, rectangle, optional name
      - {number: 7, name: "Batteries & light bulbs", x: 52, y: 10, width: 4.5, height: 30}
    places:                                   # service desk, toilets, entrance, exit, ...
      - {kind: service_desk, name: "Service desk", x: 4, y: 50, width: 18, height: 9}

Every problem raises :class:`~agent.errors.PackError` naming the file and the field
(``map.yaml: aisles[2].x: -3 is less than the minimum of 0``). Aisles that knowledge entries
name (their ``aisle`` field or a ``show_on_map`` action) must be on the map, so the kiosk never
highlights an aisle it cannot draw.

>>> from agent.pack import load_pack
>>> m = load_pack().store_map      # the demo kiosk pack's map
>>> m.aisle(7).name
'Batteries, light bulbs & chargers'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from .errors import PackError

if TYPE_CHECKING:
    from .pack import KnowledgePack

MAP_STEM = "map"
PLACE_KINDS = ("service_desk", "toilets", "entrance", "exit", "checkout", "parking", "other")
_EXTS = (".yaml", ".yml", ".json")

_NUM = {"type": "number", "minimum": 0}
_POS = {"type": "number", "exclusiveMinimum": 0}
_NAME = {"type": "string", "minLength": 1, "maxLength": 60}
_RECT = {"x": _NUM, "y": _NUM, "width": _POS, "height": _POS}

MAP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["size", "aisles"],
    "additionalProperties": False,
    "properties": {
        "size": {"type": "object", "required": ["width", "height"], "additionalProperties": False,
                 "properties": {"width": _POS, "height": _POS}},
        "you_are_here": {"type": "object", "required": ["x", "y"], "additionalProperties": False,
                         "properties": {"x": _NUM, "y": _NUM, "name": _NAME}},
        "aisles": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["number", "x", "y", "width", "height"], "additionalProperties": False,
            "properties": {"number": {"type": "integer", "minimum": 0}, "name": _NAME, **_RECT}}},
        "places": {"type": "array", "items": {
            "type": "object", "required": ["kind", "name", "x", "y", "width", "height"],
            "additionalProperties": False,
            "properties": {"kind": {"enum": list(PLACE_KINDS)}, "name": _NAME, **_RECT}}},
    },
}


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float

    def inside(self, width: float, height: float) -> bool:
        return self.x + self.width <= width + 1e-9 and self.y + self.height <= height + 1e-9


@dataclass(frozen=True)
class Aisle:
    number: int
    name: str
    rect: Rect


@dataclass(frozen=True)
class Place:
    kind: str           # one of PLACE_KINDS
    name: str
    rect: Rect


@dataclass(frozen=True)
class StoreMap:
    """A validated store map. Build with :func:`load_store_map`."""

    width: float
    height: float
    aisles: tuple[Aisle, ...]
    places: tuple[Place, ...] = ()
    you_are_here: tuple[float, float, str] | None = None   # x, y, name

    def aisle(self, number: int) -> Aisle:
        for a in self.aisles:
            if a.number == number:
                return a
        raise KeyError(number)

    def to_json(self) -> dict[str, Any]:
        """The map as the kiosk page reads it (served at ``/pack/kiosk.json``)."""
        def rect(r: Rect) -> dict[str, float]:
            return {"x": r.x, "y": r.y, "width": r.width, "height": r.height}

        out: dict[str, Any] = {
            "size": {"width": self.width, "height": self.height},
            "aisles": [{"number": a.number, "name": a.name, **rect(a.rect)} for a in self.aisles],
            "places": [{"kind": p.kind, "name": p.name, **rect(p.rect)} for p in self.places],
            "you_are_here": None,
        }
        if self.you_are_here is not None:
            x, y, name = self.you_are_here
            out["you_are_here"] = {"x": x, "y": y, "name": name}
        return out


def _field(err: jsonschema.exceptions.ValidationError) -> str:
    out = ""
    for p in err.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    if err.validator in ("required", "additionalProperties"):
        m = re.search(r"'([^']+)'", err.message)
        if m:
            out = f"{out}.{m.group(1)}" if out else m.group(1)
    return out or "(top level)"


def find_map_file(directory: Path) -> Path | None:
    """The pack's map file, or None when the pack has none; two of them is an error."""
    found = [directory / f"{MAP_STEM}{ext}" for ext in _EXTS if (directory / f"{MAP_STEM}{ext}").is_file()]
    if len(found) > 1:
        raise PackError(f"ambiguous: {', '.join(p.name for p in found)} all exist", file=str(found[0]))
    return found[0] if found else None


def parse_store_map(data: Any, file: str = "map.yaml") -> StoreMap:
    """Validate the map's data (already parsed from YAML/JSON) and build the :class:`StoreMap`."""
    validator = jsonschema.Draft202012Validator(MAP_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        err = jsonschema.exceptions.best_match(errors) or errors[0]
        raise PackError(err.message, file=file, field=_field(err))
    width, height = float(data["size"]["width"]), float(data["size"]["height"])

    def rect(item: dict[str, Any], where: str) -> Rect:
        r = Rect(float(item["x"]), float(item["y"]), float(item["width"]), float(item["height"]))
        if not r.inside(width, height):
            raise PackError(f"reaches outside the map (size {width:g} × {height:g})", file=file, field=where)
        return r

    aisles: list[Aisle] = []
    for i, a in enumerate(data["aisles"]):
        if any(x.number == a["number"] for x in aisles):
            raise PackError(f"duplicate aisle number {a['number']}", file=file, field=f"aisles[{i}].number")
        aisles.append(Aisle(int(a["number"]), str(a.get("name", "")), rect(a, f"aisles[{i}]")))
    places = tuple(Place(p["kind"], p["name"], rect(p, f"places[{i}]"))
                   for i, p in enumerate(data.get("places", ())))
    here = data.get("you_are_here")
    you = None
    if here is not None:
        if here["x"] > width or here["y"] > height:
            raise PackError(f"is outside the map (size {width:g} × {height:g})", file=file, field="you_are_here")
        you = (float(here["x"]), float(here["y"]), str(here.get("name", "You are here")))
    return StoreMap(width, height, tuple(aisles), places, you)


def _aisles_named_by(pack: KnowledgePack) -> dict[int, str]:
    """Aisle number → the id of a knowledge entry that sends people there."""
    named: dict[int, str] = {}
    for e in pack.entries:
        aisle = getattr(e, "aisle", None)
        action = getattr(e, "action", None)
        if action is not None and action[0] == "show_on_map" and "aisle" in action[1]:
            aisle = action[1]["aisle"]
        if isinstance(aisle, int) or (isinstance(aisle, str) and aisle.isdigit()):
            named.setdefault(int(aisle), e.id)
    return named


def load_store_map(pack: KnowledgePack) -> StoreMap | None:
    """The map of ``pack`` (None when its directory has no map file), checked against its entries."""
    from .pack import _read

    path = find_map_file(Path(pack.directory))
    if path is None:
        return None
    store_map = parse_store_map(_read(path), path.name)
    drawn = {a.number for a in store_map.aisles}
    for number, entry_id in sorted(_aisles_named_by(pack).items()):
        if number not in drawn:
            raise PackError(f"aisle {number} (knowledge entry {entry_id!r}) is not on the map",
                            file=path.name, field="aisles")
    return store_map
