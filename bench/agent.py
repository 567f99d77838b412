"""Agent benchmark: first token and tokens/s of the local language model, retrieval and prompt time.

    python bench/agent.py [OUT.json] [--runs 2] [--gpu-model PATH_OR_HUB_ID]
    python bench/agent.py --concurrency 1,4,8 [--runs 1] [--max-new-tokens 48] [OUT.json]

Prints a table and writes JSON (default ``artifacts/bench_agent.json``).

- ``retrieval``: embedding the question (MiniLM) + top-k over the pack's entries.
- ``prompt``: building the chat prompt (persona, few-shot examples, entries, context, question).
- ``first_token``: from the start of generation (prompt already built, model warm) to the first
  generated token = prefill + one decoding step. Measured with the static prefix (persona +
  few-shot examples) cached, as the agent runs, and without the cache for comparison.
- ``first_delta_after_fusion``: through ``Agent.respond``: from the fused turn to the first text
  delta a client receives (retrieval + prompt + first token + detokenising the first word).
- ``tokens_per_s``: decoding rate after the first token.
- ``cpu_agent_default``: the same turns with the default configuration (``grounded`` responder:
  the dialogue manager's composed answer, no model); ``--default-only`` measures only that.
  (With ``local``, ``first_delta_after_fusion`` is the first *verified sentence*: a model's text is
  sent sentence by sentence after the verifier, docs/agent.md.)

``--concurrency``: only the concurrent-replies benchmark (default output
``artifacts/bench_agent_concurrency.json``): for each N, N replies (the demo questions, real
prompts, static prefix cached) start together, batched (``responder.local.batching``, continuous
batching) and serialized (the old one-``generate``-at-a-time path), in one run. Reported: time to
first token from the request (queue wait + prefill + first step) p50/p95 over all replies, and
aggregate tokens/s (all generated tokens / wall time of the round).

Medians over the prompts × runs. Target on the 2-core CPU: first token ≤ 400 ms after fusion
(warm model, prompt ≤ 600 tokens). The load average is recorded: other work on the machine skews
every number. With a CUDA GPU, ``--gpu-model`` (default: the same SmolLM2) is measured there too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import perception  # noqa: E402,F401  (sets the OpenMP policy before torch loads)

QUESTIONS = [
    "where is the service desk?", "what are your opening hours?", "where are the batteries?",
    "do you take credit cards?", "can I return something without a receipt?", "how much is the coffee?",
]


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


@contextlib.contextmanager
def prompt_cache(llm: Any, entries: int) -> Iterator[None]:
    """Run with ``entries`` recent prompt KV caches (0 = off), starting empty; restored after.
    The benchmarks repeat their prompts, which the cache would otherwise serve."""
    if llm is None:
        yield
        return
    keep = llm.config.prompt_cache_entries
    llm.config.prompt_cache_entries = entries
    llm.clear_prompt_cache()
    try:
        yield
    finally:
        llm.config.prompt_cache_entries = keep
        llm.clear_prompt_cache()


def write_json(results: dict[str, Any], out: str | None, default_name: str) -> None:
    path = Path(out or REPO_ROOT / "artifacts" / default_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


def bench_model(llm: Any, agent: Any, runs: int) -> dict[str, Any]:
    llm.load()
    with prompt_cache(llm, 0):   # the repeated-prompt case is measured on its own below
        out = _bench_model(llm, agent, runs)
    with prompt_cache(llm, 8):   # the same prompt again (a repeated question): one token to run
        out["first_token_ms_repeated_prompt"] = _median(_first_token_repeated(llm, out.pop("_prompts")))
    return out


def _first_token_repeated(llm: Any, prompts: list[Any]) -> list[float]:
    from agent.responders import CancelToken

    times = []
    for pr in prompts:
        for k in range(2):
            st: dict[str, float] = {}
            llm.generate(pr.messages, lambda s: None, CancelToken(), st, static_messages=pr.static_messages,
                         max_new_tokens=2)
            if k:
                times.append(st["first_token_s"] * 1000)
    return times


def _bench_model(llm: Any, agent: Any, runs: int) -> dict[str, Any]:
    from agent.responders import CancelToken

    retriever = agent.retriever
    ret_ms, prompt_ms, ft_cached, ft_plain, tps, ptoks, gtoks = [], [], [], [], [], [], []
    prompts = []
    for q in QUESTIONS:
        t0 = time.perf_counter()
        hits = retriever.relevant(retriever.search(retriever.embed_query(q)))
        t1 = time.perf_counter()
        prompt = agent.prompt_for(agent.open_session(), q, hits, {}, None)
        t2 = time.perf_counter()
        ret_ms.append((t1 - t0) * 1000)
        prompt_ms.append((t2 - t1) * 1000)
        prompts.append(prompt)
    llm.generate(prompts[0].messages, lambda s: None, CancelToken(), {},
                 static_messages=prompts[0].static_messages)  # warm-up (and prefix cache)
    for _ in range(runs):
        for pr in prompts:
            st: dict[str, float] = {}
            llm.generate(pr.messages, lambda s: None, CancelToken(), st, static_messages=pr.static_messages)
            ft_cached.append(st["first_token_s"] * 1000)
            if "tokens_per_s" in st:
                tps.append(st["tokens_per_s"])
            ptoks.append(st["prompt_tokens"])
            gtoks.append(st["generated_tokens"])
    for pr in prompts:  # without the prefix cache: the whole prompt is prefilled
        st = {}
        old = llm.config.max_new_tokens
        llm.config.max_new_tokens = 2
        try:
            llm.generate(pr.messages, lambda s: None, CancelToken(), st, static_messages=0)
        finally:
            llm.config.max_new_tokens = old
        ft_plain.append(st["first_token_s"] * 1000)
    return {"_prompts": prompts,
        "model": llm.source, "device": str(llm.device), "dtype": str(llm.dtype).replace("torch.", ""),
        "load_s": round(llm.load_seconds or 0.0, 2),
        "retrieval_ms": _median(ret_ms), "prompt_build_ms": _median(prompt_ms),
        "prompt_tokens": _median(ptoks), "cached_prefix_tokens": None,
        "first_token_ms": _median(ft_cached), "first_token_ms_no_prefix_cache": _median(ft_plain),
        "tokens_per_s": _median(tps), "generated_tokens": _median(gtoks),
        "n": len(ft_cached),
    }


def bench_agent_turns(agent: Any, runs: int) -> dict[str, Any]:
    from agent import TurnInput

    first: list[float] = []
    totals: list[float] = []
    fusion_ms: list[float] = []

    async def go() -> None:
        for _ in range(runs):
            for q in QUESTIONS:
                session = agent.open_session()
                perceived = await agent.perceive(TurnInput(text=q))
                async for ev in agent.respond(session, perceived):
                    if ev.type == "turn.done" and ev.route == agent.responder.name:
                        first.append(ev.timings["first_delta"])
                        totals.append(ev.timings["total"])
                        if "fusion" in ev.timings:
                            fusion_ms.append(ev.timings["fusion"])

    with prompt_cache(getattr(agent.responder, "llm", None), 0):   # every run repeats the prompts
        asyncio.run(go())
    return {"first_delta_after_fusion_ms": _median(first), "fusion_ms": _median(fusion_ms),
            "turn_total_ms": _median(totals), "n": len(first)}


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))], 3)


def _concurrent_round(llm: Any, prompts: list[Any], n: int, r: int) -> tuple[list[float], float, float]:
    """n replies started together: (times to first text, generated tokens, wall time)."""
    import threading

    from agent.responders import CancelToken

    firsts: list[float | None] = [None] * n
    stats: list[dict[str, float]] = [{} for _ in range(n)]
    go = threading.Barrier(n + 1)

    def worker(i: int) -> None:
        pr = prompts[(i + r) % len(prompts)]

        def on_text(_: str) -> None:
            if firsts[i] is None:
                firsts[i] = time.perf_counter()

        go.wait()
        llm.generate(pr.messages, on_text, CancelToken(), stats[i], static_messages=pr.static_messages)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return [f - t0 for f in firsts if f is not None], sum(st.get("generated_tokens", 0.0) for st in stats), wall


def _without_prompt_cache(llm: Any, *args: Any) -> dict[str, Any]:
    # The serialized path has no prompt cache and the same prompts recur in every round.
    with prompt_cache(llm, 0):
        return bench_concurrency(llm, *args)


def bench_concurrency(llm: Any, agent: Any, levels: list[int], runs: int, max_new_tokens: int) -> dict[str, Any]:
    """N replies started together, batched vs serialized: time to first token and aggregate tokens/s."""
    from agent.responders import CancelToken

    retriever = agent.retriever
    prompts = []
    for q in QUESTIONS:
        hits = retriever.relevant(retriever.search(retriever.embed_query(q)))
        prompts.append(agent.prompt_for(agent.open_session(), q, hits, {}, None))
    llm.config.max_new_tokens = max_new_tokens
    out: dict[str, Any] = {}
    for batching in (True, False):
        llm.config.batching = batching
        mode = "batched" if batching else "serialized"
        llm.generate(prompts[0].messages, lambda s: None, CancelToken(), {},
                     static_messages=prompts[0].static_messages)  # warm-up (prefix cache, scheduler)
        for n in levels:
            ttft: list[float] = []
            tokens = 0.0
            wall = 0.0
            for r in range(runs):
                f, t, w = _concurrent_round(llm, prompts, n, r)
                ttft += f
                tokens += t
                wall += w
            out.setdefault(mode, {})[str(n)] = {
                "ttft_p50_s": _pct(ttft, 0.5), "ttft_p95_s": _pct(ttft, 0.95),
                "tokens_per_s": round(tokens / max(wall, 1e-6), 1), "tokens": tokens, "replies": len(ttft)}
            row = out[mode][str(n)]
            print(f"{mode:10} N={n:<3} first token p50 {row['ttft_p50_s']}s p95 {row['ttft_p95_s']}s  "
                  f"{row['tokens_per_s']} tok/s", flush=True)
    llm.config.batching = True
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=None)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--concurrency", default=None, help="e.g. 1,4,8: only the concurrent-replies benchmark")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="reply length in the --concurrency benchmark")
    ap.add_argument("--gpu-model", default=None, help="model for the GPU run (default: the embedded SmolLM2)")
    ap.add_argument("--default-only", action="store_true",
                    help="only the default configuration's turns (grounded responder), no language model")
    args = ap.parse_args()

    import torch

    from agent import Agent, AgentConfig, StoreConfig
    from agent.config import LocalLLMConfig
    from agent.responders import LocalLLM, LocalResponder
    from perception import Perception, PerceptionConfig

    load0 = os.getloadavg()
    p = Perception(PerceptionConfig(device="cpu"))
    if args.concurrency:
        levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
        db = Path(tempfile.mkdtemp()) / "bench.db"
        llm = LocalLLM(LocalLLMConfig(device="cpu"))
        agent = Agent.from_config(AgentConfig(store=StoreConfig(path=str(db))), perception=p,
                                  responder=LocalResponder(llm))
        agent.warmup()
        res: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                        "torch_threads": torch.get_num_threads(), "loadavg_start": [round(x, 2) for x in load0]},
            "max_new_tokens": args.max_new_tokens, "runs": args.runs,
            "concurrency": _without_prompt_cache(llm, agent, levels, args.runs, args.max_new_tokens),
        }
        res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        agent.close()
        print(f"load average {res['machine']['loadavg_start']} → {res['machine']['loadavg_end']}")
        write_json(res, args.out, "bench_agent_concurrency.json")
        return 0
    fusion = None
    try:
        from fusion import FusionPredictor

        fusion = FusionPredictor.load(None)
    except Exception as exc:  # the benchmark still measures the model without fusion
        print(f"fusion unavailable: {exc}", file=sys.stderr)
    db = Path(tempfile.mkdtemp()) / "bench.db"
    # The default configuration (grounded responder: the dialogue manager's composed answers).
    dagent = Agent.from_config(AgentConfig(store=StoreConfig(path=str(db))), perception=p, fusion=fusion)
    dagent.warmup()
    default_turns = bench_agent_turns(dagent, max(args.runs, 5))
    default_turns["responder"] = dagent.responder.name
    print(f"default configuration ({dagent.responder.name}): first delta after fusion p50 "
          f"{default_turns['first_delta_after_fusion_ms']} ms over {default_turns['n']} turns")
    if args.default_only:
        out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                           "loadavg_start": [round(x, 2) for x in load0],
                           "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
               "cpu_agent_default": default_turns}
        print(f"load average {out['machine']['loadavg_start']} → {out['machine']['loadavg_end']}")
        write_json(out, args.out, "bench_agent_default.json")
        return 0
    llm = LocalLLM(LocalLLMConfig(device="cpu"))
    agent = Agent.from_config(AgentConfig(store=StoreConfig(path=str(db))), perception=p, fusion=fusion,
                              responder=LocalResponder(llm))
    agent.warmup()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "loadavg_start": [round(x, 2) for x in load0]},
        "cpu": bench_model(llm, agent, args.runs),
    }
    results["cpu"]["cached_prefix_tokens"] = next(iter(llm._prefix_caches.values())).get_seq_length()
    results["cpu_agent"] = bench_agent_turns(agent, args.runs)
    results["cpu_agent_default"] = default_turns
    if torch.cuda.is_available():
        gllm = LocalLLM(LocalLLMConfig(device="cuda", model=args.gpu_model))
        gagent = Agent(agent.config, pack=agent.pack, perception=p, fusion=fusion, responder=LocalResponder(gllm),
                       store=agent.store, retriever=agent.retriever)
        gagent.warmup()
        results["gpu"] = bench_model(gllm, gagent, args.runs)
        results["gpu"]["name"] = torch.cuda.get_device_name(0)
        results["gpu_agent"] = bench_agent_turns(gagent, args.runs)
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    agent.close()

    print(f"{'':28} {'CPU':>12}" + (f" {'GPU':>12}" if "gpu" in results else ""))
    rows = [("retrieval_ms", "retrieval (ms)"), ("prompt_build_ms", "prompt build (ms)"),
            ("prompt_tokens", "prompt tokens"), ("first_token_ms", "first token (ms)"),
            ("first_token_ms_no_prefix_cache", "  without prefix cache"),
            ("first_token_ms_repeated_prompt", "  same prompt again"), ("tokens_per_s", "tokens/s")]
    for key, label in rows:
        line = f"{label:28} {results['cpu'][key]!s:>12}"
        if "gpu" in results:
            line += f" {results['gpu'][key]!s:>12}"
        print(line)
    line = f"{'first delta after fusion':28} {results['cpu_agent']['first_delta_after_fusion_ms']!s:>12}"
    if "gpu_agent" in results:
        line += f" {results['gpu_agent']['first_delta_after_fusion_ms']!s:>12}"
    print(line)
    print(f"load average {results['machine']['loadavg_start']} → {results['machine']['loadavg_end']}")
    write_json(results, args.out, "bench_agent.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
