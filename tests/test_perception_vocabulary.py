"""Vocabulary-aware recognition (a pack's terms bias Whisper) and Whisper base as a speech model."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from agent.pack import load_pack
from agent.vocabulary import entry_terms, pack_vocabulary
from perception import ConfigError, Perception, PerceptionConfig
from perception.models import WHISPER_BASE_SHA256, WHISPER_BASE_SIZE, whisper_base_dir
from perception.speech import MAX_VOCABULARY_CHARS, vocabulary_prompt
from tests.conftest import synth_speech
from tests.test_perception_speech import wer

SERVICE_DESK = "Hello, where is the service desk please?"
HALF_SECOND = np.zeros(8000, np.float32)


def _spoken(text: str, voice: str, speed: int = 160) -> np.ndarray:
    samples, _ = synth_speech(text, voice=voice, speed=speed)
    return np.concatenate([HALF_SECOND, samples, HALF_SECOND])


@pytest.fixture(scope="session")
def biased_perception() -> Perception:
    """tiny.en decoding with the demo pack's vocabulary as its prompt (shares tiny.en's weights)."""
    return Perception(PerceptionConfig(speech_vocabulary=tuple(pack_vocabulary(load_pack()))))


def test_pack_vocabulary_reads_names_titles_keywords_and_aliases() -> None:
    """Product names and titles of the demo pack, sizes dropped; aliases and keywords when present."""
    terms = pack_vocabulary(load_pack())
    assert "service desk" in terms and "AA batteries" in terms and "whole milk" in terms and "toilets" in terms
    assert not any("location" in t.lower() or "litre" in t for t in terms)
    entry = SimpleNamespace(name="Long-life AA batteries (4 pack)", title="", keywords=("Duracell",),
                            aliases=("Double A batteries",))
    bare = SimpleNamespace(name="", title="", keywords=())        # an entry of a pack without aliases
    assert pack_vocabulary(SimpleNamespace(entries=[entry, bare])) == ["long-life AA batteries", "double A batteries",
                                                                               "Duracell"]
    assert pack_vocabulary(SimpleNamespace(entries=[bare])) == []


def test_entry_terms_name_each_entry_every_way_but_keywords() -> None:
    """Each entry's spoken names (name, title, aliases), keywords left out: several entries share them."""
    entry = SimpleNamespace(name="Long-life AA batteries (4 pack)", title="AA batteries location", keywords=("Duracell",),
                            aliases=("Double A batteries",))
    bare = SimpleNamespace(name="", title="", keywords=())
    assert entry_terms(SimpleNamespace(entries=[entry, bare])) == [
        ["long-life AA batteries", "AA batteries", "double A batteries"], []]
    toilets = next(forms for forms in entry_terms(load_pack()) if "toilets" in forms)
    assert "toilet" in toilets


def test_vocabulary_prompt() -> None:
    """De-duplicated in order, cut whole at the prompt budget; nothing for no terms."""
    assert vocabulary_prompt([]) is None
    assert vocabulary_prompt(["Service desk", "service  desk", "Returns"]) == "Glossary: Service desk, Returns."
    long = vocabulary_prompt([f"term number {i}" for i in range(200)])
    assert long is not None and len(long) <= MAX_VOCABULARY_CHARS and long.endswith(".")
    with pytest.raises(ConfigError, match="speech_vocabulary"):
        PerceptionConfig(speech_vocabulary=("ok", ""))
    assert PerceptionConfig(speech_vocabulary=["a", "b"]).speech_vocabulary == ("a", "b")  # type: ignore[arg-type]


def test_biasing_turns_service_desk_from_wrong_to_right(perception: Perception,
                                                        biased_perception: Perception) -> None:
    """en-gb espeak-ng: plain tiny.en hears "service neck"; with the pack's vocabulary, "service desk"."""
    audio = _spoken(SERVICE_DESK, "en-gb")
    plain = perception.encode_speech(audio, 16000).transcript
    biased = biased_perception.encode_speech(audio, 16000).transcript
    assert "service desk" not in plain.lower(), plain
    assert "service desk" in biased.lower(), biased


def test_no_vocabulary_changes_nothing(perception: Perception) -> None:
    """A pack with no terms gives an empty vocabulary: the same config, no prompt, the same words."""
    terms = pack_vocabulary(SimpleNamespace(entries=[SimpleNamespace(name="", title="")]))
    config = PerceptionConfig(speech_vocabulary=tuple(terms))
    assert config == PerceptionConfig()
    same = Perception(config)
    audio = _spoken("What time does the store close today?", "en-us")
    assert same.encode_speech(audio, 16000).transcript == perception.encode_speech(audio, 16000).transcript


def test_biasing_does_not_invent_glossary_words(biased_perception: Perception) -> None:
    """Sentences without any pack term come back without glossary words, and silence stays empty."""
    for text in ("What time does the store close today?", "Thank you very much, goodbye."):
        heard = biased_perception.encode_speech(_spoken(text, "en-us"), 16000).transcript
        assert wer(text, heard) <= 0.2, heard
    assert biased_perception.encode_speech(np.zeros(32000, np.float32), 16000).transcript == ""


def test_server_engine_uses_the_pack_vocabulary() -> None:
    """The engine biases recognition with its pack's terms; an explicit list, even empty, wins."""
    from server.config import load_config
    from server.engine import LocalEngine
    from server.metrics import Metrics

    engine = LocalEngine(load_config(None, env={}, overrides={}), Metrics())
    assert "service desk" in engine._perception_config().speech_vocabulary
    off = LocalEngine(load_config(None, env={}, overrides={"perception": {"speech_vocabulary": []}}), Metrics())
    assert off._perception_config().speech_vocabulary == ()
    for e in (engine, off):
        e.executor.shutdown()
        e.light_executor.shutdown()


def test_whisper_base_is_joined_verified_and_rejoined(tmp_path: Path) -> None:
    """The two parts join into the cache with the recorded size and SHA-256; a damaged copy is
    joined again."""
    target = whisper_base_dir(tmp_path)
    model = target / "model.bin"
    assert model.stat().st_size == WHISPER_BASE_SIZE
    assert hashlib.sha256(model.read_bytes()).hexdigest() == WHISPER_BASE_SHA256
    assert {p.name for p in target.iterdir()} == {"model.bin", "config.json", "tokenizer.json", "vocabulary.json"}
    with model.open("r+b") as f:          # same size, different bytes
        f.seek(1000)
        f.write(bytes(16))
    whisper_base_dir(tmp_path)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == WHISPER_BASE_SHA256


def test_whisper_base_transcribes(biased_perception: Perception) -> None:
    """speech_model: whisper-base loads the multilingual base model (512-d) and hears a kiosk question."""
    base = Perception(PerceptionConfig(speech_model="whisper-base",
                                       speech_vocabulary=biased_perception.config.speech_vocabulary))
    assert "service desk" in base.encode_speech(_spoken(SERVICE_DESK, "en-us"), 16000).transcript.lower()
    question = "What time does the store close today?"
    enc = base.encode_speech(_spoken(question, "en-us"), 16000)
    assert wer(question, enc.transcript) <= 0.15, enc.transcript
    assert enc.embedding.shape == (512,) and enc.language == "en"
    assert base.identities()["speech"] == "speech:whisper-base:voiced-mean-fit:512"
