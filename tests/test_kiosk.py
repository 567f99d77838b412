"""Kiosk mode as a customer sees it, and the normal page on a phone, in a real headless Chromium
against the real server (one server and one browser for the module; each test its own context).

The fake camera plays scikit-image's astronaut (a detectable face) for 16 s, then an empty view
for 6 s, then the face again: the idle test needs a person to leave and the next one to arrive;
the other kiosk tests set absent_ms high enough that the empty view does not end their visit.
Screenshots go to artifacts/ (kiosk_*.png, web_phone*.png).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.test_web_client import (
    BROWSER_FLAGS,
    CHROMIUM,
    TOKEN,
    VIDEO_FPS,
    VIDEO_H,
    VIDEO_W,
    _photo_frame,
    _web_server,
    new_page,
    no_page_errors,
    write_wav,
    write_y4m,
)

pytestmark = pytest.mark.browser

FACE_S, EMPTY_S = 16, 6
KIOSK = f"?kiosk=1&speak=0&token={TOKEN}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    srv = _web_server(tmp_path_factory.mktemp("kiosk_state"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium whose camera shows a face, then nobody, then a face; its microphone is silent."""
    from skimage import data

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is required for the browser tests (scripts/setup.sh installs it)")
    d = tmp_path_factory.mktemp("kiosk_media")
    face = _photo_frame(data.astronaut())
    empty = np.full((VIDEO_H, VIDEO_W, 3), 24, np.uint8)
    video = write_y4m(d / "visit.y4m", [(face, VIDEO_FPS * FACE_S), (empty, VIDEO_FPS * EMPTY_S),
                                        (face, VIDEO_FPS * 60)])
    audio = write_wav(d / "silence.wav", np.zeros(48000 * 2, np.float32), 48000)
    args = [*BROWSER_FLAGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={video}", f"--use-file-for-fake-audio-capture={audio}"]
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args, timeout=30_000)
        yield b
        b.close()


def context(browser: Any, **kw: Any) -> Any:
    ctx = browser.new_context(**({"viewport": {"width": 1280, "height": 800}} | kw))
    ctx.set_default_timeout(20_000)
    return ctx


def replies(page: Any) -> Any:
    return page.locator("#k-log .k-bot")


def finished(page: Any, n: int, timeout: float = 90_000) -> None:
    """Wait until the kiosk shows n finished replies."""
    page.wait_for_function(
        f"window.mmagent.turns.turns.filter(t => t.reply && t.reply.status !== 'streaming' && t.reply.text).length >= {n}",
        timeout=timeout)


def arrived(page: Any) -> None:
    """The face was seen, the attract screen left and the pack's greeting is the first line."""
    page.wait_for_function("window.mmagent.state.faces > 0", timeout=60_000)
    expect(page.locator("#attract")).to_be_hidden(timeout=15_000)
    finished(page, 1, timeout=30_000)
    expect(replies(page).first).to_contain_text("I'm Kit")


def ask_on_screen_keyboard(page: Any, text: str) -> None:
    """Type on the kiosk's own keys (a touch screen has no keyboard) and send."""
    page.get_by_role("button", name="Type", exact=True).click()
    for ch in text:
        key = {" ": "Space"}.get(ch)
        if key is None and ch.isupper():
            if page.locator('.k-key[data-key="⇧"]').get_attribute("aria-pressed") != "true":
                page.get_by_role("button", name="Capital letter").click()
            ch = ch.lower()
        if key is None:
            page.locator(f'.k-key[data-key="{ch}"]').click()
        else:
            page.get_by_role("button", name=key).click()
    expect(page.get_by_label("Your question")).to_have_value(text)
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#k-typer")).to_be_hidden()


def test_kiosk_customer_screen_map_hours_and_handoff(browser: Any, server: Any, artifacts_dir: Path) -> None:
    """A customer sees the face and big buttons, no device switch, label or percentage; the answers'
    actions open the store map with the aisle highlighted, the hours card and the staff-coming
    card; the staff view (Ctrl+Shift+S) has the developer's panels."""
    ctx = context(browser)
    try:
        page = new_page(ctx)
        page.goto(f"{server.url}{KIOSK}&absent_ms=120000&idle_s=600")
        arrived(page)
        kiosk = page.locator("#kiosk")
        expect(kiosk).to_be_visible()
        for name in ("Talk", "Type", "Stop", "Start over"):
            button = page.get_by_role("button", name=name, exact=True)
            expect(button).to_be_visible()
            box = button.bounding_box()
            assert box is not None and box["height"] >= 60 and box["width"] >= 160, (name, box)  # touch targets
        for switch in ("Turn camera on", "Turn camera off", "Turn microphone on", "Turn microphone off"):
            expect(page.get_by_role("button", name=switch)).to_be_hidden()   # only in the staff view
        expect(page.locator("#kiosk").get_by_role("button", name="Why?")).to_have_count(0)
        expect(page.locator("#cam-video")).to_be_hidden()
        expect(page.locator("#staff")).to_be_hidden()
        assert page.locator(".chip.label:visible, #cam-badge .label:visible").count() == 0
        seen = kiosk.inner_text()
        assert "%" not in seen and "kHz" not in seen and "Camera" not in seen, seen
        page.screenshot(path=str(artifacts_dir / "kiosk_customer.png"))

        # Where are the batteries? -> show_on_map aisle 7 -> the map with aisle 7 highlighted.
        ask_on_screen_keyboard(page, "Where are the batteries?")
        screen = page.locator("#k-screen")
        expect(screen).to_have_attribute("data-kind", "map", timeout=90_000)
        expect(screen.locator(".screen-kicker")).to_have_text("Aisle 7")
        expect(screen.locator(".screen-title")).to_have_text("Batteries, light bulbs & chargers")  # from map.yaml
        expect(screen.locator('.sm-aisle.sm-on[data-aisle="7"]')).to_have_count(1)
        expect(screen.locator(".sm-aisle.sm-on")).to_have_count(1)
        expect(screen.locator(".sm-route")).to_have_count(1)
        finished(page, 2)
        expect(page.locator("#k-log .k-me").last).to_have_text("Where are the batteries?")
        page.screenshot(path=str(artifacts_dir / "kiosk_map.png"))

        # Opening hours -> the card with the pack's hours entries, as the pack words them.
        ask_on_screen_keyboard(page, "What are your opening hours?")
        expect(screen).to_have_attribute("data-kind", "hours", timeout=90_000)
        expect(screen).to_contain_text("Monday to Saturday from 8 am to 9 pm")
        expect(screen).to_contain_text("On public holidays we open from 10 am to 4 pm")
        finished(page, 3)
        page.screenshot(path=str(artifacts_dir / "kiosk_hours.png"))

        # Asking for a person -> the pack's handoff action -> "someone is coming".
        ask_on_screen_keyboard(page, "I want to talk to a person")
        expect(screen).to_have_attribute("data-kind", "handoff", timeout=90_000)
        expect(screen.locator(".screen-title")).to_have_text("A member of staff is on the way")
        expect(screen).to_contain_text("Someone will be with you in a moment")   # the pack's handoff message
        finished(page, 4)
        page.screenshot(path=str(artifacts_dir / "kiosk_handoff.png"))
        screen.get_by_role("button", name="Close").click()
        expect(screen).to_be_hidden()

        # The staff view: connection, session, devices, the Why panel — and still no labels on a person.
        page.keyboard.press("Control+Shift+S")
        staff = page.locator("#staff")
        expect(staff).to_be_visible()
        expect(staff.get_by_role("button", name="Turn camera off")).to_be_visible()
        expect(staff.locator("#staff-status")).to_contain_text("sess_")
        expect(staff.locator("#why-intent")).not_to_have_text("—")
        page.wait_for_function("window.mmagent.state.faces > 0", timeout=30_000)   # (the video may be between faces)
        expect(staff.locator("#cam-badge")).to_contain_text("1 person")
        expect(staff.locator("#cam-badge .label")).to_have_count(0)
        page.screenshot(path=str(artifacts_dir / "kiosk_staff.png"))
        page.keyboard.press("Control+Shift+S")
        expect(staff).to_be_hidden()
        no_page_errors(page)
    finally:
        ctx.close()


def test_kiosk_idle_ends_the_session_and_the_next_face_starts_fresh(browser: Any, server: Any,
                                                                     artifacts_dir: Path) -> None:
    """Nothing happens for idle_s: the attract screen returns and the session ends; the person
    still standing there is not greeted again; after an empty view the next face gets a new
    session and the greeting."""
    ctx = context(browser)
    try:
        page = new_page(ctx)
        page.goto(f"{server.url}{KIOSK}&idle_s=5&absent_ms=2000")
        arrived(page)
        first = page.evaluate("window.mmagent.conn.sessionId")
        assert first and first.startswith("sess_")
        expect(page.locator("#attract")).to_be_visible(timeout=15_000)   # idle, the face still in view
        page.screenshot(path=str(artifacts_dir / "kiosk_attract.png"))
        page.wait_for_function(f"window.mmagent.conn.sessionId && window.mmagent.conn.sessionId !== {first!r}",
                               timeout=15_000)
        assert page.evaluate("window.mmagent.turns.turns.length") == 0, "the next customer starts fresh"
        page.wait_for_timeout(1500)
        expect(page.locator("#attract")).to_be_visible()   # the same person, still in view: no new greeting
        # The view empties, then a face arrives: a new visit in the new session.
        page.wait_for_function("window.mmagent.state.faces === 0", timeout=30_000)
        arrived(page)
        second = page.evaluate("window.mmagent.conn.sessionId")
        assert second != first
        assert replies(page).count() == 1
        no_page_errors(page)
    finally:
        ctx.close()


def test_kiosk_start_over_and_stop(browser: Any, server: Any) -> None:
    """Start over: a new session and the greeting again; Stop ends a streaming reply."""
    ctx = context(browser, viewport={"width": 1080, "height": 1920})   # a portrait kiosk
    try:
        page = new_page(ctx)
        page.goto(f"{server.url}{KIOSK}&absent_ms=120000&idle_s=600")
        arrived(page)
        first = page.evaluate("window.mmagent.conn.sessionId")
        page.get_by_role("button", name="Type", exact=True).click()
        page.get_by_label("Your question").fill("Please tell me everything about your return policy, step by step.")
        page.get_by_role("button", name="Send").click()
        stop = page.get_by_role("button", name="Stop", exact=True)
        expect(stop).to_be_enabled(timeout=60_000)
        stop.click()
        page.wait_for_function("window.mmagent.turns.turns.some(t => t.reply && t.reply.status === 'cancelled')",
                               timeout=30_000)
        expect(stop).to_be_disabled()
        page.get_by_role("button", name="Start over").click()
        page.wait_for_function(f"window.mmagent.conn.sessionId && window.mmagent.conn.sessionId !== {first!r}",
                               timeout=15_000)
        finished(page, 1, timeout=30_000)
        expect(replies(page)).to_have_count(1)
        expect(replies(page).first).to_contain_text("I'm Kit")
        no_page_errors(page)
    finally:
        ctx.close()


def test_kiosk_pack_data_endpoint(server: Any) -> None:
    """GET /pack/kiosk.json: the demo pack's map, hours entries, greeting and screen actions."""
    import json
    import urllib.request

    with urllib.request.urlopen(server.url + "pack/kiosk.json", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/json")
        data = json.load(r)
    assert data["pack"] == "demo_kiosk"
    assert data["greeting"].startswith("Hello! I'm Kit")
    assert [a["number"] for a in data["map"]["aisles"]] == list(range(1, 13))
    assert {p["kind"] for p in data["map"]["places"]} >= {"service_desk", "toilets", "entrance", "exit"}
    assert [h["id"] for h in data["hours"]] == ["opening_hours", "holiday_hours"]
    assert data["screens"] == {"show_on_map": "map", "show_opening_hours": "hours", "handoff_to_human": "handoff"}


PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


def test_phone_layout_talk_controls_in_first_screen_and_why_sheet(browser: Any, server: Any,
                                                                   artifacts_dir: Path) -> None:
    """On a 390×844 phone: the conversation, then the talk controls, inside the first screen; no
    camera box while the camera is off; Why opens as a sheet in view; the preview collapses."""
    ctx = context(browser, **PHONE)
    try:
        page = new_page(ctx)
        page.goto(f"{server.url}?token={TOKEN}")
        expect(page.locator("#conn")).to_have_attribute("data-state", "ready", timeout=60_000)
        chat = page.locator(".chat").bounding_box()
        mic = page.get_by_role("button", name="Turn microphone on").bounding_box()
        composer = page.get_by_label("Message").bounding_box()
        assert chat and mic and composer
        assert chat["y"] < mic["y"], "the conversation comes first"
        assert composer["y"] + composer["height"] <= 844 and mic["y"] + mic["height"] <= 844, (composer, mic)
        expect(page.locator("#preview")).to_be_hidden()       # no tall "Camera is off" box
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, "nothing wider than the phone"
        page.screenshot(path=str(artifacts_dir / "web_phone.png"))

        # Push to talk: the hold button is in the first screen too.
        page.get_by_label("Push to talk").check()
        talk = page.get_by_role("button", name="Hold to talk").bounding_box()
        assert talk and talk["y"] + talk["height"] <= 844, talk
        page.get_by_label("Hands-free").check()

        box = page.get_by_label("Message")
        box.fill("Where is the milk?")
        box.press("Enter")
        reply = page.locator(".msg.bot").first
        expect(reply).to_have_attribute("data-status", "completed", timeout=90_000)
        reply.get_by_role("button", name="Why this reply (turn 1)").click()
        sheet = page.locator("#why")
        expect(sheet).to_have_class(re.compile(r"\bopen\b"))
        expect(page.locator("#why-title")).to_be_focused()
        page.wait_for_timeout(400)   # the sheet slides in
        head = page.locator("#why-intent").bounding_box()
        assert head and head["y"] >= 0 and head["y"] + head["height"] <= 844, head
        page.screenshot(path=str(artifacts_dir / "web_phone_why.png"))
        sheet.get_by_role("button", name="Close").click()
        expect(sheet).not_to_have_class(re.compile(r"\bopen\b"))

        page.get_by_role("button", name="Turn camera on").click()
        expect(page.locator("#preview")).to_be_visible()
        expect(page.locator("#cam-badge")).to_contain_text("1 person", timeout=30_000)
        expect(page.locator("#cam-badge .label")).to_have_count(0)    # no ImageNet label on the person
        page.get_by_role("button", name="Hide preview").click()
        expect(page.locator("#preview")).to_be_hidden()
        page.get_by_role("button", name="Show preview").click()
        expect(page.locator("#preview")).to_be_visible()
        no_page_errors(page)
    finally:
        ctx.close()
