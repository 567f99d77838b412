"""Training: AdamW, linear warm-up then cosine decay, early stopping on validation, fixed seeds.

Batches come from a :class:`~fusion.features.FeatureTable` held in memory. The context token is
trained for robustness only: with chance ``config.context_prob`` a sample gets, as context, the
(detached) fused vector of a turn from the previous batch, so the model learns to read that token
without being thrown by it (the benchmark's turns are independent; see docs/fusion.md).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fusion.config import FusionConfig
from fusion.evaluate import evaluate_table
from fusion.features import FeatureTable
from fusion.losses import LossWeights, consistency_loss, fusion_loss, reconstruction_loss
from fusion.model import FusionModel
from fusion.registry import build_model

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 80
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    patience: int = 8           # epochs without validation improvement before stopping
    seed: int = 0
    loss: LossWeights = field(default_factory=LossWeights)
    # Train every batch on two views: the full turn and a modality-dropped copy (supervised loss
    # averaged over both; ``loss.consistency`` > 0 adds KL(full || masked)). Off: masked view only.
    two_views: bool = True  # (chosen on val, see docs/fusion.md "What was tried"; implied by consistency/reconstruct > 0)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_inputs(table: FeatureTable, idx: torch.Tensor, modalities: tuple[str, ...],
                 context: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Rows ``idx`` of a table as model input: (x, present (B, M)).

    ``context``: optional (B, d) context vectors with NaN rows meaning "no context".
    """
    B = len(idx)
    x: dict[str, torch.Tensor] = {}
    cols = []
    media_order = ("text", "speech", "vision")
    for m in modalities:
        if m == "context":
            if context is None:
                cols.append(torch.zeros(B, dtype=torch.bool))
            else:
                has = ~torch.isnan(context).any(1)
                x["context"] = torch.nan_to_num(context)
                cols.append(has)
        else:
            x[m] = table.feats[m][idx]
            cols.append(table.present[idx, media_order.index(m)])
    return x, torch.stack(cols, dim=1)


def lr_lambda(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def val_score(metrics: dict[str, float]) -> float:
    """Early-stopping criterion: mean of intent accuracy, emotion macro-F1, addressee accuracy."""
    return (metrics["intent_acc"] + metrics["emotion_f1"] + metrics["addressee_acc"]) / 3


def train_model(config: FusionConfig, train: FeatureTable, val: FeatureTable | None,
                tc: TrainConfig | None = None) -> tuple[FusionModel, dict[str, Any]]:
    """Train one model; returns it (best validation epoch restored) and a history dict."""
    tc = tc or TrainConfig()
    set_seed(tc.seed)
    model = build_model(config)
    mods = model.modalities
    # Training-only heads for missing-modality reconstruction (discarded after training).
    recon = torch.nn.ModuleDict({m: torch.nn.Sequential(torch.nn.Linear(config.d_model, config.d_model), torch.nn.GELU(),
                                                        torch.nn.Linear(config.d_model, config.d_model))
                                 for m in mods if m != "context"}) if tc.loss.reconstruct > 0 else None
    params = list(model.parameters()) + (list(recon.parameters()) if recon is not None else [])
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) / tc.batch_size))
    total = steps_per_epoch * tc.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, tc.warmup_steps, total))
    gen = torch.Generator().manual_seed(tc.seed)
    best, best_state, best_epoch, bad_epochs = -1.0, None, 0, 0
    history: list[dict[str, float]] = []
    prev_fused: torch.Tensor | None = None
    t0 = time.perf_counter()
    for epoch in range(tc.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        sums: dict[str, float] = {}
        for s in range(0, len(train), tc.batch_size):
            idx = perm[s : s + tc.batch_size]
            ctx = None
            if "context" in mods and prev_fused is not None and config.context_prob > 0:
                pick = torch.randint(len(prev_fused), (len(idx),), generator=gen)
                ctx = prev_fused[pick].clone()
                ctx[torch.rand(len(idx), generator=gen) >= config.context_prob] = float("nan")
            x, present = model_inputs(train, idx, mods, ctx)
            out = model(x, present)
            labels = {k: v[idx] for k, v in train.labels().items()}
            loss, parts = fusion_loss(out, labels, tc.loss, model.logit_scale, mods)
            if tc.two_views or tc.loss.consistency > 0 or recon is not None:
                full = model(x, present, drop_modalities=False)
                loss_full, parts_full = fusion_loss(full, labels, tc.loss, model.logit_scale, mods)
                loss = 0.5 * (loss + loss_full)
                parts = {k: 0.5 * (v + parts_full[k]) for k, v in parts.items()}
                if tc.loss.consistency > 0:
                    cons = consistency_loss(full, out)
                    loss = loss + tc.loss.consistency * cons
                    parts["consistency"] = float(cons.detach())
                if recon is not None:
                    rec = reconstruction_loss(recon, full, out, mods)
                    loss = loss + tc.loss.reconstruct * rec
                    parts["reconstruct"] = float(rec.detach())
                out = full
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            prev_fused = out.fused.detach()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
        row = {k: v / len(train) for k, v in sums.items()}
        row["epoch"] = epoch
        if val is not None and len(val):
            vm = evaluate_table(model, val)
            row.update({f"val_{k}": v for k, v in vm.items() if isinstance(v, float)})
            score = val_score(vm)
            if score > best + 1e-4:
                best, best_epoch, bad_epochs = score, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
        history.append(row)
        log.debug("epoch %d %s", epoch, row)
        if val is not None and bad_epochs >= tc.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    info = {"epochs_run": len(history), "best_epoch": best_epoch, "best_val_score": best,
            "seconds": round(time.perf_counter() - t0, 2), "history": history}
    log.info("%s seed %d: %d epochs, best epoch %d, val score %.4f, %.1f s", config.variant, tc.seed,
             len(history), best_epoch, best, info["seconds"])
    return model, info
