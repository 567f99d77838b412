"""The grounding guard: a price in a reply must come from the retrieved entries.

Small models invent numbers. Every price the model writes ("$4.49", "12 dollars") is compared,
by value, with the prices in the entries that were put in the prompt. Text is streamed through
:class:`PriceGuard`, which holds back a number until it is complete (at most a word or two), so an
unsupported price is never sent: the reply stops there and the pack's ``no_information`` message
is sent instead. :func:`asks_for_price` lets the agent skip the model entirely when the question
is about a price and no retrieved entry has one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PRICE_RE = re.compile(
    r"[$€£]\s?(\d+(?:[.,]\d+)?)|(\d+(?:[.,]\d+)?)\s?(?:dollars?|euros?|pounds?|usd|eur|gbp|bucks)\b",
    re.IGNORECASE)
# A tail that may still grow into a price: hold it back until more text arrives.
_TAIL_RE = re.compile(r"(?:[$€£]\s*|[$€£]?\s?\d[\d.,]*\s*[A-Za-z]*)$")
_ASKS_PRICE_RE = re.compile(r"\b(how much|price|prices|cost|costs|costing|expensive|cheap)\b", re.IGNORECASE)


def prices_in(text: str) -> list[float]:
    """Every price written in ``text``, as numbers."""
    out = []
    for m in PRICE_RE.finditer(text):
        out.append(float((m.group(1) or m.group(2)).replace(",", ".")))
    return out


def asks_for_price(question: str, intent: str | None = None) -> bool:
    return intent == "price_check" or bool(_ASKS_PRICE_RE.search(question))


class PriceGuard:
    """Streams text through, stopping at the first price not in ``allowed``."""

    def __init__(self, allowed: Iterable[float]) -> None:
        self.allowed = sorted(set(allowed))
        self._pending = ""
        self.violation: str | None = None

    def _ok(self, value: float) -> bool:
        return any(abs(value - a) < 0.005 for a in self.allowed)

    def _check(self, text: str) -> str:
        """Return the safe prefix of ``text``; set ``violation`` at the first bad price."""
        for m in PRICE_RE.finditer(text):
            value = float((m.group(1) or m.group(2)).replace(",", "."))
            if not self._ok(value):
                self.violation = m.group(0)
                return text[: m.start()]
        return text

    def feed(self, delta: str) -> str:
        """Add model text; return what may be sent now ('' while a number is pending)."""
        if self.violation is not None:
            return ""
        self._pending += delta
        tail = _TAIL_RE.search(self._pending)
        cut = tail.start() if tail and tail.group(0).strip() else len(self._pending)
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        if not ready:
            return ""
        safe = self._check(ready)
        if self.violation is not None:
            self._pending = ""
        return safe

    def flush(self) -> str:
        """The held-back rest at the end of the reply (checked)."""
        if self.violation is not None:
            return ""
        rest, self._pending = self._pending, ""
        return self._check(rest)
