"""The web client (server/static/) in a real headless Chromium against the real server.

Chromium's fake media devices are fed a WAV of espeak-ng speech and Y4M videos made from real
photos (scikit-image's astronaut has a detectable face; a blank frame shows nobody). The server
is the real one (tests/conftest.py start_server) on a free localhost port, with the real models.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import REPO_ROOT, start_server, synth_speech

pytestmark = pytest.mark.browser


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "web-test-token"
BROWSER_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
VIDEO_W, VIDEO_H, VIDEO_FPS = 640, 480, 2
SPEECH_TEXT = "Where can I return these shoes?"


# ---- media --------------------------------------------------------------------------------

def _rgb_to_i420(rgb: np.ndarray) -> bytes:
    """One Y4M frame body (planar Y, U, V; 4:2:0, full-range BT.601 as C420jpeg declares)."""
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    v = 0.5 * r - 0.418688 * g - 0.081312 * b + 128

    def sub(c: np.ndarray) -> np.ndarray:   # (H, W) -> (H/2, W/2), averaging 2x2 blocks
        return c.reshape(c.shape[0] // 2, 2, c.shape[1] // 2, 2).mean(axis=(1, 3))

    planes = [y, sub(u), sub(v)]
    return b"".join(np.clip(p + 0.5, 0, 255).astype(np.uint8).tobytes() for p in planes)


def write_y4m(path: Path, frames: list[tuple[np.ndarray, int]]) -> Path:
    """Write a Y4M video of (RGB frame (H, W, 3) uint8, repeat count) at VIDEO_FPS."""
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{VIDEO_W} H{VIDEO_H} F{VIDEO_FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb, repeat in frames:
            assert rgb.shape == (VIDEO_H, VIDEO_W, 3), rgb.shape
            body = _rgb_to_i420(rgb)
            for _ in range(repeat):
                f.write(b"FRAME\n" + body)
    return path


def _photo_frame(photo: np.ndarray) -> np.ndarray:
    """A real photo letterboxed into one VIDEO_W x VIDEO_H frame."""
    from PIL import Image

    img = Image.fromarray(photo)
    img.thumbnail((VIDEO_W, VIDEO_H))
    canvas = Image.new("RGB", (VIDEO_W, VIDEO_H), (40, 44, 52))
    canvas.paste(img, ((VIDEO_W - img.width) // 2, (VIDEO_H - img.height) // 2))
    return np.asarray(canvas)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fake-device inputs: speech WAV (padded with silence so server VAD ends the turn), silence
    WAV, a video of a photo with a face, and a video that is blank first and shows the face next."""
    from skimage import data

    d = tmp_path_factory.mktemp("web_media")
    rate = 48000
    speech, _ = synth_speech(SPEECH_TEXT, sample_rate=rate)
    # Chromium loops the file: the long tail of silence keeps the second loop out of the test.
    padded = np.concatenate([np.zeros(rate // 2, np.float32), speech, np.zeros(rate * 25, np.float32)])
    face = _photo_frame(data.astronaut())
    blank = np.full((VIDEO_H, VIDEO_W, 3), 24, np.uint8)
    return {
        "speech": write_wav(d / "speech.wav", padded, rate),
        "silence": write_wav(d / "silence.wav", np.zeros(rate * 2, np.float32), rate),
        "face": write_y4m(d / "astronaut.y4m", [(face, VIDEO_FPS * 4)]),
        "blank_then_face": write_y4m(d / "blank_then_face.y4m",
                                     [(blank, VIDEO_FPS * 14), (face, VIDEO_FPS * 60)]),
    }


# ---- server -------------------------------------------------------------------------------

def _web_server(state_dir: Path, port: int = 0) -> Any:
    """The real server (tests/conftest.py's start_server: models shared in this process), with a token."""
    # the local model streaming token by token: the page's tests stop replies while they stream
    # (the default grounded responder answers at once)
    return start_server(tokens=[TOKEN], state_dir=str(state_dir), port=port,
                        agent={"responder": {"kind": "local"}, "dialogue": {"enabled": False}})


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real server with a token configured, models loaded, on a free localhost port."""
    srv = _web_server(tmp_path_factory.mktemp("web_state"))
    yield srv
    srv.stop()


# ---- browser ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pw() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is required for the browser tests (scripts/setup.sh installs it)")
    with sync_playwright() as p:
        yield p


def open_browser(pw: Any, *, audio: Path | None = None, video: Path | None = None,
                 fake_ui: bool = True) -> Any:
    """A fresh Chromium (own profile) whose camera and microphone play the given files."""
    args = list(BROWSER_FLAGS)
    if fake_ui:
        args.append("--use-fake-ui-for-media-stream")
    args.append("--use-fake-device-for-media-stream")
    if audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={audio}")
    if video is not None:
        args.append(f"--use-file-for-fake-video-capture={video}")
    profile = tempfile.mkdtemp(prefix="mmagent-chromium-")
    ctx = pw.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, headless=True, args=args,
        viewport={"width": 1440, "height": 900}, timeout=30_000)
    ctx.set_default_timeout(20_000)
    ctx._mmagent_profile = profile
    return ctx


def close_browser(ctx: Any) -> None:
    ctx.close()
    shutil.rmtree(ctx._mmagent_profile, ignore_errors=True)


def new_page(ctx: Any) -> Any:
    """A tab that records uncaught JavaScript errors (checked by no_page_errors)."""
    page = ctx.new_page()
    page._mmagent_errors = []
    page.on("pageerror", lambda exc: page._mmagent_errors.append(str(exc)))
    return page


def no_page_errors(page: Any) -> None:
    assert not page._mmagent_errors, f"uncaught errors in the page: {page._mmagent_errors}"


def seen(page: Any, event_type: str) -> int:
    """How many server events of this type the page has received."""
    return int(page.evaluate(f"window.mmagent.state.seen[{event_type!r}] || 0"))


def connected(page: Any, timeout: float = 60_000) -> None:
    expect(page.locator("#conn")).to_have_attribute("data-state", "ready", timeout=timeout)


# ---- tests --------------------------------------------------------------------------------

def test_spoken_turn_with_camera(pw: Any, web_server: Any, media: dict[str, Path],
                                 artifacts_dir: Path) -> None:
    """Speech + camera: transcript line, streamed reply, non-zero vision weight, the face counted and
    no ImageNet label put on the person."""
    ctx = open_browser(pw, audio=media["speech"], video=media["face"])
    try:
        page = new_page(ctx)
        page.goto(f"{web_server.url}?token={TOKEN}")
        connected(page)
        page.get_by_role("button", name="Turn camera on").click()
        expect(page.locator("#preview")).to_have_class(re.compile(r"\bon\b"))
        page.get_by_role("button", name="Turn microphone on").click()
        expect(page.locator("#mic-toggle")).to_have_attribute("aria-pressed", "true")

        transcript = page.locator(".msg.me.transcript .bubble").first
        expect(transcript).to_have_text(re.compile(r"return|shoes", re.I), timeout=60_000)
        reply = page.locator(".msg.bot").first
        expect(reply).to_have_attribute("data-status", "completed", timeout=90_000)
        page.get_by_role("button", name="Turn microphone off").click()  # before the WAV loops

        assert seen(page, "response.output_text.delta") >= 2, "the reply did not stream"
        assert page.locator(".msg.bot .bubble").first.inner_text().strip()
        vision = page.locator('#why-weights .bar[data-modality="vision"]')
        assert float(vision.get_attribute("data-weight") or 0) > 0
        speech = page.locator('#why-weights .bar[data-modality="speech"]')
        assert float(speech.get_attribute("data-weight") or 0) > 0
        # A person is in view: the face is counted, and ImageNet labels (which have no class for
        # a person, so they would describe the person) are not shown, here or on the preview.
        expect(page.locator("#why-vision .chip.face")).to_have_text("1 face")
        expect(page.locator("#why-vision .chip.label")).to_have_count(0)
        expect(page.locator("#cam-badge .label")).to_have_count(0)
        expect(page.locator("#why-intent")).not_to_have_text("—")
        expect(page.locator("#why-transcript")).to_contain_text("%")
        # The reply is announced to screen readers once it is complete.
        expect(page.locator("#announcer")).to_contain_text("Agent:")

        shot = artifacts_dir / "web_turn.png"
        page.screenshot(path=str(shot))
        if os.environ.get("MMAGENT_UPDATE_SCREENSHOT") == "1":   # refresh the README's picture on request
            shutil.copyfile(shot, REPO_ROOT / "docs" / "screenshot.png")
        no_page_errors(page)
    finally:
        close_browser(ctx)


def test_typed_turn_and_stop(pw: Any, web_server: Any, media: dict[str, Path]) -> None:
    """A typed question gets a streamed reply and a Why panel; Stop cancels the next reply."""
    ctx = open_browser(pw, audio=media["silence"])
    try:
        page = new_page(ctx)
        page.goto(f"{web_server.url}?token={TOKEN}")
        connected(page)
        # Keyboard only: the first Tab reaches the skip link, which lands in the message box.
        page.keyboard.press("Tab")
        expect(page.get_by_role("link", name="Skip to message box")).to_be_focused()
        page.keyboard.press("Enter")
        box = page.get_by_label("Message")
        expect(box).to_be_focused()
        page.keyboard.type("What are your opening hours?")
        page.keyboard.press("Enter")
        expect(page.locator(".msg.me .bubble").first).to_have_text("What are your opening hours?")
        first = page.locator(".msg.bot").nth(0)
        expect(first).to_have_attribute("data-status", "completed", timeout=90_000)
        assert first.locator(".bubble").inner_text().strip()
        text_bar = page.locator('#why-weights .bar[data-modality="text"]')
        assert float(text_bar.get_attribute("data-weight") or 0) > 0
        expect(page.locator("#why-transcript")).to_have_text("typed, not spoken")

        box.fill("Please tell me everything about your return policy, step by step.")
        box.press("Enter")
        second = page.locator(".msg.bot").nth(1)
        stop = second.get_by_role("button", name="Stop reply 2")
        stop.click(timeout=60_000)
        expect(second).to_have_attribute("data-status", "cancelled", timeout=30_000)
        expect(second.locator(".status-note")).to_have_text("Stopped")
        expect(page.locator("#stop")).to_be_hidden()
        no_page_errors(page)
    finally:
        close_browser(ctx)


def test_barge_in_and_push_to_talk(pw: Any, web_server: Any, media: dict[str, Path]) -> None:
    """Speaking while a reply streams interrupts it (hands-free); push-to-talk sends a held turn."""
    ctx = open_browser(pw, audio=media["speech"])
    try:
        page = new_page(ctx)
        page.goto(f"{web_server.url}?token={TOKEN}")
        connected(page)
        box = page.get_by_label("Message")
        box.fill("Please tell me everything about your return policy, step by step.")
        box.press("Enter")
        typed_reply = page.locator(".msg.bot").nth(0)
        expect(typed_reply).to_be_visible(timeout=60_000)
        # The fake microphone starts speaking half a second after it opens: a barge-in.
        page.get_by_role("button", name="Turn microphone on").click()
        expect(typed_reply).to_have_attribute("data-status", "cancelled", timeout=30_000)
        expect(typed_reply.locator(".status-note")).to_have_text("Interrupted — you started talking")
        expect(page.locator(".msg.me.transcript .bubble").first).to_have_text(
            re.compile(r"return|shoes", re.I), timeout=60_000)
        expect(page.locator(".msg.bot").nth(1)).to_have_attribute("data-status", "completed", timeout=90_000)
        page.get_by_role("button", name="Turn microphone off").click()

        # Push to talk: the mic restarts (its file plays from the start) only while the button is held.
        page.get_by_label("Push to talk").check()
        talk = page.get_by_role("button", name="Hold to talk")
        expect(talk).to_be_visible()
        box_ = talk.bounding_box()
        assert box_ is not None
        page.mouse.move(box_["x"] + box_["width"] / 2, box_["y"] + box_["height"] / 2)
        page.mouse.down()
        page.wait_for_timeout(3500)
        page.mouse.up()
        expect(page.locator(".msg.me.transcript .bubble").nth(1)).to_have_text(
            re.compile(r"return|shoes", re.I), timeout=60_000)
        expect(page.locator(".msg.bot").nth(2)).to_have_attribute("data-status", "completed", timeout=90_000)
        assert seen(page, "input_audio_buffer.speech_started") == 1, "push-to-talk must not use server VAD"
        no_page_errors(page)
    finally:
        close_browser(ctx)


def test_kiosk_attract_screen_and_arrival(pw: Any, web_server: Any,
                                          media: dict[str, Path]) -> None:
    """Kiosk: attract screen while the camera shows nobody; it leaves with a greeting when a face appears."""
    ctx = open_browser(pw, audio=media["silence"], video=media["blank_then_face"])
    try:
        page = new_page(ctx)
        page.goto(f"{web_server.url}?kiosk=1&speak=0&token={TOKEN}")
        expect(page.locator("body")).to_have_class(re.compile(r"\bkiosk\b"))
        # The server reports the blank camera: nobody present, the attract screen stays.
        page.wait_for_function("window.mmagent.state.faces === 0", timeout=60_000)
        expect(page.locator("#attract")).to_be_visible()
        # The face arrives: the server sees it, the attract screen leaves, the greeting shows.
        page.wait_for_function("window.mmagent.state.faces > 0", timeout=45_000)
        expect(page.locator("#attract")).to_be_hidden(timeout=10_000)
        # The pack's greeting ("Hello! I'm Kit, the store's help kiosk. …") is the kiosk's first line.
        greeting = page.locator("#k-log .k-bot").first
        expect(greeting).to_be_visible()
        expect(greeting).to_contain_text("help")
        no_page_errors(page)
    finally:
        close_browser(ctx)


def test_refused_token_and_plain_errors(pw: Any, web_server: Any, media: dict[str, Path]) -> None:
    """A wrong token shows the refusal and a token field; a denied microphone or camera and a limit
    show plainly."""
    ctx = open_browser(pw, audio=media["silence"], fake_ui=False)  # no auto-allow: permission denied
    try:
        page = new_page(ctx)
        page.goto(f"{web_server.url}?token=wrong-token")
        expect(page.locator("#conn")).to_have_attribute("data-state", "refused")
        expect(page.locator("#errors")).to_contain_text("Token refused")
        field = page.get_by_label("Access token")
        expect(field).to_be_focused()
        field.fill(TOKEN)
        field.press("Enter")
        connected(page)
        expect(page.locator("#errors")).not_to_contain_text("Token refused")

        page.get_by_role("button", name="Turn microphone on").click()
        expect(page.locator("#errors")).to_contain_text("Microphone access was denied")
        page.get_by_role("button", name="Turn camera on").click()
        expect(page.locator("#errors")).to_contain_text("Camera access was denied")

        # Flood camera frames past the server's per-session rate: its limit error is shown.
        page.evaluate("""async () => {
            const c = document.createElement('canvas'); c.width = 64; c.height = 48;
            const blob = await new Promise((r) => c.toBlob(r, 'image/jpeg'));
            const buf = await blob.arrayBuffer();
            for (let i = 0; i < 20; i++)
                window.mmagent.conn.sendBinary({type: 'input_image_buffer.append'}, buf);
        }""")
        expect(page.locator("#errors")).to_contain_text("Limit exceeded")
        no_page_errors(page)
    finally:
        close_browser(ctx)


def test_reconnects_and_resumes_when_server_returns(pw: Any, media: dict[str, Path], tmp_path: Path) -> None:
    """Server stops: the page shows it is reconnecting; server returns: the session resumes."""
    srv = _web_server(tmp_path)
    port = int(srv.url.rstrip("/").rsplit(":", 1)[1])
    ctx = open_browser(pw, audio=media["silence"])
    try:
        page = new_page(ctx)
        page.goto(f"{srv.url}?token={TOKEN}")
        connected(page)
        box = page.get_by_label("Message")
        box.fill("Hello!")
        box.press("Enter")
        expect(page.locator(".msg.bot").first).to_have_attribute("data-status", "completed", timeout=90_000)
        session_id = page.evaluate("window.mmagent.conn.sessionId")
        assert session_id and session_id.startswith("sess_")

        srv.stop()
        expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=15_000)
        # The first retry finds nothing listening: the page says the server is unreachable.
        expect(page.locator("#errors")).to_contain_text("Can't reach the server", timeout=15_000)
        expect(page.locator("#conn-text")).to_contain_text("Server unreachable")

        srv = _web_server(tmp_path, port=port)
        connected(page, timeout=60_000)
        expect(page.locator("#log")).to_contain_text("Reconnected — conversation resumed.")
        assert page.evaluate("window.mmagent.conn.sessionId") == session_id
        expect(page.locator("#errors")).not_to_contain_text("Can't reach the server")
        no_page_errors(page)
    finally:
        close_browser(ctx)
        srv.stop()


STATIC_DIR = REPO_ROOT / "server" / "static"


@pytest.mark.parametrize(("context_rate", "target_rate"),
                         [(48000, 16000), (48000, 24000), (48000, 48000), (44100, 24000), (16000, 24000)])
def test_audio_worklet_pcm16_chunks(pw: Any, context_rate: int, target_rate: int) -> None:
    """The AudioWorklet turns a 440 Hz tone at the device rate into 20 ms PCM16 chunks at the session rate."""
    ctx = open_browser(pw)
    try:
        page = new_page(ctx)
        # A localhost page is a secure context (AudioWorklet needs one); routing serves it. Worklet
        # module fetches bypass routing, so the module's source goes in as a Blob URL.
        page.route("http://127.0.0.1:9/", lambda route: route.fulfill(body="<!doctype html><title>t</title>",
                                                                     content_type="text/html"))
        page.goto("http://127.0.0.1:9/")
        source = (STATIC_DIR / "pcm-worklet.js").read_text()
        out = page.evaluate("""async ([inRate, rate, source]) => {
            const url = URL.createObjectURL(new Blob([source], {type: 'text/javascript'}));
            const ctx = new OfflineAudioContext({numberOfChannels: 1, length: inRate, sampleRate: inRate});
            await ctx.audioWorklet.addModule(url);
            const node = new AudioWorkletNode(ctx, 'pcm-encoder', {numberOfInputs: 1, numberOfOutputs: 0,
                processorOptions: {targetRate: rate, chunkMs: 20}});
            const chunks = [];
            node.port.onmessage = (ev) => { if (ev.data.type === 'chunk') chunks.push(new Int16Array(ev.data.pcm)); };
            const osc = new OscillatorNode(ctx, {frequency: 440});
            const gain = new GainNode(ctx, {gain: 0.5});
            osc.connect(gain).connect(node);
            osc.start();
            await ctx.startRendering();
            await new Promise((r) => setTimeout(r, 200));
            const lens = chunks.map((c) => c.length);
            const all = new Int16Array(lens.reduce((a, b) => a + b, 0));
            let o = 0; for (const c of chunks) { all.set(c, o); o += c.length; }
            let crossings = 0, peak = 0;
            for (let i = 1; i < all.length; i++) {
                if ((all[i - 1] < 0) !== (all[i] < 0)) crossings++;
                peak = Math.max(peak, Math.abs(all[i]));
            }
            return {lens, total: all.length, crossings, peak};
        }""", [context_rate, target_rate, source])
        chunk = target_rate * 20 // 1000
        assert out["lens"] and all(n == chunk for n in out["lens"]), out["lens"][:5]
        seconds = out["total"] / target_rate
        assert 0.9 < seconds <= 1.0, seconds                      # real time at the session rate
        freq = out["crossings"] / 2 / seconds
        assert abs(freq - 440) < 10, freq                         # pitch survives resampling
        assert 0.4 * 32767 < out["peak"] < 0.55 * 32767, out["peak"]  # amplitude too (gain 0.5)
        no_page_errors(page)
    finally:
        close_browser(ctx)
