"""Shared pytest fixtures: every model loads once per test session.

Layers add fixtures here in their own delimited blocks (edit only your block).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "artifacts"


def synth_speech(text: str, *, voice: str = "en-us", speed: int = 160, sample_rate: int = 16000,
                 out: Path | None = None) -> tuple[np.ndarray, int]:
    """Speak ``text`` with espeak-ng; return mono float32 samples at ``sample_rate``.

    If ``out`` is given, the WAV (PCM16 at ``sample_rate``) is also written there.
    """
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.fail("espeak-ng and sox are required (scripts/setup.sh installs them)")
    raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                         check=True, capture_output=True).stdout
    conv = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(sample_rate), "-c", "1",
                           "-e", "signed-integer", "-b", "16", "-"],
                          input=raw, check=True, capture_output=True).stdout
    samples = np.frombuffer(conv, dtype=np.int16).astype(np.float32) / 32768.0
    if out is not None:
        import wave

        with wave.open(str(out), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(conv)
    return samples, sample_rate


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Folder for test artifacts (screenshots, reports); git-ignored."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


# ---- perception fixtures -------------------------------------------------------------------

@pytest.fixture(scope="session")
def perception() -> Iterator[object]:
    """The real Perception facade with the embedded default models, loaded once."""
    from perception import Perception, PerceptionConfig

    p = Perception(PerceptionConfig())
    yield p

# ---- end perception fixtures ---------------------------------------------------------------

# ---- server fixtures -----------------------------------------------------------------------

def start_server(**overrides: object) -> object:
    """Start a real ``mmagent`` server on a free 127.0.0.1 port in a background thread.

    ``overrides`` are ServerConfig fields (nested dicts for sections, e.g.
    ``limits={"max_sessions": 2}``, ``tokens=["t"]``). Returns the running
    ``server.app.ServerThread``: ``.url`` (http://…/), ``.ws_url`` (ws://…/v1/realtime), ``.stop()``.
    Models are loaded once per process and shared by every server started this way.
    """
    from server.app import ServerThread
    from server.config import load_config

    cfg = {"host": "127.0.0.1", "port": 0, "state_dir": str(ARTIFACTS / "server_state"), **overrides}
    return ServerThread(load_config(None, env={}, overrides=cfg)).start()


@pytest.fixture(scope="session")
def mm_server() -> Iterator[object]:
    """One real server with the default config (no token, demo pack, real models) for the session."""
    srv = start_server()
    yield srv
    srv.stop()  # type: ignore[attr-defined]

# ---- end server fixtures -------------------------------------------------------------------

# ---- agent fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def local_llm() -> Iterator[object]:
    """The default local language model (SmolLM2-135M GGUF, converted once and cached), loaded once."""
    from agent.responders import LocalLLM

    llm = LocalLLM()
    llm.load()
    yield llm

# ---- end agent fixtures --------------------------------------------------------------------

# ---- voice fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tts() -> Iterator[object]:
    """The embedded Piper voice (en_US-joe-medium) with its synthesis thread, loaded once."""
    from voice import Synthesizer, VoiceConfig

    synth = Synthesizer(VoiceConfig())
    yield synth
    synth.close()


def piper_speech(tts: object, text: str, sample_rate: int = 16000) -> np.ndarray:
    """``text`` spoken by the Piper voice: mono float32 at ``sample_rate``."""
    audio, _ = tts.synthesize(text, output_rate=sample_rate)  # type: ignore[attr-defined]
    return np.asarray(audio, dtype=np.float32) / 32768.0

# ---- end voice fixtures --------------------------------------------------------------------

# ---- session store fixtures (PostgreSQL) ---------------------------------------------------

@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """One real PostgreSQL server (temporary data directory, loopback port) for the session."""
    from tests.pg_server import PostgresServer

    with PostgresServer() as pg:
        yield pg


@pytest.fixture
def pg_url(pg_server: object, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's PostgreSQL server; its URL."""
    import re
    import secrets

    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + secrets.token_hex(3)
    return pg_server.create_database(name)  # type: ignore[attr-defined,no-any-return]

# ---- end session store fixtures ------------------------------------------------------------
