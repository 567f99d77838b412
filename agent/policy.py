"""Policy on the fused state: what to do with a turn before (or instead of) calling a model.

Rules, in order (first match wins):

1. ``repeat``    spoken turn without typed text whose transcript is empty, or whose no-speech
                 probability, mean log-prob or confidence is past its threshold → ask to repeat
                 (no model call).
2. ``greeting``  no text at all, and a face appears after an empty scene → greet (optional).
   ``empty``     no text at all otherwise → no reply.
3. ``refuse``    the text matches one of the pack's ``safety.blocked_patterns``.
4. ``handoff``   the fused intent is one of the pack's escalation intents (``talk_to_human``), or
                 the emotion was negative on N consecutive turns (N = pack
                 ``escalation.negative_turns``, else ``PolicyConfig.negative_turns_for_handoff``)
                 → the pack's handoff action + a reply that says so.
5. ``respond``   everything else: retrieval + responder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from perception.types import SpeechEncoding

from .config import PolicyConfig
from .pack import KnowledgePack


@dataclass
class Decision:
    route: str                      # repeat | greeting | empty | refuse | handoff | respond
    reason: str = ""
    text: str | None = None         # canned reply (None for "respond" and "empty")
    actions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def speech_problem(speech: SpeechEncoding, cfg: PolicyConfig) -> str | None:
    """Why a transcript cannot be trusted, or None."""
    if not speech.transcript.strip():
        return "no_speech"
    if speech.no_speech_prob > cfg.max_no_speech_prob:
        return "no_speech"
    if speech.avg_logprob < cfg.min_avg_logprob:
        return "low_logprob"
    if speech.confidence < cfg.min_transcript_confidence:
        return "low_confidence"
    return None


def is_negative(fused: Any, cfg: PolicyConfig) -> bool:
    return fused is not None and fused.emotion == "negative" and fused.emotion_confidence >= cfg.negative_min_confidence


class Policy:
    def __init__(self, pack: KnowledgePack, config: PolicyConfig | None = None) -> None:
        self.pack = pack
        self.config = config or PolicyConfig()

    @property
    def negative_turns(self) -> int:
        return self.pack.negative_turns or self.config.negative_turns_for_handoff

    def decide(self, *, text: str, typed_text: str | None, speech: SpeechEncoding | None, fused: Any,
               negative_streak: int, face_count: int | None, previous_face_count: int | None) -> Decision:
        """``negative_streak``: consecutive negative turns before this one (since the last handoff).
        ``face_count``: faces in this turn's newest frame (None without frames);
        ``previous_face_count``: the last one seen in the session (None: nothing seen yet)."""
        cfg, msgs = self.config, self.pack.messages
        if speech is not None and not (typed_text or "").strip():
            problem = speech_problem(speech, cfg)
            if problem:
                return Decision("repeat", problem, msgs["repeat_request"])
        if not text.strip():
            if (cfg.greet_on_arrival and face_count and not previous_face_count):
                return Decision("greeting", "face_arrived", msgs["greeting"])
            return Decision("empty", "no_text")
        for pat in self.pack.blocked_patterns:
            if pat.search(text):
                return self._with_handoff(Decision("refuse", f"blocked:{pat.pattern}", msgs["refusal"]), None)
        if fused is not None and fused.intent in self.pack.handoff_intents \
                and fused.intent_confidence >= cfg.handoff_min_confidence:
            return self._with_handoff(Decision("handoff", "requested", msgs["handoff"]), "requested")
        if is_negative(fused, cfg) and negative_streak + 1 >= self.negative_turns:
            return self._with_handoff(Decision("handoff", "negative_emotion", msgs["handoff"]), "negative_emotion")
        return Decision("respond")

    def _with_handoff(self, d: Decision, reason: str | None) -> Decision:
        if reason and self.pack.handoff_action:
            d.actions.append((self.pack.handoff_action, {"reason": reason}))
        return d
