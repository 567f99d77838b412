"""Agent benchmark: first token and tokens/s of the local language model, retrieval and prompt time.

    python bench/agent.py [OUT.json] [--runs 2] [--gpu-model PATH_OR_HUB_ID]

Prints a table and writes JSON (default ``artifacts/bench_agent.json``).

- ``retrieval``: embedding the question (MiniLM) + top-k over the pack's entries.
- ``prompt``: building the chat prompt (persona, few-shot examples, entries, context, question).
- ``first_token``: from the start of generation (prompt already built, model warm) to the first
  generated token = prefill + one decoding step. Measured with the static prefix (persona +
  few-shot examples) cached, as the agent runs, and without the cache for comparison.
- ``first_delta_after_fusion``: through ``Agent.respond``: from the fused turn to the first text
  delta a client receives (retrieval + prompt + first token + detokenising the first word).
- ``tokens_per_s``: decoding rate after the first token.

Medians over the prompts × runs. Target on the 2-core CPU: first token ≤ 400 ms after fusion
(warm model, prompt ≤ 600 tokens). The load average is recorded: other work on the machine skews
every number. With a CUDA GPU, ``--gpu-model`` (default: the same SmolLM2) is measured there too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
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


def bench_model(llm: Any, agent: Any, runs: int) -> dict[str, Any]:
    from agent.responders import CancelToken

    retriever = agent.retriever
    llm.load()
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
    return {
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

    asyncio.run(go())
    return {"first_delta_after_fusion_ms": _median(first), "fusion_ms": _median(fusion_ms),
            "turn_total_ms": _median(totals), "n": len(first)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=str(REPO_ROOT / "artifacts" / "bench_agent.json"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--gpu-model", default=None, help="model for the GPU run (default: the embedded SmolLM2)")
    args = ap.parse_args()

    import torch

    from agent import Agent, AgentConfig, StoreConfig
    from agent.config import LocalLLMConfig
    from agent.responders import LocalLLM, LocalResponder
    from perception import Perception, PerceptionConfig

    load0 = os.getloadavg()
    p = Perception(PerceptionConfig(device="cpu"))
    fusion = None
    try:
        from fusion import FusionPredictor

        fusion = FusionPredictor.load(None)
    except Exception as exc:  # the benchmark still measures the model without fusion
        print(f"fusion unavailable: {exc}", file=sys.stderr)
    db = Path(tempfile.mkdtemp()) / "bench.db"
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
            ("first_token_ms_no_prefix_cache", "  without prefix cache"), ("tokens_per_s", "tokens/s")]
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
