"""Retrieval over a pack's entries: embedded once at load, top-k by cosine with an intent boost.

Shapes: entry matrix ``(N, D)`` L2-normalised rows (D = 384 for MiniLM); query ``(D,)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from perception.errors import InputError
from perception.types import TextEncoding

from .config import RetrievalConfig
from .pack import Entry, KnowledgePack

EncodeFn = Callable[[list[str]], list[TextEncoding]]


@dataclass(frozen=True)
class Retrieved:
    """One hit. ``score`` = cosine + intent boost (what ranks); ``cosine`` the raw similarity."""

    entry: Entry
    score: float
    cosine: float

    def to_json(self) -> dict[str, object]:
        return {"id": self.entry.id, "score": round(self.score, 4), "cosine": round(self.cosine, 4)}


class Retriever:
    """Embeds every entry of ``pack`` with ``encode`` (e.g. ``Perception.encode_text``) once."""

    def __init__(self, pack: KnowledgePack, encode: EncodeFn, config: RetrievalConfig | None = None) -> None:
        self.pack = pack
        self.config = config or RetrievalConfig()
        self._encode = encode
        t0 = time.perf_counter()
        encodings = encode([e.search_text() for e in pack.entries])
        self.matrix = torch.stack([enc.embedding.detach().float().cpu() for enc in encodings])  # (N, D)
        self.matrix = torch.nn.functional.normalize(self.matrix, dim=-1)
        self.embed_seconds = time.perf_counter() - t0

    def embed_query(self, text: str) -> torch.Tensor:
        """(D,) embedding of ``text`` with the same encoder as the entries."""
        return self._encode([text])[0].embedding.detach().float().cpu()

    def search(self, query: torch.Tensor, *, intent: str | None = None, intent_confidence: float = 0.0,
               top_k: int | None = None) -> list[Retrieved]:
        """Top-k entries for ``query`` (D,), best first. Entries tagged with a confident fused
        ``intent`` get ``config.intent_boost`` added (a boost, not a filter: a wrong intent must
        not hide the right answer)."""
        if query.dim() != 1 or query.shape[0] != self.matrix.shape[1]:
            raise InputError(f"query must be ({self.matrix.shape[1]},), got {tuple(query.shape)}")
        q = torch.nn.functional.normalize(query.detach().float().cpu(), dim=0)
        cos = self.matrix @ q  # (N,)
        boost = torch.zeros_like(cos)
        if intent and intent_confidence >= self.config.intent_min_confidence:
            for i, e in enumerate(self.pack.entries):
                if intent in e.intents:
                    boost[i] = self.config.intent_boost
        score = cos + boost
        k = min(top_k or self.config.top_k, len(self.pack.entries))
        vals, idx = torch.topk(score, k)
        return [Retrieved(self.pack.entries[int(i)], float(v), float(cos[int(i)])) for v, i in zip(vals, idx, strict=True)]

    def relevant(self, hits: Sequence[Retrieved]) -> list[Retrieved]:
        """The hits whose raw cosine reaches ``config.min_score`` and whose score is within
        ``config.prompt_margin`` of the best (a small model copies from whatever it is shown,
        so clearly weaker entries are left out)."""
        good = [h for h in hits if h.cosine >= self.config.min_score]
        return [h for h in good if h.score >= good[0].score - self.config.prompt_margin] if good else []
