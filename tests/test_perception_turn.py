"""End of turn: Smart Turn v3.2 on natural (Piper) speech, the transcript rule, and the detectors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from perception.errors import ConfigError, InvalidAudioError, ModelLoadError
from perception.turn import (
    SilenceDetector,
    SmartTurnDetector,
    SmartTurnModel,
    TurnConfig,
    load_smart_turn,
    make_turn_detector,
    smart_turn_path,
    transcript_incomplete,
)

COMPLETE = ["Where can I find the batteries?", "How much is the milk?", "What time do you close today?",
            "Hello, where is the service desk please?", "I would like to return these shoes.",
            "Do you take credit cards?"]
CUT_OFF = ["I'm looking for the", "Where is the", "Could you help me with", "I would like to"]
PAUSE = np.zeros(3200, np.float32)     # the 200 ms of silence after which the detector is asked


@pytest.fixture(scope="session")
def steady_voice() -> Iterator[object]:
    """The Piper voice without sampling noise: the same audio for the same text, every run."""
    from voice import Synthesizer, VoiceConfig

    synth = Synthesizer(VoiceConfig(noise_scale=0.0, noise_w=0.0, output_rate=16000))
    yield synth
    synth.close()


def _utterance(tts: object, text: str) -> np.ndarray:
    """Piper speech with its own trailing silence cut, then the 200 ms pause (16 kHz float32)."""
    audio = tts.synthesize(text)[0].astype(np.float32) / 32768.0   # type: ignore[attr-defined]
    voiced = np.flatnonzero(np.abs(audio) > 0.01)
    return np.concatenate([audio[:voiced[-1] + 1], PAUSE])


@pytest.fixture(scope="session")
def smart_turn() -> SmartTurnModel:
    """Smart Turn v3.2 from the installed pipecat-ai wheel, loaded once."""
    return load_smart_turn()


def test_model_file_comes_from_the_wheel_without_importing_pipecat() -> None:
    """The ONNX file is found by path inside the installed package; pipecat is never imported."""
    import sys

    path = smart_turn_path()
    assert path.name == "smart-turn-v3.2-cpu.onnx" and path.stat().st_size > 8_000_000
    assert "pipecat" not in sys.modules


def test_features_shape(smart_turn: SmartTurnModel) -> None:
    """Any length of 16 kHz audio becomes (80, 800) log-mel of the last 8 s."""
    for n in (1600, 128_000, 200_000):
        assert smart_turn.featurize(np.zeros(n, np.float32) + 0.01).shape == (80, 800)


def test_smart_turn_separates_complete_from_cut_off(smart_turn: SmartTurnModel, steady_voice: object) -> None:
    """Complete sentences score ≥ 0.8; phrases cut off mid-sentence ≤ 0.5 (Piper speech, 200 ms pause)."""
    complete = smart_turn.probabilities([_utterance(steady_voice, t) for t in COMPLETE])
    cut = smart_turn.probabilities([_utterance(steady_voice, t) for t in CUT_OFF])
    assert min(complete) >= 0.8, dict(zip(COMPLETE, complete, strict=True))
    assert max(cut) <= 0.5, dict(zip(CUT_OFF, cut, strict=True))


def test_batch_equals_single(smart_turn: SmartTurnModel, steady_voice: object) -> None:
    """One ONNX call for several sessions gives each the probability it gets alone."""
    clips = [_utterance(steady_voice, t) for t in (COMPLETE[0], CUT_OFF[0])]
    batch = smart_turn.probabilities(clips)
    assert batch == pytest.approx([smart_turn.probability(c) for c in clips], abs=1e-4)


@pytest.mark.parametrize(("text", "dangling"), [
    ("I'm looking for the", True), ("I'm looking for the.", True), ("Could you help me with", True),
    ("Um...", True), ("I need a bottle of", True), ("Where are the batteries?", False),
    ("Yes, I do.", False), ("Which aisle is it in?", False), ("", False),
])
def test_transcript_rule(text: str, dangling: bool) -> None:
    """A transcript ending on an article, conjunction or trailing preposition is not finished."""
    assert transcript_incomplete(text) is dangling


def test_silence_detector_is_todays_rule() -> None:
    """Silence-only: ask at 500 ms, end at 500 ms, whatever the audio."""
    d = make_turn_detector(TurnConfig(mode="silence", silence_ms=500))
    assert isinstance(d, SilenceDetector) and d.check_ms == d.max_silence_ms == 500
    v = d.decide(np.zeros(16000, np.int16), 16000)
    assert v.end_after_ms == 500 and v.probability is None


def test_smart_turn_detector_verdicts(steady_voice: object) -> None:
    """Complete → end at the check; cut off → wait for the long limit; a dangling transcript waits
    too; session-rate int16 audio is accepted; eagerness picks threshold and limit."""
    d = make_turn_detector(TurnConfig(mode="smart_turn", check_ms=200, eagerness="medium"))
    assert isinstance(d, SmartTurnDetector) and d.max_silence_ms == 4000 and d.check_ms == 200
    done = _utterance(steady_voice, COMPLETE[0])
    v = d.decide(done, 16000)
    assert v.reason == "complete" and v.end_after_ms == 200 and v.probability is not None
    pcm24 = (np.interp(np.arange(done.size * 3 // 2) / 1.5, np.arange(done.size), done) * 32767).astype(np.int16)
    assert d.decide(pcm24, 24000).reason == "complete"
    v = d.decide(_utterance(steady_voice, CUT_OFF[0]), 16000)
    assert v.reason == "incomplete" and v.end_after_ms == 4000
    v = d.decide(done, 16000, transcript="Where can I find the")
    assert v.reason == "transcript_incomplete" and v.end_after_ms == 4000
    high = make_turn_detector(TurnConfig(mode="smart_turn", eagerness="high"))
    assert high.max_silence_ms == 2000
    strict = make_turn_detector(TurnConfig(mode="smart_turn", confident=0.999, unsure_ms=500))
    v = strict.decide(done, 16000)
    assert v.reason == "unsure" and v.end_after_ms == 500


def test_turn_config_and_input_errors(smart_turn: SmartTurnModel) -> None:
    """Bad settings and bad audio raise the project's errors, naming the problem."""
    with pytest.raises(ConfigError, match="mode"):
        TurnConfig(mode="vibes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="eagerness"):
        TurnConfig(eagerness="eager")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="confident"):
        TurnConfig(threshold=0.6, confident=0.5)
    with pytest.raises(ConfigError, match="max_silence_ms"):
        TurnConfig(check_ms=300, max_silence_ms=200)
    d = SmartTurnDetector(smart_turn)
    with pytest.raises(InvalidAudioError, match="mono"):
        d.decide(np.zeros((2, 100), np.float32), 16000)
    with pytest.raises(InvalidAudioError, match="int16 or float"):
        d.decide(np.zeros(100, np.int32), 16000)
    with pytest.raises(ModelLoadError, match="does not exist"):
        SmartTurnModel("/nonexistent/model.onnx")
