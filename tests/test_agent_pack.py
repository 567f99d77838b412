"""Knowledge packs: the demo pack loads; malformed packs fail naming the file and the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from agent import ActionError, PackError, load_pack
from agent.config import DEFAULT_PACK_DIR
from fusion.labels import INTENTS


def _copy_pack(tmp_path: Path) -> Path:
    dst = tmp_path / "pack"
    shutil.copytree(DEFAULT_PACK_DIR, dst)
    return dst


def _edit(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))


def test_demo_pack_loads_with_the_fusion_label_set() -> None:
    """The demo pack is complete: entries, every fusion intent, actions with valid schemas."""
    pack = load_pack()
    assert pack.name == "demo_kiosk"
    assert set(pack.intents) == set(INTENTS)
    assert {"handoff_to_human", "show_on_map"} <= set(pack.actions)
    ids = {e.id for e in pack.entries}
    assert {"opening_hours", "service_desk", "returns_policy", "payment_methods"} <= ids
    products = [e for e in pack.entries if e.kind == "product"]
    assert len(products) >= 4 and all(p.aisle is not None and p.price is not None for p in products)
    assert pack.handoff_action == "handoff_to_human"


def test_action_arguments_are_validated_against_the_schema() -> None:
    """show_on_map{aisle} accepts an integer aisle and rejects anything else."""
    pack = load_pack()
    assert pack.validate_action("show_on_map", {"aisle": 7}) == {"aisle": 7}
    for bad in ({"aisle": "seven"}, {}, {"aisle": 99}, {"aisle": 3, "extra": 1}):
        with pytest.raises(ActionError) as exc:
            pack.validate_action("show_on_map", bad)
        assert exc.value.code == "invalid_action"
    with pytest.raises(ActionError, match="unknown action"):
        pack.validate_action("launch_rocket", {})


@pytest.mark.parametrize(("file", "edit", "field"), [
    ("knowledge.yaml", lambda d: d["entries"][2].pop("text"), "entries[2].text"),
    ("knowledge.yaml", lambda d: d["entries"][0].update(kind="rumour"), "entries[0].kind"),
    ("knowledge.yaml", lambda d: d["entries"][1].update(intents=["store_hours", "fly"]), "entries[1].intents[1]"),
    ("knowledge.yaml", lambda d: d["entries"][9].update(action={"name": "show_on_map", "arguments": {"aisle": "x"}}),
     "entries[9].action"),
    ("knowledge.yaml", lambda d: d["entries"][3].update(id=d["entries"][0]["id"]), "entries[3].id"),
    ("pack.yaml", lambda d: d["messages"].pop("handoff"), "messages.handoff"),
    ("pack.yaml", lambda d: d["escalation"].update(action="teleport"), "escalation.action"),
    ("pack.yaml", lambda d: d["safety"].update(blocked_patterns=["(unclosed"]), "safety.blocked_patterns[0]"),
    ("actions.yaml", lambda d: d["actions"]["show_on_map"]["parameters"].update(type="nonsense"),
     "actions.show_on_map.parameters"),
    ("intents.yaml", lambda d: d["intents"]["greeting"].update(examples=[]), "intents.greeting.examples"),
])
def test_malformed_pack_names_file_and_field(tmp_path: Path, file: str, edit, field: str) -> None:  # type: ignore[no-untyped-def]
    """Each kind of mistake raises PackError whose message names the file and the field."""
    root = _copy_pack(tmp_path)
    _edit(root / file, edit)
    with pytest.raises(PackError) as exc:
        load_pack(root)
    assert exc.value.code == "invalid_pack"
    assert exc.value.file == file
    assert exc.value.field == field
    assert str(exc.value).startswith(f"{file}: {field}: ")


def test_unparsable_and_missing_files(tmp_path: Path) -> None:
    """Broken YAML names its file; a missing file is named too; JSON packs load."""
    root = _copy_pack(tmp_path)
    (root / "intents.yaml").write_text("intents: [unclosed\n")
    with pytest.raises(PackError, match=r"^intents\.yaml: not valid YAML"):
        load_pack(root)
    (root / "intents.yaml").unlink()
    with pytest.raises(PackError, match=r"intents\.yaml: missing pack file"):
        load_pack(root)
    import json

    data = yaml.safe_load((DEFAULT_PACK_DIR / "intents.yaml").read_text())
    (root / "intents.json").write_text(json.dumps(data))
    assert set(load_pack(root).intents) == set(INTENTS)


def test_history_window_moves_in_strides_so_prompts_share_prefixes() -> None:
    """With more history than the budget holds, the oldest turn kept moves in steps of
    ``history_stride`` turns: over consecutive turns the prompt mostly grows at its end."""
    from agent.config import PromptConfig
    from agent.prompt import build_prompt

    pack = load_pack()
    cfg = PromptConfig(history_tokens=60, history_stride=3)
    turns = [(f"question number {i}", f"answer number {i}") for i in range(12)]
    starts = []
    for n in range(4, 12):
        history = turns[max(0, n - 6):n]
        prompt = build_prompt(pack, "where is the service desk?", [], history=history,
                              history_offset=max(0, n - 6), config=cfg)
        users = [m["content"] for m in prompt.messages[prompt.static_messages:-1] if m["role"] == "user"]
        assert users, n
        first = int(users[0].rsplit(" ", 1)[1])
        assert first % 3 == 0 and users[-1] == f"question number {n - 1}"
        starts.append(first)
    assert starts == sorted(starts) and len(set(starts)) < len(starts)   # it stays put for a while
    # stride 1: the newest turns that fit, as before
    one = build_prompt(pack, "q?", [], history=turns[:7], config=PromptConfig(history_tokens=60, history_stride=1))
    kept = [m["content"] for m in one.messages[one.static_messages:-1] if m["role"] == "user"]
    assert kept[-1] == "question number 6" and kept[0] != "question number 0"
