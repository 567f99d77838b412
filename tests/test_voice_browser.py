"""The page speaks with the server's voice, in a real headless Chromium against the real server.

The page asks for output_modalities ["audio"] (?speak=1), plays response.output_audio.delta
through its AudioWorklet (server/static/player.js, playback-worklet.js) — the worklet's count of
played frames must advance — and, when the person speaks over the reply (the fake microphone
says "Stop, please." a second after it is switched on), stops it and sends
conversation.item.truncate with what it played: the stored turn keeps only that.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import synth_speech
from tests.test_server_voice import stored_replies
from tests.test_web_client import (  # noqa: F401  (pw is a fixture)
    TOKEN,
    _web_server,
    close_browser,
    connected,
    new_page,
    no_page_errors,
    open_browser,
    pw,
    seen,
    write_wav,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def voice_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    srv = _web_server(tmp_path_factory.mktemp("voice_web_state"))
    yield srv
    srv.stop()


def test_page_plays_server_audio_and_barge_in_truncates(pw: Any, voice_server: Any, tmp_path: Path,  # noqa: F811
                                                        artifacts_dir: Path) -> None:
    rate = 48000
    stop, _ = synth_speech("Stop, please.", sample_rate=rate)
    mic = write_wav(tmp_path / "barge_in.wav", np.concatenate(
        [np.zeros(rate, np.float32), stop, np.zeros(rate * 30, np.float32)]), rate)
    ctx = open_browser(pw, audio=mic)
    try:
        page = new_page(ctx)
        page.goto(f"{voice_server.url}?speak=1&token={TOKEN}")
        connected(page)
        page.wait_for_function("window.mmagent.voice.enabled && window.mmagent.state.session"
                               " && window.mmagent.state.session.output_modalities[0] === 'audio'")
        box = page.locator("#composer-input")
        box.fill("How do I return an item I bought last week?")
        box.press("Enter")
        # The reply plays: the worklet has played half a second of it.
        page.wait_for_function("window.mmagent.voice.playedFrames > 12000", timeout=90_000)
        assert page.evaluate("window.mmagent.voice.playing")
        assert page.evaluate("window.mmagent.turns.playback.source") == "server_audio"
        assert seen(page, "response.output_audio_transcript.delta") > 0
        assert seen(page, "response.output_text.delta") == 0
        page.get_by_role("button", name="Turn microphone on").click()
        # "Stop, please." a second later: speech_started → the page stops the voice and truncates.
        page.wait_for_function("(window.mmagent.state.seen['conversation.item.truncated'] || 0) > 0",
                               timeout=30_000)
        assert not page.evaluate("window.mmagent.voice.playing")
        played_ms = page.evaluate("window.mmagent.voice.playedMs(Object.keys(window.mmagent.voice.played)[0])")
        full = page.evaluate("window.mmagent.turns.turns[0].reply.text")
        sid = page.evaluate("window.mmagent.conn.sessionId")
        page.wait_for_function("(window.mmagent.state.seen['response.done'] || 0) >= 2", timeout=90_000)
        page.screenshot(path=str(artifacts_dir / "voice_barge_in.png"))
        no_page_errors(page)
    finally:
        close_browser(ctx)
    replies = stored_replies(voice_server, sid)
    first = replies[0]
    assert 500 < played_ms < 1000 * len(full.split()) / 2, played_ms
    assert first and len(first.split()) < len(full.split()), (full, first)
    assert full.startswith(" ".join(first.split()[:-1])), (full, first)
