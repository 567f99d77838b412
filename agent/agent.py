"""The agent: one turn in, an async stream of reply events out (no networking here).

>>> agent = Agent.from_config(AgentConfig(), perception=p, fusion=fp)          # doctest: +SKIP
>>> session = agent.open_session()
>>> perceived = await agent.perceive(TurnInput(text="where is the service desk?"))
>>> async for event in agent.respond(session, perceived):
...     print(event)

A turn: perception summary → fusion (previous turn's fused vector as context) → policy →
dialogue manager (acts answered from the pack; questions → the selected facts and a composed
answer) → responder (``grounded``: the composed answer; a model: phrases the selected facts,
streamed sentence by sentence through the verifier) → actions → one SQLite transaction →
:class:`~agent.events.TurnDoneEvent`. Every blocking call (encoders, fusion,
model, SQLite) runs in a worker thread; the event loop only awaits.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from perception.errors import MMAgentError
from perception.types import FrameEncoding, SpeechEncoding, TextEncoding

from .config import AgentConfig
from .control import TurnControl, TurnFate, tool_result_decision, with_instructions
from .dialogue import DialogueManager, DialogueState, Plan
from .errors import ActionError
from .events import (
    ActionEvent,
    ActionRejectedEvent,
    AgentErrorEvent,
    AgentEvent,
    PerceptionSummaryEvent,
    TextDeltaEvent,
    TurnDoneEvent,
    TurnFusedEvent,
)
from .guard import NumberGuard, asks_for_price, numbers_in, prices_in
from .pack import KnowledgePack, load_pack
from .policy import Decision, Policy
from .prompt import Prompt, build_prompt
from .responders import CancelToken, LocalLLM, Responder, ResponderRequest, ToolCall, build_responder
from .retrieval import Retrieved, Retriever
from .session import Session, TurnRecord, new_turn_id
from .store_api import SessionStoreProtocol, open_store
from .verify import Verifier, split_sentences

log = logging.getLogger(__name__)


@dataclass
class TurnInput:
    """Raw inputs of one turn. ``audio``: (samples, sample_rate) with samples a 1-D float/int16
    array or PCM16 bytes; ``images``: JPEG/PNG bytes, PIL images or (H, W, 3) RGB arrays."""

    text: str | None = None
    audio: tuple[Any, int] | None = None
    images: list[Any] = field(default_factory=list)


@dataclass
class PerceivedTurn:
    """Encoded inputs of one turn. ``text`` encodes the turn's text (typed text, else the
    transcript; both joined with a space). ``timings``: milliseconds per encoder.
    ``typed_text`` (optional) tells the policy the text was typed, not only heard;
    ``media`` (optional) is stored with the turn when ``StoreConfig.store_media`` is on."""

    text: TextEncoding | None
    speech: SpeechEncoding | None
    frames: list[FrameEncoding]
    timings: dict[str, float] = field(default_factory=dict)
    typed_text: str | None = None
    media: dict[str, Any] | None = None


def turn_text(typed: str | None, transcript: str | None) -> str:
    """The text modality of a turn (docs/CONTRACTS.md): typed text and transcript joined."""
    return " ".join(p.strip() for p in (typed, transcript) if p and p.strip())


def perception_summary(p: PerceivedTurn) -> dict[str, Any]:
    """JSON-ready summary of what perception found (stored with the turn, shown to clients)."""
    newest = p.frames[-1] if p.frames else None
    return {
        "text": p.text.to_json() if p.text else None,
        "typed_text": p.typed_text,
        "speech": p.speech.to_json() if p.speech else None,
        "frames": [f.to_json() for f in p.frames],
        "labels": ([{"name": lb.name, "score": round(lb.score, 4)} for lb in newest.labels[:3]]
                   if newest else []),
        "face_count": newest.faces.count if newest else 0,
        "faces_present": bool(newest and newest.faces.count),
        "face_rel_size": round(newest.faces.largest_rel_size, 4) if newest else 0.0,
        "timings_ms": {k: round(v, 2) for k, v in p.timings.items()},
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


class Agent:
    """Orchestrates one pack, one responder, one store and the shared encoders and fusion model.

    ``perception`` is a :class:`perception.Perception` (or anything with ``encode_text``,
    ``encode_speech``, ``encode_frames``); ``fusion`` a ``fusion.FusionPredictor`` or None (then
    turns have no fused state: no intent boost, no emotion policy).
    """

    def __init__(self, config: AgentConfig, *, pack: KnowledgePack, perception: Any, fusion: Any | None,
                 responder: Responder, store: SessionStoreProtocol | None, retriever: Retriever) -> None:
        self.config = config
        self.pack = pack
        self.perception = perception
        self.fusion = fusion
        self.responder = responder
        self.store = store
        self.retriever = retriever
        self.policy = Policy(pack, config.policy)
        self.dialogue: DialogueManager | None = None
        if config.dialogue.enabled:
            today = config.today
            clock = (lambda d=_dt.date.fromisoformat(str(today)): d) if today else None
            self.dialogue = DialogueManager(pack, clock=clock,
                                            fallback_min_cosine=config.dialogue.fallback_min_cosine)
        # Sessions in memory, least recently opened first; older ones are reloaded from the store.
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._sessions_lock = threading.Lock()
        self.max_sessions_in_memory = 1000

    @classmethod
    def from_config(cls, config: AgentConfig | None = None, *, perception: Any, fusion: Any | None = None,
                    responder: Responder | None = None, llm: LocalLLM | None = None,
                    store: SessionStoreProtocol | None = None, use_store: bool = True) -> Agent:
        """Load the pack, embed its entries, build the responder and open the store.

        ``llm`` shares an already-loaded local model; ``store`` an open store (else one is
        opened at ``config.store``; ``use_store=False`` keeps sessions in memory only).
        """
        config = (config or AgentConfig()).validate()
        pack = load_pack(config.pack_dir())
        retriever = Retriever(pack, perception.encode_text, config.retrieval)
        if responder is None:
            responder = build_responder(config.responder, llm=llm)
        if store is None and use_store:
            store = open_store(config.store)   # SQLite file, or PostgreSQL for a postgresql:// store.url
        return cls(config, pack=pack, perception=perception, fusion=fusion, responder=responder, store=store,
                   retriever=retriever)

    def warmup(self) -> None:
        """Load the responder's model now and prepare its cache of the static prompt prefix
        (persona + few-shot examples), so the first turn is as fast as the others."""
        self.responder.warmup()
        prime = getattr(self.responder, "prime", None)
        if prime is not None:
            prime(build_prompt(self.pack, "hello", [], config=self.config.prompt,
                               count_tokens=self.responder.count_tokens))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    # -- sessions ---------------------------------------------------------------------------------

    def open_session(self, session_id: str | None = None, *, create_missing: bool = False) -> Session:
        """A new session, or the one with ``session_id`` resumed with its history (from memory or
        the store). Unknown/expired id: :class:`SessionError`, or a new session with that id when
        ``create_missing``. Cheap (one indexed read); call it from a thread if the store is slow."""
        from .errors import SessionError

        # A store shared by several front ends (PostgreSQL) may hold turns another front end wrote
        # since this one last saw the session: resume from the store, never from a stale copy.
        shared = bool(getattr(self.store, "shared", False))
        with self._sessions_lock:
            if session_id and session_id in self._sessions and not shared:
                self._sessions.move_to_end(session_id)
                return self._sessions[session_id]
        if session_id and self.store is not None:
            try:
                session = self.store.load_session(session_id)
            except SessionError:
                if not create_missing:
                    raise
                session = self.store.create_session(session_id, pack=self.pack.name)
        elif session_id and not create_missing:
            raise SessionError(f"unknown session id {session_id!r}")
        elif self.store is not None:
            session = self.store.create_session(session_id, pack=self.pack.name)
        else:
            from .session import new_session_id

            session = Session(session_id or new_session_id())
        with self._sessions_lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.max_sessions_in_memory and self.store is not None:
                self._sessions.popitem(last=False)
        return session

    def forget_session(self, session_id: str) -> None:
        """Drop a session from memory (it stays in the store and can be resumed)."""
        with self._sessions_lock:
            self._sessions.pop(session_id, None)

    # -- perception -------------------------------------------------------------------------------

    async def perceive(self, turn: TurnInput) -> PerceivedTurn:
        """Run the encoders on one turn's inputs in a worker thread."""
        return await asyncio.to_thread(self.perceive_sync, turn)

    def perceive_sync(self, turn: TurnInput) -> PerceivedTurn:
        timings: dict[str, float] = {}
        speech = None
        if turn.audio is not None:
            t0 = time.perf_counter()
            samples, sr = turn.audio
            speech = self.perception.encode_speech(samples, sr)
            timings["speech"] = _ms(time.perf_counter() - t0)
        frames: list[FrameEncoding] = []
        if turn.images:
            t0 = time.perf_counter()
            frames = list(self.perception.encode_frames(list(turn.images)))
            timings["frames"] = _ms(time.perf_counter() - t0)
        text = turn_text(turn.text, speech.transcript if speech else None)
        enc = None
        if text:
            t0 = time.perf_counter()
            enc = self.perception.encode_text([text])[0]
            timings["text"] = _ms(time.perf_counter() - t0)
        media = None
        if self.config.store.store_media:
            media = _media_json(turn)
        return PerceivedTurn(text=enc, speech=speech, frames=frames, timings=timings,
                             typed_text=turn.text.strip() if turn.text and turn.text.strip() else None,
                             media=media)

    # -- one turn ---------------------------------------------------------------------------------

    def _fuse(self, session: Session, p: PerceivedTurn) -> Any:
        from fusion import ModalityInputs

        ctx = session.last_fused_vector()
        inputs = ModalityInputs(
            text=p.text.feature_vector() if p.text else None,
            speech=p.speech.feature_vector() if p.speech else None,
            vision=torch.stack([f.feature_vector() for f in p.frames]) if p.frames else None,
            context=torch.tensor(ctx, dtype=torch.float32) if ctx is not None else None,
        )
        if self.fusion is None or (inputs.text is None and inputs.speech is None and inputs.vision is None):
            return None
        return self.fusion.predict([inputs])[0]

    async def respond(self, session: Session, perceived: PerceivedTurn,
                      cancel: asyncio.Event | threading.Event | None = None, *,
                      max_tokens: int | None = None,
                      control: TurnControl | None = None) -> AsyncIterator[AgentEvent]:
        """Stream the events of one turn (see :mod:`agent.events`); always ends with TurnDoneEvent.

        Setting ``cancel`` stops the reply (a local model within one decoding step); the turn is
        stored as ``cancelled`` with its partial text. Closing the iterator early does the same.
        ``max_tokens`` caps this reply's generated tokens below the responder's own limit.
        ``control`` (:class:`agent.control.TurnControl`): the caller decides whether the turn is
        stored — it is stored only once committed and forgotten (no trace) when abandoned; when
        the turn ends the agent waits for that decision. Without one the turn is committed from
        the start. It also carries the client's extra instructions and device results.
        """
        control = control if control is not None else TurnControl(committed=True)
        token = CancelToken()
        watcher: asyncio.Task[Any] | None = None
        if isinstance(cancel, asyncio.Event):
            async def _watch(ev: asyncio.Event = cancel) -> None:
                await ev.wait()
                token.set()

            watcher = asyncio.create_task(_watch())
        elif isinstance(cancel, threading.Event) and cancel.is_set():
            token.set()

        def cancelled() -> bool:
            if isinstance(cancel, threading.Event) and cancel.is_set():
                token.set()
            return token.is_set()

        t_start = time.perf_counter()
        faces_before = session.last_face_count
        record = session.begin_turn(new_turn_id())
        timings: dict[str, float] = {"perception": round(sum(perceived.timings.values()), 2)}
        record.typed_text = perceived.typed_text
        record.transcript = perceived.speech.transcript if perceived.speech else None
        record.text = perceived.text.text if perceived.text else turn_text(perceived.typed_text, record.transcript)
        record.media = perceived.media
        text_parts: list[str] = []
        status = "completed"
        error: dict[str, str] | None = None
        saved = False
        dialogue_state: DialogueState | None = None   # the state after this turn (applied when kept)

        def finish(now: float) -> TurnRecord:
            timings["total"] = _ms(now - t_start)
            record.status = status
            record.reply = "".join(text_parts)
            record.timings = timings
            record.error = error
            if dialogue_state is not None:
                if record.reply:
                    dialogue_state.last_reply = record.reply
                session.dialogue_state = dialogue_state.to_json()
            session.finish_turn(record)
            return record

        try:
            summary = perception_summary(perceived)
            record.perception = summary
            yield PerceptionSummaryEvent(summary)

            fused = None
            if self.fusion is not None and not cancelled():
                t0 = time.perf_counter()
                fused = await asyncio.to_thread(self._fuse, session, perceived)
                timings["fusion"] = _ms(time.perf_counter() - t0)
            t_fused = time.perf_counter()
            if fused is not None:
                record.fused = {k: v for k, v in fused.to_json().items() if k != "fused"}
                record.fused_vector = fused.fused.detach().float().cpu().tolist()
            yield TurnFusedEvent(fused, perceived.speech.confidence if perceived.speech else None)

            face_count = summary["face_count"] if perceived.frames else None
            prev_faces = session.observe_faces(face_count) if face_count is not None else session.last_face_count
            decision = tool_result_decision(perceived, control) or self.policy.decide(
                text=record.text, typed_text=perceived.typed_text, speech=perceived.speech, fused=fused,
                negative_streak=session.negative_streak(self.config.policy.negative_min_confidence),
                face_count=face_count, previous_face_count=prev_faces)
            plan: Plan | None = None
            # The fused intent asking for staff hands off, unless the words name something the
            # pack answers ("where's customer service?" is not a request for a person) or ask for
            # advice the kiosk refuses ("can my employer fire me?": the refusal says where staff are).
            intent_handoff = decision.route == "handoff" and decision.reason == "requested"
            if (decision.route == "respond" or intent_handoff) and self.dialogue is not None and record.text.strip():
                t0 = time.perf_counter()
                dialogue_state = DialogueState.from_json(session.dialogue_state)
                plan = self.dialogue.plan(record.text, dialogue_state,
                                          retrieve=lambda: [(h.entry, h.cosine) for h in self.retrieve(perceived, fused)])
                timings["dialogue"] = _ms(time.perf_counter() - t0)
                if intent_handoff and plan.route not in ("answer", "refuse"):
                    plan, dialogue_state = None, None    # the policy's handoff stands
                else:
                    record.dialogue = plan.to_json()
                    if plan.route == "answer":
                        decision = Decision("respond")
                    else:   # an act, answered from the pack's messages
                        decision = Decision(plan.route, "dialogue", plan.text, list(plan.actions))
            record.route = decision.route

            actions_done: list[dict[str, Any]] = []
            for name, args in decision.actions:
                yield self._action(record, name, args, actions_done)

            if decision.route == "respond" and plan is not None and not cancelled():
                async for ev in self._respond_with_plan(session, record, timings, token, text_parts, t_fused,
                                                        actions_done, plan, max_tokens, control.instructions):
                    yield ev
                    if cancelled():
                        break
            elif decision.route == "respond" and not cancelled():
                async for ev in self._respond_with_model(session, perceived, fused, record, timings, token,
                                                         text_parts, t_fused, actions_done, max_tokens,
                                                         control.instructions):
                    yield ev
                    if cancelled():
                        break
            elif decision.text and not cancelled():
                for piece in re.findall(r"\S+\s*", decision.text):
                    if cancelled():
                        break
                    if not text_parts:
                        timings["first_delta"] = _ms(time.perf_counter() - t_start)
                    text_parts.append(piece)
                    yield TextDeltaEvent(piece)
                    await asyncio.sleep(0)   # let a cancel request in between words
            if cancelled():
                status = "cancelled"
            record.actions = actions_done
        except MMAgentError as exc:
            status, error = ("cancelled", None) if cancelled() else ("failed", {"code": exc.code, "message": str(exc)})
            if error:
                yield AgentErrorEvent(exc.code, str(exc))
        except (GeneratorExit, asyncio.CancelledError):
            token.set()
            status = "cancelled"
            if not control.keeps:   # never shown (or not to be stored): no trace
                session.abandon_turn(record, faces_before)
                raise
            if control.error:
                status, error = "failed", control.error
            t_save = time.perf_counter()
            rec = finish(t_save)
            self._save_sync(session, rec, dialogue_state is not None)
            saved = True
            raise
        except Exception as exc:  # a bug must not kill the server's session: report, store, go on
            log.exception("turn %s failed", record.turn_id)
            status, error = "failed", {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
            yield AgentErrorEvent("internal_error", error["message"])
        finally:
            if watcher is not None:
                watcher.cancel()
        if not await control.decided():   # never shown (or outside the conversation): forget it
            session.abandon_turn(record, faces_before)
            yield TurnDoneEvent(status=status if control.fate is TurnFate.COMMITTED else "cancelled",  # type: ignore[arg-type]
                                text="".join(text_parts), timings=dict(timings), turn_id=record.turn_id,
                                route=record.route)
            return
        if control.error:   # e.g. the caller's turn timeout
            status, error = "failed", control.error
        if not saved:
            t_save = time.perf_counter()
            rec = finish(t_save)
            if self.store is not None:
                try:
                    await asyncio.to_thread(self.store.save_turn, session.id, rec,
                                            dialogue_state=session.dialogue_state if dialogue_state else None)
                except Exception as exc:  # storage failure: the reply was still given
                    log.exception("cannot store turn %s", rec.turn_id)
                    yield AgentErrorEvent("internal_error", f"cannot store the turn: {exc}")
            timings["store"] = _ms(time.perf_counter() - t_save)
        yield TurnDoneEvent(status=status, text=record.reply, timings=dict(timings), turn_id=record.turn_id,  # type: ignore[arg-type]
                            intent=(record.fused or {}).get("intent"), emotion=(record.fused or {}).get("emotion"),
                            actions=list(record.actions), error=error, route=record.route)

    def _save_sync(self, session: Session, rec: TurnRecord, with_state: bool = False) -> None:
        if self.store is None:
            return
        try:
            self.store.save_turn(session.id, rec, dialogue_state=session.dialogue_state if with_state else None)
        except Exception:
            log.exception("cannot store turn %s", rec.turn_id)

    def _action(self, record: TurnRecord, name: str, arguments: Any,
                done: list[dict[str, Any]], call_id: str = "") -> AgentEvent:
        """Validate one proposed action; the event to emit (ActionEvent or ActionRejectedEvent)."""
        args = arguments
        try:
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError as exc:
                    raise ActionError(f"action {name!r}: arguments are not valid JSON: {exc}") from exc
            self.pack.validate_action(name, args)
        except ActionError as exc:
            record.rejected_actions.append({"name": name, "arguments": arguments, "message": str(exc)})
            return ActionRejectedEvent(name, arguments, exc.code, str(exc))
        call_id = call_id or f"call_{record.turn_id[5:]}_{len(done)}"
        done.append({"name": name, "arguments": args, "call_id": call_id})
        return ActionEvent(name, args, call_id)

    def retrieve(self, perceived: PerceivedTurn, fused: Any) -> list[Retrieved]:
        if perceived.text is None:
            return []
        return self.retriever.search(perceived.text.embedding, intent=fused.intent if fused else None,
                                     intent_confidence=fused.intent_confidence if fused else 0.0)

    def prompt_for(self, session: Session, question: str, hits: Sequence[Retrieved], summary: dict[str, Any],
                   fused: Any, facts: Sequence[str] | None = None) -> Prompt:
        """The prompt this agent would send (used by respond; handy for inspection and tests)."""
        offset, history = session.history_window()
        return build_prompt(self.pack, question, hits, summary=summary, fused=fused, history=history,
                            history_offset=offset, config=self.config.prompt,
                            count_tokens=self.responder.count_tokens, facts=facts)

    async def _respond_with_plan(self, session: Session, record: TurnRecord, timings: dict[str, float],
                                 token: CancelToken, text_parts: list[str], t_fused: float,
                                 actions_done: list[dict[str, Any]], plan: Plan, max_tokens: int | None,
                                 instructions: str | None) -> AsyncIterator[AgentEvent]:
        """A fact answer: the responder phrases the plan's selected facts; what it writes reaches
        the client only sentence by sentence, each verified (agent/verify.py).

        Nothing is sent until the verified sentences state every value the question asked for
        (``plan.required``); from then on each further sentence is sent once verified. A
        sentence that fails before that point replaces the whole reply with the composed answer;
        one that fails later ends the reply after the verified sentences already sent. So a
        reply is never a half sentence glued to a canned one."""
        assert self.dialogue is not None
        for name, args in plan.actions:
            yield self._action(record, name, args, actions_done)
        hits = [Retrieved(e, 1.0, 1.0) for e in plan.entries]
        record.retrieved = [h.to_json() for h in hits]
        question = record.text
        t0 = time.perf_counter()
        prompt = self.prompt_for(session, question, hits, record.perception, None, facts=[plan.text])
        if instructions:
            prompt = with_instructions(prompt, instructions, self.responder.count_tokens)
        timings["prompt"] = _ms(time.perf_counter() - t0)
        timings["prompt_tokens"] = float(prompt.n_tokens)
        record.route = self.responder.name
        request = ResponderRequest(prompt=prompt, question=question, hits=hits, pack=self.pack,
                                   max_tokens=max_tokens, composed=plan.text, selected=True)
        labels = [lb["name"] for lb in (record.perception or {}).get("labels", [])]
        verifier = Verifier(self.pack, self.dialogue.understander, plan, question=question, labels=labels)
        rtoken = CancelToken()
        token.add_callback(rtoken.set)
        t_gen = time.perf_counter()
        pending = ""              # model text not yet cut into sentences
        held: list[str] = []      # verified sentences not sent yet (the asked values not all stated)
        sent: list[str] = []
        failure: str | None = None

        def send(sentence: str) -> Iterator[TextDeltaEvent]:
            """One verified sentence out, word by word (lazily: a reply stopped mid-sentence
            keeps only the words sent)."""
            sent.append(sentence)
            for piece in re.findall(r"\S+\s*", sentence):
                if not text_parts:
                    timings["first_delta"] = _ms(time.perf_counter() - t_fused)
                text_parts.append(piece)
                yield TextDeltaEvent(piece)

        def accept(sentence: str) -> list[str]:
            """Verify one sentence; the sentences that may be sent now."""
            nonlocal failure
            reason = verifier.check(sentence)
            if reason is not None:
                failure = reason
                return []
            held.append(sentence)
            if sent or not verifier.missing("".join(held)):
                out = list(held)
                held.clear()
                return out
            return []

        stream = self.responder.stream(request, rtoken)
        try:
            async for chunk in self._composed_on_error(stream, plan, sent, text_parts, timings, t_fused):
                if isinstance(chunk, TextDeltaEvent):   # the composed answer, the responder having failed
                    yield chunk
                    continue
                if token.is_set():
                    break
                if isinstance(chunk, ToolCall):
                    yield self._action(record, chunk.name, chunk.arguments, actions_done, chunk.call_id)
                    continue
                pending += chunk
                done, pending = split_sentences(pending)
                for sentence in done:
                    for s in accept(sentence):
                        for ev in send(s):
                            yield ev
                            await asyncio.sleep(0)
                    if failure:
                        break
                if failure:
                    rtoken.set()   # stop the model: nothing after a failed sentence is used
                    break
            else:
                # the model's last words: a finished sentence, or an unfinished fragment that is
                # used only when it is the whole reply (a reply cut at max_tokens loses its tail)
                rest = pending.strip()
                if rest and not token.is_set() and (rest[-1] in ".!?" or not (sent or held)):
                    for s in accept(pending):
                        for ev in send(s):
                            yield ev
                            await asyncio.sleep(0)
                if not failure and not sent and not token.is_set():
                    missing = verifier.missing("".join(held))
                    failure = f"missing:{'|'.join(missing)}" if missing or not held else None
        finally:
            rtoken.set()
            try:
                await asyncio.wait_for(_drain(stream), timeout=self.config.drain_timeout_s)
            except (TimeoutError, Exception):
                pass
            await stream.aclose()  # type: ignore[attr-defined]
        if failure and not token.is_set():
            record.guard = f"verify:{failure}"
            if record.dialogue is not None:
                record.dialogue["verify"] = failure
            if not sent:
                # nothing of the model's reply was sent: the composed answer, whole
                for piece in re.findall(r"\S+\s*", plan.text):
                    if token.is_set():
                        break
                    if not text_parts:
                        timings["first_delta"] = _ms(time.perf_counter() - t_fused)
                    text_parts.append(piece)
                    yield TextDeltaEvent(piece)
                    await asyncio.sleep(0)
        timings["generate"] = _ms(time.perf_counter() - t_gen)
        for k in ("prompt_tokens", "cached_prompt_tokens", "generated_tokens", "tokens_per_s", "tokens_after_cancel"):
            if k in request.stats:
                timings[k] = round(request.stats[k], 2)
        if "first_token_s" in request.stats:
            timings["first_token_model"] = _ms(request.stats["first_token_s"])

    @staticmethod
    async def _composed_on_error(stream: AsyncIterator[Any], plan: Plan, sent: list[str], text_parts: list[str],
                                 timings: dict[str, float], t_fused: float) -> AsyncIterator[Any]:
        """The responder's chunks; when it fails (a backend timeout or a dropped connection)
        before a verified sentence was sent, the customer still gets the composed answer, as
        text deltas, before the error ends the turn."""
        try:
            async for chunk in stream:
                yield chunk
        except MMAgentError:
            if not sent and not text_parts:
                for piece in re.findall(r"\S+\s*", plan.text):
                    if not text_parts:
                        timings["first_delta"] = _ms(time.perf_counter() - t_fused)
                    text_parts.append(piece)
                    yield TextDeltaEvent(piece)
            raise

    async def _respond_with_model(self, session: Session, perceived: PerceivedTurn, fused: Any,
                                  record: TurnRecord, timings: dict[str, float], token: CancelToken,
                                  text_parts: list[str], t_fused: float,
                                  actions_done: list[dict[str, Any]],
                                  max_tokens: int | None = None,
                                  instructions: str | None = None) -> AsyncIterator[AgentEvent]:
        t0 = time.perf_counter()
        hits = self.retriever.relevant(self.retrieve(perceived, fused))
        timings["retrieval"] = _ms(time.perf_counter() - t0)
        record.retrieved = [h.to_json() for h in hits]
        question = record.text
        intent = fused.intent if fused is not None and fused.intent_confidence >= \
            self.config.retrieval.intent_min_confidence else None

        # The action linked to the best entry (e.g. show_on_map for a product), when the fused
        # intent agrees with the entry (or there is no fused state).
        if self.config.policy.entry_actions and hits and hits[0].entry.action is not None:
            e = hits[0].entry
            if fused is None or not e.intents or fused.intent in e.intents:
                yield self._action(record, e.action[0], dict(e.action[1]), actions_done)  # type: ignore[index]

        # Prices count only from entries close to the question: "how much is a bicycle?" must not
        # borrow the umbrella's price because both are "how much" questions.
        priced = [h for h in hits if h.cosine >= self.config.retrieval.price_min_score]
        prices = [p for h in priced for p in prices_in(h.entry.text)] + \
            [h.entry.price for h in priced if h.entry.price is not None]
        if self.config.policy.guard_prices and asks_for_price(question, intent) and not prices:
            # Asked for a price that no relevant entry has: say so without asking the model.
            record.route = "no_information"
            for piece in re.findall(r"\S+\s*", self.pack.messages["no_information"]):
                if token.is_set():
                    return
                if not text_parts:
                    timings["first_delta"] = _ms(time.perf_counter() - t_fused)
                text_parts.append(piece)
                yield TextDeltaEvent(piece)
            return
        allowed = prices + [n for h in hits for n in numbers_in(h.entry.text) if n not in prices_in(h.entry.text)
                            or h.cosine >= self.config.retrieval.price_min_score] + numbers_in(question)

        t0 = time.perf_counter()
        prompt = await asyncio.to_thread(self.prompt_for, session, question, hits, record.perception, fused)
        if instructions:
            prompt = with_instructions(prompt, instructions, self.responder.count_tokens)
        timings["prompt"] = _ms(time.perf_counter() - t0)
        timings["prompt_tokens"] = float(prompt.n_tokens)
        record.route = self.responder.name
        request = ResponderRequest(prompt=prompt, question=question, hits=hits, pack=self.pack,
                                   max_tokens=max_tokens)
        guard = NumberGuard(allowed) if self.config.policy.guard_prices else None
        # The responder has its own token: the guard stops the model without cancelling the turn.
        rtoken = CancelToken()
        token.add_callback(rtoken.set)
        t_gen = time.perf_counter()

        def emit_text(s: str) -> TextDeltaEvent | None:
            if not s:
                return None
            if not text_parts:
                timings["first_delta"] = _ms(time.perf_counter() - t_fused)
            text_parts.append(s)
            return TextDeltaEvent(s)

        def correction(g: NumberGuard) -> str:
            # An invented price: we do not know it. Any other invented number: quote the entry.
            record.guard = f"unsupported_number:{g.violation}"
            if g.violation_is_price or not hits:
                fix = self.pack.messages["no_information"]
            else:
                fix = "To be exact: " + hits[0].entry.text
            sep = "" if not text_parts or text_parts[-1].endswith((" ", "\n")) else " "
            return (sep + "— " + fix) if text_parts else fix

        stream = self.responder.stream(request, rtoken)
        try:
            async for chunk in stream:
                if token.is_set():
                    break
                if isinstance(chunk, ToolCall):
                    yield self._action(record, chunk.name, chunk.arguments, actions_done, chunk.call_id)
                    continue
                ev = emit_text(guard.feed(chunk) if guard else chunk)
                if ev:
                    yield ev
                if guard and guard.violation:
                    rtoken.set()  # stop the model: nothing after an invented number is used
                    ev = emit_text(correction(guard))
                    if ev:
                        yield ev
                    break
            else:
                if guard:
                    ev = emit_text(guard.flush())
                    if ev:
                        yield ev
                    if guard.violation:
                        ev = emit_text(correction(guard))
                        if ev:
                            yield ev
        finally:
            rtoken.set()
            # Let the backend finish its current step (a local model stops within one decoding
            # step, a socket is shut down) so its stats are complete and the model is free again
            # when the turn is reported done.
            try:
                await asyncio.wait_for(_drain(stream), timeout=self.config.drain_timeout_s)
            except (TimeoutError, Exception):
                pass
            await stream.aclose()  # type: ignore[attr-defined]
        timings["generate"] = _ms(time.perf_counter() - t_gen)
        for k in ("prompt_tokens", "cached_prompt_tokens", "generated_tokens", "tokens_per_s", "tokens_after_cancel"):
            if k in request.stats:
                timings[k] = round(request.stats[k], 2)
        if "first_token_s" in request.stats:
            timings["first_token_model"] = _ms(request.stats["first_token_s"])
        if not text_parts and not token.is_set() and not actions_done:
            # The model said nothing: fall back to the best entry rather than a blank reply.
            ev = emit_text(hits[0].entry.text if hits else self.pack.messages["no_information"])
            if ev:
                yield ev


async def _drain(stream: AsyncIterator[Any]) -> None:
    async for _ in stream:
        pass


def _media_json(turn: TurnInput) -> dict[str, Any]:
    """Raw media of a turn, JSON-ready (base64), for stores configured to keep it."""
    import base64

    out: dict[str, Any] = {}
    if turn.audio is not None:
        samples, sr = turn.audio
        if isinstance(samples, (bytes, bytearray)):
            pcm = bytes(samples)
        else:
            arr = np.asarray(samples)
            if arr.dtype != np.int16:
                arr = (np.clip(arr.astype(np.float32), -1, 1) * 32767).astype(np.int16)
            pcm = arr.tobytes()
        out["audio"] = {"sample_rate": sr, "pcm16": base64.b64encode(pcm).decode()}
    images = []
    for img in turn.images:
        if isinstance(img, (bytes, bytearray)):
            images.append(base64.b64encode(bytes(img)).decode())
    if images:
        out["images"] = images
    return out


__all__ = ["Agent", "Decision", "PerceivedTurn", "TurnInput", "perception_summary", "turn_text"]
