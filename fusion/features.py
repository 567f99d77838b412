"""Feature cache: run the perception encoders once per media file, keyed by content hash.

Training and evaluation read a :class:`FeatureTable` (all tensors in memory), so an epoch takes
seconds on a CPU. The cache lives in ``$MMAGENT_FEATURE_CACHE`` or ``<repo>/var/feature_cache``:

    <cache>/<modality>/<sha256[:2]>/<sha256>.pt   one encoded item
    <cache>/tables/<sha256>.pt                    one whole manifest, keyed by manifest bytes + encoders

A key hashes the encoder identity with the content (file bytes, or the text), so changing an
encoder never reuses stale features. The text of a spoken turn is its transcript (typed text
first when both exist), exactly as the agent builds it at run time (docs/CONTRACTS.md).

Shapes: ``FeatureTable.feats[m]`` (N, D_m) float32 for m in text/speech/vision, zeros where
absent; ``present`` (N, 3) bool in ``MEDIA_MODALITIES`` order; labels (N,) with -1 = missing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fusion.labels import EMOTIONS, INTENTS, MEDIA_MODALITIES
from fusion.manifest import Manifest, ManifestRow, raise_or_log
from perception.errors import InputError, InvalidAudioError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLE_FORMAT = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("MMAGENT_FEATURE_CACHE", REPO_ROOT / "var" / "feature_cache"))


class PerceptionLike(Protocol):
    def encode_text(self, texts: list[str]) -> list[Any]: ...
    def encode_speech(self, audio: Any, sample_rate: int) -> Any: ...
    def encode_frames(self, images: list[Any]) -> list[Any]: ...
    def identities(self) -> dict[str, str]: ...
    def feature_dims(self) -> dict[str, int]: ...


@dataclass
class FeatureTable:
    """Encoded turns of one manifest, ready for training or evaluation."""

    ids: list[str]
    feats: dict[str, torch.Tensor]
    present: torch.Tensor
    intent: torch.Tensor
    emotion: torch.Tensor
    addressee: torch.Tensor
    dims: dict[str, int]
    encoders: dict[str, str]
    texts: list[str | None] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: torch.Tensor | list[int]) -> FeatureTable:
        i = torch.as_tensor(idx, dtype=torch.long)
        pick = i.tolist()
        return FeatureTable(
            ids=[self.ids[k] for k in pick], feats={m: v[i] for m, v in self.feats.items()},
            present=self.present[i], intent=self.intent[i], emotion=self.emotion[i],
            addressee=self.addressee[i], dims=self.dims, encoders=self.encoders,
            texts=[self.texts[k] for k in pick] if self.texts else [],
            extra=[self.extra[k] for k in pick] if self.extra else [],
        )

    def labels(self) -> dict[str, torch.Tensor]:
        return {"intent": self.intent, "emotion": self.emotion, "addressee": self.addressee}

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "ids": self.ids, "feats": self.feats, "present": self.present,
                "intent": self.intent, "emotion": self.emotion, "addressee": self.addressee,
                "dims": self.dims, "encoders": self.encoders, "texts": self.texts, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureTable:
        return cls(ids=d["ids"], feats=d["feats"], present=d["present"], intent=d["intent"],
                   emotion=d["emotion"], addressee=d["addressee"], dims=d["dims"], encoders=d["encoders"],
                   texts=d.get("texts", []), extra=d.get("extra", []))


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and rate. WAV via the stdlib; anything else via ffmpeg (16 kHz)."""
    try:
        if path.suffix.lower() == ".wav":
            with wave.open(str(path), "rb") as w:
                if w.getsampwidth() != 2:
                    raise InvalidAudioError(f"{path.name}: only 16-bit PCM WAV is supported")
                sr, ch = w.getframerate(), w.getnchannels()
                x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
            x = x.reshape(-1, ch).mean(1) if ch > 1 else x
            return x.astype(np.float32) / 32768.0, sr
        out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
                             check=True, capture_output=True).stdout
        return np.frombuffer(out, dtype=np.int16).astype(np.float32) / 32768.0, 16000
    except (wave.Error, EOFError, subprocess.CalledProcessError, OSError, ValueError) as exc:
        raise InvalidAudioError(f"unreadable audio {path.name}: {exc}") from exc


class FeatureCache:
    """Content-addressed store of encoded items (one small .pt file each)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()

    def _path(self, modality: str, key: str) -> Path:
        return self.root / modality / key[:2] / f"{key}.pt"

    def get(self, modality: str, key: str) -> dict[str, Any] | None:
        p = self._path(modality, key)
        if not p.exists():
            return None
        try:
            return torch.load(p, weights_only=True)  # type: ignore[no-any-return]
        except Exception:  # a torn write: re-encode
            return None

    def put(self, modality: str, key: str, value: dict[str, Any]) -> None:
        p = self._path(modality, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        torch.save(value, tmp)
        tmp.replace(p)


def _key(identity: str, payload: bytes) -> str:
    return hashlib.sha256(identity.encode() + b"\0" + payload).hexdigest()


def turn_text(typed: str | None, transcript: str | None) -> str | None:
    """The text token of a turn: typed text, else the transcript; both joined by a space."""
    parts = [s.strip() for s in (typed, transcript) if s and s.strip()]
    return " ".join(parts) if parts else None


def encode_manifest(manifest: Manifest, perception: PerceptionLike, *, cache: FeatureCache | None = None,
                    strict: bool = False, image_batch: int = 16) -> FeatureTable:
    """Encode every row (cached), skip (or, strict, fail on) rows whose media cannot be decoded."""
    cache = cache or FeatureCache()
    identities = perception.identities()
    dims = perception.feature_dims()
    # Whole-table key: manifest bytes + encoders + each media file's size and mtime.
    stamp = "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for r in manifest.rows
                     for p in (r.audio, r.image) if p is not None)
    table_key = _key(repr(sorted(identities.items())) + f"|{TABLE_FORMAT}|{stamp}", manifest.path.read_bytes())
    table_path = cache.root / "tables" / f"{table_key}.pt"
    if table_path.exists():
        try:
            d = torch.load(table_path, weights_only=True)
            raise_or_log(manifest.path, [tuple(e) for e in d["errors"]], strict, "media")  # type: ignore[misc]
            return FeatureTable.from_dict(d["table"])
        except (KeyError, RuntimeError, EOFError):
            pass
    rows = manifest.rows
    errors: list[tuple[int, str]] = []
    bad: set[int] = set()
    speech: dict[int, dict[str, Any]] = {}
    vision: dict[int, torch.Tensor] = {}
    t0 = time.perf_counter()

    # Speech first: transcripts become text tokens.
    audio_rows = [r for r in rows if r.audio is not None]
    for k, r in enumerate(audio_rows):
        assert r.audio is not None
        try:
            key = _key(identities["speech"], r.audio.read_bytes())
            hit = cache.get("speech", key)
            if hit is None:
                samples, sr = read_audio(r.audio)
                enc = perception.encode_speech(samples, sr)
                hit = {"vector": enc.feature_vector(), "transcript": enc.transcript}
                cache.put("speech", key, hit)
            speech[r.line] = hit
        except InputError as exc:
            errors.append((r.line, str(exc)))
            bad.add(r.line)
        if (k + 1) % 50 == 0:
            el = time.perf_counter() - t0
            log.info("speech %d/%d (%.0f s, ETA %.0f s)", k + 1, len(audio_rows), el, el / (k + 1) * (len(audio_rows) - k - 1))

    # Images, in batches; a failing batch is retried item by item to find the bad file.
    img_rows = [r for r in rows if r.image is not None and r.line not in bad]
    pending: dict[str, tuple[bytes, list[ManifestRow]]] = {}  # key -> (file bytes, rows showing it)
    for r in img_rows:
        assert r.image is not None
        data = r.image.read_bytes()
        key = _key(identities["vision"], data)
        if key in pending:
            pending[key][1].append(r)
            continue
        hit = cache.get("vision", key)
        if hit is None:
            pending[key] = (data, [r])
        else:
            vision[r.line] = hit["vector"]
    items = list(pending.items())
    for s in range(0, len(items), image_batch):
        chunk = items[s : s + image_batch]
        try:
            results: list[Any] = list(perception.encode_frames([c[1][0] for c in chunk]))
        except InputError:
            results = []
            for c in chunk:
                try:
                    results.append(perception.encode_frames([c[1][0]])[0])
                except InputError as exc:
                    results.append(exc)
        for (key, (_, img_of)), enc in zip(chunk, results, strict=True):
            if isinstance(enc, Exception):
                for r in img_of:
                    errors.append((r.line, f"unreadable image {r.image}: {enc}"))
                    bad.add(r.line)
                continue
            v = enc.feature_vector()
            cache.put("vision", key, {"vector": v})
            for r in img_of:
                vision[r.line] = v
        if (s // image_batch) % 10 == 9:
            log.info("images %d/%d (%.0f s)", s + len(chunk), len(items), time.perf_counter() - t0)

    # Texts: typed text and/or transcript, batched.
    texts = {r.line: turn_text(r.text, speech.get(r.line, {}).get("transcript")) for r in rows if r.line not in bad}
    text_vec: dict[str, torch.Tensor] = {}
    todo = []
    for t in {t for t in texts.values() if t}:
        hit = cache.get("text", _key(identities["text"], t.encode()))
        if hit is None:
            todo.append(t)
        else:
            text_vec[t] = hit["vector"]
    for s in range(0, len(todo), 64):
        tchunk = todo[s : s + 64]
        for tx, enc in zip(tchunk, perception.encode_text(tchunk), strict=True):
            v = enc.feature_vector()
            cache.put("text", _key(identities["text"], tx.encode()), {"vector": v})
            text_vec[tx] = v

    keep = [r for r in rows if r.line not in bad]
    N = len(keep)
    feats = {m: torch.zeros(N, dims[m]) for m in MEDIA_MODALITIES}
    present = torch.zeros(N, len(MEDIA_MODALITIES), dtype=torch.bool)
    for i, r in enumerate(keep):
        tt = texts[r.line]
        if tt:
            feats["text"][i], present[i, 0] = text_vec[tt], True
        if r.line in speech:
            feats["speech"][i], present[i, 1] = speech[r.line]["vector"], True
        if r.line in vision:
            feats["vision"][i], present[i, 2] = vision[r.line], True
    table = FeatureTable(
        ids=[r.id for r in keep], feats=feats, present=present,
        intent=torch.tensor([INTENTS.index(r.intent) if r.intent else -1 for r in keep], dtype=torch.long),
        emotion=torch.tensor([EMOTIONS.index(r.emotion) if r.emotion else -1 for r in keep], dtype=torch.long),
        addressee=torch.tensor([-1.0 if r.addressee is None else float(r.addressee) for r in keep]),
        dims=dict(dims), encoders=dict(identities), texts=[texts[r.line] for r in keep],
        extra=[r.extra for r in keep],
    )
    errors.sort()
    table_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"table": table.to_dict(), "errors": errors}, table_path)
    log.info("encoded %d turns of %s in %.0f s", N, manifest.path, time.perf_counter() - t0)
    raise_or_log(manifest.path, errors, strict, "media")
    return table
