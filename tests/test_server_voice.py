"""The server speaks: output_modalities ["audio"] through the real server, voice and Whisper.

A reply's audio (response.output_audio.delta, PCM16 at the session's rate) is transcribed by the
project's Whisper tiny.en and must say the reply's text; a barge-in (speech over the reply, or a
conversation.item.truncate with audio_end_ms) truncates the stored turn to what was heard; bad
output settings and bad voices are refused with clear errors.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from perception.errors import ConfigError
from server.client import RealtimeClient
from tests.conftest import synth_speech
from tests.test_server_e2e import collect_until, types_of

AUDIO_SESSION = {"output_modalities": ["audio"], "audio": {"output": {"format": {"type": "audio/pcm",
                                                                                  "rate": 24000}}}}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("$", " "))


def overlap(said: str, heard: str) -> float:
    """Fraction of the reply's words found in the transcript (numbers as words or digits)."""
    from voice.text import normalize

    want = words(normalize(said))
    got = set(words(normalize(heard)))
    return sum(w in got for w in want) / max(1, len(want))


def decode_audio(events: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")


@pytest.fixture(scope="module")
def pack_listener() -> Any:
    """Whisper as the server itself listens: biased with the demo pack's vocabulary (issue 13
    item 4). Plain tiny.en hears this voice's "are in aisle seven" as "R and I-07"."""
    from agent import load_pack
    from agent.vocabulary import pack_vocabulary
    from perception import Perception, PerceptionConfig

    return Perception(PerceptionConfig(speech_vocabulary=tuple(pack_vocabulary(load_pack()))))


@pytest.fixture(scope="module")
def steady_voice_server() -> Any:
    """A server whose voice samples no variation (noise 0: the same audio for the same text), so
    what Whisper hears is the same on every run; the default voice samples new timing and timbre
    each time, and tiny.en's slips on a few of those takes ("are in aisle" → "R907") would make a
    transcript check pass or fail by chance."""
    from tests.conftest import start_server

    srv: Any = start_server(voice={"noise_scale": 0.0, "noise_w": 0.0})
    yield srv
    srv.stop()


def test_reply_audio_says_the_reply(steady_voice_server: Any, pack_listener: Any) -> None:
    """A typed question, answered aloud at 16 kHz: GA event order, the output_audio part with its
    transcript, and audio whose Whisper transcript matches the reply text (word overlap >= 0.8)."""
    perception = pack_listener
    async def main() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with RealtimeClient(steady_voice_server.ws_url) as c:
            await c.update_session(output_modalities=["audio"],
                                   audio={"output": {"format": {"type": "audio/pcm", "rate": 16000}}})
            updated = await c.wait_for("session.updated")
            assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "sample_rate": 16000}
            assert updated["session"]["audio"]["output"]["voice"] == "en_US-joe-medium"
            await c.send_text("Where are the batteries?")
            return await collect_until(c, "response.done"), updated

    events, _ = run(main())
    ts = types_of(events)
    assert "response.output_text.delta" not in ts
    for kind in ("response.output_audio.delta", "response.output_audio_transcript.delta",
                 "response.output_audio.done", "response.output_audio_transcript.done"):
        assert kind in ts, kind
    assert ts.index("response.output_audio_transcript.done") < ts.index("response.content_part.done")
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["output_modalities"] == ["audio"]
    part = done["output"][0]["content"][0]
    assert part["type"] == "output_audio"
    reply = part["transcript"]
    transcript_done = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
    assert transcript_done["transcript"] == reply and reply
    assert done["timings_ms"]["first_audio"] is not None
    pcm = decode_audio(events)
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    assert len(audio) / 16000 > 0.5 * len(reply.split()) * 0.25   # about speech-length audio
    heard = perception.encode_speech(audio, 16000).transcript
    assert overlap(reply, heard) >= 0.8, (reply, heard)


def test_unsupported_output_settings_are_refused(mm_server: Any) -> None:
    """An output rate the voice cannot produce, a format other than PCM, a speed out of range:
    error events with stable codes; the session keeps its settings and still answers."""
    async def main() -> list[dict[str, Any]]:
        async with RealtimeClient(mm_server.ws_url) as c:
            errors = []
            for out in ({"format": {"type": "audio/pcm", "rate": 44100}}, {"format": {"type": "audio/pcmu"}},
                        {"speed": 3.0}):
                await c.update_session(output_modalities=["audio"], audio={"output": out})
                errors.append(await c.wait_for("error"))
            await c.update_session(**AUDIO_SESSION)
            s = (await c.wait_for("session.updated"))["session"]
            assert s["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
            return errors

    errors = run(main())
    assert [e["error"]["code"] for e in errors] == ["unsupported_audio_format", "unsupported_audio_format",
                                                    "invalid_value"]
    assert "44100" in errors[0]["error"]["message"] and "22050" in errors[0]["error"]["message"]


def test_truncate_keeps_what_was_heard(mm_server: Any) -> None:
    """conversation.item.truncate at audio_end_ms: the item's transcript and the stored turn (as
    the next session resumed from the store sees it) keep the words spoken by then."""
    async def main() -> tuple[str, str, str, str]:
        async with RealtimeClient(mm_server.ws_url) as c:
            await c.update_session(**AUDIO_SESSION)
            await c.send_text("What is your returns policy?")
            events = await collect_until(c, "response.done")
            item = events[-1]["response"]["output"][0]
            full = item["content"][0]["transcript"]
            audio_ms = 1000 * len(decode_audio(events)) / 2 / 24000
            await c.send({"type": "conversation.item.truncate", "item_id": item["id"], "content_index": 0,
                          "audio_end_ms": int(audio_ms * 0.4)})
            await c.wait_for("conversation.item.truncated")
            await c.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
            kept = (await c.wait_for("conversation.item.retrieved"))["item"]["content"][0]["transcript"]
            await asyncio.sleep(0.5)
            return full, kept, c.session_id or ""

    full, kept, sid = run(main())
    assert kept and len(kept) < len(full) and full.startswith(" ".join(kept.split()[:-1])), (full, kept)
    assert stored_replies(mm_server, sid)[-1] == kept


def stored_replies(srv: Any, session_id: str) -> list[str]:
    """The replies the agent stored for ``session_id``, oldest first (read from its SQLite store)."""
    from agent.store import SessionStore

    store = SessionStore(Path(srv.config.state_dir) / "sessions.sqlite3")
    return [t.reply for t in store.load_turns(session_id)]


def test_barge_in_truncates_the_stored_reply(mm_server: Any) -> None:
    """Speech over a spoken reply that is still playing (its audio is all sent, response done: the
    voice is faster than real time): the stored turn keeps only what played before the speech."""
    speech, _ = synth_speech("Stop, please.", sample_rate=24000)
    pcm = (np.concatenate([speech, np.zeros(24000, np.float32)]) * 32767).astype("<i2")

    async def main() -> tuple[str, str, float, float]:
        async with RealtimeClient(mm_server.ws_url) as c:
            await c.update_session(**AUDIO_SESSION)
            await c.send_text("How do I return an item I bought last week?")
            t0 = None
            events: list[dict[str, Any]] = []
            async with asyncio.timeout(90):
                async for ev in c.events():
                    events.append(ev)
                    if ev["type"] == "response.output_audio.delta" and t0 is None:
                        t0 = time.monotonic()
                    if ev["type"] == "response.done":
                        break
            full = events[-1]["response"]["output"][0]["content"][0]["transcript"]
            audio_s = len(decode_audio(events)) / 2 / 24000
            assert t0 is not None
            await asyncio.sleep(max(0.0, 1.2 - (time.monotonic() - t0)))   # about 1.2 s played
            t_speech = time.monotonic() - t0
            for i in range(0, len(pcm), 2400):   # the person speaks over it, in real time
                await c.append_audio(pcm[i:i + 2400].tobytes())
                await asyncio.sleep(0.1)
            await collect_until(c, "input_audio_buffer.speech_started", timeout=30)
            await collect_until(c, "response.done", timeout=90)   # the answer to "stop, please"
            await asyncio.sleep(0.3)
            return full, c.session_id or "", t_speech, audio_s

    full, sid, t_speech, audio_s = run(main())
    assert audio_s > t_speech + 1.0, "the reply must still be playing when the person speaks"
    first = stored_replies(mm_server, sid)[0]
    assert first and len(first.split()) < len(full.split()), (full, first)
    assert full.startswith(" ".join(first.split()[:-1])), (full, first)


def test_bad_voice_settings_fail_at_start(tmp_path: Path, mm_server: Any) -> None:
    """voice.* in the server configuration: an unknown key, an unsupported rate → ConfigError at
    validation; a voice path that does not exist, a file that is not ONNX → the voice errors,
    and a real server with either does not start."""
    from server.config import ServerConfig
    from tests.conftest import start_server
    from voice import InvalidVoiceError, Synthesizer, UnsupportedRateError, VoiceNotFoundError

    with pytest.raises(ConfigError, match=r"voice\.pitch"):
        ServerConfig(voice={"pitch": 2}).validate()
    with pytest.raises(UnsupportedRateError, match="44100"):
        ServerConfig(voice={"output_rate": 44100}).validate()
    assert ServerConfig(voice={"enabled": False}).voice_config() is None
    missing = ServerConfig(voice={"voice": str(tmp_path / "nope.onnx")}).voice_config()
    with pytest.raises(VoiceNotFoundError, match=r"nope\.onnx"):
        Synthesizer(missing)
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a model")
    from voice.piper import embedded_voice

    (tmp_path / "fake.onnx.json").write_text(embedded_voice()[1].read_text())   # a good config, a bad model
    with pytest.raises(InvalidVoiceError):
        Synthesizer(ServerConfig(voice={"voice": str(fake)}).voice_config())
    state = str(tmp_path / "state")
    with pytest.raises(VoiceNotFoundError, match=r"nope\.onnx"):
        start_server(state_dir=state, voice={"voice": str(tmp_path / "nope.onnx")})
    with pytest.raises(InvalidVoiceError, match="not an ONNX model"):
        start_server(state_dir=state, voice={"voice": str(fake)})
    with pytest.raises(UnsupportedRateError):
        start_server(state_dir=state, voice={"output_rate": 11025})


def test_player_feeds_its_command_and_stops_at_once(tmp_path: Path) -> None:
    """Player: PCM goes to the command's stdin from the player's own thread (the caller never
    waits); played_ms follows wall-clock time, capped by what arrived; stop() silences it."""
    from server.client_audio import Player, WavSink

    out = tmp_path / "played.raw"
    player = Player.start(16000, command=["sh", "-c", f"cat > {out}"])
    second = (np.sin(np.arange(16000) / 5.0) * 8000).astype("<i2").tobytes()
    t0 = time.monotonic()
    player(second, 16000, "resp_1", "item_1")
    assert time.monotonic() - t0 < 0.05
    time.sleep(0.3)
    assert player.playing() and 250 <= player.played_ms() <= 1000
    heard = player.stop()
    assert 250 <= heard < 1000 and not player.playing()
    time.sleep(0.2)
    assert out.read_bytes() == second
    player.close()
    sink = WavSink(tmp_path / "wav")
    sink(second, 16000, "resp_2", "item_2")
    sink(second, 16000, "resp_2", "item_2")
    sink.end("resp_2")
    import wave

    with wave.open(str(sink.files[0]), "rb") as w:
        assert w.getnframes() == 32000 and w.getframerate() == 16000


def test_echo_gate_unit() -> None:
    """EchoGate: input that is the reference's echo (delayed, 6 dB down) is silenced; input louder
    than the reference passes; with no reference playing nothing is touched."""
    from server.core.echo import EchoGate, Envelope, Reference

    rate = 16000
    t = np.arange(rate) / rate
    voice = (np.sin(2 * np.pi * 220 * t) * 0.3 * 32767).astype("<i2")
    env = Envelope()
    env.add(voice.tobytes(), rate)
    ref = Reference(env, started=100.0)
    gate = EchoGate(margin_db=0.0, max_delay_ms=300)
    echo = (np.roll(voice, rate // 10) * 0.5).astype(np.int16)[: rate // 2]   # 100 ms late, -6 dB
    out = gate.apply(echo, rate, 100.5, [ref])
    assert not out.any() and gate.gated_frames == 50
    loud = (echo.astype(np.int32) * 3).clip(-32768, 32767).astype(np.int16)  # a person louder than it
    assert gate.apply(loud, rate, 100.5, [ref]) is loud
    assert gate.apply(echo, rate, 105.0, [ref]) is echo          # the reply ended long ago
    cut = Reference(env, started=100.0, cut_ms=100.0)                 # playback stopped at 100 ms
    assert gate.apply(echo, rate, 101.0, [cut]) is echo           # its echo has passed by then


def test_own_voice_fed_back_does_not_barge_in_but_a_person_does(mm_server: Any) -> None:
    """Through the real server: the reply's audio, played in real time and fed back into the
    microphone 150 ms late at -6 dB, starts no speech; a person saying "Excuse me, I have a
    question" over it at the reply's own level does (speech_started within their words)."""
    user, _ = synth_speech("Excuse me, I have a question.", sample_rate=24000)

    async def trial(with_user: bool) -> list[float]:
        async with RealtimeClient(mm_server.ws_url) as c:
            await c.update_session(**AUDIO_SESSION)
            await c.wait_for("session.updated")
            played = bytearray()
            started: list[float] = []
            t_first: list[float] = []

            async def reader() -> None:
                async for ev in c.events():
                    if ev["type"] == "response.output_audio.delta" and not started:
                        t_first[:] = t_first or [time.monotonic()]
                        played.extend(base64.b64decode(ev["delta"]))
                    elif ev["type"] == "input_audio_buffer.speech_started":
                        started.append(time.monotonic() - t_first[0])

            task = asyncio.ensure_future(reader())
            await c.send_text("How do I return an item I bought last week?")
            while not t_first:
                await asyncio.sleep(0.005)
            rng, step, d = np.random.default_rng(1), 480, 3600      # 20 ms chunks, 150 ms delay
            scale = 1.0
            for k in range(int(6.0 / 0.02)):
                audio = np.frombuffer(bytes(played), dtype="<i2").astype(np.float32)
                pos = np.arange(k * step, k * step + step) - d
                ok = (pos >= 0) & (pos < len(audio))
                mic = np.zeros(step, np.float32)
                if not started:
                    mic[ok] = audio[pos[ok]] * 0.5
                mic += rng.normal(0, 30, step)
                if with_user:
                    if k == 0:
                        scale = float(np.sqrt(np.mean(audio[:24000] ** 2)) / 32768 / np.sqrt(np.mean(user ** 2)))
                    upos = np.arange(k * step, k * step + step) - int(1.5 * 24000)
                    uok = (upos >= 0) & (upos < len(user))
                    mic[uok] += user[upos[uok]] * scale * 32767
                await c.append_audio(np.clip(mic, -32768, 32767).astype(np.int16))
                await asyncio.sleep(max(0.0, t_first[0] + (k + 1) * 0.02 - time.monotonic()))
            task.cancel()
            return started

    assert run(trial(False)) == []
    heard = run(trial(True))
    assert heard and 1.5 <= heard[0] <= 1.5 + len(user) / 24000 + 0.5, heard


def test_pack_chooses_voice_and_speed(tmp_path: Path) -> None:
    """pack.yaml's voice: a path relative to the pack and a speed; the server's voice.* wins."""
    import shutil

    from agent.pack import load_pack
    from server.config import ServerConfig
    from voice.piper import embedded_voice

    pack_dir = tmp_path / "pack"
    shutil.copytree(Path(__file__).resolve().parent.parent / "packs" / "demo_kiosk", pack_dir)
    onnx, meta = embedded_voice()
    (pack_dir / "voices").mkdir()
    (pack_dir / "voices" / "kit.onnx").symlink_to(onnx)
    (pack_dir / "voices" / "kit.onnx.json").symlink_to(meta)
    with (pack_dir / "pack.yaml").open("a") as f:
        f.write("voice: {voice: voices/kit.onnx, speed: 1.25}\n")
    pack = load_pack(pack_dir)
    config = ServerConfig().voice_config(pack.voice)
    assert config.voice == str((pack_dir / "voices" / "kit.onnx").resolve()) and config.length_scale == 0.8
    assert ServerConfig(voice={"length_scale": 1.1}).voice_config(pack.voice).length_scale == 1.1
    from voice import Synthesizer

    with Synthesizer(config) as tts:
        audio, _ = tts.synthesize("Hello there.", output_rate=16000)
    assert len(audio) > 8000
