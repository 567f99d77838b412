"""The caller's hold on one turn of :meth:`agent.Agent.respond`: whether it is stored, and what
else the caller knows about it.

A server shows a turn's events to a person at some point after the agent produced them (a
preemptive reply is held until the person has finished speaking), or never (they spoke on, or
disconnected first). A turn is stored only once its caller **commits** it, and forgotten when
the caller **abandons** it; the agent waits for that decision when the turn ends::

    control = TurnControl()                       # pending
    async for ev in agent.respond(session, perceived, control=control):
        ...                                       # held or sent
    control.commit()                              # shown to the person: store it
    control.abandon()                             # never shown: forget it (no trace)

Without a control (the CLI, tests) a turn is committed from the start. ``fail(code, message)``
marks the turn failed with that error before the caller cancels it (a turn timeout).
``instructions`` and ``tool_results`` are what a Realtime client added to this turn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .policy import Decision

if TYPE_CHECKING:
    from .agent import PerceivedTurn
    from .prompt import Prompt
    from .session import Session


class TurnFate(enum.Enum):
    PENDING = "pending"
    COMMITTED = "committed"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class ToolResult:
    """A device's result for an earlier action (Realtime ``function_call_output``)."""

    call_id: str
    name: str | None
    output: str

    def failed(self) -> bool:
        """Whether the result reports a failure (``{"error": ...}``, ``"ok": false``, ``"status": "failed"``)."""
        try:
            data = json.loads(self.output)
        except (ValueError, TypeError):
            return self.output.strip().lower().startswith(("error", "failed"))
        if not isinstance(data, dict):
            return False
        return bool(data.get("error")) or data.get("ok") is False or data.get("status") in ("error", "failed")


class TurnControl:
    """See the module docstring. ``store=False``: never stored even when committed (a reply
    outside the conversation, Realtime ``conversation: "none"``)."""

    def __init__(self, *, instructions: str | None = None, tool_results: tuple[ToolResult, ...] = (),
                 store: bool = True, committed: bool = False) -> None:
        self.instructions = instructions
        self.tool_results = tool_results
        self.store = store
        self.fate = TurnFate.COMMITTED if committed else TurnFate.PENDING
        self.error: dict[str, str] | None = None
        self._decided: asyncio.Event | None = None

    def commit(self) -> bool:
        """The turn was shown: store it when it ends. False if it was already decided."""
        return self._decide(TurnFate.COMMITTED)

    def abandon(self) -> bool:
        """The turn will never be shown: forget it. False if it was already decided."""
        return self._decide(TurnFate.ABANDONED)

    def fail(self, code: str, message: str) -> None:
        """End the turn as failed with this error (the caller then cancels it)."""
        self.error = {"code": code, "message": message}

    @property
    def keeps(self) -> bool:
        """Committed and to be stored (decided now; a pending turn is not kept)."""
        return self.fate is TurnFate.COMMITTED and self.store

    async def decided(self) -> bool:
        """Wait for commit or abandon; True when the turn is to be stored."""
        if self.fate is TurnFate.PENDING:
            if self._decided is None:
                self._decided = asyncio.Event()
            await self._decided.wait()
        return self.keeps

    def _decide(self, fate: TurnFate) -> bool:
        if self.fate is not TurnFate.PENDING:
            return False
        self.fate = fate
        if self._decided is not None:
            self._decided.set()
        return True


def with_instructions(prompt: Prompt, instructions: str, count_tokens: Callable[[str], int]) -> Prompt:
    """``prompt`` with the client's instructions added to its last (user) message. The system
    message stays the pack's persona and safety rules, unchanged (and cacheable)."""
    messages = [dict(m) for m in prompt.messages]
    extra = f"\n\nInstructions for this reply: {instructions}"
    messages[-1]["content"] += extra
    return dataclasses.replace(prompt, messages=messages, n_tokens=prompt.n_tokens + count_tokens(extra),
                               sections={**prompt.sections, "instructions": instructions})


def tool_result_decision(perceived: PerceivedTurn, control: TurnControl) -> Decision | None:
    """A turn that carries only device results (no text, speech or frame): the reply says how
    the actions went, without the model. None for any other turn (the policy decides)."""
    if not control.tool_results or perceived.text is not None or perceived.speech is not None or perceived.frames:
        return None
    lines = []
    for r in control.tool_results:
        what = (r.name or "the action").replace("_", " ")
        if r.failed():
            lines.append(f"Sorry, {what} did not work: {_short(r.output)}.")
        else:
            lines.append(f"Done: {what}.")
    return Decision(route="tool_result", reason="function_call_output", text=" ".join(lines))


def _short(output: str) -> str:
    try:
        data = json.loads(output)
    except (ValueError, TypeError):
        data = output
    if isinstance(data, dict):
        data = data.get("error") or data.get("message") or data.get("status") or output
    return str(data).strip().rstrip(".")[:120]


def revise_turn(session: Session, turn_id: str, *, reply: str | None = None, forget: bool = False) -> bool:
    """Change a finished turn after the fact, in memory and in the store (blocking: call it from
    a worker thread). ``reply``: what the person actually heard of it (a reply cut short; the
    turn is marked barged-in); ``forget``: the client deleted it from the conversation — kept
    for the record with status ``deleted``, and never again in a prompt. False: no such turn."""
    record = next((t for t in reversed(session.turns) if t.turn_id == turn_id), None)
    if record is None:
        return False
    if reply is not None:
        record.reply = reply
        record.barge_in = True
    if forget:
        record.status = "deleted"
    if session.store is not None:
        session.store.save_turn(session.id, record)
    return True
