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
    consistency: float = 0.0  # self-distillation: KL(full-view prediction || masked-view prediction)
    label_smoothing: float = 0.0  # intent and emotion cross-entropy
    unimodal: float = 0.0  # auxiliary CE/BCE on each present modality token's own heads (models with modality_heads)
    reconstruct: float = 0.0  # predict a dropped modality's (full-view) token from the masked view's fused vector


def masked_ce(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over rows whose target is >= 0 (0 if none)."""
    keep = target >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], target[keep], label_smoothing=label_smoothing)


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
        "intent": masked_ce(out.intent_logits, labels["intent"], w.label_smoothing),
        "emotion": masked_ce(out.emotion_logits, labels["emotion"], w.label_smoothing),
        "addressee": masked_bce(out.addressee_logits, labels["addressee"]),
        "align": info_nce(out.tokens, out.present, logit_scale, modalities) if w.align > 0
        else out.fused.sum() * 0.0,
    }
    total = w.intent * parts["intent"] + w.emotion * parts["emotion"] + w.addressee * parts["addressee"] \
        + w.align * parts["align"]
    if w.unimodal > 0 and out.modality_logits is not None:  # models without per-modality heads: no-op
        parts["unimodal"] = unimodal_loss(out, labels, w, modalities)
        total = total + w.unimodal * parts["unimodal"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


def unimodal_loss(out: FusionOutput, labels: dict[str, torch.Tensor], w: LossWeights,
                  modalities: tuple[str, ...]) -> torch.Tensor:
    """Auxiliary loss against modality competition: every present media token's own heads
    (``out.modality_logits``) are trained on the turn's labels; mean over media modalities."""
    assert out.modality_logits is not None
    li, le, la = out.modality_logits
    losses = []
    for i, m in enumerate(modalities):
        if m == "context":
            continue
        rows = out.present[:, i]
        if not rows.any():
            continue
        losses.append(w.intent * masked_ce(li[rows, i], labels["intent"][rows], w.label_smoothing)
                      + w.emotion * masked_ce(le[rows, i], labels["emotion"][rows], w.label_smoothing)
                      + w.addressee * masked_bce(la[rows, i], labels["addressee"][rows]))
    if not losses:
        return out.fused.sum() * 0.0
    return torch.stack(losses).mean()


def consistency_loss(teacher: FusionOutput, student: FusionOutput) -> torch.Tensor:
    """Self-distillation from the full view of a turn to its masked view: mean over the three heads
    of KL(teacher || student), the teacher's (full-input) predictions detached. Rows whose view was
    not masked contribute (near) zero. Needs no labels, so it also covers unlabelled heads."""
    kls = []
    for t, s in ((teacher.intent_logits, student.intent_logits), (teacher.emotion_logits, student.emotion_logits)):
        kls.append(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t.detach(), -1), log_target=True,
                            reduction="batchmean"))
    pt = torch.sigmoid(teacher.addressee_logits.detach())
    ps = student.addressee_logits
    # Bernoulli KL = BCE(student, p_t) - H(p_t); the entropy term has no gradient.
    kls.append(F.binary_cross_entropy_with_logits(ps, pt)
               - F.binary_cross_entropy_with_logits(teacher.addressee_logits.detach(), pt))
    return torch.stack(kls).mean()


def reconstruction_loss(recon: torch.nn.ModuleDict, teacher: FusionOutput, student: FusionOutput,
                        modalities: tuple[str, ...]) -> torch.Tensor:
    """Missing-modality reconstruction: for every media modality present in the full view but
    dropped in the masked one, 1 - cosine(head_m(student fused), teacher token_m (detached)).
    ``recon`` holds one training-only head per media modality (not part of the checkpoint)."""
    losses = []
    for i, m in enumerate(modalities):
        if m == "context" or m not in recon:
            continue
        rows = teacher.present[:, i] & ~student.present[:, i]
        if rows.any():
            pred = recon[m](student.fused[rows])
            losses.append((1 - F.cosine_similarity(pred, teacher.tokens[rows, i].detach(), dim=-1)).mean())
    if not losses:
        return student.fused.sum() * 0.0
    return torch.stack(losses).mean()
