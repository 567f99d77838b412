"""agent.Agent.respond under a TurnControl (agent/control.py): a turn is stored only once its
caller commits it, forgotten when abandoned, marked failed on request; device results and
client instructions reach the turn. Real text encoder and store; a scripted responder."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent import Agent, AgentConfig, PerceivedTurn, StoreConfig, ToolResult, TurnControl, TurnInput
from agent.control import TurnFate, revise_turn
from tests.test_agent_policy import RecordingResponder, ScriptedFusion, fused


@pytest.fixture()
def rig(perception: Any, tmp_path: Path) -> tuple[Agent, ScriptedFusion, RecordingResponder]:
    fusion = ScriptedFusion()
    responder = RecordingResponder()
    agent = Agent.from_config(AgentConfig(store=StoreConfig(path=str(tmp_path / "s.db"))), perception=perception,
                              fusion=fusion, responder=responder)
    return agent, fusion, responder


def typed(agent: Agent, text: str) -> PerceivedTurn:
    return asyncio.run(agent.perceive(TurnInput(text=text)))


def stored(agent: Agent, session: Any) -> list[Any]:
    assert agent.store is not None
    return agent.store.load_session(session.id).turns


def test_a_pending_turn_waits_for_its_callers_decision(rig: Any) -> None:
    """The agent generates, then waits: commit → stored; abandon → no trace (memory or store)."""
    agent, fusion, _ = rig
    session = agent.open_session()
    fusion.queue += [fused("other"), fused("other")]
    perceived = typed(agent, "where is the service desk?")

    async def turn(decide: str) -> list[Any]:
        control = TurnControl()
        events: list[Any] = []

        async def consume() -> None:
            async for ev in agent.respond(session, perceived, control=control):
                events.append(ev)

        task = asyncio.ensure_future(consume())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if any(e.type == "text.delta" for e in events) and not task.done():
                break
        assert not task.done() and control.fate is TurnFate.PENDING   # generated; waiting
        control.commit() if decide == "commit" else control.abandon()
        await task
        return events

    kept = asyncio.run(turn("commit"))
    assert kept[-1].status == "completed" and [t.turn_id for t in stored(agent, session)] == [kept[-1].turn_id]
    gone = asyncio.run(turn("abandon"))
    assert gone[-1].type == "turn.done"
    assert [t.turn_id for t in stored(agent, session)] == [kept[-1].turn_id]
    assert [t.turn_id for t in session.turns] == [kept[-1].turn_id]


def test_fail_marks_the_stored_turn(rig: Any) -> None:
    """fail(code) then cancel (a turn timeout): the turn is stored failed with that error."""
    agent, fusion, _ = rig
    session = agent.open_session()
    fusion.queue += [fused("other")]
    control = TurnControl(committed=True)
    perceived = typed(agent, "what are your hours?")

    async def go() -> None:
        cancel = asyncio.Event()
        async for ev in agent.respond(session, perceived, cancel, control=control):
            if ev.type == "text.delta":
                control.fail("response_timeout", "too slow")
                cancel.set()

    asyncio.run(go())
    turn = stored(agent, session)[0]
    assert turn.status == "failed" and turn.error == {"code": "response_timeout", "message": "too slow"}


def test_device_results_and_instructions_reach_the_turn(rig: Any) -> None:
    """A turn of only device results is answered without the model; instructions go into the prompt."""
    agent, fusion, responder = rig
    session = agent.open_session()
    fusion.queue += [fused("other")]
    control = TurnControl(committed=True, tool_results=(
        ToolResult("call_1", "show_on_map", '{"ok": true}'), ToolResult("call_2", "print_receipt", '{"error": "no paper"}')))

    async def go(perceived: PerceivedTurn, c: TurnControl) -> list[Any]:
        return [ev async for ev in agent.respond(session, perceived, control=c)]

    events = asyncio.run(go(PerceivedTurn(text=None, speech=None, frames=[]), control))
    done = events[-1]
    assert done.route == "tool_result" and done.text == "Done: show on map. Sorry, print receipt did not work: no paper."
    assert responder.requests == []
    asyncio.run(go(typed(agent, "where is the service desk?"), TurnControl(committed=True,
                                                                           instructions="Answer in French.")))
    assert responder.requests[-1].prompt.messages[-1]["content"].endswith("Instructions for this reply: Answer in French.")
    assert responder.requests[-1].prompt.messages[0]["content"].startswith(agent.pack.persona)


def test_revise_turn_truncates_and_forgets(rig: Any) -> None:
    """revise_turn: the heard part replaces the reply (barge-in marked); a forgotten turn leaves the history."""
    agent, fusion, _ = rig
    session = agent.open_session()
    fusion.queue += [fused("other")]
    perceived = typed(agent, "where is the service desk?")

    async def go() -> list[Any]:
        return [ev async for ev in agent.respond(session, perceived)]

    done = asyncio.run(go())[-1]
    assert revise_turn(session, done.turn_id, reply="Sure, ")
    turn = stored(agent, session)[0]
    assert turn.reply == "Sure, " and turn.barge_in
    assert session.history() == [("where is the service desk?", "Sure, ")]
    assert revise_turn(session, done.turn_id, forget=True) and session.history() == []
    assert stored(agent, session)[0].status == "deleted"
    assert not revise_turn(session, "turn_nope", forget=True)
