"""What the kiosk's screens show, from the knowledge pack: ``GET /pack/kiosk.json`` (docs/web.md).

The page draws the store map, the opening-hours card and the staff-coming card from this data
and never holds facts of its own::

    {"pack": "demo_kiosk",
     "greeting": "Hello! I'm Kit, ...",   # the pack's greeting message (messages.greeting)
     "map": {...} | null,              # agent/store_map.py StoreMap.to_json(), or null without map.yaml
     "hours": [{"id", "title", "text", "hours"?}],   # the entries linked to show_opening_hours
     "screens": {"show_on_map": "map", "show_opening_hours": "hours", "<handoff action>": "handoff"}}

Hours entries are the knowledge entries whose ``action`` is ``show_opening_hours``, in pack
order, with the text the pack wrote for them.
The greeting is what the kiosk shows when someone arrives and the agent's own greeting turn
(a response to the camera frame alone) says nothing.
"""

from __future__ import annotations

from typing import Any

MAP_ACTION = "show_on_map"
HOURS_ACTION = "show_opening_hours"


def kiosk_json(pack: Any) -> dict[str, Any]:
    """The kiosk screens' data for a loaded :class:`agent.pack.KnowledgePack`."""
    hours = []
    for e in pack.entries:
        action = getattr(e, "action", None)
        if action is None or action[0] != HOURS_ACTION:
            continue
        item: dict[str, Any] = {"id": e.id, "title": e.title or "", "text": e.text}
        # (The entry's structured ``hours`` are the dialogue manager's; the card shows the
        # pack's own sentence, which the shop owner wrote for people to read.)
        hours.append(item)
    screens = {MAP_ACTION: "map", HOURS_ACTION: "hours"}
    if pack.handoff_action:
        screens[pack.handoff_action] = "handoff"
    store_map = getattr(pack, "store_map", None)
    return {"pack": pack.name, "greeting": pack.messages.get("greeting"),
            "map": store_map.to_json() if store_map is not None else None,
            "hours": hours, "screens": screens}
