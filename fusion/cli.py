"""``mmagent train``, ``mmagent eval`` and ``mmagent features``: the fusion layer's subcommands.

    mmagent features --manifest var/kiosk/train.jsonl --manifest var/kiosk/val.jsonl   # fill the cache
    mmagent train --manifest var/kiosk/train.jsonl --val var/kiosk/val.jsonl --out fusion/checkpoints/kiosk_default.pt
    mmagent eval --manifest var/kiosk/test.jsonl                       # score the demo checkpoint
    mmagent eval --benchmark --train var/kiosk/train.jsonl --val var/kiosk/val.jsonl \\
                 --manifest var/kiosk/test.jsonl                       # variants x subsets x 3 seeds
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fusion.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
from fusion.config import FusionConfig
from fusion.evaluate import SUBSETS, evaluate_table, markdown_table, summarise
from fusion.features import FeatureCache, FeatureTable, encode_manifest
from fusion.losses import LossWeights
from fusion.manifest import load_manifest
from fusion.predictor import FusionPredictor
from fusion.registry import VARIANTS
from fusion.train import TrainConfig, train_model

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add ``train``, ``eval`` and ``features`` to the ``mmagent`` command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--strict", action="store_true", help="fail on any bad manifest row (default: skip and report)")
    common.add_argument("--cache", type=Path, default=None, help="feature cache folder (default var/feature_cache)")
    common.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for training/scoring (0 = torch's default); a tiny model "
                             "trains fastest on one thread, and perception encoders keep their own setting")

    p = subparsers.add_parser("train", parents=[common], help="train a fusion model on a JSONL manifest")
    p.add_argument("--manifest", type=Path, required=True, help="training manifest (JSONL)")
    p.add_argument("--val", type=Path, default=None, help="validation manifest (early stopping)")
    p.add_argument("--out", type=Path, default=Path("artifacts/fusion/model.pt"),
                   help="where to write the checkpoint (default artifacts/fusion/model.pt; the shipped "
                   f"{DEFAULT_CHECKPOINT.name} is only replaced with --replace-default)")
    p.add_argument("--replace-default", action="store_true",
                   help=f"allow --out to overwrite the shipped demo checkpoint ({DEFAULT_CHECKPOINT.name})")
    _model_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed of initialisation and batching (default 0)")
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("eval", parents=[common], help="score a manifest against a checkpoint, or run the benchmark")
    e.add_argument("--manifest", type=Path, required=True, help="manifest to score (the test split in benchmark mode)")
    e.add_argument("--checkpoint", type=Path, default=None, help=f"checkpoint (default {DEFAULT_CHECKPOINT.name})")
    e.add_argument("--benchmark", action="store_true", help="train every variant on --train and compare")
    e.add_argument("--train", type=Path, default=None, help="benchmark: training manifest (JSONL)")
    e.add_argument("--val", type=Path, default=None, help="benchmark: validation manifest (early stopping)")
    e.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="benchmark: fusion variants to train and compare (default: all)")
    e.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="benchmark: training seeds per variant (default 0 1 2)")
    e.add_argument("--out-dir", type=Path, default=Path("artifacts/fusion_eval"),
                   help="where the scores are written as JSON and Markdown (default artifacts/fusion_eval)")
    e.add_argument("--jobs", type=int, default=1, help="benchmark: train this many models in parallel processes")
    _model_args(e)
    e.set_defaults(func=cmd_eval)

    f = subparsers.add_parser("features", parents=[common], help="encode manifests into the feature cache")
    f.add_argument("--manifest", type=Path, action="append", required=True,
                   help="manifest whose turns to encode (repeatable)")
    f.set_defaults(func=cmd_features)


def _model_args(p: argparse.ArgumentParser) -> None:
    d = FusionConfig()
    t = TrainConfig()
    g = p.add_argument_group("model and training")
    g.add_argument("--variant", default=d.variant, choices=list(VARIANTS),
                   help=f"fusion variant (default {d.variant})")
    g.add_argument("--d-model", type=int, default=d.d_model, help=f"width of the fusion core (default {d.d_model})")
    g.add_argument("--layers", type=int, default=d.n_layers, help=f"attention layers (default {d.n_layers})")
    g.add_argument("--heads", type=int, default=d.n_heads, help=f"attention heads (default {d.n_heads})")
    g.add_argument("--dropout", type=float, default=d.dropout, help=f"dropout (default {d.dropout:g})")
    g.add_argument("--modality-dropout", type=float, default=d.modality_dropout,
                   help=f"chance of dropping each modality of a training turn (default {d.modality_dropout:g})")
    g.add_argument("--epochs", type=int, default=t.epochs, help=f"most training epochs (default {t.epochs})")
    g.add_argument("--batch-size", type=int, default=t.batch_size, help=f"turns per batch (default {t.batch_size})")
    g.add_argument("--lr", type=float, default=t.lr, help=f"learning rate (default {t.lr:g})")
    g.add_argument("--patience", type=int, default=t.patience,
                   help=f"stop after this many epochs without a better validation score (default {t.patience})")
    g.add_argument("--align-weight", type=float, default=t.loss.align, help="InfoNCE loss weight")
    g.add_argument("--two-views", action=argparse.BooleanOptionalAction, default=t.two_views,
                   help="train each batch on the full turn and a modality-dropped copy")
    g.add_argument("--consistency", type=float, default=t.loss.consistency,
                   help="self-distillation weight: KL(full view || masked view); implies --two-views")
    g.add_argument("--label-smoothing", type=float, default=t.loss.label_smoothing,
                   help=f"label smoothing of the classification losses (default {t.loss.label_smoothing:g})")
    g.add_argument("--late-logits", action=argparse.BooleanOptionalAction, default=d.late_logits,
                   help="attention: add each modality token's own logits, weighted by the reported weights")
    g.add_argument("--unimodal-weight", type=float, default=t.loss.unimodal,
                   help="attention: auxiliary loss on each present modality token's own heads (adds them)")
    g.add_argument("--reconstruct", type=float, default=t.loss.reconstruct,
                   help="missing-modality reconstruction weight (training-only heads); implies --two-views")


def _configs(args: argparse.Namespace, dims: dict[str, int], seed: int) -> tuple[FusionConfig, TrainConfig]:
    fc = FusionConfig(variant=args.variant, input_dims=dims, d_model=args.d_model, n_layers=args.layers,
                      n_heads=args.heads, dropout=args.dropout, modality_dropout=args.modality_dropout,
                      **({"late_logits": args.late_logits,
                          "modality_heads": args.late_logits or args.unimodal_weight > 0}
                         if args.variant == "attention" else {}))
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                     seed=seed, two_views=args.two_views,
                     loss=LossWeights(align=args.align_weight, consistency=args.consistency,
                                      reconstruct=args.reconstruct,
                                      unimodal=args.unimodal_weight,
                                      label_smoothing=args.label_smoothing))
    return fc, tc


def _perception() -> Any:
    from perception import Perception, PerceptionConfig

    return Perception(PerceptionConfig())


def _table(path: Path, perception: Any, args: argparse.Namespace) -> FeatureTable:
    manifest = load_manifest(path, strict=args.strict)
    if manifest.errors:
        print(f"{path}: skipped {len(manifest.errors)} bad rows (see log; --strict to fail)")
    return encode_manifest(manifest, perception, cache=FeatureCache(args.cache), strict=args.strict)


def _threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def cmd_features(args: argparse.Namespace) -> int:
    p = _perception()
    for m in args.manifest:
        t = _table(m, p, args)
        print(f"{m}: {len(t)} turns encoded; present text/speech/vision = {t.present.sum(0).tolist()}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from perception.errors import ConfigError

    if args.out.resolve() == DEFAULT_CHECKPOINT.resolve() and not args.replace_default:
        raise ConfigError(f"refusing to overwrite the shipped checkpoint {DEFAULT_CHECKPOINT.name}: write to "
                          "another --out (use it with --checkpoint or pipeline.fusion_checkpoint), or add "
                          "--replace-default to replace it on purpose")
    p = _perception()
    train = _table(args.manifest, p, args)
    val = _table(args.val, p, args) if args.val else None
    _threads(args)
    fc, tc = _configs(args, train.dims, args.seed)
    model, info = train_model(fc, train, val, tc)
    metrics = {s: evaluate_table(model, val, s) for s in SUBSETS} if val is not None else {}
    info = {k: v for k, v in info.items() if k != "history"}
    info.update({"train_manifest": str(args.manifest), "val_manifest": str(args.val) if args.val else None,
                 "n_train": len(train), "val_metrics": metrics, "train_config": {
                     "epochs": tc.epochs, "batch_size": tc.batch_size, "lr": tc.lr, "seed": tc.seed,
                     "weight_decay": tc.weight_decay, "align_weight": tc.loss.align, "two_views": tc.two_views,
                     "unimodal_weight": tc.loss.unimodal},
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    out = save_checkpoint(args.out, model, encoders=train.encoders, feature_dims=train.dims, info=info)
    size_kb = out.stat().st_size / 1024
    print(f"wrote {out} ({size_kb:.0f} KiB, {sum(x.numel() for x in model.parameters())} parameters)")
    if metrics:
        print(json.dumps({s: {k: round(v, 4) for k, v in m.items()} for s, m in metrics.items()}, indent=1))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    p = _perception()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.benchmark:
        if args.train is None:
            raise SystemExit("mmagent eval --benchmark needs --train (and ideally --val)")
        train = _table(args.train, p, args)
        val = _table(args.val, p, args) if args.val else None
        test = _table(args.manifest, p, args)
        _threads(args)
        tasks = [(variant, seed) for variant in args.variants for seed in args.seeds]
        fc0, tc0 = _configs(args, train.dims, 0)
        jobs = [(replace(fc0, variant=v), replace(tc0, seed=sd), train, val, test) for v, sd in tasks]
        if args.jobs > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(args.jobs, initializer=torch.set_num_threads,
                                              initargs=(max(1, args.threads),)) as pool:
                scored = []
                for (v, sd), sc in zip(tasks, pool.imap(_bench_task, jobs, chunksize=1), strict=True):
                    scored.append(sc)
                    print(f"{v} seed {sd}: intent acc {100 * sc['all']['intent_acc']:.1f}", flush=True)
        else:
            scored = [_bench_task(j) for j in jobs]
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for variant in args.variants:
            runs = {s: [sc[s] for (v, _), sc in zip(tasks, scored, strict=True) if v == variant] for s in SUBSETS}
            results[variant] = {s: summarise(r) for s, r in runs.items()}
        meta = {"train": str(args.train), "val": str(args.val), "test": str(args.manifest),
                "seeds": args.seeds, "n_train": len(train), "n_test": len(test)}
        _write(args.out_dir / "benchmark", results, meta)
        _print_targets(results)
        return 0
    predictor = FusionPredictor.load(args.checkpoint)
    predictor.check_encoders(p.identities(), p.feature_dims())
    model, _ = load_checkpoint(args.checkpoint)
    table = _table(args.manifest, p, args)
    _threads(args)
    res = {s: summarise([evaluate_table(model, table, s, seed) for seed in (0, 1, 2)]) for s in SUBSETS}
    results = {str(args.checkpoint or DEFAULT_CHECKPOINT.name): res}
    _write(args.out_dir / "eval", results, {"manifest": str(args.manifest), "checkpoint": predictor.path})
    return 0


def _bench_task(job: tuple[FusionConfig, TrainConfig, FeatureTable, FeatureTable | None, FeatureTable]
                ) -> dict[str, dict[str, Any]]:
    """Train one (variant, seed) and score it on every subset of the test table."""
    fc, tc, train, val, test = job
    model, _ = train_model(fc, train, val, tc)
    return {s: evaluate_table(model, test, s, tc.seed) for s in SUBSETS}


def _write(stem: Path, results: dict[str, Any], meta: dict[str, Any]) -> None:
    md = markdown_table(results)
    print(md)
    stem.with_suffix(".json").write_text(json.dumps(_no_nan({"meta": meta, "results": results}), indent=1))
    stem.with_suffix(".md").write_text(md + "\n")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")


def _no_nan(x: Any) -> Any:
    """NaN (a metric with no labelled turn) -> null, so the JSON is standard."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_no_nan(v) for v in x]
    return x


def _print_targets(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    if "attention" not in results:
        return
    att = results["attention"]["all"]["intent_acc"]["mean"]
    uni = [v for v in results if v.startswith("unimodal_")]
    if uni:
        best = max(uni, key=lambda v: results[v]["all"]["intent_acc"]["mean"])
        b = results[best]["all"]["intent_acc"]["mean"]
        print(f"target: attention {100 * att:.1f} vs best unimodal ({best}) {100 * b:.1f}: "
              f"{100 * (att - b):+.1f} points (need >= +10)")
    others = {v: results[v]["all"]["intent_acc"]["mean"] for v in results if v != "attention"}
    if others:
        top = max(others, key=lambda v: others[v])
        print(f"target: attention {100 * att:.1f} vs best other variant ({top}) {100 * others[top]:.1f}")
    miss = results["attention"]["missing30"]["intent_acc"]["mean"]
    print(f"target: attention with 30% missing {100 * miss:.1f}: {100 * (miss - att):+.1f} points (need >= -5)")
