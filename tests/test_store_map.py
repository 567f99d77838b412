"""The pack's optional store map (agent/store_map.py, map.yaml): loading, validation errors that
name the file and the field, the check against the knowledge entries, and the kiosk's data."""

from __future__ import annotations

import doctest
import shutil
from pathlib import Path

import pytest
import yaml

from agent.config import DEFAULT_PACK_DIR
from agent.errors import PackError
from agent.pack import load_pack
from server.kiosk_data import kiosk_json


def _pack_with_map(tmp_path: Path, store_map: object | None) -> Path:
    """A copy of the demo pack whose map.yaml is ``store_map`` (None: no map file)."""
    d = tmp_path / "pack"
    shutil.copytree(DEFAULT_PACK_DIR, d)
    if store_map is None:
        (d / "map.yaml").unlink()
    else:
        (d / "map.yaml").write_text(yaml.safe_dump(store_map), encoding="utf-8")
    return d


def _demo_map() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DEFAULT_PACK_DIR / "map.yaml").read_text(encoding="utf-8"))


def test_demo_pack_map_has_every_aisle_and_place_the_pack_names() -> None:
    """The demo map: aisles 1-12, the service desk, toilets, entrance, exit; names from the pack."""
    m = load_pack().store_map
    assert m is not None
    assert [a.number for a in m.aisles] == list(range(1, 13))
    assert {p.kind for p in m.places} >= {"service_desk", "toilets", "entrance", "exit", "checkout"}
    assert m.aisle(7).name == "Batteries, light bulbs & chargers"
    assert m.you_are_here is not None
    assert all(a.rect.inside(m.width, m.height) for a in m.aisles)


def test_store_map_docstring_example_runs() -> None:
    """The module docstring's example is run, not just read."""
    import agent.store_map

    result = doctest.testmod(agent.store_map)
    assert result.attempted >= 1 and result.failed == 0


def test_a_pack_without_a_map_has_none(tmp_path: Path) -> None:
    """map.yaml is optional: no file, no map, and the kiosk data says so."""
    pack = load_pack(_pack_with_map(tmp_path, None))
    assert pack.store_map is None
    assert kiosk_json(pack)["map"] is None


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("size"), "map.yaml: size: 'size' is a required property"),
    (lambda m: m["aisles"][2].update(x=-3), "map.yaml: aisles[2].x: -3 is less than the minimum of 0"),
    (lambda m: m["aisles"][0].update(colour="red"), "map.yaml: aisles[0].colour:"),
    (lambda m: m["places"][1].update(kind="cafe"), "map.yaml: places[1].kind: 'cafe' is not one of"),
    (lambda m: m["aisles"][4].update(number=1), "map.yaml: aisles[4].number: duplicate aisle number 1"),
    (lambda m: m["aisles"][11].update(x=98), "map.yaml: aisles[11]: reaches outside the map (size 100 × 64)"),
    (lambda m: m["you_are_here"].update(y=80), "map.yaml: you_are_here: is outside the map"),
    (lambda m: m.__setitem__("aisles", [a for a in m["aisles"] if a["number"] != 7]),
     "map.yaml: aisles: aisle 7 (knowledge entry 'batteries') is not on the map"),
])
def test_bad_maps_are_refused_naming_file_and_field(tmp_path: Path, edit: object, message: str) -> None:
    """Each mistake in map.yaml stops the pack from loading with the file and field named."""
    data = _demo_map()
    edit(data)  # type: ignore[operator]
    with pytest.raises(PackError) as err:
        load_pack(_pack_with_map(tmp_path, data))
    assert str(err.value).startswith(message), str(err.value)
    assert err.value.code == "invalid_pack"


def test_two_map_files_are_ambiguous(tmp_path: Path) -> None:
    """map.yaml and map.json side by side: refused rather than one silently chosen."""
    d = _pack_with_map(tmp_path, _demo_map())
    (d / "map.json").write_text("{}", encoding="utf-8")
    with pytest.raises(PackError, match="ambiguous"):
        load_pack(d)


def test_kiosk_data_takes_hours_and_the_handoff_action_from_the_pack() -> None:
    """Hours: the entries linked to show_opening_hours, as the pack words them; the handoff screen
    follows the pack's escalation action."""
    pack = load_pack()
    data = kiosk_json(pack)
    assert [h["text"] for h in data["hours"]] == [pack.entry("opening_hours").text, pack.entry("holiday_hours").text]
    assert data["screens"][pack.handoff_action] == "handoff"
    assert data["greeting"] == pack.messages["greeting"]
