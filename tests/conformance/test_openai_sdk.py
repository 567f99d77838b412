"""Realtime GA conformance: the official OpenAI Python SDK (``openai[realtime]``, in its own
virtual environment .venv-openai/, built by scripts/setup.sh) drives a real server on a free
localhost port with the real models. Only the base URL and the key are this server's.

Scenarios (tests/conformance/sdk_driver.py): a text turn, an audio turn with server VAD, a
manual commit, cancel, truncate / retrieve / delete, a function-call round trip, an
out-of-band response, session settings (semantic_vad, 16 kHz, G.711), and a session with this
project's extension events on. Every server event is validated against the SDK's pydantic
models (``openai.types.realtime.RealtimeServerEvent``): the target is 0 validation errors.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, start_server, synth_speech

pytestmark = pytest.mark.slow

SDK_PYTHON = REPO_ROOT / ".venv-openai" / "bin" / "python"
DRIVER = Path(__file__).resolve().parent / "sdk_driver.py"
KEY = "sk-conformance-test"


def test_openai_sdk_against_a_real_server(tmp_path: Path, artifacts_dir: Path) -> None:
    """Every scenario passes and every server event validates against openai.types.realtime."""
    if not SDK_PYTHON.exists():
        pytest.fail(f"{SDK_PYTHON} is missing: scripts/setup.sh builds the SDK's virtual environment")
    x, sr = synth_speech("Hello. Where can I return a pair of shoes?", sample_rate=24000)
    pcm = (np.concatenate([np.zeros(sr // 2, np.float32), x]) * 32767).astype("<i2").tobytes()
    speech = tmp_path / "speech.pcm"
    speech.write_bytes(pcm)
    srv: Any = start_server(tokens=[KEY], state_dir=str(tmp_path / "state"))
    try:
        proc = subprocess.run([str(SDK_PYTHON), str(DRIVER), "--base-url", srv.url.rstrip("/") + "/v1",
                               "--key", KEY, "--speech", str(speech)],
                              capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    finally:
        srv.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    (artifacts_dir / "conformance_openai_sdk.json").write_text(json.dumps(report, indent=2))
    failed = {k: v for k, v in report["scenarios"].items() if not v["ok"]}
    assert not failed, json.dumps(failed, indent=1)[:4000]
    assert report["validation_errors"] == [], json.dumps(report["validation_errors"][:5], indent=1)[:4000]
    assert report["events_validated"] >= 150
    kinds = set(report["event_types"])
    for kind in ("session.created", "session.updated", "conversation.item.added", "conversation.item.done",
                 "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                 "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed",
                 "response.created", "rate_limits.updated", "response.output_item.added",
                 "response.content_part.added", "response.output_text.delta", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done", "response.done",
                 "response.function_call_arguments.delta", "response.function_call_arguments.done",
                 "conversation.item.truncated", "conversation.item.retrieved", "conversation.item.deleted"):
        assert kind in kinds, kind
    assert set(report["extension_events"]) == {"perception.updated", "turn.fused", "response.action"}
    heard = report["scenarios"]["audio_turn_server_vad"]["result"]["transcript"].lower()
    assert "return" in heard, heard
    assert report["sdk"]["openai"] == "3.57.0"
