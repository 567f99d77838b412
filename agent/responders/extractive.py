"""The extractive responder: replies only with text from the best-matching knowledge entry.

For deployments that must never improvise. No relevant entry → the pack's ``no_information``
message. The text is streamed word by word so clients see the same event shape as with a model.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from ..prompt import approx_tokens
from .base import CancelToken, Chunk, ResponderRequest


class ExtractiveResponder:
    name = "extractive"

    def count_tokens(self, text: str) -> int:
        return approx_tokens(text)

    def warmup(self) -> None:
        return None

    @staticmethod
    def answer(request: ResponderRequest) -> str:
        """The reply text: the best relevant entry (with the dialogue manager: the text of every
        selected entry), or the pack's no-information message."""
        if request.selected and request.hits:
            texts: list[str] = []
            for h in request.hits:
                if h.entry.text not in texts:
                    texts.append(h.entry.text)
            return " ".join(texts)
        if request.hits:
            return request.hits[0].entry.text
        return request.pack.messages["no_information"]

    async def stream(self, request: ResponderRequest, cancel: CancelToken) -> AsyncIterator[Chunk]:
        for piece in re.findall(r"\S+\s*", self.answer(request)):
            if cancel.is_set():
                return
            yield piece
