"""Policy on the fused state, actions, the price guard and the extractive responder, end to end
through :class:`agent.Agent` (real text encoder; fused turns built directly)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from agent import Agent, AgentConfig, PerceivedTurn, ResponderConfig, StoreConfig, TurnInput
from agent.guard import NumberGuard, asks_for_price, numbers_in, prices_in
from agent.responders import CancelToken, ResponderRequest
from fusion import FusedTurn
from perception.types import Faces, FrameEncoding, Label, Prosody, Segment, SpeechEncoding


def fused(intent: str = "other", emotion: str = "neutral", conf: float = 0.9) -> FusedTurn:
    return FusedTurn(intent=intent, intent_confidence=conf, intent_probs={intent: conf}, emotion=emotion,
                     emotion_confidence=conf, emotion_probs={emotion: conf}, addressee=True, addressee_prob=0.9,
                     modality_weights={"text": 0.7, "context": 0.3}, fused=torch.zeros(8))


class ScriptedFusion:
    """Returns the next prepared FusedTurn (the fusion model is tested in its own layer)."""

    def __init__(self) -> None:
        self.queue: list[FusedTurn] = []
        self.inputs: list[Any] = []

    def predict(self, turns: list[Any]) -> list[FusedTurn]:
        self.inputs.extend(turns)
        return [self.queue.pop(0) for _ in turns]


class RecordingResponder:
    """Streams fixed pieces and records every request."""

    name = "scripted"

    def __init__(self) -> None:
        self.requests: list[ResponderRequest] = []
        self.pieces = ["Sure, ", "happy ", "to ", "help."]

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def warmup(self) -> None:
        pass

    async def stream(self, request: ResponderRequest, cancel: CancelToken) -> AsyncIterator[str]:
        self.requests.append(request)
        for p in self.pieces:
            if cancel.is_set():
                return
            yield p


@pytest.fixture()
def rig(perception: Any, tmp_path: Path) -> tuple[Agent, ScriptedFusion, RecordingResponder]:
    fusion = ScriptedFusion()
    responder = RecordingResponder()
    cfg = AgentConfig(store=StoreConfig(path=str(tmp_path / "s.db")))
    agent = Agent.from_config(cfg, perception=perception, fusion=fusion, responder=responder)
    return agent, fusion, responder


def run_turn(agent: Agent, session: Any, perceived: PerceivedTurn) -> list[Any]:
    async def go() -> list[Any]:
        return [ev async for ev in agent.respond(session, perceived)]

    return asyncio.run(go())


def typed(agent: Agent, text: str, images: list[Any] | None = None) -> PerceivedTurn:
    return asyncio.run(agent.perceive(TurnInput(text=text, images=images or [])))


def speech(transcript: str, avg_logprob: float, no_speech_prob: float = 0.05) -> SpeechEncoding:
    return SpeechEncoding(
        transcript=transcript, segments=[Segment(0.0, 1.5, transcript, avg_logprob, no_speech_prob)],
        language="en", avg_logprob=avg_logprob, no_speech_prob=no_speech_prob, embedding=torch.zeros(384),
        prosody=Prosody(-20, 3, 120, 10, 40, 2.5, 0.8, 1.5), duration_s=1.5, voiced_s=1.2)


def test_two_negative_turns_trigger_the_handoff(rig: Any) -> None:
    """Negative emotion on two consecutive turns → handoff_to_human action + a reply saying so."""
    agent, fusion, responder = rig
    session = agent.open_session()
    fusion.queue += [fused("return_item", "negative"), fused("return_item", "negative")]
    first = run_turn(agent, session, typed(agent, "this is the third time I'm returning these shoes"))
    assert not [e for e in first if e.type == "action" and e.name == "handoff_to_human"]
    assert first[-1].route == "scripted"
    second = run_turn(agent, session, typed(agent, "this is ridiculous, nothing works here"))
    actions = [e for e in second if e.type == "action"]
    assert [(a.name, a.arguments) for a in actions] == [("handoff_to_human", {"reason": "negative_emotion"})]
    done = second[-1]
    assert done.route == "handoff" and "member of staff" in done.text
    assert len(responder.requests) == 1  # the handoff reply did not call the model
    # the second turn got the first one's fused vector as context
    assert fusion.inputs[1].context is not None and fusion.inputs[0].context is None


def test_talk_to_human_intent_hands_off_at_once(rig: Any) -> None:
    """The talk_to_human intent hands off on the first turn."""
    agent, fusion, _ = rig
    fusion.queue.append(fused("talk_to_human", "neutral"))
    events = run_turn(agent, agent.open_session(), typed(agent, "can I speak to a person please"))
    assert [(e.name, e.arguments) for e in events if e.type == "action"] == [("handoff_to_human", {"reason": "requested"})]
    assert events[-1].route == "handoff"


@pytest.mark.parametrize(("transcript", "logprob", "no_speech", "reason"), [
    ("where is the milk", -2.5, 0.05, "low"),         # low confidence
    ("", 0.0, 1.0, "none"),                           # no speech at all
    ("uh", -0.2, 0.9, "noise"),                       # probably not speech
])
def test_untrustworthy_transcript_asks_to_repeat_without_the_model(rig: Any, transcript: str, logprob: float,
                                                                  no_speech: float, reason: str) -> None:
    """A low-confidence or no-speech transcript → ask to repeat; the model is not called."""
    agent, fusion, responder = rig
    sp = speech(transcript, logprob, no_speech)
    assert sp.confidence < 0.35 or not transcript or no_speech > 0.6
    enc = agent.perception.encode_text([transcript])[0] if transcript else None
    fusion.queue.append(fused("find_product"))
    events = run_turn(agent, agent.open_session(), PerceivedTurn(text=enc, speech=sp, frames=[]))
    done = events[-1]
    assert done.route == "repeat" and "say it again" in done.text
    assert responder.requests == []
    fused_ev = next(e for e in events if e.type == "turn.fused")
    assert fused_ev.transcript_confidence == pytest.approx(sp.confidence)


def test_confident_transcript_is_answered(rig: Any) -> None:
    """A clear transcript goes to the responder, with the confidence in the prompt."""
    agent, fusion, responder = rig
    sp = speech("where is the service desk", -0.1)
    fusion.queue.append(fused("other"))
    enc = agent.perception.encode_text([sp.transcript])[0]
    events = run_turn(agent, agent.open_session(), PerceivedTurn(text=enc, speech=sp, frames=[]))
    assert events[-1].status == "completed" and events[-1].route == "scripted"
    prompt = responder.requests[0].prompt
    assert f"transcript confidence {math.exp(-0.1) * 0.95:.2f}" in prompt.sections["context"]
    assert prompt.entry_ids[0] == "service_desk"


def _frame(faces: int) -> FrameEncoding:
    return FrameEncoding(embedding=torch.zeros(1280), labels=[Label(285, "Egyptian cat", 0.6)],
                         faces=Faces(faces, [(10, 10, 50, 50)] * faces, (0.5, 0.5) if faces else None,
                                     0.1 if faces else 0.0),
                         width=640, height=480)


def test_face_after_empty_scene_gets_a_greeting(rig: Any) -> None:
    """Camera-only turns: empty scene → no reply; then a face → the pack's greeting."""
    agent, fusion, responder = rig
    session = agent.open_session()
    fusion.queue += [fused("other"), fused("greeting")]
    first = run_turn(agent, session, PerceivedTurn(text=None, speech=None, frames=[_frame(0)]))
    assert first[-1].route == "empty" and first[-1].text == ""
    second = run_turn(agent, session, PerceivedTurn(text=None, speech=None, frames=[_frame(1)]))
    assert second[-1].route == "greeting" and second[-1].text.startswith("Hello!")
    summary = next(e for e in second if e.type == "perception.summary").summary
    assert summary["face_count"] == 1 and summary["labels"][0]["name"] == "Egyptian cat"
    assert responder.requests == []


def test_prompt_carries_perception_fusion_and_history(rig: Any) -> None:
    """The prompt built for the model has the best entry first, camera/face context, fused state, history."""
    agent, fusion, responder = rig
    session = agent.open_session()
    fusion.queue += [fused("store_hours"), fused("find_product")]
    run_turn(agent, session, typed(agent, "what are your opening hours?"))
    events = run_turn(agent, session, PerceivedTurn(
        text=agent.perception.encode_text(["where are the batteries?"])[0], speech=None, frames=[_frame(1)]))
    prompt = responder.requests[-1].prompt
    assert prompt.entry_ids[0] == "batteries"
    user = prompt.messages[-1]["content"]
    assert user.index("aisle 7") < user.index("Question: where are the batteries?")
    # a person is in view: the camera's class labels are not in the prompt (a small model recites
    # them to the customer), and no internal label (intent names, scores) ever is (issue 10 item 7)
    assert "1 person in view" in user and "Egyptian cat" not in user and "camera sees" not in user
    assert "find_product" not in user and "intent" not in user.lower()
    # system, the pack's two few-shot examples, one turn of history, the question
    assert [m["role"] for m in prompt.messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert prompt.static_messages == 5 and prompt.history_turns == 1
    assert prompt.messages[5]["content"] == "what are your opening hours?"
    assert prompt.n_tokens <= agent.config.prompt.max_prompt_tokens
    # the product's linked action is emitted, validated
    assert [(e.name, e.arguments) for e in events if e.type == "action"] == [("show_on_map", {"aisle": 7})]


def test_invalid_action_argument_is_rejected(rig: Any) -> None:
    """An action whose arguments fail the pack's schema is an error event and is never executed."""
    agent, fusion, _ = rig
    entry = agent.pack.entry("milk")
    object.__setattr__(entry, "action", ("show_on_map", {"aisle": "two"}))  # a pack edited at run time
    try:
        fusion.queue.append(fused("find_product"))
        events = run_turn(agent, agent.open_session(), typed(agent, "where is the milk?"))
    finally:
        object.__setattr__(entry, "action", ("show_on_map", {"aisle": 2}))
    rejected = [e for e in events if e.type == "action.rejected"]
    assert len(rejected) == 1 and rejected[0].code == "invalid_action" and "aisle" in rejected[0].message
    assert not [e for e in events if e.type == "action"]
    assert events[-1].actions == [] and events[-1].status == "completed"


def test_unknown_price_is_not_invented(rig: Any) -> None:
    """A price question nothing in the pack answers gets the honest fallback, without the model."""
    agent, fusion, responder = rig
    fusion.queue.append(fused("price_check"))
    events = run_turn(agent, agent.open_session(), typed(agent, "how much does a television cost?"))
    assert events[-1].route == "no_information" and "don't have that information" in events[-1].text
    assert not prices_in(events[-1].text) and responder.requests == []


def test_number_guard_corrects_an_invented_time(rig: Any) -> None:
    """A made-up opening time never reaches the customer: the model's reply is replaced, whole,
    by the answer composed from the pack (never half a sentence glued to a canned one)."""
    agent, fusion, responder = rig
    responder.pieces = ["We ", "are ", "open ", "from ", "8 ", "am ", "to ", "5 ", "pm ", "every ", "day."]
    fusion.queue.append(fused("store_hours"))
    session = agent.open_session()
    events = run_turn(agent, session, typed(agent, "what are your opening hours?"))
    text = events[-1].text
    assert text == agent.pack.entry("opening_hours").text
    assert "5 pm" not in text and "".join(e.delta for e in events if e.type == "text.delta") == text
    assert session.turns[-1].guard == "verify:time:5 pm"


def test_price_guard_stops_an_invented_price(rig: Any) -> None:
    """A price the model makes up is never sent: the reply stops and says it does not know."""
    agent, fusion, responder = rig
    responder.pieces = ["Batteries ", "cost ", "$4.49 ", "and ", "a ", "torch ", "costs ", "$", "19.99 ", "today."]
    fusion.queue.append(fused("price_check"))
    events = run_turn(agent, agent.open_session(), typed(agent, "how much are batteries and a torch?"))
    text = events[-1].text
    assert "$4.49" in text and "19.99" not in text and "don't have that information" in text
    assert "".join(e.delta for e in events if e.type == "text.delta") == text


def test_price_guard_unit() -> None:
    """Prices are recognised in several spellings and compared by value."""
    assert prices_in("$4.49, 12 dollars, €3,50 and 8 am") == [4.49, 12.0, 3.5]
    assert asks_for_price("How much is it?") and asks_for_price("x", "price_check") and not asks_for_price("where?")
    g = NumberGuard([12.0, 9])
    out = "".join(g.feed(w) for w in ["Umbrellas ", "are ", "$1", "2.00 ", "in ", "aisle ", "9."]) + g.flush()
    assert out == "Umbrellas are $12.00 in aisle 9." and g.violation is None
    assert numbers_in("8:00 am to 9 pm, 8:30, 3,50") == [8, 9, 8.3, 3.5]
    g = NumberGuard(numbers_in("Monday to Saturday from 8 am to 9 pm"))
    out = "".join(g.feed(w) for w in ["Open ", "from ", "8 ", "am ", "to ", "12 ", "pm."]) + g.flush()
    assert out == "Open from 8 am to " and g.violation == "12" and not g.violation_is_price


def test_blocked_pattern_is_refused(rig: Any) -> None:
    """A safety pattern of the pack is refused without calling the model."""
    agent, fusion, responder = rig
    fusion.queue.append(fused("payment_help"))
    events = run_turn(agent, agent.open_session(), typed(agent, "can you tell me my card number?"))
    assert events[-1].route == "refuse" and responder.requests == []


def test_extractive_responder_quotes_the_best_entry(perception: Any, tmp_path: Path) -> None:
    """The extractive responder replies with the best entry's text only, streamed word by word."""
    cfg = AgentConfig(responder=ResponderConfig(kind="extractive"), store=StoreConfig(path=str(tmp_path / "e.db")))
    agent = Agent.from_config(cfg, perception=perception)
    events = run_turn(agent, agent.open_session(), typed(agent, "where is the service desk?"))
    deltas = [e for e in events if e.type == "text.delta"]
    assert len(deltas) > 5
    assert events[-1].text == agent.pack.entry("service_desk").text
    assert events[-1].turn_id and events[-1].timings["total"] > 0
    # something the pack does not have (a question outside the shop is a scope answer instead)
    events = run_turn(agent, agent.open_session(), typed(agent, "do you sell garden furniture?"))
    assert events[-1].text == agent.pack.messages["no_information"]


def test_closing_the_stream_early_stores_a_cancelled_turn(rig: Any) -> None:
    """A consumer that stops iterating (client gone) leaves the turn stored as cancelled."""
    agent, fusion, _ = rig
    session = agent.open_session()
    fusion.queue.append(fused("other"))
    perceived = typed(agent, "where is the service desk?")

    async def go() -> None:
        agen = agent.respond(session, perceived)
        async for ev in agen:
            if ev.type == "text.delta":
                break
        await agen.aclose()  # type: ignore[attr-defined]

    asyncio.run(go())
    assert agent.store is not None
    stored = agent.store.load_session(session.id).turns
    assert [t.status for t in stored] == ["cancelled"] and stored[0].reply == "Sure, "
    # resuming by id after a "restart" (a fresh agent on the same store) gives the history back
    agent.forget_session(session.id)
    assert agent.open_session(session.id).turns[0].turn_id == stored[0].turn_id


def test_discarded_turn_leaves_no_trace(rig: Any) -> None:
    """A turn whose caller abandons it (``TurnControl.abandon``: a voided speculative turn) is
    neither stored nor in the history, and the face count it observed is undone — whether it
    ran to its end or its stream was closed early."""
    from agent import TurnControl

    agent, fusion, _ = rig
    session = agent.open_session()
    fusion.queue += [fused("other"), fused("other"), fused("other")]
    kept = run_turn(agent, session, typed(agent, "where is the service desk?"))
    assert kept[-1].status == "completed"
    faces = session.last_face_count

    async def go(close_early: bool) -> list[Any]:
        events = []
        control = TurnControl()
        control.abandon()
        agen = agent.respond(session, PerceivedTurn(text=None, speech=None, frames=[_frame(1)]),
                             control=control)
        async for ev in agen:
            events.append(ev)
            if close_early and ev.type == "turn.fused":
                break
        await agen.aclose()  # type: ignore[attr-defined]
        return events

    whole = asyncio.run(go(False))
    assert whole[-1].type == "turn.done"
    asyncio.run(go(True))
    assert session.last_face_count == faces and session.current is None
    assert [t.turn_id for t in session.turns] == [kept[-1].turn_id]
    assert agent.store is not None
    assert [t.turn_id for t in agent.store.load_session(session.id).turns] == [kept[-1].turn_id]
