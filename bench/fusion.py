"""Latency and size of the fusion core alone (features in, FusedTurn-ready tensors out).

    python bench/fusion.py [--checkpoint FILE] [--threads 1] [--json artifacts/fusion_latency.json]

Reports, for every registered variant built with the checkpoint's config (attention = the
checkpoint's own weights), the parameter count and the median / p90 time per turn at batch 1 and
batch 64 with all modalities present, plus the full predictor path (FusionPredictor.predict) at
batch 1. CPU; ``--threads`` pins torch's thread count (the default leaves torch's own choice).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusion.predictor import FusionPredictor, ModalityInputs
from fusion.registry import VARIANTS, build_model


def _time(fn, n: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    for _ in range(max(5, n // 10)):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return statistics.median(ts), ts[int(0.9 * (len(ts) - 1))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fp = FusionPredictor.load(args.checkpoint)
    cfg = fp.config
    rows = []
    for variant in VARIANTS:
        model = fp.model if variant == cfg.variant else build_model(replace(cfg, variant=variant)).eval()
        res = {"variant": variant, "params": sum(p.numel() for p in model.parameters())}
        for B in (1, 64):
            x = {m: torch.randn(B, cfg.dim(m)) for m in model.modalities}
            present = torch.ones(B, len(model.modalities), dtype=torch.bool)

            def step(x=x, present=present, model=model) -> None:  # type: ignore[no-untyped-def]
                with torch.inference_mode():
                    model(x, present)

            med, p90 = _time(step, args.iters if B == 1 else max(30, args.iters // 5))
            res[f"b{B}_ms_per_turn"] = round(1000 * med / B, 4)
            res[f"b{B}_p90_ms_per_turn"] = round(1000 * p90 / B, 4)
        rows.append(res)
    turn = [ModalityInputs(**{m: torch.randn(cfg.dim(m)) for m in fp.model.modalities})]  # type: ignore[arg-type]
    pred_med, pred_p90 = _time(lambda: fp.predict(turn), args.iters)
    out = {
        "checkpoint": fp.path, "size_bytes": Path(fp.path or "").stat().st_size if fp.path else None,
        "threads": torch.get_num_threads(), "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "torch": torch.__version__, "variants": rows,
        "predictor_b1_ms": round(1000 * pred_med, 4), "predictor_b1_p90_ms": round(1000 * pred_p90, 4),
    }
    print(f"checkpoint {out['checkpoint']} ({out['size_bytes']} bytes), torch threads {out['threads']}")
    print("| variant | params | batch 1 ms/turn (p90) | batch 64 ms/turn (p90) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['params']:,} | {r['b1_ms_per_turn']:.3f} ({r['b1_p90_ms_per_turn']:.3f}) | "
              f"{r['b64_ms_per_turn']:.4f} ({r['b64_p90_ms_per_turn']:.4f}) |")
    print(f"FusionPredictor.predict, one turn: {out['predictor_b1_ms']:.3f} ms (p90 {out['predictor_b1_p90_ms']:.3f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
