"""The grounded responder: says the dialogue manager's composed answer (agent/dialogue.py).

No model: the answer is the turn's selected facts put into the pack's templates ("On Saturday we
close at 9 pm."), so every fact is exact and the first words go out at once. Streamed word by
word so clients see the same event shape as with a model. Without a composed answer (the
dialogue manager turned off) it falls back to the best entry's text, like ``extractive``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from ..prompt import approx_tokens
from .base import CancelToken, Chunk, ResponderRequest
from .extractive import ExtractiveResponder


class GroundedResponder:
    name = "grounded"

    def count_tokens(self, text: str) -> int:
        return approx_tokens(text)

    def warmup(self) -> None:
        return None

    async def stream(self, request: ResponderRequest, cancel: CancelToken) -> AsyncIterator[Chunk]:
        text = request.composed or ExtractiveResponder.answer(request)
        for piece in re.findall(r"\S+\s*", text):
            if cancel.is_set():
                return
            yield piece
