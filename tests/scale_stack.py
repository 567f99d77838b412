"""The scale-out stack on loopback, for tests/test_scale.py and bench/server.py: PostgreSQL for the
sessions, N real ``mmagent serve`` processes sharing it, HAProxy (deploy/haproxy.cfg) in front.

Every piece is the real program: Debian's postgres and haproxy, this checkout's ``mmagent serve``
(``python -m server.cli serve``), each front end loading its own models in process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.pg_server import PostgresServer, free_port

REPO = Path(__file__).resolve().parent.parent
HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
# A Ray 2.60 cluster started by `ray.init()` requires its token (~/.ray/auth_token); a process
# joining it by explicit address must be told to send it (only "auto" finds out by itself).
RAY_CLIENT_ENV = {"RAY_AUTH_MODE": "token"}


def healthz(port: int, timeout: float = 2.0) -> tuple[int, dict[str, Any]] | None:
    """(HTTP status, body) of a front end's /healthz, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except (OSError, ValueError):
        return None


class FrontEnd:
    """One ``mmagent serve`` process on a fixed loopback port (so it can be restarted there)."""

    def __init__(self, name: str, port: int, store_url: str, workdir: Path, extra: dict[str, Any] | None = None) -> None:
        self.name, self.port, self.store_url = name, port, store_url
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "config.json"
        extra = dict(extra or {})
        agent = {**extra.pop("agent", {})}
        agent["store"] = {**agent.get("store", {}), "url": store_url}
        cfg = {"host": "127.0.0.1", "port": port, "state_dir": str(self.workdir / "state"), "agent": agent, **extra}
        self.config.write_text(json.dumps(cfg))
        self.log = self.workdir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FrontEnd:
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               **RAY_CLIENT_ENV}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--config", str(self.config)],
                                         cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"front end {self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            h = healthz(self.port)
            if h is not None and h[0] == 200:
                return
            time.sleep(0.5)
        raise TimeoutError(f"front end {self.name} not ready in {timeout:.0f} s:\n{self.tail()}")

    def sessions(self) -> int:
        h = healthz(self.port)
        return int(h[1]["sessions"]) if h is not None else -1

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class ModelTier:
    """``mmagent models serve``: a local Ray cluster with the encoder deployments."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.ready_file = workdir / "models-ready.json"
        self.log = workdir / "models-serve.log"
        self.config = workdir / "models-config.json"
        self.config.write_text(json.dumps(config or {}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.gcs_address = ""

    def start(self, timeout: float = 240.0) -> ModelTier:
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "RAY_USAGE_STATS_ENABLED": "0"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "models", "serve", "--config",
                                          str(self.config), "--address", "local", "--ready-file",
                                          str(self.ready_file)], cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                self.gcs_address = json.loads(self.ready_file.read_text())["gcs_address"]
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"mmagent models serve exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"model tier not ready in {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class HAProxy:
    """deploy/haproxy.cfg on a loopback port in front of the given front ends."""

    def __init__(self, backends: list[FrontEnd], workdir: Path) -> None:
        self.port = free_port()
        self.backends = backends
        self.log = workdir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(exe).exists():
            raise RuntimeError("haproxy is not installed: run scripts/setup.sh (Debian's haproxy)")
        env = {**os.environ, "MMAGENT_LB_BIND": f"127.0.0.1:{self.port}"}
        for i, fe in enumerate(self.backends, 1):
            env[f"MMAGENT_FE{i}"] = f"127.0.0.1:{fe.port}"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([exe, "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log.read_text(errors='replace')}")
            time.sleep(0.1)
        raise TimeoutError("haproxy did not listen")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def wait_backends_up(self, timeout: float = 20.0) -> None:
        """Until /healthz through the balancer answers 200 (its checks have seen a front end up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.http_url + "healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("no front end up behind haproxy")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class ScaleStack:
    """PostgreSQL (own server unless ``pg`` is given) + the Ray Serve model tier (``ray=True``) +
    ``n`` front ends + HAProxy."""

    def __init__(self, n: int = 2, *, pg: PostgresServer | None = None, ray: bool = False,
                 extra: dict[str, Any] | None = None) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="mmagent-scale-"))
        self._own_pg = pg is None
        self.pg = pg or PostgresServer().start()
        self.db = f"scale_{os.getpid()}_{int(time.time())}"
        self.store_url = self.pg.create_database(self.db)
        self.extra = dict(extra or {})
        # the tier and the front ends read the same serving.* and agent.responder settings
        self.models = ModelTier(self.workdir, {k: v for k, v in self.extra.items() if k in ("serving", "agent")}) if ray else None
        self.n = n
        self.front_ends: list[FrontEnd] = []
        self.lb: HAProxy | None = None

    def start(self, timeout: float = 300.0) -> ScaleStack:
        if self.models is not None:
            self.models.start()
            # that cluster by its address: another one on the machine (a benchmark) is never joined
            serving = {**self.extra.get("serving", {}), "engine": "ray", "address": self.models.gcs_address}
            self.extra["serving"] = serving
        self.front_ends = [FrontEnd(f"fe{i + 1}", free_port(), self.store_url, self.workdir, self.extra)
                           for i in range(self.n)]
        self.lb = HAProxy(self.front_ends, self.workdir)
        for fe in self.front_ends:
            fe.start()
        for fe in self.front_ends:
            fe.wait_ready(timeout)
        self.lb.start().wait_backends_up()
        return self

    def stop(self) -> None:
        if self.lb is not None:
            self.lb.stop()
        for fe in self.front_ends:
            fe.kill()
        if self.models is not None:
            self.models.stop()
        if self._own_pg:
            self.pg.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ScaleStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
