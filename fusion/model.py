"""The attention fusion core and the pieces every fusion variant shares.

Shapes (B = batch, M = number of token modalities of the config, d = ``d_model``):

- input ``x``       : dict modality -> torch.Tensor (B, D_m) float32 (D_context = d); a missing key
                      means "absent in every row"
- input ``present`` : torch.Tensor (B, M) bool, column order = ``config.modalities``
- ``FusionOutput.fused``            : (B, d)
- ``FusionOutput.weights``          : (B, M), >= 0, zero on absent modalities, rows sum to 1
                                      over present ones (all zero when a row has none)
- ``FusionOutput.intent_logits``    : (B, n_intents)
- ``FusionOutput.emotion_logits``   : (B, n_emotions)
- ``FusionOutput.addressee_logits`` : (B,)
- ``FusionOutput.tokens``           : (B, M, d) projected modality embeddings (InfoNCE input)
- ``FusionOutput.present``          : (B, M) bool, the mask actually used (after modality dropout)
- ``FusionOutput.modality_logits``  : None, or (intent (B, M, n_intents), emotion (B, M, n_emotions),
                                      addressee (B, M)): per-token heads (attention with
                                      ``modality_heads`` / ``late_logits``); rows of absent tokens
                                      are meaningless and must be masked by ``present``

Absent inputs are replaced by zeros before projection and masked out of attention, so outputs
never depend on the values of an absent modality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fusion.config import FusionConfig


@dataclass
class FusionOutput:
    fused: torch.Tensor
    weights: torch.Tensor
    intent_logits: torch.Tensor
    emotion_logits: torch.Tensor
    addressee_logits: torch.Tensor
    tokens: torch.Tensor
    present: torch.Tensor
    modality_logits: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


class ModalityProjection(nn.Module):
    """(B, D_m) -> (B, d): LayerNorm, then a two-layer MLP."""

    def __init__(self, d_in: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_in), nn.Linear(d_in, d_model), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(d_model, d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Heads(nn.Module):
    """Task heads on a (B, d) state: intent, emotion, addressee."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        d = config.d_model
        self.intent = nn.Linear(d, len(config.intents))
        self.emotion = nn.Linear(d, len(config.emotions))
        self.addressee = nn.Linear(d, 1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.intent(h), self.emotion(h), self.addressee(h).squeeze(-1)


class FusionModel(nn.Module):
    """Base of every variant: per-modality projections, modality dropout, alignment temperature.

    Subclasses implement :meth:`fuse` on projected tokens.
    """

    # Variants that look at a single modality set this; modality dropout is then off.
    only_modality: str | None = None

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.modalities: tuple[str, ...] = config.modalities
        self.proj = nn.ModuleDict(
            {m: ModalityProjection(config.dim(m), config.d_model, config.dropout) for m in self.modalities}
        )
        # Learned InfoNCE temperature, stored as log(1/tau) as in CLIP.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x: dict[str, torch.Tensor], present: torch.Tensor,
                drop_modalities: bool = True) -> FusionOutput:
        """``drop_modalities=False`` turns modality dropout off for this call (the full view of a
        training batch, see ``fusion.train``); it never applies outside training anyway."""
        B, M = present.shape
        assert len(self.modalities) == M, f"present has {M} columns, expected {self.modalities}"
        present = present.bool()
        if self.only_modality is not None:
            keep = torch.tensor([m == self.only_modality for m in self.modalities], device=present.device)
            present = present & keep
        elif self.training and drop_modalities and self.config.modality_dropout > 0:
            present = modality_dropout(present, self.config.modality_dropout)
        tokens = []
        for i, m in enumerate(self.modalities):
            if m in x:
                v = x[m]
                assert v.shape == (B, self.config.dim(m)), f"{m}: got {tuple(v.shape)}, expected {(B, self.config.dim(m))}"
                v = torch.where(present[:, i : i + 1], v, torch.zeros_like(v))
            else:
                v = torch.zeros(B, self.config.dim(m), device=present.device)
                present = present.clone()
                present[:, i] = False
            tokens.append(self.proj[m](v))
        tok = torch.stack(tokens, dim=1)  # (B, M, d)
        tok = tok * present.unsqueeze(-1)
        self._modality_logits: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        fused, weights, logits = self.fuse(tok, present)
        intent, emotion, addressee = logits
        mod_logits, self._modality_logits = self._modality_logits, None
        return FusionOutput(fused, weights, intent, emotion, addressee, tok, present, mod_logits)

    def fuse(
        self, tok: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """tok (B, M, d), present (B, M) -> fused (B, d), weights (B, M), (intent, emotion, addressee)."""
        raise NotImplementedError


def modality_dropout(present: torch.Tensor, p: float) -> torch.Tensor:
    """Drop each present modality with chance ``p``; a row that had any keeps at least one."""
    drop = torch.rand(present.shape, device=present.device) < p
    kept = present & ~drop
    emptied = (kept.sum(1) == 0) & (present.sum(1) > 0)
    if emptied.any():
        # Keep one present modality, chosen at random, in rows that lost them all.
        scores = torch.rand(present.shape, device=present.device) * present
        one = torch.nn.functional.one_hot(scores.argmax(1), present.shape[1]).bool()
        kept = torch.where(emptied.unsqueeze(1), one, kept)
    return kept


def normalise_weights(w: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Zero the absent columns of (B, M) weights and renormalise each row to sum 1 (or 0)."""
    w = w * present
    s = w.sum(1, keepdim=True)
    return torch.where(s > 0, w / s.clamp_min(1e-12), torch.zeros_like(w))


class PreNormLayer(nn.Module):
    """Pre-norm transformer layer; returns the attention map averaged over heads."""

    def __init__(self, d: int, n_heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, pad: torch.Tensor, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h (B, T, d), pad (B, T) True = ignore -> h (B, T, d), attn (B, T, T) or None."""
        q = self.ln1(h)
        a, w = self.attn(q, q, q, key_padding_mask=pad, need_weights=need_weights, average_attn_weights=True)
        h = h + self.drop(a)
        h = h + self.drop(self.ff(self.ln2(h)))
        return h, w


class AttentionFusion(FusionModel):
    """Learned turn query token + modality-type embeddings + pre-norm transformer layers.

    The query token (never masked) reads the present modality tokens; its final state (plus, with
    ``pool_skip``, the attention-pooled modality tokens) is the fused vector. Modality weights = the query's last-layer attention over modality tokens,
    averaged over heads and renormalised over present modalities.
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__(config)
        d = config.d_model
        M = len(self.modalities)
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.type_emb = nn.Parameter(torch.randn(1, M, d) * 0.02)
        self.layers = nn.ModuleList(
            PreNormLayer(d, config.n_heads, d * config.ff_mult, config.dropout) for _ in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(d)
        if config.global_skip:
            self.skip_scores = nn.Parameter(torch.zeros(M))  # the weighted sum's alpha_m before the softmax
        self.heads = Heads(config)
        self.tok_heads: nn.ModuleDict | None = None
        if config.modality_heads or config.late_logits:
            # One LayerNorm + heads per modality token (after the layers): each modality's own vote.
            self.tok_ln = nn.ModuleDict({m: nn.LayerNorm(d) for m in self.modalities})
            self.tok_heads = nn.ModuleDict({m: Heads(config) for m in self.modalities})

    def fuse(self, tok, present):  # type: ignore[no-untyped-def]
        B, M, d = tok.shape
        h = torch.cat([self.query.expand(B, 1, d), tok + self.type_emb], dim=1)  # (B, 1+M, d)
        pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=tok.device), ~present], dim=1)  # (B, 1+M)
        attn: torch.Tensor | None = None
        for i, layer in enumerate(self.layers):
            h, attn = layer(h, pad, need_weights=i == len(self.layers) - 1)
        assert attn is not None and attn.shape == (B, 1 + M, 1 + M)
        weights = normalise_weights(attn[:, 0, 1:], present)  # (B, M)
        q = h[:, 0]
        if self.config.pool_skip:
            # A direct path from the modality tokens to the heads, weighted by the same attention
            # that is reported as "why": the seed's attention-weighted sum, on top of the layers.
            q = q + (weights.unsqueeze(-1) * tok).sum(1)
        if self.config.global_skip:
            # The weighted_sum baseline's path (one learned weight per modality, softmax over the
            # present ones), so this model contains the seed's Z = sum_m alpha_m P_m(x_m) as a special case.
            s = self.skip_scores.unsqueeze(0).expand_as(present).masked_fill(~present, float("-inf"))
            alpha = torch.softmax(s, dim=1).nan_to_num(0.0)
            q = q + (alpha.unsqueeze(-1) * tok).sum(1)
        fused = self.ln_f(q)  # (B, d)
        logits = self.heads(fused)
        if self.tok_heads is not None:
            outs = [self.tok_heads[m](self.tok_ln[m](h[:, 1 + i])) for i, m in enumerate(self.modalities)]
            per = tuple(torch.stack([o[k] for o in outs], dim=1) for k in range(3))  # (B, M, ...)
            self._modality_logits = (per[0], per[1], per[2])
            if self.config.late_logits:
                # Each present modality's vote, weighted by the same weights reported as "why"
                # (zero for absent modalities, so their values cannot leak into the output).
                w = weights
                logits = (logits[0] + (w.unsqueeze(-1) * per[0]).sum(1),
                          logits[1] + (w.unsqueeze(-1) * per[1]).sum(1),
                          logits[2] + (w * per[2]).sum(1))
        return fused, weights, logits
