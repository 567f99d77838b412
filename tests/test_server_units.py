"""Server pieces that need no model: protocol codec, config, limits, metrics, batcher, VAD."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from perception.errors import ConfigError
from server import protocol as P
from server.batcher import MicroBatcher
from server.config import load_config
from server.errors import ProtocolError
from server.limits import ErrorBudget, TokenBucket
from server.metrics import Metrics
from tests.conftest import synth_speech


def _code(fn, *args, **kwargs) -> str:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kwargs)
    return info.value.code


def test_parse_text_message_codes() -> None:
    """Malformed JSON, non-objects, missing/unknown types map to their stable codes."""
    assert _code(P.parse_text_message, "{not json") == "invalid_json"
    assert _code(P.parse_text_message, "[1, 2]") == "invalid_event"
    assert _code(P.parse_text_message, '{"type": 5}') == "invalid_event"
    assert _code(P.parse_text_message, '{"type": "nope.nope"}') == "unknown_event_type"
    assert _code(P.parse_text_message, '{"type": "response.create", "event_id": 3}') == "invalid_value"
    ev = P.parse_text_message('{"type": "response.create", "event_id": "e1", "extra": 1}')
    assert ev["event_id"] == "e1"


def test_binary_roundtrip_and_errors() -> None:
    """Binary frames: uint16 header length + JSON header + payload; bad headers are rejected."""
    msg = P.encode_binary({"type": "input_image_buffer.append", "event_id": "e"}, b"\xff\xd8\xffabc")
    header, payload = P.parse_binary_message(msg)
    assert header["type"] == "input_image_buffer.append" and payload == b"\xff\xd8\xffabc"
    assert _code(P.parse_binary_message, b"\x00") == "invalid_binary_frame"
    assert _code(P.parse_binary_message, b"\x00\x10{}") == "invalid_binary_frame"
    assert _code(P.parse_binary_message, b"\x00\x02[]") == "invalid_binary_frame"
    bad_type = P.encode_binary({"type": "response.create"}, b"")
    assert _code(P.parse_binary_message, bad_type) == "invalid_binary_frame"


def test_session_update_validation() -> None:
    """session.update accepts the documented fields and rejects bad rates and values."""
    s = P.SessionSettings(turn_detection=P.TurnDetection())
    new = P.apply_session_update(s, {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
                                                         "turn_detection": {"silence_duration_ms": 700}}}}, "e")
    assert new.rate == 16000 and new.turn_detection is not None and new.turn_detection.silence_duration_ms == 700
    assert s.rate == 24000  # the old settings are untouched
    off = P.apply_session_update(s, {"audio": {"input": {"turn_detection": None}}}, None)
    assert off.turn_detection is None
    assert _code(P.apply_session_update, s, {"audio": {"input": {"format": {"rate": 11025}}}}, None) \
        == "unsupported_audio_format"
    assert _code(P.apply_session_update, s, {"output_modalities": ["audio"]}, None) == "invalid_value"
    assert _code(P.apply_session_update, s, {"audio": {"input": {"turn_detection": {"threshold": "x"}}}},
                 None) == "invalid_value"
    assert _code(P.apply_session_update, s, {"audio": {"input": {"format": {"rate": True}}}}, None) \
        == "invalid_value"
    assert _code(P.apply_session_update, s, {"vision": {"presence_interval_ms": 10}}, None) == "invalid_value"


def test_error_event_shape() -> None:
    """Error events carry type, code, message, param and the offending event_id."""
    ev = P.error_event("unknown_event_type", "bad", param="type", event_id="e9")
    assert ev["type"] == "error" and ev["event_id"].startswith("evt_")
    assert ev["error"] == {"type": "invalid_request_error", "code": "unknown_event_type", "message": "bad",
                           "param": "type", "event_id": "e9"}
    assert set(P.ERROR_TYPES.values()) <= {"invalid_request_error", "rate_limit_error", "authentication_error",
                                           "server_error"}


def test_every_documented_code_is_known() -> None:
    """Each error code in docs/protocol.md's table is in ERROR_TYPES and vice versa (minus internal aliases)."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    table = doc.split("## Errors", 1)[1].split("## Close codes", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M))
    assert documented <= set(P.ERROR_TYPES)
    assert set(P.ERROR_TYPES) - documented <= {"invalid_input", "checkpoint_mismatch"}


def test_config_file_env_flags_and_mask(tmp_path) -> None:
    """File < env < overrides; secrets are masked; unknown keys and bad values raise ConfigError."""
    f = tmp_path / "c.yaml"
    f.write_text("port: 9000\ntokens: [secret1]\nlimits:\n  max_sessions: 5\n")
    cfg = load_config(f, env={"MMAGENT_LIMITS_MAX_SESSIONS": "7", "MMAGENT_BATCHING_ENABLED": "0"},
                      overrides={"port": 9100})
    assert cfg.port == 9100 and cfg.limits.max_sessions == 7 and cfg.batching.enabled is False
    assert "secret1" not in json.dumps(cfg.masked())
    (tmp_path / "bad.json").write_text('{"limits": {"nope": 1}}')
    with pytest.raises(ConfigError, match="nope"):
        load_config(tmp_path / "bad.json", env={})
    with pytest.raises(ConfigError, match="max_sessions"):
        load_config(None, env={"MMAGENT_LIMITS_MAX_SESSIONS": "many"})


def test_perception_section_builds_a_validated_perception_config(tmp_path) -> None:
    """``perception:`` in the server config reaches PerceptionConfig; its errors name the key."""
    f = tmp_path / "c.yaml"
    f.write_text("perception:\n  speech_window: full\n  speech_cpu_threads: 1\n  limits:\n    max_image_pixels: 1000000\n")
    pc = load_config(f, env={}).perception_config()
    assert (pc.speech_window, pc.speech_cpu_threads, pc.limits.max_image_pixels) == ("full", 1, 1_000_000)
    assert load_config(None, env={}).perception_config().speech_window == "fit"
    with pytest.raises(ConfigError, match=r"perception\.nope"):
        load_config(None, env={}, overrides={"perception": {"nope": 1}})
    with pytest.raises(ConfigError, match="speech_window"):
        load_config(None, env={}, overrides={"perception": {"speech_window": "half"}})


def test_remote_bind_needs_a_token() -> None:
    """No token configured: binding a non-local host is refused unless explicitly allowed."""
    with pytest.raises(ConfigError, match="token"):
        load_config(None, env={}, overrides={"host": "0.0.0.0"})
    assert load_config(None, env={}, overrides={"host": "0.0.0.0", "tokens": ["t"]}).host == "0.0.0.0"
    assert load_config(None, env={}, overrides={"host": "0.0.0.0", "allow_remote_without_token": True})


def test_token_bucket_and_error_budget() -> None:
    """Token buckets refill at their rate up to the burst; the error budget counts a sliding window."""
    now = [0.0]
    b = TokenBucket(2.0, 2.0, clock=lambda: now[0])
    assert b.take(1) and b.take(1) and not b.take(1)
    now[0] = 0.5
    assert b.take(1) and not b.take(1)
    e = ErrorBudget(2, 10.0, clock=lambda: now[0])
    assert e.allow() and e.allow() and not e.allow()
    now[0] = 20.0
    assert e.allow()


def test_metrics_render_prometheus() -> None:
    """Counters, gauges and histograms render in Prometheus text format."""
    m = Metrics()
    m.errors.inc(code="invalid_json")
    m.stage.observe(0.3, stage="text")
    m.sessions_open.set(3)
    text = m.render()
    assert 'mmagent_errors_total{code="invalid_json"} 1' in text
    assert 'mmagent_stage_seconds_bucket{stage="text",le="0.5"} 1' in text
    assert 'mmagent_stage_seconds_bucket{stage="text",le="0.25"} 0' in text
    assert 'mmagent_stage_seconds_count{stage="text"} 1' in text
    assert "mmagent_sessions_open 3" in text


def test_batcher_batches_and_isolates_failures() -> None:
    """Concurrent submits share one call; a failing item fails only its own caller."""
    calls: list[list[int]] = []
    lock = threading.Lock()

    def fn(items: list[int]) -> list[int]:
        with lock:
            calls.append(list(items))
        time.sleep(0.02)
        if -1 in items:
            raise ValueError("bad item")
        return [i * 10 for i in items]

    async def main() -> None:
        with ThreadPoolExecutor(2) as ex:
            b = MicroBatcher("t", fn, executor=ex, max_batch=8, max_wait_ms=20)
            res = await asyncio.gather(*(b.submit(i) for i in range(8)))
            assert res == [i * 10 for i in range(8)]
            assert len(calls) <= 2
            out = await asyncio.gather(b.submit(1), b.submit(-1), b.submit(2), return_exceptions=True)
            assert out[0] == 10 and out[2] == 20 and isinstance(out[1], ValueError)
            off = MicroBatcher("u", fn, executor=ex, max_batch=8, enabled=False)
            calls.clear()
            await asyncio.gather(*(off.submit(i) for i in range(4)))
            assert all(len(c) == 1 for c in calls) and len(calls) == 4
            await b.close()

    asyncio.run(main())


@pytest.mark.parametrize("backend", ["silero", "energy"])
def test_vad_finds_one_utterance(backend: str) -> None:
    """Streaming VAD on espeak-ng speech in 20 ms chunks: one start, one stop, the speech returned."""
    from server.vad import SpeechStarted, SpeechStopped, StreamingVad

    x, sr = synth_speech("Hello, where can I return these shoes?", sample_rate=24000)
    pcm = (np.concatenate([np.zeros(12000), x, np.zeros(24000)]) * 32767).astype(np.int16)
    vad = StreamingVad(24000, backend=backend, silence_duration_ms=500)
    events = []
    for i in range(0, len(pcm), 480):
        events += vad.process(pcm[i:i + 480])
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStarted, SpeechStopped]
    start, stop = events
    assert 300 <= start.audio_start_ms <= 900
    speech_s = len(x) / sr
    assert abs(len(stop.audio) / 24000 - speech_s) < 1.2
    assert stop.audio_end_ms > start.audio_start_ms + 1000


def test_vad_speculative_pause_precedes_stop() -> None:
    """With speculative_ms, a SpeechPaused (audio so far) comes before the SpeechStopped that names it."""
    from server.vad import SpeechPaused, SpeechStarted, SpeechStopped, StreamingVad

    x, _ = synth_speech("Where can I find the batteries?", sample_rate=16000)
    pcm = (np.concatenate([np.zeros(8000), x, np.zeros(16000)]) * 32767).astype(np.int16)
    vad = StreamingVad(16000, backend="silero", silence_duration_ms=500, speculative_ms=200)
    events = []
    for i in range(0, len(pcm), 320):
        events += vad.process(pcm[i:i + 320])
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStarted and kinds[-1] is SpeechStopped and SpeechPaused in kinds
    pauses = [e for e in events if isinstance(e, SpeechPaused)]
    stop = events[-1]
    assert stop.paused_token == pauses[-1].token
    assert np.array_equal(stop.audio[:len(pauses[-1].audio)], pauses[-1].audio)
    assert len(stop.audio) - len(pauses[-1].audio) <= 16000 * 0.4   # only the rest of the silence


def test_vad_resumed_speech_voids_the_pause() -> None:
    """Speech that goes on after a pause of speculative_ms gives SpeechResumed(that pause's token);
    the final SpeechStopped names only the last pause."""
    from server.vad import SpeechPaused, SpeechResumed, SpeechStarted, SpeechStopped, StreamingVad

    a, _ = synth_speech("Where can I find", sample_rate=16000)
    b, _ = synth_speech("the batteries please?", sample_rate=16000)
    pcm = (np.concatenate([np.zeros(8000), a, np.zeros(800), b, np.zeros(16000)]) * 32767).astype(np.int16)
    vad = StreamingVad(16000, backend="silero", silence_duration_ms=500, speculative_ms=100)
    events = []
    for i in range(0, len(pcm), 320):
        events += vad.process(pcm[i:i + 320])
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStarted and kinds[-1] is SpeechStopped and kinds.count(SpeechStarted) == 1
    resumed = [e for e in events if isinstance(e, SpeechResumed)]
    pauses = [e for e in events if isinstance(e, SpeechPaused)]
    assert resumed and all(r.token in {p.token for p in pauses} for r in resumed)
    assert events[-1].paused_token == pauses[-1].token not in {r.token for r in resumed}
