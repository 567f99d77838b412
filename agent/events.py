"""The events :meth:`agent.Agent.respond` yields, in order, for one turn.

One turn always ends with exactly one :class:`TurnDoneEvent`::

    PerceptionSummaryEvent          what the encoders found (dict, JSON-ready)
    TurnFusedEvent                  the fused intent/emotion/weights (``fused`` may be None without fusion)
    TextDeltaEvent × n              reply text as it is generated
    ActionEvent | ActionRejectedEvent × k   interleaved, in the agent's order
    AgentErrorEvent                 only when something failed (before a ``failed`` TurnDoneEvent)
    TurnDoneEvent                   status "completed" | "cancelled" | "failed", full text, timings (ms)

Every event is a small frozen dataclass with a ``type`` string and ``to_json()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

TurnStatus = Literal["completed", "cancelled", "failed"]


@dataclass(frozen=True)
class AgentEvent:
    type: ClassVar[str] = "agent.event"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for name in self.__dataclass_fields__:
            out[name] = getattr(self, name)
        return out


@dataclass(frozen=True)
class PerceptionSummaryEvent(AgentEvent):
    """What perception found this turn (see :func:`agent.agent.perception_summary`)."""

    type: ClassVar[str] = "perception.summary"
    summary: dict[str, Any]


@dataclass(frozen=True)
class TurnFusedEvent(AgentEvent):
    """The fused state of the turn; ``fused`` is a ``fusion.FusedTurn`` or None without fusion."""

    type: ClassVar[str] = "turn.fused"
    fused: Any
    transcript_confidence: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = self.fused.to_json() if self.fused is not None else None
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "fused"}
        return {"type": self.type, "fused": data, "transcript_confidence": self.transcript_confidence}


@dataclass(frozen=True)
class TextDeltaEvent(AgentEvent):
    """A piece of reply text."""

    type: ClassVar[str] = "text.delta"
    delta: str


@dataclass(frozen=True)
class ActionEvent(AgentEvent):
    """An action for the device; ``arguments`` passed the pack's JSON Schema."""

    type: ClassVar[str] = "action"
    name: str
    arguments: dict[str, Any]
    call_id: str = ""


@dataclass(frozen=True)
class ActionRejectedEvent(AgentEvent):
    """A proposed action that failed validation; it must not be executed."""

    type: ClassVar[str] = "action.rejected"
    name: str
    arguments: Any
    code: str = "invalid_action"
    message: str = ""


@dataclass(frozen=True)
class AgentErrorEvent(AgentEvent):
    """Something failed during the turn; ``code`` is a stable error code."""

    type: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True)
class TurnDoneEvent(AgentEvent):
    """The turn ended. ``timings`` are milliseconds per stage (keys in docs/agent.md)."""

    type: ClassVar[str] = "turn.done"
    status: TurnStatus
    text: str
    timings: dict[str, float] = field(default_factory=dict)
    turn_id: str = ""
    intent: str | None = None
    emotion: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, str] | None = None
    route: str = ""  # which path produced the reply: "llm", "extractive", "repeat", "handoff", ...
