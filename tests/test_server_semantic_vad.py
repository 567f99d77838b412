"""semantic_vad: the end-of-turn models decide when a spoken turn is over.

The detector (``server.vad.SemanticVad``) alone, the conversation core with scripted model
answers, and the real server with Smart Turn v3.2 + SmolLM2 on Piper speech: a complete question
ends long before the long limit, and a hesitation ("I'm looking for the … batteries") that
silence-only turn detection cuts in two stays one turn.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from agent import Session
from perception.errors import ConfigError
from perception.turn import TurnVerdict
from server.core import events as E
from server.core.audio_input import SEMANTIC_SILENCE_MS
from server.core.codec import Codec
from server.core.conversation import Conversation
from server.vad import SemanticVad, SpeechPaused, SpeechResumed, SpeechStarted, SpeechStopped, TurnCheck
from tests.core_fakes import FakeEngine, FakeRuntime, settle, types

RATE = 24000
CHUNK = 480                                   # 20 ms
TONE = (0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.int16)   # 1 s, -13 dBFS
QUIET = np.zeros(CHUNK, np.int16)
SEMANTIC = {"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}}


def chunks(pcm: np.ndarray) -> list[np.ndarray]:
    return [pcm[i:i + CHUNK] for i in range(0, len(pcm), CHUNK)]


def feed(vad: SemanticVad, pcm: np.ndarray) -> list[Any]:
    out: list[Any] = []
    for c in chunks(pcm):
        out += vad.process(c)
    return out


# ---- the detector --------------------------------------------------------------------------------

def test_semantic_vad_asks_at_the_check_and_ends_when_told() -> None:
    """Speech, then silence: SpeechPaused (speculative, 100 ms), TurnCheck at 200 ms with the
    utterance; no answer → silence alone does not end the turn before the long limit; the answer
    "end now" ends it at once, naming the pause (so its speculative work is used)."""
    vad = SemanticVad(RATE, backend="energy", max_wait_ms=4000, check_ms=200, speculative_ms=100)
    events = feed(vad, TONE) + feed(vad, np.zeros(RATE, np.int16))      # 1 s of silence
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStarted, SpeechPaused, TurnCheck], kinds
    pause, check = events[1], events[2]
    assert check.token == pause.token and len(check.audio) >= len(TONE) - RATE // 10
    stopped = vad.resolve(check.token, 200)
    assert isinstance(stopped, SpeechStopped) and stopped.paused_token == pause.token
    assert not vad.speaking and vad.silence_ms == 4000   # the next turn starts from the long limit
    assert vad.resolve(check.token, 200) is None         # answered twice: nothing more


def test_semantic_vad_waits_the_long_limit_or_the_answers_wait() -> None:
    """An "incomplete" answer keeps the turn open to the long limit; a shorter wait ends it there;
    an answer for a pause that speech already ended is void."""
    vad = SemanticVad(RATE, backend="energy", max_wait_ms=2000, check_ms=200, speculative_ms=100)
    events = feed(vad, TONE) + feed(vad, np.zeros(int(0.3 * RATE), np.int16))
    check = events[-1]
    assert isinstance(check, TurnCheck)
    assert vad.resolve(check.token, 2000) is None         # incomplete: wait
    events = feed(vad, np.zeros(int(1.5 * RATE), np.int16))
    assert events == []                                   # 1.8 s of silence, still one open turn
    events = feed(vad, np.zeros(int(0.3 * RATE), np.int16))
    assert [type(e) for e in events] == [SpeechStopped]   # the long limit
    assert 2000 <= events[0].audio_end_ms - 1000 <= 2100

    events = feed(vad, TONE) + feed(vad, np.zeros(int(0.3 * RATE), np.int16))
    old = events[-1]
    assert isinstance(old, TurnCheck)
    events = feed(vad, TONE[:RATE // 4])                  # the person goes on
    assert [type(e) for e in events] == [SpeechResumed]
    assert vad.resolve(old.token, 200) is None and vad.silence_ms == 2000   # void: no effect
    events = feed(vad, np.zeros(int(0.3 * RATE), np.int16))
    check = events[-1]
    assert isinstance(check, TurnCheck) and check.token != old.token
    assert vad.resolve(check.token, 600) is None          # end at 600 ms of this silence
    events = feed(vad, np.zeros(int(0.4 * RATE), np.int16))
    assert [type(e) for e in events] == [SpeechStopped]


def test_semantic_vad_rejects_a_check_beyond_its_limit() -> None:
    with pytest.raises(ConfigError):
        SemanticVad(RATE, backend="energy", max_wait_ms=200, check_ms=200)


def test_server_config_names_bad_semantic_settings() -> None:
    from server.config import load_config

    with pytest.raises(ConfigError, match=r"vad\.semantic"):
        load_config(None, env={}, overrides={"vad": {"semantic": "smart"}})
    with pytest.raises(ConfigError, match="semantic_check_ms"):
        load_config(None, env={}, overrides={"vad": {"semantic_check_ms": 5}})


# ---- the conversation core, with scripted answers -------------------------------------------------

class ScriptedTurnModels:
    """EndOfTurnModels whose answer the test sets; records what it was asked."""

    def __init__(self, end_after_ms: int, *, loaded: bool = True) -> None:
        self.end_after_ms, self.loaded = end_after_ms, loaded
        self.asked: list[tuple[str, int, str | None]] = []

    def ready(self) -> bool:
        return self.loaded

    async def audio_probability(self, eagerness: str, audio: np.ndarray, rate: int) -> float:
        return 0.9

    async def verdict(self, eagerness: str, p: float, transcript: str | None) -> TurnVerdict:
        self.asked.append((eagerness, self.end_after_ms, transcript))
        return TurnVerdict(self.end_after_ms, p, "complete" if self.end_after_ms <= 200 else "incomplete")


async def stream_until_stopped(conv: Conversation, seconds: float) -> tuple[list[str], int | None]:
    """Speech (1 s tone), then up to ``seconds`` of silence in 20 ms chunks, letting the core's
    tasks run after each; the event types and the silence (ms) at which speech_stopped came."""
    out: list[E.ServerEvent] = []
    for c in chunks(TONE):
        out += conv.handle(E.AudioAppend(None, c.tobytes()))
        await settle(3)
    for k in range(int(seconds * 1000 / 20)):
        out += conv.handle(E.AudioAppend(None, QUIET.tobytes()))
        await settle(3)
        out += conv.take()
        if "input_audio_buffer.speech_stopped" in types(out):
            return types(out), (k + 1) * 20
    return types(out), None


def conversation(models: Any) -> tuple[Conversation, FakeEngine, FakeRuntime]:
    from server.config import load_config

    cfg = load_config(None, env={}, overrides={"vad": {"backend": "energy"}})
    engine, rt = FakeEngine(), FakeRuntime()
    engine.turn_models = models
    conv = Conversation(session_id="sess_test", agent_session=Session("sess_test"), engine=engine,  # type: ignore[arg-type]
                        runtime=rt, config=cfg)
    conv.start()
    conv.handle(Codec().decode(json.dumps(SEMANTIC)))
    conv.take()
    return conv, engine, rt


@pytest.mark.parametrize(("end_after_ms", "loaded", "lo", "hi"), [
    (200, True, 200, 300),        # complete: ends at the check
    (4000, True, 3900, 4200),     # incomplete: the long limit (auto: 4 s)
    (200, False, SEMANTIC_SILENCE_MS["auto"], SEMANTIC_SILENCE_MS["auto"] + 100),   # loading: fixed silence
])
def test_conversation_ends_the_turn_when_the_models_say(end_after_ms: int, loaded: bool, lo: int, hi: int) -> None:
    """The core asks the models at the check with the speculative transcript, and the turn ends
    when they say (and answers once: one response for the turn)."""
    async def main() -> None:
        models = ScriptedTurnModels(end_after_ms, loaded=loaded)
        conv, engine, _ = conversation(models)
        try:
            kinds, at_ms = await stream_until_stopped(conv, 5.0)
            assert at_ms is not None and lo <= at_ms <= hi, (at_ms, kinds)
            if loaded:
                assert models.asked == [("auto", end_after_ms, engine.transcript)]
            else:
                assert models.asked == []
            for _ in range(20):
                await settle()
                kinds += types(conv.take())
            assert kinds.count("response.created") == 1 and "response.done" in kinds
        finally:
            await conv.close()

    asyncio.run(main())


# ---- the real server, the real models --------------------------------------------------------------

@pytest.fixture(scope="module")
def semantic_server(mm_server: Any) -> Any:
    """The shared server, its end-of-turn models loaded (they load in the background otherwise)."""
    mm_server.server.engine.turn_models.load()
    return mm_server


@pytest.fixture(scope="module")
def steady_tts() -> Any:
    """The Piper voice without sampling noise: the same takes every run."""
    from voice import Synthesizer, VoiceConfig

    synth = Synthesizer(VoiceConfig(noise_scale=0.0, noise_w=0.0))
    yield synth
    synth.close()


def _said(tts: Any, *parts: str, pause_s: float = 0.0) -> tuple[np.ndarray, float]:
    """Piper speech of ``parts`` with ``pause_s`` of silence between them, at 24 kHz int16, then
    3 s of silence; and where the voice ends (s)."""
    from tests.conftest import piper_speech

    pieces: list[np.ndarray] = []
    for i, text in enumerate(parts):
        x = piper_speech(tts, text, sample_rate=RATE)
        voiced = np.flatnonzero(np.abs(x) > 0.01)
        pieces.append(x[:voiced[-1] + 1])
        if i < len(parts) - 1:
            pieces.append(np.zeros(int(pause_s * RATE), np.float32))
    voice_end = sum(len(p) for p in pieces) / RATE + 0.3
    audio = np.concatenate([np.zeros(int(0.3 * RATE), np.float32), *pieces, np.zeros(3 * RATE, np.float32)])
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16), voice_end


async def _turns(url: str, pcm: np.ndarray, turn_detection: dict[str, Any]) -> list[dict[str, Any]]:
    """Stream ``pcm`` at real time in 20 ms chunks; the speech_started / speech_stopped events."""
    from server.client import RealtimeClient

    async with RealtimeClient(url) as c:
        await c.update_session(output_modalities=["text"], audio={"input": {
            "format": {"type": "audio/pcm", "rate": RATE}, "turn_detection": {**turn_detection,
                                                                             "create_response": False}}})
        await c.wait_for("session.updated")
        seen: list[dict[str, Any]] = []

        async def reader() -> None:
            async for ev in c.events():
                if ev["type"] in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"):
                    seen.append(ev)

        task = asyncio.ensure_future(reader())
        t0 = asyncio.get_running_loop().time()
        for k, chunk in enumerate(chunks(pcm)):
            await c.append_audio(chunk)
            await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - asyncio.get_running_loop().time()))
        await asyncio.sleep(0.5)
        task.cancel()
        return seen


def test_real_models_end_a_question_early_and_wait_through_a_hesitation(semantic_server: Any,
                                                                        steady_tts: Any) -> None:
    """Smart Turn v3.2 + SmolLM2 in the server: "Where can I find the batteries?" ends well before
    the 4 s long limit; "I'm looking for the" + 1 s + "batteries." stays one turn, where
    server_vad (500 ms of silence) cuts it in two."""
    question, q_end = _said(steady_tts, "Where can I find the batteries?")
    hesitant, _ = _said(steady_tts, "I'm looking for the", "batteries.", pause_s=1.0)

    seen = asyncio.run(_turns(semantic_server.ws_url, question, {"type": "semantic_vad"}))
    assert [e["type"].rsplit(".", 1)[1] for e in seen] == ["speech_started", "speech_stopped"], seen
    waited_ms = seen[1]["audio_end_ms"] - q_end * 1000
    assert waited_ms < 2500, f"the complete question waited {waited_ms:.0f} ms (long limit 4000)"

    seen = asyncio.run(_turns(semantic_server.ws_url, hesitant, {"type": "semantic_vad"}))
    assert [e["type"].rsplit(".", 1)[1] for e in seen] == ["speech_started", "speech_stopped"], seen
    seen = asyncio.run(_turns(semantic_server.ws_url, hesitant, {"type": "server_vad"}))
    assert [e["type"].rsplit(".", 1)[1] for e in seen].count("speech_stopped") == 2, seen


def test_sessions_pausing_together_share_one_text_model_pass(semantic_server: Any) -> None:
    """The server's end-of-turn models: verdicts asked at the same time go through SmolLM2 as one
    batch, each the verdict it gets alone."""
    models = semantic_server.server.engine.turn_models
    assert models._text is not None
    texts = ["Where can I find the batteries", "What time do you", "Can I pay with my phone", "Is it possible to"]
    batches: list[int] = []
    run = models._text.fn

    def counted(items: list[str]) -> list[float]:
        batches.append(len(items))
        return run(items)

    async def ask_all() -> list[Any]:
        return list(await asyncio.gather(*(models.verdict("auto", 0.9, t) for t in texts)))

    alone = [models._detector("auto").verdict(0.9, t) for t in texts]
    models._text.fn = counted
    try:   # on the server's loop, where its sessions ask
        together = asyncio.run_coroutine_threadsafe(ask_all(), semantic_server.loop).result(120)
    finally:
        models._text.fn = run
    assert [v.reason for v in together] == [v.reason for v in alone], (together, alone)
    for v, w in zip(together, alone, strict=True):
        assert (v.text_probability is None) == (w.text_probability is None), (v, w)
        if w.text_probability is not None:
            assert v.text_probability == pytest.approx(w.text_probability, rel=1e-4), (v, w)
    asked = sum(w.text_probability is not None for w in alone)
    assert asked >= 3 and sum(batches) == asked and len(batches) < asked, batches


class FailingTurnModels(ScriptedTurnModels):
    """Models that fail at the check (a broken model file, a thread shut down)."""

    async def verdict(self, eagerness: str, p: float, transcript: str | None) -> TurnVerdict:
        from perception.errors import ModelLoadError

        raise ModelLoadError("the end-of-turn model broke")


def test_a_failing_model_ends_the_turn_on_the_fixed_silence() -> None:
    """The models fail at the check: the turn still ends, after the eagerness's fixed silence,
    and the session goes on (one response, no task failure)."""
    async def main() -> None:
        conv, _, rt = conversation(FailingTurnModels(200))
        try:
            kinds, at_ms = await stream_until_stopped(conv, 3.0)
            silence = SEMANTIC_SILENCE_MS["auto"]
            assert at_ms is not None and silence <= at_ms <= silence + 100, (at_ms, kinds)
            for _ in range(20):
                await settle()
                kinds += types(conv.take())
            assert kinds.count("response.created") == 1 and not rt.failures
        finally:
            await conv.close()

    asyncio.run(main())
