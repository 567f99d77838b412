"""The JSONL turn manifest (format in docs/fusion.md).

One turn per line::

    {"id": str, "text"?: str, "audio"?: path, "image"?: path,
     "intent"?: str, "emotion"?: str, "addressee"?: bool}

Paths are relative to the manifest's folder; extra keys are kept in ``extra`` and otherwise
ignored. Bad rows (malformed JSON, missing or duplicate id, missing files, unknown labels, wrong
types, no modality at all) are reported with their line numbers: ``strict=True`` raises
:class:`~fusion.errors.ManifestError` listing them, the default skips them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusion.errors import ManifestError
from fusion.labels import EMOTIONS, INTENTS

log = logging.getLogger(__name__)

KNOWN_KEYS = ("id", "text", "audio", "image", "intent", "emotion", "addressee")


@dataclass
class ManifestRow:
    line: int
    id: str
    text: str | None = None
    audio: Path | None = None
    image: Path | None = None
    intent: str | None = None
    emotion: str | None = None
    addressee: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    path: Path
    rows: list[ManifestRow]
    errors: list[tuple[int, str]]  # (line number, problem), rows skipped

    def report(self) -> str:
        """One line per skipped row."""
        return "\n".join(f"{self.path}:{line}: {msg}" for line, msg in self.errors)


def raise_or_log(path: Path, errors: list[tuple[int, str]], strict: bool, what: str = "rows") -> None:
    """Strict: raise ManifestError listing every bad row. Else log how many were skipped."""
    if not errors:
        return
    listing = "; ".join(f"line {ln}: {msg}" for ln, msg in errors[:20])
    more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
    if strict:
        raise ManifestError(f"{path}: {len(errors)} bad {what}: {listing}{more}")
    log.warning("%s: skipped %d bad %s: %s%s", path, len(errors), what, listing, more)


def load_manifest(path: str | Path, *, strict: bool = False, intents: tuple[str, ...] = INTENTS,
                  emotions: tuple[str, ...] = EMOTIONS) -> Manifest:
    """Parse and validate a manifest (files must exist; decoding is checked when encoding)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
    root = path.parent
    rows: list[ManifestRow] = []
    errors: list[tuple[int, str]] = []
    seen: set[str] = set()
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append((n, f"malformed JSON ({exc.msg})"))
            continue
        problem = _check(obj, root, seen, intents, emotions)
        if problem:
            errors.append((n, problem))
            continue
        seen.add(obj["id"])
        rows.append(ManifestRow(
            line=n, id=obj["id"], text=obj.get("text"),
            audio=root / obj["audio"] if obj.get("audio") else None,
            image=root / obj["image"] if obj.get("image") else None,
            intent=obj.get("intent"), emotion=obj.get("emotion"), addressee=obj.get("addressee"),
            extra={k: v for k, v in obj.items() if k not in KNOWN_KEYS},
        ))
    raise_or_log(path, errors, strict)
    return Manifest(path, rows, errors)


def _check(obj: Any, root: Path, seen: set[str], intents: tuple[str, ...], emotions: tuple[str, ...]) -> str | None:
    if not isinstance(obj, dict):
        return "row is not a JSON object"
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid:
        return "missing or non-string 'id'"
    if rid in seen:
        return f"duplicate id {rid!r}"
    text = obj.get("text")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        return "'text' must be a non-empty string"
    for key in ("audio", "image"):
        v = obj.get(key)
        if v is None:
            continue
        if not isinstance(v, str) or not v:
            return f"'{key}' must be a path string"
        if not (root / v).is_file():
            return f"{key} file not found: {v}"
    if text is None and not obj.get("audio") and not obj.get("image"):
        return "no modality (needs text, audio or image)"
    if obj.get("intent") is not None and obj["intent"] not in intents:
        return f"unknown intent {obj['intent']!r} (known: {', '.join(intents)})"
    if obj.get("emotion") is not None and obj["emotion"] not in emotions:
        return f"unknown emotion {obj['emotion']!r} (known: {', '.join(emotions)})"
    if obj.get("addressee") is not None and not isinstance(obj["addressee"], bool):
        return "'addressee' must be true or false"
    return None
