"""Key-term rescoring (perception/term_rescore.py): Whisper's own sentence scores repair misheard terms."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from agent.pack import load_pack
from agent.vocabulary import pack_vocabulary
from perception import ConfigError, Perception, PerceptionConfig
from perception.speech import vocabulary_prompt
from perception.term_rescore import TermRescorer, _prefix_distances, edit_distance
from tests.conftest import synth_speech

HALF_SECOND = np.zeros(8000, np.float32)
VOCABULARY = tuple(pack_vocabulary(load_pack()))


def _spoken(text: str, voice: str, speed: int) -> np.ndarray:
    samples, _ = synth_speech(text, voice=voice, speed=speed)
    return np.concatenate([HALF_SECOND, samples, HALF_SECOND])


@pytest.fixture(scope="session")
def glossary_only() -> Perception:
    """tiny.en with the pack's glossary prompt, no rescoring (shares tiny.en's weights)."""
    return Perception(PerceptionConfig(speech_vocabulary=VOCABULARY, speech_term_rescore=False))


@pytest.fixture(scope="session")
def rescoring(glossary_only: Perception) -> Perception:
    """The server's default: glossary prompt and key-term rescoring."""
    return Perception(PerceptionConfig(speech_vocabulary=VOCABULARY))


@pytest.fixture(scope="session")
def rescorer(rescoring: Perception) -> TermRescorer:
    rescoring.warmup(("speech",))
    backend = rescoring._speech.get().backend
    assert isinstance(backend.rescorer, TermRescorer)
    return backend.rescorer


def test_edit_distances() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert _prefix_distances("abc", "abxc") == {1: 2, 2: 1, 3: 1, 4: 1}


def test_every_entry_reaches_the_prompt_before_its_many_aliases() -> None:
    """The demo pack has 27 ways to say "no receipt"; the glossary still names toilets and parking."""
    prompt = vocabulary_prompt(VOCABULARY)
    assert prompt is not None
    for term in ("service desk", "toilets", "parking", "payment methods", "self-checkout", "whole milk"):
        assert term in prompt, term
    pack = SimpleNamespace(entries=[SimpleNamespace(name="", title="A", aliases=("a1", "a2", "a3")),
                                    SimpleNamespace(name="", title="B", aliases=("b1", "b2"))])
    assert pack_vocabulary(pack) == ["A", "B", "a1", "b1", "a2", "b2", "a3"]


def test_candidates_sound_like_the_transcript(rescorer: TermRescorer) -> None:
    """A term that sounds like a stretch of the transcript replaces it; a held term is kept."""
    cands = rescorer.candidates("How much is the total milk?")
    assert ("whole milk", "How much is the whole milk?") in [(c[1], c[3]) for c in cands]
    assert all(c[0] <= rescorer.max_distance for c in cands)
    # "milk" is a pack term the transcript holds: only a term containing it may cover it.
    assert not any("milk" in c[2] and "milk" not in c[1] for c in cands)
    assert "service desk" not in [c[1] for c in rescorer.candidates("Where is the service desk?")]
    assert rescorer.candidates("") == []


def test_rescoring_turns_a_misheard_term_right(glossary_only: Perception, rescoring: Perception) -> None:
    """en-gb espeak-ng at 150 wpm: glossary-biased greedy tiny.en writes "total milk"; Whisper's own
    score of "whole milk" (with the term's prior) wins, and the rest of the sentence is kept."""
    audio = _spoken("How much is the whole milk?", "en-gb", 150)
    before = glossary_only.encode_speech(audio, 16000).transcript
    after = rescoring.encode_speech(audio, 16000).transcript
    assert "whole milk" not in before.lower(), before
    assert "whole milk" in after.lower(), after
    assert after.lower().startswith("how much is the"), after


def test_rescoring_leaves_sentences_without_terms_alone(glossary_only: Perception, rescoring: Perception) -> None:
    """No pack term said → the same transcript as without rescoring, with no pack term in it."""
    for text, voice in (("What is the weather like outside?", "en-gb"), ("My son lost his blue jacket.", "en-us"),
                        ("Good morning, how are you today?", "en-gb-scotland")):
        audio = _spoken(text, voice, 160)
        heard = rescoring.encode_speech(audio, 16000).transcript
        assert heard == glossary_only.encode_speech(audio, 16000).transcript, heard


def test_rescore_scores_with_whisper(rescorer: TermRescorer, rescoring: Perception) -> None:
    """The verdict is Whisper's: on real audio of "toilets", the right sentence outscores a wrong term."""
    audio = _spoken("Excuse me, where are the toilets?", "en-us", 160)
    backend = rescoring._speech.get().backend
    feats, enc = backend._encode(audio)
    scores = rescorer.logprobs(["Excuse me, where are the toilets?", "Excuse me, where are the batteries?"],
                               np.asarray(enc), feats.shape[-1] - 1)
    assert scores[0] > scores[1] + 3, scores


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="speech_term_rescore_bonus"):
        PerceptionConfig(speech_term_rescore_bonus=-1.0)
    with pytest.raises(ConfigError, match="speech_term_rescore_distance"):
        PerceptionConfig(speech_term_rescore_distance=1.5)
    with pytest.raises(ConfigError, match="speech_term_rescore must be"):
        PerceptionConfig(speech_term_rescore="yes")  # type: ignore[arg-type]
