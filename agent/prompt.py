"""The prompt: built by one function, :func:`build_prompt`, that tests can inspect.

Layout (chat messages; kept compact because the default model is small, 2048-token context)::

    system     persona + instructions + safety rules          (static: identical every turn)
    user/assistant × e   the pack's few-shot examples           (static)
    user/assistant × h   recent history, newest kept first, within ``history_tokens``
    user       Facts: the retrieved entries, best first
               Context: what the camera sees, faces/engagement, transcript confidence,
                        fused intent, emotion and modality weights
               Question: the turn's text

If the whole is over ``max_prompt_tokens``: history goes first, then the lowest-ranked entries,
then each remaining entry is cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import PromptConfig
from .pack import KnowledgePack
from .retrieval import Retrieved

CountFn = Callable[[str], int]


def approx_tokens(text: str) -> int:
    """Rough token count (≈ 4 characters per token) for responders without a tokenizer."""
    return max(1, (len(text) + 3) // 4)


@dataclass
class Prompt:
    """A built prompt. ``messages`` is OpenAI chat format; ``n_tokens`` counts their contents."""

    messages: list[dict[str, str]]
    n_tokens: int
    entry_ids: list[str]
    sections: dict[str, str] = field(default_factory=dict)
    history_turns: int = 0
    static_messages: int = 1   # leading messages identical on every turn (a responder may cache them)

    def text(self) -> str:
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in self.messages)


def describe_context(summary: dict[str, Any], fused: Any | None) -> str:
    """One compact line per kind of signal, from a perception summary and a fused turn.

    Written for a model that may copy it: no internal labels (intent names, scores) and no
    camera class labels when a person is in view (a small model recited "The camera sees:
    bobsled, football helmet" to a person at the kiosk); the labels are named only for an
    object shown without anyone in view."""
    parts: list[str] = []
    labels = summary.get("labels") or []
    n = summary.get("face_count", 0)
    if labels and not n:
        parts.append("The camera sees: " + ", ".join(lb["name"] for lb in labels[:2]) + ".")
    if summary.get("frames"):
        if n:
            near = " close to the kiosk" if summary.get("face_rel_size", 0.0) >= 0.05 else ""
            parts.append(f"{n} person{'s' if n > 1 else ''} in view{near}.")
        else:
            parts.append("Nobody in view.")
    speech = summary.get("speech")
    if speech:
        parts.append(f"The question was spoken (transcript confidence {speech['confidence']:.2f}).")
    if fused is not None and fused.emotion == "negative" and fused.emotion_confidence >= 0.5:
        parts.append("The customer sounds upset: be kind and brief.")
    return " ".join(parts)


def build_prompt(
    pack: KnowledgePack,
    question: str,
    hits: Sequence[Retrieved],
    *,
    summary: dict[str, Any] | None = None,
    fused: Any | None = None,
    history: Sequence[tuple[str, str]] = (),
    history_offset: int = 0,
    config: PromptConfig | None = None,
    count_tokens: CountFn = approx_tokens,
    facts: Sequence[str] | None = None,
) -> Prompt:
    """Build the chat messages for one turn.

    ``hits``: retrieved entries, best first (only relevant ones should be passed).
    ``facts``: the fact lines to show instead of the hits' texts (the dialogue manager's
    composed answer: exactly the selected facts, in the words the model should keep).
    ``history``: (user text, reply) of earlier turns, oldest first; ``history_offset``: the
    session-wide index of ``history[0]``. The oldest turn kept starts only at multiples of
    ``config.history_stride`` (session-wide), so that from one turn to the next the prompt
    usually only grows at its end and a responder can reuse the previous prompt's KV cache.
    """
    cfg = config or PromptConfig()
    system = f"{pack.persona}\n{pack.instructions}"
    if pack.safety_rules:
        system += "\n" + " ".join(pack.safety_rules)
    context = describe_context(summary or {}, fused)
    entries = [f[: cfg.max_entry_chars] for f in facts] if facts is not None else \
        [h.entry.text[: cfg.max_entry_chars] for h in hits]

    def user_message(facts: Sequence[str], q: str = question, ctx: str = context) -> str:
        lines = []
        if facts:
            lines.append("Facts:\n" + "\n".join(f"- {f}" for f in facts))
        else:
            lines.append("Facts: none that match.")
        if ctx:
            lines.append("Context: " + ctx)
        lines.append(f"Question: {q}")
        return "\n\n".join(lines)

    shots: list[dict[str, str]] = []
    for ex in pack.examples:
        shots += [{"role": "user", "content": user_message(ex.facts, ex.question, "")},
                  {"role": "assistant", "content": ex.answer}]

    # History, newest first, within its own budget; then the oldest kept moves forward to a
    # session-wide multiple of the stride.
    pairs = [(history_offset + i, u, r) for i, (u, r) in enumerate(history) if u or r]
    chosen: list[tuple[int, str, str]] = []
    used = 0
    for index, user_text, reply in reversed(pairs):
        cost = count_tokens(user_text) + count_tokens(reply) + 8
        if used + cost > cfg.history_tokens:
            break
        chosen.insert(0, (index, user_text, reply))
        used += cost
    if chosen and chosen[0][0] > 0 and cfg.history_stride > 1:   # older turns were left out
        start = -(-chosen[0][0] // cfg.history_stride) * cfg.history_stride
        if chosen[-1][0] >= start:
            chosen = [c for c in chosen if c[0] >= start]
    hist_msgs: list[dict[str, str]] = []
    for _, user_text, reply in chosen:
        hist_msgs += [{"role": "user", "content": user_text}, {"role": "assistant", "content": reply}]
    kept = len(chosen)

    def total(msgs: list[dict[str, str]]) -> int:
        return sum(count_tokens(m["content"]) + 4 for m in msgs)

    while True:
        msgs = [{"role": "system", "content": system}, *shots, *hist_msgs,
                {"role": "user", "content": user_message(entries)}]
        n = total(msgs)
        if n <= cfg.max_prompt_tokens:
            break
        if hist_msgs:
            hist_msgs = hist_msgs[2:]
            kept -= 1
        elif len(entries) > 1:
            entries = entries[:-1]
        elif entries and len(entries[0]) > 80:
            entries = [entries[0][: len(entries[0]) * 3 // 4]]
        else:
            break  # persona + question alone exceed the budget: send anyway, the model truncates
    ids = [h.entry.id for h in hits]
    return Prompt(messages=msgs, n_tokens=n, entry_ids=ids if facts is not None else ids[: len(entries)],
                  sections={"system": system, "facts": "\n".join(entries), "context": context,
                            "question": question},
                  history_turns=kept, static_messages=1 + len(shots))
