"""Conversation items: what the conversation holds, in order, as Realtime GA shows it.

User messages (typed text, images, committed audio with its transcript), system and assistant
messages a client adds, the agent's replies, function calls and their outputs. The log is
bounded (oldest items are forgotten first); audio bytes are not kept, only transcripts.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from server.errors import ProtocolError

ItemStatus = Literal["completed", "in_progress", "incomplete"]
MAX_ITEMS = 512


@dataclass
class Part:
    """One content part. ``audio_ms``: output audio held by the part (for truncation)."""

    type: str                      # input_text | input_image | input_audio | output_text | output_audio
    text: str | None = None
    transcript: str | None = None
    audio_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        if self.type in ("input_text", "output_text"):
            return {"type": self.type, "text": self.text or ""}
        if self.type == "input_image":
            return {"type": "input_image"}
        return {"type": self.type, "transcript": self.transcript}


@dataclass
class Item:
    """One conversation item. ``turn_id``: the agent turn it belongs to (once stored)."""

    id: str
    type: Literal["message", "function_call", "function_call_output"]
    role: Literal["user", "system", "assistant"] | None = None
    content: list[Part] = field(default_factory=list)
    status: ItemStatus = "completed"
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    turn_id: str | None = None
    answered: bool = False         # a user item some in-band response has used

    def text(self) -> str:
        """The item's text: typed text and transcripts, joined."""
        return " ".join(p.text or p.transcript or "" for p in self.content if (p.text or p.transcript)).strip()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "object": "realtime.item", "type": self.type, "status": self.status}
        if self.type == "message":
            out["role"] = self.role
            out["content"] = [p.to_json() for p in self.content]
        elif self.type == "function_call":
            out.update(call_id=self.call_id, name=self.name, arguments=self.arguments or "")
        else:
            out.update(call_id=self.call_id, output=self.output or "")
        return out


class ConversationLog:
    """The items of one conversation, in order; ``add`` returns the previous item's id."""

    def __init__(self, max_items: int = MAX_ITEMS) -> None:
        self._items: OrderedDict[str, Item] = OrderedDict()
        self.max_items = max_items

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._items

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._items.values()))

    @property
    def last_id(self) -> str | None:
        return next(reversed(self._items), None)

    def add(self, item: Item, *, after: str | None = None, event_id: str | None = None) -> str | None:
        """Append ``item`` (or insert it after the item ``after``); the id of the item before it."""
        if item.id in self._items:
            raise ProtocolError("invalid_value", f"an item with id {item.id!r} already exists", param="item.id",
                                event_id=event_id)
        if after is not None and after not in self._items:
            raise ProtocolError("item_not_found", f"previous_item_id {after[:64]!r} is not in the conversation",
                                param="previous_item_id", event_id=event_id)
        if after is None or after == self.last_id:
            prev = self.last_id
            self._items[item.id] = item
        else:
            items = list(self._items.items())
            i = next(k for k, (iid, _) in enumerate(items) if iid == after)
            items.insert(i + 1, (item.id, item))
            self._items = OrderedDict(items)
            prev = after
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return prev

    def get(self, item_id: str, *, event_id: str | None = None, param: str = "item_id") -> Item:
        item = self._items.get(item_id)
        if item is None:
            raise ProtocolError("item_not_found", f"no item with id {item_id[:64]!r} in the conversation",
                                param=param, event_id=event_id)
        return item

    def delete(self, item_id: str, *, event_id: str | None = None) -> Item:
        item = self.get(item_id, event_id=event_id)
        del self._items[item_id]
        return item

    def find_call(self, call_id: str) -> Item | None:
        """The function_call item with ``call_id`` (None: not in the conversation)."""
        for item in reversed(self._items.values()):
            if item.type == "function_call" and item.call_id == call_id:
                return item
        return None
