"""Baseline fusion variants (same interface as :class:`fusion.model.AttentionFusion`).

- ``weighted_sum``: the seed article's Z = αF(x) + βT(y), generalised to every present
  modality: Z = Σ_m α_m P_m(x_m), α = softmax of learned scalars over the present modalities.
- ``concat_mlp``: concatenated projected tokens (zeros where absent) + presence flags -> MLP.
- ``late_fusion``: one classifier per modality; logits averaged over present modalities.
- ``unimodal_<m>``: a single modality's projection and heads; everything else ignored.
"""

from __future__ import annotations

import torch
from torch import nn

from fusion.config import FusionConfig
from fusion.model import FusionModel, Heads, normalise_weights


class WeightedSumFusion(FusionModel):
    def __init__(self, config: FusionConfig) -> None:
        super().__init__(config)
        self.scores = nn.Parameter(torch.zeros(len(self.modalities)))  # α_m before the softmax
        self.ln = nn.LayerNorm(config.d_model)
        self.heads = Heads(config)

    def fuse(self, tok, present):  # type: ignore[no-untyped-def]
        s = self.scores.unsqueeze(0).expand_as(present).masked_fill(~present, float("-inf"))
        alpha = torch.softmax(s, dim=1).nan_to_num(0.0)  # rows with nothing present -> 0
        z = (alpha.unsqueeze(-1) * tok).sum(1)  # (B, d)
        fused = self.ln(z)
        return fused, normalise_weights(alpha, present), self.heads(fused)


class ConcatMLPFusion(FusionModel):
    def __init__(self, config: FusionConfig) -> None:
        super().__init__(config)
        d, M = config.d_model, len(self.modalities)
        self.mlp = nn.Sequential(
            nn.LayerNorm(M * d + M), nn.Linear(M * d + M, 2 * d), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(2 * d, d),
        )
        self.ln = nn.LayerNorm(d)
        self.heads = Heads(config)

    def fuse(self, tok, present):  # type: ignore[no-untyped-def]
        B = tok.shape[0]
        fused = self.ln(self.mlp(torch.cat([tok.reshape(B, -1), present.float()], dim=1)))
        # No per-modality weights exist in this model: report uniform over present modalities.
        return fused, normalise_weights(present.float(), present), self.heads(fused)


class LateFusion(FusionModel):
    def __init__(self, config: FusionConfig) -> None:
        super().__init__(config)
        self.lns = nn.ModuleDict({m: nn.LayerNorm(config.d_model) for m in self.modalities})
        self.heads = nn.ModuleDict({m: Heads(config) for m in self.modalities})
        self.prior = Heads(config)  # used only by rows with nothing present

    def fuse(self, tok, present):  # type: ignore[no-untyped-def]
        w = normalise_weights(present.float(), present)  # (B, M) uniform over present
        outs = [self.heads[m](self.lns[m](tok[:, i])) for i, m in enumerate(self.modalities)]
        none = (present.sum(1) == 0).float()
        prior = self.prior(torch.zeros_like(tok[:, 0]))
        mixed = []
        for k in range(3):
            stack = torch.stack([o[k] for o in outs], dim=1)  # (B, M, ...)
            wk = w.view(*w.shape, *([1] * (stack.dim() - 2)))
            nk = none.view(-1, *([1] * (stack.dim() - 2)))
            mixed.append((wk * stack).sum(1) + nk * prior[k])
        fused = (w.unsqueeze(-1) * tok).sum(1)
        return fused, w, (mixed[0], mixed[1], mixed[2])


class UnimodalModel(FusionModel):
    def __init__(self, config: FusionConfig, modality: str) -> None:
        super().__init__(config)
        self.only_modality = modality
        self.index = self.modalities.index(modality)
        self.ln = nn.LayerNorm(config.d_model)
        self.heads = Heads(config)

    def fuse(self, tok, present):  # type: ignore[no-untyped-def]
        fused = self.ln(tok[:, self.index])  # absent -> zero token -> the heads' learned prior
        return fused, normalise_weights(present.float(), present), self.heads(fused)
