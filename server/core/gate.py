"""The speculation gate: a preemptive response's events, held until its turn is confirmed.

At a short pause inside speech the core starts the whole turn early (transcription, perception,
the agent's reply) under a gate keyed by the pause's speculation id. Its events wait here:

    HOLDING ──release(id)──▶ RELEASED   held events go out, in order; later ones pass at once
       │
       └──drop() / max hold──▶ DROPPED  held and later events are discarded

Releasing is all at once (the core is single-threaded), so no event can overtake the held
ones. A gate is matched by id: only the speculation that opened it can release it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from server.core.events import ServerEvent


class GateState(enum.Enum):
    HOLDING = "holding"
    RELEASED = "released"
    DROPPED = "dropped"


class SpeculationGate:
    """Holds one preemptive response's events; ``emit`` is where that response sends them."""

    def __init__(self, speculation_id: int, out: Callable[[ServerEvent], None]) -> None:
        self.id = speculation_id
        self.state = GateState.HOLDING
        self._out = out
        self.held: list[ServerEvent] = []

    @property
    def released(self) -> bool:
        return self.state is GateState.RELEASED

    def emit(self, ev: ServerEvent) -> None:
        if self.state is GateState.RELEASED:
            self._out(ev)
        elif self.state is GateState.HOLDING:
            self.held.append(ev)

    def release(self, speculation_id: int) -> bool:
        """The turn ended as speculated: send what was held. False if not HOLDING or not this id."""
        if self.state is not GateState.HOLDING or speculation_id != self.id:
            return False
        self.state = GateState.RELEASED
        held, self.held = self.held, []
        for ev in held:
            self._out(ev)
        return True

    def drop(self) -> bool:
        """Speech went on (or the hold lasted too long): discard everything. False if not HOLDING."""
        if self.state is not GateState.HOLDING:
            return False
        self.state = GateState.DROPPED
        self.held.clear()
        return True
