"""Typed results of perception: what each encoder returns.

Shapes (D = the encoder's output size, read from the encoder, not hard-coded):

- ``TextEncoding.embedding``   : torch.Tensor, shape (D_text,)   — 384 for all-MiniLM-L6-v2, L2-normalised
- ``SpeechEncoding.embedding`` : torch.Tensor, shape (D_speech,) — 384 for Whisper tiny.en (encoder width),
                                 mean of encoder states over voiced frames only
- ``FrameEncoding.embedding``  : torch.Tensor, shape (D_vision,) — 1280 for EfficientNet-Lite0 (pooled)

Embeddings live on the perception device (CUDA when available, else CPU). ``feature_vector()``
gives the fixed-size float32 CPU vector the fusion core consumes for each modality
(embedding followed by a few normalised metadata features).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

# Number of extra features appended to the speech and vision embeddings by feature_vector().
PROSODY_FEATURES = 8
FACE_FEATURES = 5


@dataclass(frozen=True)
class TextEncoding:
    """One encoded text. ``embedding``: (D_text,), L2-normalised."""

    text: str
    embedding: torch.Tensor
    n_tokens: int
    truncated: bool  # True when the text was longer than the encoder's max tokens

    def feature_vector(self) -> torch.Tensor:
        """(D_text,) float32 CPU vector for fusion."""
        return self.embedding.detach().float().cpu()

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "n_tokens": self.n_tokens, "truncated": self.truncated,
                "embedding_dim": int(self.embedding.shape[-1])}


@dataclass(frozen=True)
class Segment:
    """One transcribed segment; times in seconds from the start of the audio."""

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class Prosody:
    """Prosodic features of the voiced part of an utterance."""

    energy_db_mean: float      # RMS energy of voiced frames, dBFS
    energy_db_std: float
    pitch_hz_mean: float       # F0 over voiced frames (0 when no pitch was found)
    pitch_hz_std: float
    pitch_hz_range: float      # 90th - 10th percentile of F0
    speaking_rate_wps: float   # words per second of voiced time
    voiced_ratio: float        # voiced seconds / total seconds
    duration_s: float          # total seconds of audio

    def vector(self) -> torch.Tensor:
        """(PROSODY_FEATURES,) float32, each feature scaled to roughly [-3, 3]."""
        v = [
            (self.energy_db_mean + 30.0) / 10.0,
            self.energy_db_std / 5.0,
            (self.pitch_hz_mean - 150.0) / 50.0 if self.pitch_hz_mean > 0 else 0.0,
            self.pitch_hz_std / 20.0,
            self.pitch_hz_range / 50.0,
            (self.speaking_rate_wps - 2.5) / 1.0,
            self.voiced_ratio * 2.0 - 1.0,
            math.log1p(self.duration_s) - 1.0,
        ]
        return torch.tensor(v, dtype=torch.float32)

    def to_json(self) -> dict[str, float]:
        return {k: round(float(getattr(self, k)), 4) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class SpeechEncoding:
    """One encoded utterance. ``embedding``: (D_speech,), pooled over voiced frames only."""

    transcript: str
    segments: list[Segment]
    language: str
    avg_logprob: float        # duration-weighted mean over segments; -inf-safe (0.0 when no segment)
    no_speech_prob: float     # max over segments; 1.0 when VAD found no speech
    embedding: torch.Tensor
    prosody: Prosody
    duration_s: float
    voiced_s: float

    @property
    def confidence(self) -> float:
        """exp(avg_logprob) scaled by (1 - no_speech_prob): a 0..1 transcript confidence."""
        if not self.transcript:
            return 0.0
        return float(math.exp(min(0.0, self.avg_logprob)) * (1.0 - self.no_speech_prob))

    def feature_vector(self) -> torch.Tensor:
        """(D_speech + PROSODY_FEATURES,) float32 CPU vector for fusion."""
        return torch.cat([self.embedding.detach().float().cpu(), self.prosody.vector()])

    def to_json(self) -> dict[str, Any]:
        return {
            "transcript": self.transcript,
            "language": self.language,
            "avg_logprob": round(self.avg_logprob, 4),
            "no_speech_prob": round(self.no_speech_prob, 4),
            "confidence": round(self.confidence, 4),
            "duration_s": round(self.duration_s, 3),
            "voiced_s": round(self.voiced_s, 3),
            "segments": [
                {"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
                 "avg_logprob": round(s.avg_logprob, 4), "no_speech_prob": round(s.no_speech_prob, 4)}
                for s in self.segments
            ],
            "prosody": self.prosody.to_json(),
            "embedding_dim": int(self.embedding.shape[-1]),
        }


@dataclass(frozen=True)
class Label:
    """One classifier label: ImageNet index (or zero-shot prompt index), name, probability."""

    index: int
    name: str
    score: float


@dataclass(frozen=True)
class Faces:
    """Faces found in a frame. Boxes are (x, y, w, h) in pixels of the original image."""

    count: int
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    largest_center: tuple[float, float] | None = None  # (x, y) as fractions of width, height
    largest_rel_size: float = 0.0                      # largest box area / image area

    def vector(self) -> torch.Tensor:
        """(FACE_FEATURES,) float32: presence, log count, centre x, centre y, sqrt(rel size)."""
        cx, cy = self.largest_center if self.largest_center else (0.5, 0.5)
        return torch.tensor(
            [1.0 if self.count else 0.0, math.log1p(self.count), cx - 0.5, cy - 0.5,
             math.sqrt(self.largest_rel_size)],
            dtype=torch.float32,
        )

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "boxes": [list(b) for b in self.boxes],
                "largest_center": list(self.largest_center) if self.largest_center else None,
                "largest_rel_size": round(self.largest_rel_size, 4)}


@dataclass(frozen=True)
class FrameEncoding:
    """One encoded camera frame. ``embedding``: (D_vision,)."""

    embedding: torch.Tensor
    labels: list[Label]     # top-k, best first
    faces: Faces
    width: int
    height: int

    def feature_vector(self) -> torch.Tensor:
        """(D_vision + FACE_FEATURES,) float32 CPU vector for fusion."""
        return torch.cat([self.embedding.detach().float().cpu(), self.faces.vector()])

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.width, "height": self.height,
            "labels": [{"index": lb.index, "name": lb.name, "score": round(lb.score, 4)} for lb in self.labels],
            "faces": self.faces.to_json(),
            "embedding_dim": int(self.embedding.shape[-1]),
        }
