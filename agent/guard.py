"""The grounding guard: every number in a reply must come from the retrieved entries.

Small models invent numbers: prices, opening times, aisles. Every number the model writes
("$4.49", "12 dollars", "9 pm", "8:30", "aisle 7") is compared, by value, with the numbers in
the entries that were put in the prompt (and in the question itself). Text is streamed through
:class:`NumberGuard`, which holds back a number until it is complete (at most a word or two), so
an unsupported number is never sent. What the agent does then (see ``Agent``): the reply stops
there; an invented *price* is followed by the pack's ``no_information`` message, any other
invented number by "To be exact: " and the best entry's own text.

:func:`asks_for_price` lets the agent skip the model entirely when the question is about a price
and no retrieved entry has one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PRICE_RE = re.compile(
    r"[$€£]\s?(\d+(?:[.,]\d+)?)|(\d+(?:[.,]\d+)?)\s?(?:dollars?|euros?|pounds?|usd|eur|gbp|bucks)\b",
    re.IGNORECASE)
# Any number: a clock time (8:30), a decimal (4.49, 3,50) or an integer.
NUMBER_RE = re.compile(r"(?<![\w.])(\d{1,2}):(\d{2})\b|(\d+(?:[.,]\d+)?)")
# A tail that may still grow into a number or price: hold it back until more text arrives.
_TAIL_RE = re.compile(r"(?:[$€£]\s*|[$€£]?\s?\d[\d.,:]*\s*[A-Za-z]*)$")
_ASKS_PRICE_RE = re.compile(r"\b(how much|price|prices|cost|costs|costing|expensive|cheap)\b", re.IGNORECASE)


def prices_in(text: str) -> list[float]:
    """Every price written in ``text``, as numbers."""
    return [float((m.group(1) or m.group(2)).replace(",", ".")) for m in PRICE_RE.finditer(text)]


def _number_value(m: re.Match[str]) -> float:
    if m.group(1) is not None:  # h:mm
        hours, minutes = int(m.group(1)), int(m.group(2))
        return float(hours) if minutes == 0 else hours + minutes / 100.0
    return float(m.group(3).replace(",", "."))


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text`` (8:00 → 8, 8:30 → 8.3, 4,50 → 4.5)."""
    return [_number_value(m) for m in NUMBER_RE.finditer(text)]


def asks_for_price(question: str, intent: str | None = None) -> bool:
    return intent == "price_check" or bool(_ASKS_PRICE_RE.search(question))


class NumberGuard:
    """Streams text through, stopping at the first number not in ``allowed``.

    After a stop, ``violation`` is the offending text and ``violation_is_price`` says whether
    it was written as a price.
    """

    def __init__(self, allowed: Iterable[float]) -> None:
        self.allowed = sorted(set(allowed))
        self._pending = ""
        self.violation: str | None = None
        self.violation_is_price = False

    def _ok(self, value: float) -> bool:
        return any(abs(value - a) < 0.005 for a in self.allowed)

    def _check(self, text: str) -> str:
        """Return the safe prefix of ``text``; set ``violation`` at the first bad number."""
        prices = {m.start(1) if m.group(1) else m.start(2): m for m in PRICE_RE.finditer(text)}
        for m in NUMBER_RE.finditer(text):
            if not self._ok(_number_value(m)):
                price = prices.get(m.start())
                self.violation = price.group(0) if price else m.group(0)
                self.violation_is_price = price is not None
                start = price.start() if price else m.start()
                return text[:start]
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
