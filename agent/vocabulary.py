"""A pack's vocabulary for the speech recogniser: the words its customers will say.

Product names, entry titles, keywords and aliases (where the pack has them) bias Whisper's
decoding (``PerceptionConfig.speech_vocabulary``), so "service desk" is heard as "service desk"
and not "sewing vistes". Read with ``getattr``: older packs have no aliases.

>>> from agent.pack import load_pack
>>> "service desk" in pack_vocabulary(load_pack())
True
"""

from __future__ import annotations

import re
from typing import Any

# Parenthesised details and sizes are not said aloud ("Whole milk, 1 litre" → "Whole milk").
_DETAIL = re.compile(r"\s*(\([^)]*\)|,.*)$")
_LOCATION = re.compile(r"\s+(location|policy)$", re.IGNORECASE)


def _spoken(term: str, heading: bool = False) -> str:
    """As said mid-sentence: details dropped, a heading's capital lowered ("Whole milk" → "whole
    milk"; "AA batteries" and "USB-C" keep theirs). Whisper copies the prompt's spelling, so "the
    Ground coffee" would otherwise come back capitalised. A one-word name ("Visa") may be a brand
    and keeps its capital; entry titles are headings and never are."""
    words = _DETAIL.sub("", term).split()
    if words and (heading or len(words) > 1) and words[0][:1].isupper() and words[0][1:].islower():
        words[0] = words[0].lower()
    return " ".join(words)


def _entry_names(entry: Any) -> tuple[str, str, list[str]]:
    """An entry's name, title (a trailing "location" or "policy" dropped: people say "service
    desk", not "service desk location") and aliases, as said mid-sentence ("" where absent)."""
    name = _spoken(entry.name) if getattr(entry, "name", "") else ""
    title = _LOCATION.sub("", _spoken(entry.title, heading=True)) if getattr(entry, "title", "") else ""
    return name, title, [_spoken(a) for a in getattr(entry, "aliases", ()) or ()]


def entry_terms(pack: Any) -> list[list[str]]:
    """Each entry's spoken names: its product name, its title and its aliases, in that order —
    the ways a customer names that one entry (its keywords are left out: several entries share
    them)."""
    out = []
    for entry in getattr(pack, "entries", ()):
        name, title, aliases = _entry_names(entry)
        out.append([f for f in (name, title, *aliases) if f])
    return out


def pack_vocabulary(pack: Any) -> list[str]:
    """Terms of ``pack`` for the recogniser, most specific first, without duplicates.

    Order: product names, then entry titles (a trailing "location" or "policy" dropped: people
    say "service desk", not "service desk location"), then aliases taken in turns — every
    entry's first alias, then every entry's second, … — then keywords. The recogniser's prompt
    keeps as many as fit, from the front, so every entry is named before any entry's tenth way
    of saying it: a pack with 27 phrasings of "no receipt" must not push "toilets" out.
    """
    names, titles, keywords = [], [], []
    alias_lists: list[list[str]] = []
    for entry in getattr(pack, "entries", ()):
        name, title, aliases = _entry_names(entry)
        names.append(name)
        titles.append(title)
        alias_lists.append(aliases)
        keywords += [_spoken(k) for k in getattr(entry, "keywords", ()) or ()]
    aliases = [lst[i] for i in range(max(map(len, alias_lists), default=0)) for lst in alias_lists if i < len(lst)]
    seen: set[str] = set()
    out: list[str] = []
    for term in names + titles + aliases + keywords:
        if term and term.lower() not in seen:
            seen.add(term.lower())
            out.append(term)
    return out
