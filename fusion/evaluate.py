"""Metrics and the benchmark: fusion variant x modality subset -> scores (mean ± std over seeds).

Subsets (``SUBSETS``): a turn is scored when it has at least one modality of the subset; the
other modalities are masked out. ``missing30`` drops each present modality with chance 0.3
(seeded), keeping at least one per turn. No context token is given in evaluation.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from fusion.features import FeatureTable
from fusion.labels import MEDIA_MODALITIES
from fusion.model import FusionModel, modality_dropout

SUBSETS: dict[str, tuple[str, ...] | None] = {
    "all": ("text", "speech", "vision"),
    "text": ("text",),
    "speech": ("speech",),
    "vision": ("vision",),
    "text+vision": ("text", "vision"),
    "missing30": None,
}
METRICS = ("intent_acc", "intent_f1", "emotion_f1", "addressee_acc")


def macro_f1(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    """Macro-F1 over the classes that occur in ``y_true`` (rows with y_true < 0 are ignored)."""
    keep = y_true >= 0
    t, p = y_true[keep], y_pred[keep]
    if len(t) == 0:
        return float("nan")
    f1s = []
    for c in t.unique().tolist():
        tp = int(((p == c) & (t == c)).sum())
        fp = int(((p == c) & (t != c)).sum())
        fn = int(((p != c) & (t == c)).sum())
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def _acc(t: torch.Tensor, p: torch.Tensor) -> float:
    keep = t >= 0
    return float((t[keep] == p[keep]).float().mean()) if keep.any() else float("nan")


@torch.inference_mode()
def predict_table(model: FusionModel, table: FeatureTable, present: torch.Tensor | None = None,
                  batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Logits of every row; ``present`` (N, 3) overrides the table's media mask."""
    from fusion.train import model_inputs

    model.eval()
    pres = table.present if present is None else present
    view = FeatureTable(table.ids, table.feats, pres, table.intent, table.emotion, table.addressee,
                        table.dims, table.encoders)
    outs: dict[str, list[torch.Tensor]] = {"intent": [], "emotion": [], "addressee": [], "weights": []}
    for s in range(0, len(table), batch_size):
        idx = torch.arange(s, min(len(table), s + batch_size))
        x, p = model_inputs(view, idx, model.modalities)
        o = model(x, p)
        outs["intent"].append(o.intent_logits)
        outs["emotion"].append(o.emotion_logits)
        outs["addressee"].append(o.addressee_logits)
        outs["weights"].append(o.weights)
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in outs.items()}


def score(table: FeatureTable, logits: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> dict[str, Any]:
    """The four metrics over ``rows`` (bool mask, default all)."""
    rows = torch.ones(len(table), dtype=torch.bool) if rows is None else rows
    it, et, at = table.intent[rows], table.emotion[rows], table.addressee[rows]
    ip = logits["intent"][rows].argmax(1)
    ep = logits["emotion"][rows].argmax(1)
    ap = (logits["addressee"][rows] > 0).float()
    return {"intent_acc": _acc(it, ip), "intent_f1": macro_f1(it, ip), "emotion_f1": macro_f1(et, ep),
            "addressee_acc": _acc(at.long(), ap.long()), "n": int(rows.sum())}


def subset_mask(table: FeatureTable, subset: str, seed: int = 0) -> torch.Tensor:
    """(N, 3) media mask for one named subset."""
    keep = SUBSETS[subset]
    if keep is None:
        with torch.random.fork_rng():
            torch.manual_seed(10_000 + seed)
            return modality_dropout(table.present, 0.3)
    cols = torch.tensor([m in keep for m in MEDIA_MODALITIES])
    return table.present & cols


def evaluate_table(model: FusionModel, table: FeatureTable, subset: str = "all", seed: int = 0) -> dict[str, Any]:
    """Scores of one model on one subset of one table."""
    mask = subset_mask(table, subset, seed)
    rows = mask.any(1)
    return score(table, predict_table(model, table, mask), rows)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and (population) std over seeds of each metric. A metric with no scored rows (NaN:
    e.g. the speech subset of a text-only manifest) has mean and std None, shown as "n/a"."""
    out: dict[str, Any] = {"n": runs[0]["n"], "seeds": len(runs)}
    for k in METRICS:
        vals = [r[k] for r in runs]
        finite = [v for v in vals if not math.isnan(v)]
        if not finite:
            out[k] = {"mean": None, "std": None, "values": [None] * len(vals)}
            continue
        out[k] = {"mean": statistics.fmean(finite), "std": statistics.pstdev(finite) if len(finite) > 1 else 0.0,
                  "values": [v if not math.isnan(v) else None for v in vals]}
    return out


def _cell(s: dict[str, Any]) -> str:
    return "n/a" if s["mean"] is None else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def markdown_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """results[variant][subset] = summarise(...) -> a markdown table (percent, mean ± std)."""
    lines = ["| variant | subset | n | intent acc | intent macro-F1 | emotion macro-F1 | addressee acc |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for variant, subs in results.items():
        for subset, s in subs.items():
            cells = [_cell(s[k]) for k in METRICS]
            lines.append(f"| {variant} | {subset} | {s['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
