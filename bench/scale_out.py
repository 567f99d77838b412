"""One front end in process (the default: models and SQLite in ``mmagent serve``) vs the balanced
setup (HAProxy → 2 front ends → Ray Serve model tier, sessions in PostgreSQL), same load.

Both setups stay up and the runs alternate per N, so other load on a shared machine falls on
both alike. The load is bench/server.py's (kiosks: a frame a second, spoken and typed turns);
the numbers are client-side. On one small machine the balanced setup only adds processes on the
same cores: this measures the cost of the tiers and proves the wiring, not the gain of more
machines (docs/deploy.md has the sizing). Writes ``artifacts/bench_scale_out.json``.

    flock /tmp/mmagent-bench.lock .venv/bin/python bench/scale_out.py [--n 1 8] [--turns 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--n1-turns", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", default=str(REPO / "artifacts" / "bench_scale_out.json"))
    args = ap.parse_args()

    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_server", REPO / "bench" / "server.py")
    assert spec is not None and spec.loader is not None
    bs: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bs)
    from tests.scale_stack import ScaleStack

    voices = [bs.speech(t) for t in bs.SPOKEN]
    jpegs = bs.frames()
    load_before = os.getloadavg()
    single = bs.ServerProcess(True, args.max_new_tokens, tempfile.mkdtemp(prefix="mmagent-bench-"))
    small = {"num_cpus": 0.25}
    stack = ScaleStack(2, ray=True, extra={
        "limits": {"max_sessions": 256, "max_sessions_per_token": 256},
        "agent": {"responder": {"local": {"max_new_tokens": args.max_new_tokens}}},
        "serving": {"text": small, "speech": small, "vision": small, "llm": small}})
    results: dict[str, Any] = {"config": {"n": args.n, "turns": args.turns, "n1_turns": args.n1_turns,
                                          "max_new_tokens": args.max_new_tokens, "cpu_count": os.cpu_count(),
                                          "loadavg_before": [round(x, 2) for x in load_before]},
                               "runs": {"1 front end, in process": [], "HAProxy + 2 front ends + Ray Serve": []}}
    try:
        stack.start()
        assert stack.lb is not None
        for n in args.n:
            for label, url in (("1 front end, in process", single.ws_url),
                               ("HAProxy + 2 front ends + Ray Serve", stack.lb.ws_url)):
                results["runs"][label] += bs.run_external(url, label, [n], args.turns, args.n1_turns, ["burst"],
                                                          4.0, voices, jpegs)
    finally:
        stack.stop()
        single.stop()
    results["config"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print("\n| setup | N | speech→1st delta p50 / p95 ms | text→1st delta p50 / p95 ms | turns/min | errors |")
    print("|---|---|---|---|---|---|")
    for label, runs in results["runs"].items():
        for r in runs:
            s, t = r["speech_first_delta_ms"], r["text_first_delta_ms"]
            print(f"| {label} | {r['n']} | {s['p50']} / {s['p95']} | {t['p50']} / {t['p95']} | {r['turns_per_min']} | "
                  f"{r['errors']} |")
    print(f"load average before / after: {results['config']['loadavg_before']} / {results['config']['loadavg_after']}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
