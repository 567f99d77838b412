"""`mmagent chat` driven through a pseudo-terminal as a person uses it, `mmagent ask` through a
running server, and help text on every option of every subcommand."""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from server.cli import build_parser, main
from tests.conftest import REPO_ROOT

MMAGENT = [sys.executable, "-m", "server.cli"]


class Terminal:
    """A child process on a pseudo-terminal: write keys, wait for text (like a person would)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:   # the child: the pty is its controlling terminal, so ^C is SIGINT
            os.chdir(REPO_ROOT)
            os.execve(argv[0], argv, env)
        self.seen = ""
        self.pending = b""

    def expect(self, text: str, timeout: float = 120.0) -> str:
        """Read until ``text`` appears; return everything read up to and including it."""
        end = time.monotonic() + timeout
        while text.encode() not in self.pending:
            left = end - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"{text!r} did not appear within {timeout} s; screen so far:\n"
                                     f"{self.seen}{self.pending.decode(errors='replace')}")
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:   # the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"the program ended before {text!r}:\n{self.seen}{self.pending.decode(errors='replace')}")
            self.pending += chunk
        i = self.pending.index(text.encode()) + len(text)
        out = self.pending[:i].decode(errors="replace")
        self.pending = self.pending[i:]
        self.seen += out
        return out

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 30.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                select.select([self.fd], [], [], 0.2)
                os.read(self.fd, 4096)
            except OSError:
                pass
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("the program did not exit")


@pytest.mark.slow
def test_chat_help_missing_image_and_ctrl_c_through_a_terminal(tmp_path: Path) -> None:
    """/help lists the commands; /image of a missing file is refused at once and loses nothing;
    Ctrl-C during a reply stops only the reply; the next turn works; output has no Python reprs."""
    from PIL import Image
    from skimage import data

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MMAGENT_CACHE_DIR": os.environ.get(
        "MMAGENT_CACHE_DIR", str(Path.home() / ".cache" / "mmagent"))}
    # the local model streaming token by token, so that a reply lasts long enough to be stopped
    # (the default grounded responder answers at once; a model's text behind the dialogue
    # manager comes in verified sentences)
    config = tmp_path / "streaming.yaml"
    config.write_text("responder: {kind: local}\ndialogue: {enabled: false}\n")
    term = Terminal([*MMAGENT, "chat", "--db", str(tmp_path / "chat.sqlite3"), "--config", str(config)], env)
    try:
        term.expect("you> ", timeout=180)
        term.type("/help\r")
        shown = term.expect("you> ")
        for command in ("/image FILE", "/audio FILE", "/send", "/clear", "/quit", "Ctrl-C"):
            assert command in shown, shown

        term.type(f"/image {photo}\r")
        assert "attached to your next message: astronaut.png" in term.expect("you> ")
        t0 = time.monotonic()
        term.type(f"/image {tmp_path / 'missing.jpg'}\r")
        refused = term.expect("you> ", timeout=10)
        assert time.monotonic() - t0 < 5, "a missing file is refused at once"
        assert "no such file" in refused and "missing.jpg" in refused, refused
        assert "what you had attached before is kept" in refused

        term.type("Please tell me everything about your return policy, step by step.\r")
        term.expect("agent> ")
        time.sleep(0.3)
        term.type("\x03")   # Ctrl-C while the reply streams
        stopped = term.expect("you> ", timeout=30)
        assert "(reply stopped)" in stopped, stopped

        term.type("Where are the batteries?\r")
        answer = term.expect("you> ")
        assert "agent> " in answer and "understood: find product" in answer, answer
        assert "→ show on map: aisle 7" in answer, answer

        term.type("/nonsense\r")
        assert "unknown command /nonsense; /help lists the commands" in term.expect("you> ")
        term.type("/quit\r")
        assert term.wait() == 0
    finally:
        if term.pid:
            try:
                os.kill(term.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(term.fd)
    for repr_like in ("True", "False", "None", "{'", "[{"):
        assert repr_like not in term.seen.split("\n", 2)[-1], (repr_like, term.seen)


def test_ask_answers_through_a_running_server(mm_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """With a server up, ask sends the turn there (no model loads here) and prints the same JSON."""
    t0 = time.monotonic()
    rc = main(["ask", "--server", mm_server.url, "--json", "Where are the batteries?"])
    took = time.monotonic() - t0
    result = json.loads(capsys.readouterr().out)
    assert rc == 0, result
    assert result["via"] == mm_server.ws_url
    assert result["status"] == "completed" and result["reply"]
    assert {"name": "show_on_map", "arguments": {"aisle": 7}} in [
        {k: a[k] for k in ("name", "arguments")} for a in result["actions"]]
    assert result["fused"]["intent"] == "find_product"
    assert result["session_id"].startswith("sess_")
    assert took < 60, took


def test_ask_says_when_no_server_is_up_and_loads_models_itself(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    """Nothing listens at --server: ask says plainly that it loads the models in this process."""
    rc = main(["ask", "--server", "http://127.0.0.1:9", "--json", "Where is the milk?"])
    captured = capsys.readouterr()
    assert "no server answers at http://127.0.0.1:9" in captured.err
    assert "the models load in this process" in captured.err
    result = json.loads(captured.out)
    assert rc == 0 and result["via"] == "in-process"


def test_ask_refuses_a_missing_image_before_loading_anything(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing --image is a clear error at once (exit 1), before models or servers are touched."""
    t0 = time.monotonic()
    rc = main(["ask", "--image", "/no/such/photo.jpg", "what is this?"])
    assert rc == 1 and time.monotonic() - t0 < 5
    assert "no such file: /no/such/photo.jpg" in capsys.readouterr().err


def _options(parser: argparse.ArgumentParser, path: str = "mmagent") -> list[tuple[str, argparse.Action]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _options(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            out.append((path, action))
    return out


def test_every_option_of_every_subcommand_has_help_text() -> None:
    """`mmagent X --help` explains every option (the `sessions` subcommands are issue 10's)."""
    missing = [f"{path}: {'/'.join(a.option_strings) or a.dest}" for path, a in _options(build_parser())
               if not (a.help and a.help.strip()) and not path.startswith("mmagent sessions")]
    assert not missing, "options without help text:\n" + "\n".join(missing)


def test_train_never_overwrites_the_shipped_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`mmagent train --out fusion/checkpoints/kiosk_default.pt` is refused unless --replace-default."""
    from fusion.checkpoint import DEFAULT_CHECKPOINT

    before = DEFAULT_CHECKPOINT.read_bytes()
    rc = main(["train", "--manifest", str(tmp_path / "train.jsonl"), "--out", str(DEFAULT_CHECKPOINT)])
    assert rc == 1
    assert "refusing to overwrite the shipped checkpoint kiosk_default.pt" in capsys.readouterr().err
    assert DEFAULT_CHECKPOINT.read_bytes() == before
