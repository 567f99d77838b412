"""What the Ray Serve hop adds to one model call: the same encoder called in process and through
its Ray Serve deployment on loopback (a local Ray cluster on this machine), one call at a time.

For each model (text: one sentence; speech: one 1.6 s espeak-ng utterance; vision: one 640×480
JPEG) it times ``--calls`` sequential calls each way, alternating, after a warm-up, and reports
p50/p95 and the added p50 (Ray − in process). The issue's target: ≤ 15 ms added p50 per call.
Writes ``artifacts/bench_serving_hop.json``.

    flock /tmp/mmagent-bench.lock .venv/bin/python bench/serving_hop.py [--calls 60]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _speech() -> tuple[np.ndarray, int]:
    raw = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", "Where can I find the batteries?"],
                         check=True, capture_output=True).stdout
    pcm = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", "16000", "-c", "1", "-e", "signed-integer",
                          "-b", "16", "-"], input=raw, check=True, capture_output=True).stdout
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0, 16000


def _jpeg() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=60, help="timed calls per model and path")
    ap.add_argument("--models", nargs="+", default=["text", "speech", "vision"])
    ap.add_argument("--out", default=str(REPO / "artifacts" / "bench_serving_hop.json"))
    args = ap.parse_args()

    import ray
    from ray import serve

    from perception import Perception
    from server.config import load_config
    from server.engine import perception_config_for
    from server.serving.deployments import build_apps
    from server.serving.engine import RemotePerception

    config = load_config(None, env={})
    pconf = perception_config_for(config)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace=config.serving.namespace)
    serve.start(http_options={"location": "NoServer"})
    apps = build_apps(config)
    handles = {}
    for name, app in apps.items():
        if name.removeprefix(config.serving.app_prefix) in args.models:
            serve.run(app, name=name, route_prefix=None, blocking=False)
            handles[name.removeprefix(config.serving.app_prefix)] = serve.get_app_handle(name)
    print(f"model tier up in {time.perf_counter() - t0:.0f} s", flush=True)
    local = Perception(pconf)
    local.warmup(tuple(args.models))
    remote = RemotePerception(pconf, handles)
    audio, rate = _speech()
    jpeg = _jpeg()
    calls = {
        "text": (lambda p: p.encode_text(["where can I find the batteries?"])),
        "speech": (lambda p: p.encode_speech(audio, rate)),
        "vision": (lambda p: p.encode_frames([jpeg])),
    }
    results: dict[str, Any] = {"machine": {"cpu_count": os.cpu_count(), "arch": os.uname().machine,
                                           "loadavg_before": [round(x, 2) for x in load_before]},
                               "calls": args.calls, "ray": ray.__version__, "models": {}}
    for name in args.models:
        fn = calls[name]
        for _ in range(3):   # warm-up, both paths
            fn(local)
            fn(remote)
        times: dict[str, list[float]] = {"in_process": [], "ray_serve": []}
        for _ in range(args.calls):
            for path, target in (("in_process", local), ("ray_serve", remote)):
                t = time.perf_counter()
                fn(target)
                times[path].append((time.perf_counter() - t) * 1000)
        row = {path: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95)} for path, v in times.items()}
        row["added_p50_ms"] = round(statistics.median(times["ray_serve"]) - statistics.median(times["in_process"]), 2)
        results["models"][name] = row
        print(name, json.dumps(row), flush=True)
    results["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    serve.shutdown()
    ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print("\n| model | in process p50 / p95 ms | Ray Serve p50 / p95 ms | added p50 ms (target ≤ 15) |")
    print("|---|---|---|---|")
    for name, r in results["models"].items():
        print(f"| {name} | {r['in_process']['p50_ms']} / {r['in_process']['p95_ms']} | {r['ray_serve']['p50_ms']} / "
              f"{r['ray_serve']['p95_ms']} | {r['added_p50_ms']} |")
    print(f"load average before / after: {results['machine']['loadavg_before']} / {results['machine']['loadavg_after']}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
