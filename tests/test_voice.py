"""Voice output: text normalisation, clause streaming, the Piper voice, rates, bad voices, and
what a listener hears (Whisper transcribes the synthesised reply back)."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from perception import Perception
from tests.conftest import piper_speech
from tests.test_perception_speech import wer
from voice import (
    ClauseSplitter,
    InvalidVoiceError,
    Synthesizer,
    UnsupportedRateError,
    VoiceConfig,
    VoiceNotFoundError,
    normalize,
    split_clauses,
)
from voice.errors import ConfigError, InvalidTextError
from voice.numbers import cardinal, ordinal
from voice.piper import embedded_voice

REPLY = "The batteries are in aisle 7, next to the light bulbs, and cost $4.49."


# ---- text ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "spoken"), [
    ("$4.49", "four dollars forty-nine"),
    ("$1.29", "one dollar twenty-nine"),
    ("$3.50 a loaf", "three dollars fifty a loaf"),
    ("$12", "twelve dollars"),
    ("$0.99", "ninety-nine cents"),
    ("$1.05", "one dollar and five cents"),
    ("$1,299.00", "one thousand two hundred ninety-nine dollars"),
    ("We open at 8 am", "We open at eight a.m."),
    ("until 9:30 p.m", "until nine thirty p.m."),
    ("at 10:05", "at ten oh five"),
    ("aisle 7", "aisle seven"),
    ("next to aisle 12", "next to aisle twelve"),
    ("10% off", "ten percent off"),
    ("the 21st floor", "the twenty-first floor"),
    ("1.5 kg of rice", "one point five kilograms of rice"),
    ("1 litre", "1 litre".replace("1", "one")),
    ("Q&A", "Q and A"),
    ("no digits here", "no digits here"),
])
def test_normalize_speaks_numbers(text: str, spoken: str) -> None:
    """Prices, times, aisles, percentages, ordinals and units become the words a person says."""
    assert normalize(text) == spoken


def test_number_words() -> None:
    """Cardinals and ordinals across scales."""
    assert cardinal(0) == "zero"
    assert cardinal(115) == "one hundred fifteen"
    assert cardinal(4049) == "four thousand forty-nine"
    assert cardinal(2_000_012) == "two million twelve"
    assert [ordinal(n) for n in (1, 2, 3, 5, 12, 20, 42, 100)] == [
        "first", "second", "third", "fifth", "twelfth", "twentieth", "forty-second", "one hundredth"]
    with pytest.raises(ValueError):
        cardinal(-1)


def test_clauses_do_not_split_prices_titles_or_times() -> None:
    """Decimal points, titles, initials and 'a.m.' before a lowercase word are not clause ends."""
    clauses = split_clauses("Dr. Smith says milk costs $1.29. Come at 8 a.m. tomorrow, J. Doe will help! OK")
    assert [(c.text, c.terminator, c.sentence_end) for c in clauses] == [
        ("Dr. Smith says milk costs $1.29", ".", True),
        ("Come at 8 a.m. tomorrow", ",", False),
        ("J. Doe will help", "!", True),
        ("OK", "", True),
    ]


def test_streaming_split_equals_whole_text() -> None:
    """Feeding the text one character at a time gives the same clauses, each as soon as the
    whitespace after its terminator arrives."""
    text = "Hello, the batteries cost $4.49. Anything else? We open at 8 a.m. Monday to Saturday."
    splitter = ClauseSplitter()
    streamed, seen_at = [], []
    for i, ch in enumerate(text):
        for c in splitter.feed(ch):
            streamed.append(c)
            seen_at.append(i)
    streamed += splitter.flush()
    assert streamed == split_clauses(text)
    assert streamed[0].text == "Hello" and seen_at[0] == text.index(",") + 1


def test_long_clause_is_split() -> None:
    """A clause with no punctuation is not held forever: it is cut at a space."""
    splitter = ClauseSplitter(max_clause_chars=40)
    out = splitter.feed("word " * 20)
    assert out and all(len(c.text) <= 40 for c in out)


# ---- synthesis -----------------------------------------------------------------------------------

def test_reply_audio_is_heard_as_its_text(tts: Synthesizer, perception: Perception) -> None:
    """A reply spoken by the Piper voice decodes (Whisper tiny.en) to the reply's own words,
    prices and aisle included."""
    audio = piper_speech(tts, REPLY)
    heard = perception.encode_speech(audio, 16000).transcript
    assert wer(REPLY, heard) <= 0.1, heard
    assert "4.49" in heard and ("aisle 7" in heard.lower() or "aisle seven" in heard.lower()), heard


def test_asides_pause_and_letters_are_spoken_as_letters(tts: Synthesizer) -> None:
    """What normalising adds is said: the commas around a bracketed aside reach the voice as
    pauses (espeak-ng drops punctuation inside a clause), and the "A" of "double A" (from "AA")
    is the letter, not the article "uh"."""
    from voice.text import split_clauses

    ids = tts.phoneme_ids(split_clauses("AA batteries (pack of 4) are in aisle 7."))
    comma = tts.voice.info.phoneme_id_map[","]
    assert sum(ids[i:i + len(comma)] == comma for i in range(len(ids))) == 2
    letter_a = tts.phoneme_ids(split_clauses("double eh"))
    assert tts.phoneme_ids(split_clauses("double A")) == letter_a
    assert tts.phoneme_ids(split_clauses("A pack of four.")) != tts.phoneme_ids(split_clauses("eh pack of four."))


def test_stream_starts_with_first_clause(tts: Synthesizer) -> None:
    """Streaming deltas: the first chunk is the first clause, later chunks whole sentences, the last
    is final; chunk offsets add up and the transcript chunks rebuild the text."""
    text = "Hello! " + REPLY + " We are open from 8 am to 9 pm."
    stream = tts.open_stream(24000)
    for word in text.split(" "):
        stream.feed(word + " ")
    stream.finish()
    chunks = list(stream.chunks(timeout=30))
    assert chunks[0].text == "Hello!"
    assert chunks[1].text == REPLY
    assert chunks[-1].final and not any(c.final for c in chunks[:-1])
    assert " ".join(c.text for c in chunks if c.text) == text
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.start_ms == pytest.approx(prev.start_ms + prev.duration_ms)
    assert all(c.sample_rate == 24000 and len(c.pcm) % 2 == 0 for c in chunks)
    assert stream.first_chunk_s is not None and stream.audio_ms > 6000


def test_first_chunk_does_not_wait_for_a_long_sentence(tts: Synthesizer) -> None:
    """A long first sentence streaming in word by word is cut at a phrase break after six words,
    so its first audio comes before the sentence has finished arriving."""
    text = "You can return unused items within 30 days with the receipt at the service desk."
    words = text.split(" ")
    stream = tts.open_stream(16000)
    for w in words[:10]:
        stream.feed(w + " ")
    chunks = stream.chunks(timeout=30)
    first = next(chunks)
    assert first.text == "You can return unused items within 30 days"
    for w in words[10:]:
        stream.feed(w + " ")
    stream.finish()
    rest = list(chunks)
    assert " ".join(c.text for c in [first, *rest] if c.text) == text
    assert ClauseSplitter().cut_words(6) == []
    _, whole = tts.synthesize(text)                   # the whole text at once: the same first phrase
    assert whole[0].text == first.text


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000, 22050])
def test_output_rates(tts: Synthesizer, rate: int) -> None:
    """Every supported output rate gives the same duration of audio (±3 %), PCM16 mono."""
    audio, chunks = tts.synthesize("Where is the service desk?", output_rate=rate)
    assert audio.dtype == np.int16 and chunks[0].sample_rate == rate
    seconds = audio.size / rate
    assert 1.0 < seconds < 3.5
    ref, _ = tts.synthesize("Where is the service desk?", output_rate=24000)
    assert seconds == pytest.approx(ref.size / 24000, rel=0.1)   # VITS durations are sampled: ±10 %


def test_unsupported_rate_is_refused(tts: Synthesizer) -> None:
    """An output rate the voice layer does not produce is an error at config and at stream start."""
    with pytest.raises(UnsupportedRateError, match="11025"):
        VoiceConfig(output_rate=11025)
    with pytest.raises(UnsupportedRateError) as err:
        tts.open_stream(44100)
    assert err.value.code == "unsupported_rate"


def test_speed_from_config() -> None:
    """length_scale (the pack's speed) stretches the speech."""
    with Synthesizer(VoiceConfig(length_scale=1.5)) as slow:
        text = "The service desk is at the front of the store."
        slow_audio, _ = slow.synthesize(text, 16000)
    with Synthesizer(VoiceConfig()) as normal:
        normal_audio, _ = normal.synthesize(text, 16000)
    assert slow_audio.size > 1.3 * normal_audio.size


def test_concurrent_streams_complete_in_order(tts: Synthesizer) -> None:
    """Four replies fed from four threads at once all complete; each stream's chunks are in order."""
    results: dict[int, list] = {}

    def reply(k: int) -> None:
        stream = tts.open_stream(16000)
        for part in ("Hello, ", f"this is reply {k}. ", REPLY):
            stream.feed(part)
        stream.finish()
        results[k] = list(stream.chunks(timeout=60))

    threads = [threading.Thread(target=reply, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert sorted(results) == [0, 1, 2, 3]
    for k, chunks in results.items():
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert chunks[-1].final and f"reply {k}" in " ".join(c.text for c in chunks)


def test_async_iteration(tts: Synthesizer) -> None:
    """``async for`` yields the same chunks without blocking the event loop."""
    async def main() -> list:
        stream = tts.open_stream()
        stream.feed(REPLY)
        stream.finish()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while not stream.done:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        chunks = [c async for c in stream]
        await ticker
        assert ticks > 0
        return chunks

    chunks = asyncio.run(main())
    assert chunks and chunks[-1].final


def test_cancel_stops_delivery_and_heard_text(tts: Synthesizer) -> None:
    """cancel() ends the stream; heard_text maps a playout position to the words spoken by then."""
    stream = tts.open_stream(16000)
    stream.feed("Hello, " + REPLY + " " + REPLY + " " + REPLY)
    first = next(stream.chunks(timeout=30))
    stream.cancel()
    chunks = list(stream.chunks(timeout=30))
    assert stream.done and stream.cancelled and chunks[0] == first and not chunks[-1].final
    assert stream.heard_text(0) == ""
    assert stream.heard_text(first.duration_ms) == "Hello,"
    stream.feed("more text")                       # ignored after cancel
    assert len(list(stream.chunks(timeout=1))) == len(chunks)


def test_text_must_be_a_string(tts: Synthesizer) -> None:
    """Reply text that is not a string is the project's own input error."""
    stream = tts.open_stream()
    with pytest.raises(InvalidTextError):
        stream.feed(b"bytes")  # type: ignore[arg-type]
    stream.cancel()


def test_empty_reply_gives_one_final_chunk(tts: Synthesizer) -> None:
    """A reply with nothing speakable still ends its stream with a final chunk."""
    audio, chunks = tts.synthesize("  ...  ")
    assert audio.size == 0 and len(chunks) == 1 and chunks[0].final


# ---- voices by path, and bad ones ------------------------------------------------------------------

def test_any_voice_by_path(tmp_path: Path) -> None:
    """A Piper voice is loaded from any path (its .onnx.json beside it, or named explicitly)."""
    onnx, meta = embedded_voice()
    shutil.copy(onnx, tmp_path / "shop.onnx")
    shutil.copy(meta, tmp_path / "shop-config.json")
    cfg = VoiceConfig(voice=str(tmp_path / "shop.onnx"), voice_config=str(tmp_path / "shop-config.json"))
    with Synthesizer(cfg) as synth:
        audio, _ = synth.synthesize("Hello.", 16000)
    assert audio.size > 4000 and synth.voice.info.sample_rate == 22050


def test_unknown_voice_path(tmp_path: Path) -> None:
    """A voice path that does not exist → voice_not_found, naming the path."""
    with pytest.raises(VoiceNotFoundError, match=r"nope\.onnx") as err:
        Synthesizer(VoiceConfig(voice=str(tmp_path / "nope.onnx")))
    assert err.value.code == "voice_not_found"
    (tmp_path / "lonely.onnx").write_bytes(b"x")
    with pytest.raises(VoiceNotFoundError, match=r"lonely\.onnx\.json"):
        Synthesizer(VoiceConfig(voice=str(tmp_path / "lonely.onnx")))


def test_voice_file_that_is_not_onnx(tmp_path: Path) -> None:
    """A .onnx file that is not ONNX, or ONNX that is not a Piper voice → invalid_voice."""
    _, meta = embedded_voice()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model" * 10)
    shutil.copy(meta, tmp_path / "bad.onnx.json")
    with pytest.raises(InvalidVoiceError, match="not an ONNX model") as err:
        Synthesizer(VoiceConfig(voice=str(bad)))
    assert err.value.code == "invalid_voice"
    from perception.turn import smart_turn_path

    other = tmp_path / "other.onnx"
    shutil.copy(smart_turn_path(), other)
    shutil.copy(meta, tmp_path / "other.onnx.json")
    with pytest.raises(InvalidVoiceError, match="not a Piper voice"):
        Synthesizer(VoiceConfig(voice=str(other)))


def test_bad_voice_json(tmp_path: Path) -> None:
    """A voice JSON that is not JSON, or lacks the phoneme map → invalid_voice naming the file."""
    onnx, _ = embedded_voice()
    voice = tmp_path / "v.onnx"
    voice.symlink_to(onnx)
    (tmp_path / "v.onnx.json").write_text("{not json")
    with pytest.raises(InvalidVoiceError, match="not valid JSON"):
        Synthesizer(VoiceConfig(voice=str(voice)))
    (tmp_path / "v.onnx.json").write_text('{"audio": {"sample_rate": 22050}, "espeak": {"voice": "en-us"}}')
    with pytest.raises(InvalidVoiceError, match="phoneme_id_map"):
        Synthesizer(VoiceConfig(voice=str(voice)))


def test_voice_config_checks() -> None:
    """Bad values and unknown keys name the field."""
    with pytest.raises(ConfigError, match="length_scale"):
        VoiceConfig(length_scale=0)
    with pytest.raises(ConfigError, match="workers"):
        VoiceConfig(workers=0)
    with pytest.raises(ConfigError, match="speeed"):
        VoiceConfig.from_dict({"speeed": 1.2})
    assert VoiceConfig.from_dict({"length_scale": 1.1}).length_scale == 1.1
