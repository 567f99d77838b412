"""Training losses: masked multi-task loss and the cross-modal InfoNCE alignment loss.

Labels (N = batch): ``intent`` (N,) long, ``emotion`` (N,) long, ``addressee`` (N,) float;
-1 marks a missing label, whose loss is masked out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fusion.model import FusionOutput


@dataclass
class LossWeights:
    intent: float = 1.0
    emotion: float = 1.0
    addressee: float = 0.5
    align: float = 0.1   # InfoNCE weight


def masked_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over rows whose target is >= 0 (0 if none)."""
    keep = target >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], target[keep])


def masked_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    keep = target >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[keep], target[keep].float())


def info_nce(tokens: torch.Tensor, present: torch.Tensor, logit_scale: torch.Tensor,
             modalities: tuple[str, ...]) -> torch.Tensor:
    """Symmetric InfoNCE between projected embeddings of the same turn, over every pair of media
    modalities (the context token is excluded) co-present in at least two rows.

    tokens (B, M, d), present (B, M) bool; ``logit_scale`` = log(1/temperature), learned.
    """
    scale = logit_scale.clamp(max=4.6052).exp()  # temperature >= 0.01
    z = F.normalize(tokens, dim=-1)
    media = [i for i, m in enumerate(modalities) if m != "context"]
    losses = []
    for a_i, a in enumerate(media):
        for b in media[a_i + 1 :]:
            both = present[:, a] & present[:, b]
            if both.sum() < 2:
                continue
            za, zb = z[both, a], z[both, b]
            logits = scale * za @ zb.T  # (n, n)
            target = torch.arange(len(za), device=za.device)
            losses.append(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)))
    if not losses:
        return tokens.sum() * 0.0
    return torch.stack(losses).mean()


def fusion_loss(out: FusionOutput, labels: dict[str, torch.Tensor], w: LossWeights,
                logit_scale: torch.Tensor, modalities: tuple[str, ...]) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (as floats, for logging)."""
    parts = {
        "intent": masked_ce(out.intent_logits, labels["intent"]),
        "emotion": masked_ce(out.emotion_logits, labels["emotion"]),
        "addressee": masked_bce(out.addressee_logits, labels["addressee"]),
        "align": info_nce(out.tokens, out.present, logit_scale, modalities) if w.align > 0
        else out.fused.sum() * 0.0,
    }
    total = w.intent * parts["intent"] + w.emotion * parts["emotion"] + w.addressee * parts["addressee"] \
        + w.align * parts["align"]
    return total, {k: float(v.detach()) for k, v in parts.items()}
