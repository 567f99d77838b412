"""End of turn: Smart Turn v3.2 on natural (Piper) speech, the transcript rule, the language
model's text estimate, and the detectors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from perception.errors import ConfigError, InvalidAudioError, ModelLoadError
from perception.turn import (
    SilenceDetector,
    SmartTurnDetector,
    SmartTurnModel,
    TextTurnModel,
    TurnConfig,
    load_smart_turn,
    load_text_turn_model,
    make_turn_detector,
    normalise_transcript,
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


@pytest.fixture(scope="session")
def text_turn() -> TextTurnModel:
    """SmolLM2-135M's P(the sentence ends here), loaded once (shared with make_turn_detector)."""
    return load_text_turn_model()


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


# Unfinished kiosk prefixes the dangling-word rule misses (they end on "you", "any", "is", "me"),
# and complete questions; Whisper's final period is on some of them, as Whisper writes it.
UNFINISHED = ["What time do you", "Do you have any", "Where is the", "Could you show me", "My receipt is.",
              "I'm looking for", "How much does the."]
FINISHED = ["What time do you close?", "Where is the service desk?", "Do you have any gluten free bread.",
            "I'm looking for the batteries.", "Where are the toilets?", "Can I pay with my phone?"]


@pytest.mark.parametrize(("raw", "clean"), [
    ("What time do you.", "What time do you"), (" where is the ...", "Where is the"),
    ("Can I pay with my phone?", "Can I pay with my phone"), ("My  receipt\nis,", "My receipt is"), ("...", ""),
])
def test_transcript_normalised_for_the_language_model(raw: str, clean: str) -> None:
    """Whisper's trailing punctuation is no evidence: it is stripped, spaces collapsed, first letter upper."""
    assert normalise_transcript(raw) == clean


def test_text_model_ranks_unfinished_prefixes_below_complete_questions(text_turn: TextTurnModel) -> None:
    """Every unfinished prefix scores below the default threshold and below every complete question;
    a trailing period (Whisper's) changes nothing."""
    from perception.turn import TEXT_THRESHOLD

    low = {t: text_turn.probability(t) for t in UNFINISHED}
    high = {t: text_turn.probability(t) for t in FINISHED}
    assert max(low.values()) < TEXT_THRESHOLD <= min(high.values()), (low, high)
    assert max(low.values()) < min(high.values()) / 5, (low, high)
    assert text_turn.probability("What time do you.") == pytest.approx(text_turn.probability("What time do you"))
    assert text_turn.probability("") == 1.0


def test_text_model_is_thread_safe(text_turn: TextTurnModel) -> None:
    """Sessions pausing together may ask at once: each gets the probability it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    texts = UNFINISHED[:3] + FINISHED[:3]
    alone = [text_turn.probability(t) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(text_turn.probability, texts * 2))
    assert together == pytest.approx(alone * 2, rel=1e-4, abs=1e-7)


def test_text_model_batches_give_what_each_gets_alone(text_turn: TextTurnModel) -> None:
    """Transcripts of different lengths in one forward pass (right-padded): each the probability
    it gets alone; an empty one 1.0 without a pass."""
    texts = [UNFINISHED[0], FINISHED[1], "", "Do you sell a USB-C phone charger and a case for it?", UNFINISHED[2]]
    alone = [text_turn.probability(t) for t in texts]
    assert text_turn.probabilities(texts) == pytest.approx(alone, rel=1e-4, abs=1e-7)
    assert text_turn.probabilities(["", "..."]) == [1.0, 1.0] and text_turn.probabilities([]) == []


def test_verdict_takes_the_text_probability_already_asked(text_turn: TextTurnModel) -> None:
    """needs_text says when the rules read the text; given its probability, verdict decides the
    same as when it asks the model itself."""
    d = SmartTurnDetector(_SaysIncomplete(), max_silence_ms=4000, text_model=text_turn,  # type: ignore[arg-type]
                          text_wait_ms=1500, text_sure=0.05, unsure_ms=600)
    assert not d.needs_text(None) and not d.needs_text("I'm looking for the.")      # the word rule decides
    for text in (FINISHED[0], UNFINISHED[0]):
        assert d.needs_text(text)
        for p in (0.1, 0.9):
            assert d.verdict(p, text, text_turn.probability(text)) == d.verdict(p, text)


def test_smart_turn_with_lm_waits_on_unfinished_text(steady_voice: object, text_turn: TextTurnModel) -> None:
    """Audio that sounds finished ends the turn only when the transcript reads finished too; an
    unfinished one the word rule lets through ("What time do you.") waits the long limit, or
    ``text_wait_ms``. Real Smart Turn audio, real language model."""
    old = make_turn_detector(TurnConfig(mode="smart_turn"))
    d = make_turn_detector(TurnConfig(mode="smart_turn", text_model="lm"))
    assert isinstance(d, SmartTurnDetector) and d.text_model is text_turn and d.name == "smart_turn+lm"
    assert isinstance(old, SmartTurnDetector) and old.text_model is None and old.name == "smart_turn"
    done = _utterance(steady_voice, "What time do you close today?")
    v = d.decide(done, 16000, transcript="What time do you close today.")
    assert v.reason == "complete" and v.end_after_ms == 200, v
    assert v.text_probability is not None and v.text_probability >= d.text_threshold
    assert old.decide(done, 16000, transcript="What time do you.").reason == "complete"   # the word rule misses it
    v = d.decide(done, 16000, transcript="What time do you.")
    assert v.reason == "text_incomplete" and v.end_after_ms == 4000 and v.text_probability is not None, v
    assert v.text_probability < d.text_threshold
    cut = _utterance(steady_voice, "What time do you")
    v = d.decide(cut, 16000, transcript="What time do you.")
    assert v.reason in ("incomplete", "text_incomplete") and v.end_after_ms == 4000, v
    assert d.decide(done, 16000).reason == "complete"       # no transcript yet: the audio decides
    short = make_turn_detector(TurnConfig(mode="smart_turn", text_model="lm", text_wait_ms=500))
    v = short.decide(done, 16000, transcript="Do you have any.")
    assert v.reason == "text_incomplete" and v.end_after_ms == 500, v


class _SaysIncomplete:
    """A Smart Turn stand-in that always hears an unfinished turn (P = 0.1)."""

    def probability(self, audio: np.ndarray) -> float:
        return 0.1


def test_unfinished_audio_with_finished_text_waits_the_text_wait(text_turn: TextTurnModel) -> None:
    """Smart Turn says incomplete, the text reads finished: with a short text wait the turn ends
    there, not at the long limit; an unfinished text, or no short wait configured, still waits
    the long limit (the real language model decides the text)."""
    audio = np.zeros(16000, np.float32)
    short = SmartTurnDetector(_SaysIncomplete(), max_silence_ms=4000, text_model=text_turn,  # type: ignore[arg-type]
                              text_wait_ms=1500)
    v = short.decide(audio, 16000, transcript="What floor is the electronics section on.")
    assert v.reason == "audio_incomplete" and v.end_after_ms == 1500 and v.text_probability is not None, v
    v = short.decide(audio, 16000, transcript="What time do you.")
    assert v.reason == "incomplete" and v.end_after_ms == 4000, v
    v = short.decide(audio, 16000, transcript="I'm looking for the.")     # the word rule: no LM call
    assert v.reason == "incomplete" and v.end_after_ms == 4000 and v.text_probability is None, v
    sure = SmartTurnDetector(_SaysIncomplete(), max_silence_ms=4000, text_model=text_turn, text_wait_ms=1500,  # type: ignore[arg-type]
                             text_sure=0.05, unsure_ms=600)
    v = sure.decide(audio, 16000, transcript="Where can I find the batteries.")      # P(end) ≈ 0.26
    assert v.reason == "audio_incomplete" and v.end_after_ms == 600, v
    v = sure.decide(audio, 16000, transcript="What time do you.")
    assert v.reason == "incomplete" and v.end_after_ms == 4000, v
    with pytest.raises(ConfigError, match="text_sure"):
        TurnConfig(mode="smart_turn", text_sure=0.05)          # needs the text model
    with pytest.raises(ConfigError, match="text_sure"):
        TurnConfig(mode="smart_turn", text_model="lm", text_sure=0.001)   # below text_threshold
    default = SmartTurnDetector(_SaysIncomplete(), max_silence_ms=4000, text_model=text_turn)  # type: ignore[arg-type]
    v = default.decide(audio, 16000, transcript="What floor is the electronics section on.")
    assert v.reason == "incomplete" and v.end_after_ms == 4000 and v.text_probability is None, v


def test_text_model_config_errors() -> None:
    """The text options are validated like the rest, and off by default."""
    assert TurnConfig().text_model == "none" and TurnConfig(mode="smart_turn").text_wait_ms is None
    with pytest.raises(ConfigError, match="text_model"):
        TurnConfig(mode="smart_turn", text_model="gpt")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"needs turn\.mode 'smart_turn'"):
        TurnConfig(text_model="lm")
    for bad in (0.0, 1.0, -0.2, True, "0.1"):
        with pytest.raises(ConfigError, match="text_threshold"):
            TurnConfig(mode="smart_turn", text_model="lm", text_threshold=bad)  # type: ignore[arg-type]
    for wait in (200, 100, 2.5):
        with pytest.raises(ConfigError, match="text_wait_ms"):
            TurnConfig(mode="smart_turn", text_model="lm", check_ms=200, text_wait_ms=wait)  # type: ignore[arg-type]


def test_language_models_load_in_two_threads_at_once() -> None:
    """A server loads the text turn model in the background while another language model may be
    loading (the responder's, a second server's): transformers builds models on the meta device by
    patching torch globally, so without the shared load lock both loads broke ("Cannot copy out
    of meta tensor")."""
    import threading

    from agent.config import LocalLLMConfig
    from agent.responders.local import LocalLLM

    llms = [LocalLLM(LocalLLMConfig(device="cpu", quantize=None)) for _ in range(2)]
    errors: list[BaseException] = []

    def load(llm: LocalLLM) -> None:
        try:
            llm.load()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(llm,)) for llm in llms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert all(llm.model is not None and not any(p.is_meta for p in llm.model.parameters()) for llm in llms)
