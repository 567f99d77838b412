"""The dialogue manager (issue 10): acts from the pack, slot-selected facts, follow-ups in a session
and after a resume, unknown things, the verifier, hostile turns, no internal labels in replies.

The understanding / planning / verifying units run on the demo pack alone; the end-to-end tests
use the real text encoder, a real SQLite store and the real Agent."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import Agent, AgentConfig, PackError, StoreConfig, TurnInput, load_pack
from agent.config import DEFAULT_PACK_DIR
from agent.dialogue import DialogueManager, DialogueState, Plan
from agent.responders import CancelToken, ResponderRequest
from agent.verify import Verifier, split_sentences

SATURDAY = dt.date(2026, 12, 5)


@pytest.fixture(scope="module")
def dm() -> DialogueManager:
    return DialogueManager(load_pack(), clock=lambda: SATURDAY)


def plan(dm: DialogueManager, *turns: str) -> list[Plan]:
    state = DialogueState()
    out = []
    for t in turns:
        p = dm.plan(t, state)
        state.last_reply = p.text
        out.append(p)
    return out


# ---- conversation acts ---------------------------------------------------------------------

@pytest.mark.parametrize(("said", "route", "message"), [
    ("hello there", "greeting", "greeting"),
    ("good morning, can you help me?", "greeting", "greeting"),
    ("thanks a lot", "thanks", "thanks"),
    ("ok, bye then", "goodbye", "goodbye"),
    ("ok bye now", "goodbye", "goodbye"),                   # "now" is not a question about today's hours
    ("thanks, see you tomorrow", "goodbye", "goodbye"),
    ("will it snow this weekend?", "off_topic", "off_topic"),   # a day with the weather is still off topic
    ("what's the weather going to be like tomorrow?", "off_topic", "off_topic"),
    ("tell me a joke", "off_topic", "off_topic"),
    ("what painkillers should I take for a headache?", "refuse", "refusal"),
    ("can I sue you if the milk is off?", "refuse", "refusal"),
    ("my card number is 4111 1111 1111 1111", "refuse", "refusal"),
    ("uhh mmm", "repeat", "repeat_request"),
    ("I want to speak to a manager", "handoff", "handoff"),
    ("this kiosk is useless", "deescalate", "deescalate"),
])
def test_conversation_acts_come_from_the_pack(dm: DialogueManager, said: str, route: str, message: str) -> None:
    """Each act is answered without a model, with the pack's own message."""
    p = plan(dm, said)[0]
    assert p.route == route and p.text == dm.pack.messages[message]


def test_repeat_request_repeats_the_last_reply(dm: DialogueManager) -> None:
    first, again = plan(dm, "where is the service desk?", "sorry, could you repeat that?")
    assert again.route == "repeat_last" and again.text == first.text


def test_rude_then_abusive_hands_off(dm: DialogueManager) -> None:
    """A rude turn is de-escalated (apology + staff offered); the next hostile one hands off."""
    rude, abusive, after = plan(dm, "you stupid machine", "you are a fucking idiot", "where is the milk?")
    assert rude.route == "deescalate" and "sorry" in rude.text.lower() and "staff" in rude.text
    assert not rude.actions
    assert abusive.route == "handoff" and abusive.actions == [("handoff_to_human", {"reason": "negative_emotion"})]
    assert after.route == "answer" and "aisle 2" in after.text   # the count starts again after a handoff


# ---- facts selected by slots ---------------------------------------------------------------

@pytest.mark.parametrize(("said", "must", "must_not"), [
    ("What time do you close on Saturday?", ["On Saturday", "9 pm"], ["8 am", "10 am", "6 pm", "4 pm"]),
    ("when do you open on sunday", ["10 am"], ["6 pm", "8 am", "9 pm"]),
    ("what time do you close today?", ["Saturday", "9 pm"], ["4 pm", "holiday"]),
    ("are you open tomorrow?", ["Sunday", "10 am", "6 pm"], ["8 am"]),
    ("are you open on Christmas?", ["closed", "Christmas Day"], ["10 am"]),
    ("opening hours on bank holidays?", ["10 am", "4 pm"], ["9 pm"]),
    ("Do you accept cheques?", ["No", "cheques"], ["Yes"]),
    ("can I pay cash at the self-checkout?", ["No", "cash"], ["Yes"]),
    ("do you take contactless?", ["Yes", "contactless"], ["No,"]),
    ("How much is a folding umbrella?", ["$12.00"], ["aisle", "No"]),
    ("where are the batteries", ["aisle 7"], ["$"]),
    ("where is the milk and how much is it?", ["aisle 2", "$1.29"], ["aisle 7"]),
    ("where are the batteries and the chargers?", ["aisle 7", "USB-C", "AA batteries"], ["$"]),
    ("how much are the bread and the coffee", ["$3.50", "$5.99"], ["aisle"]),
    ("where are the restrooms", ["back of the store", "aisle 12"], []),
    ("can I return this without a receipt?", ["store credit"], ["original payment method"]),
    ("wher is the cofee", ["aisle 4"], []),                      # typos
    ("how much are the batter ease", ["$4.49"], []),             # a word heard as two
])
def test_slots_select_the_fields(dm: DialogueManager, said: str, must: list[str], must_not: list[str]) -> None:
    p = plan(dm, said)[0]
    assert p.route == "answer", p
    for m in must:
        assert m in p.text, (m, p.text)
    for m in must_not:
        assert m not in p.text, (m, p.text)


def test_where_shows_the_aisle_on_the_map(dm: DialogueManager) -> None:
    assert plan(dm, "which aisle is the coffee in?")[0].actions == [("show_on_map", {"aisle": 4})]


@pytest.mark.parametrize("said", ["do you sell lawnmowers?", "where are the bananas?", "do you have oat milk",
                                  "where is the toilet paper", "how much does a television cost?",
                                  "where is the cash machine", "do you have lightning cables for an iphone?"])
def test_unknown_things_get_no_information_not_the_nearest_entry(dm: DialogueManager, said: str) -> None:
    p = plan(dm, said)[0]
    assert p.route == "no_information" and p.text == dm.pack.messages["no_information"]
    assert not p.entries and not p.actions


def test_follow_ups_in_one_session(dm: DialogueManager) -> None:
    turns = plan(dm, "Where is the coffee?", "How much is it?", "and the chargers?", "which aisle?",
                 "What time do you close on Saturday?", "what about Sunday?")
    assert "aisle 4" in turns[0].text
    assert "$5.99" in turns[1].text and "aisle" not in turns[1].text
    assert "$14.99" in turns[2].text                       # the price slot carried to a new entity
    assert "aisle 7" in turns[3].text
    assert "9 pm" in turns[4].text
    assert "Sunday" in turns[5].text and "6 pm" in turns[5].text and "10 am" not in turns[5].text


def test_state_round_trips_as_json(dm: DialogueManager) -> None:
    state = DialogueState()
    dm.plan("where is the coffee?", state)
    again = DialogueState.from_json(state.to_json())
    assert dm.plan("how much is it?", again).text == "Ground coffee (250 g) costs $5.99."


# ---- the verifier --------------------------------------------------------------------------

def verifier(dm: DialogueManager, question: str) -> tuple[Plan, Verifier]:
    p = plan(dm, question)[0]
    return p, Verifier(dm.pack, dm.understander, p, question=question)


@pytest.mark.parametrize(("question", "reply", "reason"), [
    ("What time do you close on Saturday?", "We close on Saturday from 10 am to 4 pm.", "time"),
    ("What time do you close on Saturday?", "On Saturday we close at 6 pm.", "time_of_day"),   # Sunday's time
    ("What time do you open on Saturday?", "On Saturday we open at 9 pm.", "time_of_day"),      # swapped
    ("what are your opening hours?", "We are open Monday to Friday from 10 am to 6 pm.", "time_of_day"),
    ("where is the milk?", "The milk is in aisle 7.", "aisle"),
    ("where is the milk and how much is it?", "Milk is in aisle 2 and costs $1.39.", "price"),
    ("where are the batteries and the chargers?", "AA batteries are in aisle 9.", "aisle"),
    ("Do you accept cheques?", "We accept cheques.", "fact:cheques"),
    ("Do you accept cheques?", "Yes, we accept cheques.", "yes_no"),
    ("can I return something without a receipt?", "No, we cannot return something without a receipt.", "yes_no"),
    ("how can I pay?", "We do not take cash or credit cards.", "fact:"),
    ("where is the milk?", "Milk is in aisle 2, next to the batteries.", "unselected_product"),
    ("where is the milk?", "Detected intent: find_product (0.91).", "internal_label"),
    ("where is the milk?", "You're stupid, milk is in aisle 2.", "insult"),
    # a plain-text policy denied ("refunds go back to the original payment method")
    ("can I get a refund?", "We don't offer refunds.", "negated:returns_policy"),
    ("what is your returns policy?", "Sorry, we do not accept returns.", "negated:returns_policy"),
    ("where are the batteries?", "We don't sell batteries.", "negated:batteries"),
    ("is there parking?", "There is no parking for customers.", "negated:parking"),
    # the customer's slip read back as if it were a product or a way to pay
    ("can I pay with apple pie", "Yes, you can pay with apple pie.", "repeats_slip"),
])
def test_verifier_rejects_facts_not_selected(dm: DialogueManager, question: str, reply: str, reason: str) -> None:
    p, v = verifier(dm, question)
    assert v.check(p.text) is None          # the composed answer itself passes
    got = v.check(reply)
    assert got is not None and got.startswith(reason), got


@pytest.mark.parametrize(("question", "reply"), [
    ("What time do you close on Saturday?", "We're open until 9 pm on Saturdays."),
    ("What time do you close on Saturday?", "On Saturday we close at 21:00."),
    ("where is the milk and how much is it?", "You'll find whole milk in aisle 2, in the fridges; it costs $1.29."),
    ("Do you accept cheques?", "Sorry, cheques are not accepted here."),
    ("can I pay cash at the self-checkout?", "No, the self-checkouts only take card or phone payments."),
    ("where are the chargers?", "USB-C chargers are in aisle 7, by the batteries."),
    # negative restatements the pack's own words allow ("store credit only")
    ("can I return something without a receipt?", "Without a receipt we can't give a refund, only store credit."),
    ("can I return something without a receipt?", "Refunds are not possible without a receipt."),
])
def test_verifier_accepts_a_correct_paraphrase(dm: DialogueManager, question: str, reply: str) -> None:
    _, v = verifier(dm, question)
    assert v.check(reply) is None


def test_verifier_knows_what_an_answer_leaves_out(dm: DialogueManager) -> None:
    _, v = verifier(dm, "where is the milk and how much is it?")
    assert v.missing("Milk is in aisle 2.") == ["$1.29"]
    assert v.missing("Milk is in aisle 2 and costs $1.29.") == []


def test_sentences_are_cut_at_their_ends_only() -> None:
    done, rest = split_sentences("Milk costs $1.29. It is in aisle 2! Open at 8 a.m. daily. And")
    assert done == ["Milk costs $1.29. ", "It is in aisle 2! ", "Open at 8 a.m. daily. "] and rest == "And"


# ---- the pack format -----------------------------------------------------------------------

def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "pack"
    shutil.copytree(DEFAULT_PACK_DIR, dst)
    return dst


@pytest.mark.parametrize(("file", "edit", "field"), [
    ("knowledge.yaml", lambda d: d["entries"][0]["hours"]["monday"].update(open="eight"), "entries[0].hours.monday.open"),
    ("knowledge.yaml", lambda d: d["entries"][0]["hours"].update(funday={"open": "8 am", "close": "9 pm"}),
     "entries[0].hours.funday"),
    ("knowledge.yaml", lambda d: d["entries"][5]["facts"][0].pop("value"), "entries[5].facts[0].value"),
    ("knowledge.yaml", lambda d: d["entries"][4].update(supersedes=["nothing_here"]), "entries[4].supersedes[0]"),
    ("knowledge.yaml", lambda d: d["entries"][1]["holidays"]["closed"][0].update(date="25-12"),
     "entries[1].holidays.closed[0].date"),
    ("pack.yaml", lambda d: d["templates"].pop("where"), "templates.where"),
    ("pack.yaml", lambda d: d["messages"].pop("off_topic"), "messages.off_topic"),
])
def test_structured_fields_are_validated(tmp_path: Path, file: str, edit: Any, field: str) -> None:
    root = _copy(tmp_path)
    data = yaml.safe_load((root / file).read_text())
    edit(data)
    (root / file).write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PackError) as exc:
        load_pack(root)
    assert exc.value.field == field and str(exc.value).startswith(f"{file}: {field}"), str(exc.value)


def test_demo_pack_keeps_its_facts_and_gains_fields() -> None:
    pack = load_pack()
    assert pack.entry("opening_hours").text == \
        "We are open Monday to Saturday from 8 am to 9 pm, and Sunday from 10 am to 6 pm."
    assert pack.entry("opening_hours").hours["saturday"] == ("8 am", "9 pm")
    assert {f.id: f.value for f in pack.entry("payment_methods").facts}["cheques"] is False
    assert {f.id: f.value for f in pack.entry("self_checkout").facts}["cash"] is False
    assert "restroom" in pack.entry("toilets").aliases and "usb-c charger" in pack.entry("phone_charger").aliases


# ---- through the agent: store, resume, actions, streaming, verification --------------------

def ask(agent: Agent, session: Any, text: str) -> list[Any]:
    async def go() -> list[Any]:
        perceived = await agent.perceive(TurnInput(text=text))
        return [ev async for ev in agent.respond(session, perceived)]

    return asyncio.run(go())


def make_agent(perception: Any, db: Path, responder: Any = None) -> Agent:
    cfg = AgentConfig(store=StoreConfig(path=str(db)), today=SATURDAY.isoformat())
    return Agent.from_config(cfg, perception=perception, responder=responder)


def test_follow_ups_survive_a_resume_and_a_restart(perception: Any, tmp_path: Path) -> None:
    """The dialogue state is stored with the session: a new Agent on the same database (a server
    restart) resumes the session and "how much is it?" still means the coffee."""
    db = tmp_path / "s.db"
    agent = make_agent(perception, db)
    session = agent.open_session()
    first = ask(agent, session, "where is the coffee?")
    assert first[-1].route == "grounded" and "aisle 4" in first[-1].text
    assert [(e.name, e.arguments) for e in first if e.type == "action"] == [("show_on_map", {"aisle": 4})]
    sid = session.id
    agent.close()

    restarted = make_agent(perception, db)
    resumed = restarted.open_session(sid)
    assert resumed.dialogue_state["focus"] == "coffee"
    done = ask(restarted, resumed, "how much is it?")[-1]
    assert done.text == "Ground coffee (250 g) costs $5.99."
    done = ask(restarted, resumed, "and the batteries?")[-1]
    assert "$4.49" in done.text
    stored = restarted.store.load_session(sid)   # type: ignore[union-attr]
    assert stored.turns[-1].dialogue is not None and stored.turns[-1].dialogue["entries"] == ["batteries"]
    restarted.close()


def test_rude_then_abusive_hands_off_through_the_agent(perception: Any, tmp_path: Path) -> None:
    agent = make_agent(perception, tmp_path / "h.db")
    session = agent.open_session()
    rude = ask(agent, session, "This kiosk is useless, you stupid machine.")
    assert rude[-1].route == "deescalate" and not [e for e in rude if e.type == "action"]
    abusive = ask(agent, session, "you are a complete idiot")
    assert abusive[-1].route == "handoff"
    assert [(e.name, e.arguments) for e in abusive if e.type == "action"] == \
        [("handoff_to_human", {"reason": "negative_emotion"})]


QUESTIONS = ["hello", "where is the milk?", "how much is it?", "do you take cheques?", "what time do you close today?",
             "can I return this without a receipt?", "where are the toilets?", "is there parking?",
             "tell me a joke", "you are useless", "do you sell lawnmowers?", "thanks, bye"]


def test_no_reply_contains_an_internal_label(perception: Any, tmp_path: Path) -> None:
    """Intent names, action names and prompt sections never reach a customer."""
    agent = make_agent(perception, tmp_path / "l.db")
    session = agent.open_session()
    # (intent names that are plain words, "greeting" or "goodbye", may of course be said)
    labels = [*(i for i in agent.pack.intents if "_" in i), *agent.pack.actions, "Detected intent", "Facts:",
              "Question:", "Context:", "camera sees", "intent"]
    for q in QUESTIONS:
        events = ask(agent, session, q)
        text = events[-1].text
        assert text and "".join(e.delta for e in events if e.type == "text.delta") == text
        for label in labels:
            assert label.lower() not in text.lower(), (q, text)


class ScriptedModel:
    """A 'model' that writes a fixed reply, piece by piece (the verifier is what is tested)."""

    name = "scripted"

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.requests: list[ResponderRequest] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def warmup(self) -> None:
        pass

    async def stream(self, request: ResponderRequest, cancel: CancelToken) -> AsyncIterator[str]:
        self.requests.append(request)
        for piece in re.findall(r"\S+\s*", self.reply):
            if cancel.is_set():
                return
            yield piece


@pytest.mark.parametrize(("reply", "expect", "guard"), [
    # swapped hours: the whole reply is the composed answer, nothing of the model's
    ("On Saturday we close at 8 am. Have a nice day!", "On Saturday we close at 9 pm.", "verify:time_of_day"),
    # a correct paraphrase goes through as written
    ("We're open until 9 pm on Saturdays. See you then!", "We're open until 9 pm on Saturdays. See you then!", None),
    # a reply that never states the closing time: the composed answer
    ("We look forward to seeing you on Saturday!", "On Saturday we close at 9 pm.", "verify:missing"),
    # a bad second sentence after a good, complete first one: the reply ends after the first
    ("On Saturday we close at 9 pm. On Sunday we close at 11 pm.", "On Saturday we close at 9 pm.", "verify:time"),
])
def test_model_replies_are_verified_sentence_by_sentence(perception: Any, tmp_path: Path, reply: str,
                                                         expect: str, guard: str | None) -> None:
    model = ScriptedModel(reply)
    agent = make_agent(perception, tmp_path / "v.db", responder=model)
    session = agent.open_session()
    events = ask(agent, session, "What time do you close on Saturday?")
    done = events[-1]
    assert done.text.strip() == expect
    assert "".join(e.delta for e in events if e.type == "text.delta") == done.text   # never a splice
    stored_guard = session.turns[-1].guard
    assert stored_guard is None if guard is None else (stored_guard or "").startswith(guard), stored_guard
    # the model saw only the selected facts, composed
    assert model.requests[0].prompt.sections["facts"] == "On Saturday we close at 9 pm."
