"""Sessions: the turns of one conversation, kept in memory and written to a :class:`SessionStore`."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store_api import SessionStoreProtocol


def new_session_id() -> str:
    """128 random bits: a session id cannot be guessed or probed (the server also checks that
    the one resuming it is its owner)."""
    return "sess_" + secrets.token_hex(16)


def new_turn_id() -> str:
    return "turn_" + secrets.token_hex(6)


@dataclass
class TurnRecord:
    """One turn as stored. ``timings`` in milliseconds; ``fused`` is ``FusedTurn.to_json()``
    without the tensor (the vector itself is kept in ``fused_vector`` for the next turn's context)."""

    turn_id: str
    index: int
    created_at: float
    status: str = "in_progress"     # in_progress | completed | cancelled | failed
    text: str = ""                  # the turn's text: typed text and/or transcript
    typed_text: str | None = None
    transcript: str | None = None
    perception: dict[str, Any] = field(default_factory=dict)
    fused: dict[str, Any] | None = None
    fused_vector: list[float] | None = None
    route: str = ""
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    reply: str = ""
    actions: list[dict[str, Any]] = field(default_factory=list)
    rejected_actions: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: dict[str, str] | None = None
    guard: str | None = None
    barge_in: bool = False
    media: dict[str, Any] | None = None   # only when StoreConfig.store_media
    # What the dialogue manager made of the turn: route, selected entries and facts, the
    # understood acts/slots/entities (agent/dialogue.py Plan.to_json), and a failed verification.
    dialogue: dict[str, Any] | None = None

    def to_json(self, *, with_vector: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_vector:
            d.pop("fused_vector")
        d.pop("media")
        d["has_media"] = self.media is not None
        return d


class Session:
    """A conversation: its id and turns. Safe to use from the event loop; the store does I/O.

    Built by :meth:`agent.Agent.open_session` (new, or resumed from the store with its history).
    """

    def __init__(self, session_id: str, *, created_at: float | None = None, turns: list[TurnRecord] | None = None,
                 store: SessionStoreProtocol | None = None, meta: dict[str, Any] | None = None) -> None:
        self.id = session_id
        self.created_at = created_at if created_at is not None else time.time()
        self.turns: list[TurnRecord] = list(turns or [])
        self.store = store
        self.meta = dict(meta or {})
        self.current: TurnRecord | None = None
        self.last_face_count: int | None = None
        # The dialogue manager's state (agent/dialogue.py DialogueState as JSON): the entity and
        # slots in focus, hostile turns, the last reply. Stored with every turn.
        self.dialogue_state: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- state used by the policy and the prompt ------------------------------------------------

    def history(self, n: int = 6) -> list[tuple[str, str]]:
        """(user text, reply) of the last ``n`` completed turns that have both, oldest first."""
        return self.history_window(n)[1]

    def history_window(self, n: int = 6) -> tuple[int, list[tuple[str, str]]]:
        """(index of the first one among all such turns, the last ``n`` of them)."""
        done = [(t.text, t.reply) for t in self.turns if t.status == "completed" and t.text and t.reply]
        kept = done[-n:]
        return len(done) - len(kept), kept

    def negative_streak(self, min_confidence: float = 0.5) -> int:
        """Consecutive negative-emotion turns at the end, not counting turns before a handoff."""
        streak = 0
        for t in reversed(self.turns):
            if t.route == "handoff" or not t.fused:
                break
            if t.fused.get("emotion") == "negative" and t.fused.get("emotion_confidence", 0.0) >= min_confidence:
                streak += 1
            else:
                break
        return streak

    def last_fused_vector(self) -> list[float] | None:
        for t in reversed(self.turns):
            if t.fused_vector is not None:
                return t.fused_vector
        return None

    def observe_faces(self, count: int) -> int | None:
        """Record the face count of the newest frame (the server may call this on every presence
        update, not only on turns); return the previous count (None: nothing seen yet)."""
        with self._lock:
            prev, self.last_face_count = self.last_face_count, count
        return prev

    # -- turn lifecycle ---------------------------------------------------------------------------

    def begin_turn(self, turn_id: str) -> TurnRecord:
        with self._lock:
            index = (self.turns[-1].index + 1) if self.turns else 0
            self.current = TurnRecord(turn_id=turn_id, index=index, created_at=time.time())
            return self.current

    def abandon_turn(self, record: TurnRecord, last_face_count: int | None) -> None:
        """Forget a turn in progress as if it never began (a speculative turn that was voided):
        not in the history, not stored, the face count it observed undone."""
        with self._lock:
            if self.current is record:
                self.current = None
            self.last_face_count = last_face_count

    def finish_turn(self, record: TurnRecord) -> None:
        with self._lock:
            self.turns.append(record)
            if self.current is record:
                self.current = None

    def mark_barge_in(self, turn_id: str | None = None) -> None:
        """Flag a turn (default: the one in progress, else the last one) as interrupted by the
        person speaking. Persisted at once for a finished turn, with the turn otherwise."""
        with self._lock:
            target = self.current if (turn_id is None and self.current) else None
            if target is None:
                for t in reversed(self.turns):
                    if turn_id is None or t.turn_id == turn_id:
                        target = t
                        break
                if self.current and self.current.turn_id == turn_id:
                    target = self.current
            if target is None:
                return
            target.barge_in = True
            finished = target is not self.current
        if finished and self.store is not None:
            self.store.set_barge_in(self.id, target.turn_id, True)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at, "meta": self.meta,
                "turns": [t.to_json() for t in self.turns]}
