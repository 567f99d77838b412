"""What a browser does with an OpenAI Realtime client's subprotocols, in real headless Chromium:
``new WebSocket(url, ["realtime", "openai-insecure-api-key.KEY"])`` connects (the server selects
``realtime``, RFC 6455), the key is read from the subprotocol, and a wrong key is refused with
its error event and close code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import start_server
from tests.test_web_client import close_browser, new_page, no_page_errors, open_browser, pw  # noqa: F401

pytestmark = pytest.mark.browser

KEY = "sk-browser-test"
OPEN = """async ([url, protocols]) => await new Promise((resolve) => {
  const ws = new WebSocket(url, protocols);
  const out = {messages: []};
  ws.onopen = () => { out.protocol = ws.protocol; };
  ws.onmessage = (e) => { out.messages.push(JSON.parse(e.data)); if (out.messages.length === 1 && !out.wait) ws.close(); };
  ws.onerror = () => { out.error = true; };
  ws.onclose = (e) => { out.code = e.code; resolve(out); };
  setTimeout(() => resolve(out), 15000);
})"""


@pytest.fixture(scope="module")
def key_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    srv = start_server(tokens=[KEY], state_dir=str(tmp_path_factory.mktemp("rt_browser")))
    yield srv
    srv.stop()


def test_browser_realtime_subprotocols(pw: Any, key_server: Any) -> None:  # noqa: F811
    """["realtime", "openai-insecure-api-key.K"]: handshake succeeds with "realtime" selected and
    the session is created; a wrong key gets unauthorized and close 4401, not a failed handshake."""
    ctx = open_browser(pw)
    try:
        page = new_page(ctx)
        page.goto(key_server.url + "healthz")
        url = key_server.ws_url
        ok = page.evaluate(OPEN, [url, ["realtime", f"openai-insecure-api-key.{KEY}"]])
        assert ok.get("protocol") == "realtime" and not ok.get("error"), ok
        assert ok["messages"][0]["type"] == "session.created"
        bad = page.evaluate(OPEN, [url, ["realtime", "openai-insecure-api-key.wrong"]])
        assert bad.get("protocol") == "realtime", bad
        assert bad["messages"][0]["error"]["code"] == "unauthorized" and bad["code"] == 4401
        no_page_errors(page)
    finally:
        close_browser(ctx)
