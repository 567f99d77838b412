"""Manifests and the feature cache, with a fake perception (no models needed)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from fusion.errors import ManifestError
from fusion.features import FeatureCache, encode_manifest, turn_text
from fusion.manifest import load_manifest
from perception.errors import InvalidImageError


class FakePerception:
    """Deterministic stand-in: features derived from content; counts encoder calls."""

    def __init__(self) -> None:
        self.calls = {"text": 0, "speech": 0, "vision": 0}

    def identities(self) -> dict[str, str]:
        return {"text": "t:fake:4", "speech": "s:fake:3", "vision": "v:fake:5"}

    def feature_dims(self) -> dict[str, int]:
        return {"text": 4, "speech": 3, "vision": 5}

    def encode_text(self, texts: list[str]) -> list[Any]:
        self.calls["text"] += len(texts)
        return [SimpleNamespace(feature_vector=lambda t=t: torch.full((4,), float(len(t)))) for t in texts]

    def encode_speech(self, audio: Any, sr: int) -> Any:
        self.calls["speech"] += 1
        return SimpleNamespace(transcript="where is the milk", feature_vector=lambda: torch.ones(3) * len(audio) / sr)

    def encode_frames(self, images: list[bytes]) -> list[Any]:
        self.calls["vision"] += len(images)
        if any(not im.startswith(b"\x89PNG") for im in images):
            raise InvalidImageError("undecodable image")
        return [SimpleNamespace(feature_vector=lambda n=len(im): torch.full((5,), float(n))) for im in images]


def _wav(path: Path, seconds: float = 0.5) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(np.arange(int(16000 * seconds)) / 5) * 8000).astype(np.int16).tobytes())


def _png(path: Path, color: int = 0) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (color, 0, 0)).save(path)


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture
def media(tmp_path: Path) -> Path:
    _wav(tmp_path / "a.wav")
    _png(tmp_path / "i.png")
    _png(tmp_path / "j.png", 200)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    return tmp_path


def test_bad_rows_reported_with_line_numbers(media: Path) -> None:
    """Every kind of bad row is skipped by default and named, with its line, in strict mode."""
    m = _write(media / "m.jsonl", [
        {"id": "ok1", "text": "hello", "intent": "greeting", "emotion": "positive", "addressee": True},
        "{not json",
        {"id": "ok2", "audio": "a.wav", "image": "i.png", "extra_key": 1},
        {"id": "x1", "audio": "missing.wav"},
        {"id": "x2", "text": "hi", "intent": "dance"},
        {"id": "x3", "text": "hi", "emotion": "angry"},
        {"text": "no id"},
        {"id": "ok1", "text": "duplicate"},
        {"id": "x4"},
        {"id": "x5", "text": "hi", "addressee": "yes"},
        [1, 2],
    ])
    man = load_manifest(m)
    assert [r.id for r in man.rows] == ["ok1", "ok2"]
    assert man.rows[1].extra == {"extra_key": 1}
    assert [ln for ln, _ in man.errors] == [2, 4, 5, 6, 7, 8, 9, 10, 11]
    msgs = dict(man.errors)
    assert "malformed JSON" in msgs[2] and "missing.wav" in msgs[4] and "dance" in msgs[5]
    assert "angry" in msgs[6] and "duplicate" in msgs[8] and "no modality" in msgs[9]
    with pytest.raises(ManifestError, match="9 bad rows: line 2: malformed JSON") as ei:
        load_manifest(m, strict=True)
    assert ei.value.code == "invalid_manifest"


def test_unreadable_media_skipped_or_strict(media: Path, tmp_path: Path) -> None:
    """Undecodable images and audio are found at encoding time and reported with line numbers."""
    (media / "bad.wav").write_bytes(b"RIFF....garbage")
    m = _write(media / "m.jsonl", [
        {"id": "a", "text": "hello", "image": "i.png", "intent": "greeting"},
        {"id": "b", "image": "broken.png", "intent": "other"},
        {"id": "c", "audio": "bad.wav"},
        {"id": "d", "audio": "a.wav", "image": "j.png"},
    ])
    fake = FakePerception()
    table = encode_manifest(load_manifest(m), fake, cache=FeatureCache(tmp_path / "cache"))
    assert table.ids == ["a", "d"]
    with pytest.raises(ManifestError, match=r"line 2: unreadable image.*line 3: unreadable audio"):
        encode_manifest(load_manifest(m), FakePerception(), cache=FeatureCache(tmp_path / "cache2"), strict=True)


def test_feature_cache_and_spoken_text(media: Path, tmp_path: Path) -> None:
    """Each file is encoded once (content-keyed); a spoken turn's text token is its transcript."""
    m = _write(media / "m.jsonl", [
        {"id": "typed", "text": "hello", "image": "i.png", "intent": "greeting", "emotion": "neutral"},
        {"id": "spoken", "audio": "a.wav", "image": "i.png", "addressee": False},
        {"id": "both", "text": "look", "audio": "a.wav"},
        {"id": "silent", "image": "j.png"},
    ])
    fake = FakePerception()
    cache = FeatureCache(tmp_path / "cache")
    t = encode_manifest(load_manifest(m), fake, cache=cache)
    assert t.texts == ["hello", "where is the milk", "look where is the milk", None]
    assert t.present.tolist() == [[True, False, True], [True, True, True], [True, True, False], [False, False, True]]
    assert t.intent.tolist() == [0, -1, -1, -1] and t.emotion.tolist() == [1, -1, -1, -1]
    assert t.addressee.tolist() == [-1.0, 0.0, -1.0, -1.0]
    assert t.feats["vision"].shape == (4, 5) and t.feats["speech"].shape == (4, 3)
    assert fake.calls == {"text": 3, "speech": 1, "vision": 2}  # same wav and png encoded once
    # a new manifest over the same files hits the per-item cache: no encoder call
    m2 = _write(media / "m2.jsonl", [{"id": "z", "audio": "a.wav", "image": "j.png"}])
    fake2 = FakePerception()
    t2 = encode_manifest(load_manifest(m2), fake2, cache=cache)
    assert fake2.calls == {"text": 0, "speech": 0, "vision": 0}
    assert torch.equal(t2.feats["vision"][0], t.feats["vision"][3])


def test_turn_text() -> None:
    """Typed text wins, transcripts fill in, both are joined with a space."""
    assert turn_text("hi", None) == "hi"
    assert turn_text(None, "hello there") == "hello there"
    assert turn_text("look", "at this") == "look at this"
    assert turn_text(None, "  ") is None
