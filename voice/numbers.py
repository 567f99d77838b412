"""English number words: cardinals and ordinals, for the text normaliser.

>>> cardinal(4049)
'four thousand forty-nine'
>>> ordinal(21)
'twenty-first'
"""

from __future__ import annotations

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
# Ordinals that are not cardinal + "th".
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}
MAX_CARDINAL = 10**15 - 1


def _below_thousand(n: int) -> str:
    assert 0 <= n < 1000, n
    words = []
    if n >= 100:
        words.append(f"{_ONES[n // 100]} hundred")
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n or not words:
        words.append(_ONES[n])
    return " ".join(words)


def cardinal(n: int) -> str:
    """0 ≤ n ≤ 999,999,999,999,999 in words ("one thousand two hundred five")."""
    if not 0 <= n <= MAX_CARDINAL:
        raise ValueError(f"cardinal() takes 0..{MAX_CARDINAL}, got {n}")
    if n < 1000:
        return _below_thousand(n)
    words = []
    for value, name in _SCALES:
        if n >= value:
            words.append(f"{_below_thousand(n // value)} {name}")
            n %= value
    if n:
        words.append(_below_thousand(n))
    return " ".join(words)


def ordinal(n: int) -> str:
    """1 → "first", 22 → "twenty-second", 100 → "one hundredth"."""
    words = cardinal(n)
    head, sep, last = words.rpartition("-") if "-" in words.split(" ")[-1] else words.rpartition(" ")
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head}{sep}{last}"


def digits(s: str) -> str:
    """Read a digit string one digit at a time ("0123" → "zero one two three")."""
    return " ".join(_ONES[int(c)] for c in s if c.isdigit())
