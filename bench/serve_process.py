"""One ``mmagent serve`` subprocess for the benchmarks.

The benchmarks measure the server as a user runs it: a separate process started from a config
file, on a free port. This module writes the config, starts the process, reads the WebSocket URL
from its start-up banner and keeps draining its output in a thread (a full pipe would block
the server). Each benchmark adds what it measures (RSS sampling, /metrics) on top.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# "serving on http://… (WebSocket ws://…/v1/realtime)" and "ready … ; WebSocket ws://…": the
# URL ends before a parenthesis, a semicolon, whitespace or the console's colour codes.
_WS_URL = re.compile(r"WebSocket (?:endpoint: )?(wss?://[\w.:/-]+)")


class ServeProcess:
    """``mmagent serve --config FILE`` on a free port; ``ws_url``, ``url`` (http://…/), ``port``,
    ``log`` (every line it printed). The models load in the subprocess (up to ``start_timeout_s``)."""

    def __init__(self, cfg: dict[str, Any], state_dir: str | Path, name: str, *,
                 args: Sequence[str] = (), start_timeout_s: float = 600.0, verbose: bool = False) -> None:
        state = Path(state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.state_dir = str(state)
        self.cfg_file = state / f"{name}.json"
        self.cfg_file.write_text(json.dumps({"port": 0, "state_dir": self.state_dir, **cfg}))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", *(["-v"] if verbose else []), "serve", "--config", str(self.cfg_file),
                                      *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        assert self.proc.stdout is not None
        self.log: list[str] = []
        self.ws_url = ""
        deadline = time.time() + start_timeout_s
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("server exited:\n" + "".join(self.log[-30:]))
            self.log.append(line)
            m = _WS_URL.search(line)
            if m:
                self.ws_url = m.group(1)
                break
        if not self.ws_url:
            self.proc.kill()
            raise RuntimeError(f"the server printed no WebSocket URL in {start_timeout_s:.0f} s:\n"
                               + "".join(self.log[-30:]))
        self.url = self.ws_url.split("/v1/")[0].replace("ws://", "http://").replace("wss://", "https://") + "/"
        self.port = int(self.url.rstrip("/").rsplit(":", 1)[1])
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def stop(self) -> None:
        """SIGTERM (the server drains), then SIGKILL if it has not exited within 30 s."""
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def kill(self) -> None:
        """SIGKILL now (a crash), and reap it."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
