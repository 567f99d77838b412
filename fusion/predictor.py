"""Run-time inference: a loaded checkpoint turns modality features into a :class:`FusedTurn`.

>>> fp = FusionPredictor.load(None)          # the demo checkpoint
>>> turn = fp.predict([ModalityInputs(text=torch.zeros(fp.input_dims["text"]))])[0]
>>> sorted(turn.modality_weights)
['text']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fusion.checkpoint import encoder_differences, load_checkpoint
from fusion.errors import CheckpointError
from fusion.model import FusionModel
from perception.errors import InputError


@dataclass
class ModalityInputs:
    """One turn's features; any may be None. Each a ``feature_vector()``: text (D_text,),
    speech (D_speech,), vision (D_vision,) or (n_frames, D_vision) (frames are averaged),
    context (d_model,) = the previous turn's ``FusedTurn.fused``."""

    text: torch.Tensor | None = None
    speech: torch.Tensor | None = None
    vision: torch.Tensor | None = None
    context: torch.Tensor | None = None


@dataclass
class FusedTurn:
    intent: str
    intent_confidence: float
    intent_probs: dict[str, float]
    emotion: str
    emotion_confidence: float
    emotion_probs: dict[str, float]
    addressee: bool
    addressee_prob: float
    modality_weights: dict[str, float]  # present modalities only, sum 1 (empty if none present)
    fused: torch.Tensor                 # (d_model,), pass as the next turn's context

    def to_json(self) -> dict[str, Any]:
        r4 = lambda d: {k: round(v, 4) for k, v in d.items()}  # noqa: E731
        return {
            "intent": self.intent, "intent_confidence": round(self.intent_confidence, 4),
            "intent_probs": r4(self.intent_probs), "emotion": self.emotion,
            "emotion_confidence": round(self.emotion_confidence, 4), "emotion_probs": r4(self.emotion_probs),
            "addressee": self.addressee, "addressee_prob": round(self.addressee_prob, 4),
            "modality_weights": r4(self.modality_weights),
        }


class FusionPredictor:
    """A fusion model in eval mode plus its checkpoint metadata. Safe to share between threads."""

    def __init__(self, model: FusionModel, meta: dict[str, Any]) -> None:
        self.model = model.eval()
        self.config = model.config
        self.encoders: dict[str, str] = dict(meta.get("encoders") or {})
        self.feature_dims: dict[str, int] = dict(meta.get("feature_dims") or {})
        self.info: dict[str, Any] = dict(meta.get("info") or {})
        self.path: str | None = meta.get("path")

    @classmethod
    def load(cls, path: str | Path | None = None, *, encoders: dict[str, str] | None = None) -> FusionPredictor:
        """Load a checkpoint (None = the default demo checkpoint); with ``encoders``, also check them."""
        model, meta = load_checkpoint(path)
        fp = cls(model, meta)
        if encoders is not None:
            fp.check_encoders(encoders)
        return fp

    @property
    def input_dims(self) -> dict[str, int]:
        return dict(self.config.input_dims)

    @property
    def d_model(self) -> int:
        return self.config.d_model

    def check_encoders(self, identities: dict[str, str], feature_dims: dict[str, int] | None = None) -> None:
        """Raise CheckpointError naming each encoder (or feature size) that differs from training."""
        diffs = encoder_differences(self.encoders, identities, self.feature_dims, feature_dims)
        if diffs:
            raise CheckpointError(f"fusion checkpoint {self.path} does not match the encoders in use: " + "; ".join(diffs))

    def _vector(self, m: str, v: torch.Tensor) -> torch.Tensor:
        v = torch.as_tensor(v).detach().float().cpu()
        if m == "vision" and v.dim() == 2:
            v = v.mean(0)
        want = self.config.dim(m)
        if v.shape != (want,):
            raise InputError(f"fusion input {m!r} has shape {tuple(v.shape)}, the checkpoint expects ({want},)")
        if not torch.isfinite(v).all():
            raise InputError(f"fusion input {m!r} contains NaN or infinite values")
        return v

    @torch.inference_mode()
    def predict(self, turns: list[ModalityInputs]) -> list[FusedTurn]:
        """One FusedTurn per input, computed in a single batch."""
        if not turns:
            return []
        mods = self.model.modalities
        B = len(turns)
        x = {m: torch.zeros(B, self.config.dim(m)) for m in mods}
        present = torch.zeros(B, len(mods), dtype=torch.bool)
        for i, t in enumerate(turns):
            for j, m in enumerate(mods):
                v = getattr(t, m, None)
                if v is not None:
                    x[m][i] = self._vector(m, v)
                    present[i, j] = True
        out = self.model(x, present)
        ip = out.intent_logits.softmax(-1)
        ep = out.emotion_logits.softmax(-1)
        ap = out.addressee_logits.sigmoid()
        intents, emotions = self.config.intents, self.config.emotions
        res = []
        for i in range(B):
            ii, ei = int(ip[i].argmax()), int(ep[i].argmax())
            res.append(FusedTurn(
                intent=intents[ii], intent_confidence=float(ip[i, ii]),
                intent_probs={n: float(p) for n, p in zip(intents, ip[i].tolist(), strict=True)},
                emotion=emotions[ei], emotion_confidence=float(ep[i, ei]),
                emotion_probs={n: float(p) for n, p in zip(emotions, ep[i].tolist(), strict=True)},
                addressee=bool(ap[i] > 0.5), addressee_prob=float(ap[i]),
                modality_weights={m: float(out.weights[i, j]) for j, m in enumerate(mods) if present[i, j]},
                fused=out.fused[i].clone(),
            ))
        return res


__all__ = ["CheckpointError", "FusedTurn", "FusionPredictor", "ModalityInputs"]
