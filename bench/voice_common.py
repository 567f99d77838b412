"""Shared pieces of the voice benchmarks (bench/voice_latency.py, bench/echo.py): a server in a
subprocess with a given configuration, espeak-ng speech, a real-time sender, machine facts."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.serve_process import ServeProcess  # noqa: E402
from server.client import RealtimeClient  # noqa: E402

RATE = 24000
CHUNK_S = 0.02


class Server(ServeProcess):
    """``mmagent serve --config`` in a subprocess on a free port (the models load in it)."""

    def __init__(self, cfg: dict[str, Any], state_dir: str, name: str, *, verbose: bool = False) -> None:
        super().__init__({"limits": {"max_sessions": 256, "max_sessions_per_token": 256}, **cfg}, state_dir, name,
                         verbose=verbose)


def espeak(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """espeak-ng speech at RATE, int16, its trailing silence cut (the last sample ends the voice)."""
    raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], check=True,
                         capture_output=True).stdout
    pcm = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(RATE), "-c", "1", "-e", "signed-integer",
                          "-b", "16", "-"], input=raw, check=True, capture_output=True).stdout
    x = np.frombuffer(pcm, dtype=np.int16)
    w = RATE // 100
    n = len(x) // w
    energy = np.sqrt(np.mean(x[: n * w].astype(np.float32).reshape(n, w) ** 2, axis=1))
    voiced = np.flatnonzero(energy > 0.02 * energy.max())
    return x[: min(len(x), (int(voiced[-1]) + 2) * w)] if voiced.size else x


async def stream(c: RealtimeClient, pcm: np.ndarray, chunk_s: float = CHUNK_S) -> float:
    """Send ``pcm`` at real time; return the clock time the last chunk was sent."""
    step = int(RATE * chunk_s)
    t0 = time.perf_counter()
    for i, s in enumerate(range(0, len(pcm), step)):
        await c.append_audio(pcm[s:s + step])
        await asyncio.sleep(max(0.0, t0 + (i + 1) * chunk_s - time.perf_counter()))
    return time.perf_counter()


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "loadavg_1_5_15": [round(v, 2) for v in load]}


def pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 1) if xs else None
