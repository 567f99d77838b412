"""What the person running ``mmagent serve`` sees in the terminal.

- :func:`setup_logging`: short lines (``20:31:05 message``), this project's loggers at INFO,
  third-party libraries at WARNING and their Python warnings and progress bars off (``-v``
  turns everything back on, at DEBUG).
- :func:`config_summary`: the effective configuration in a few lines (the full dump is
  ``mmagent serve --print-config``).
- :func:`loading`: a progress line per model-loading stage — what is loading, then how long it took.
- :func:`turn_line` / :func:`log_turn`: one line per finished turn — session, modalities, intent,
  latency, outcome, actions::

      20:25:57 turn sess_3db870046a34  text  find_product  first 425 ms, total 1.7 s  answered (local model)  show_on_map aisle=7
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

log = logging.getLogger("mmagent")

# This project's packages: INFO by default. Everything else: WARNING (websockets' "connection
# closed" / "HTTP response sent", transformers, huggingface_hub, ...).
OWN_LOGGERS = ("perception", "fusion", "agent", "server", "mmagent", "bench", "examples")
# Libraries that are chatty at INFO, or warn about things an operator cannot act on.
QUIET_LOGGERS = ("websockets", "transformers", "huggingface_hub", "accelerate", "urllib3", "httpx", "httpcore",
                 "faster_whisper", "ctranslate2", "filelock", "asyncio", "PIL", "numba", "torch", "gguf",
                 "onnxruntime", "matplotlib")


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS message`` for information; the level and the logger's name for problems."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            msg = f"{record.levelname} {record.name}: {msg}"
        elif record.levelno < logging.INFO:
            msg = f"debug {record.name}: {msg}"
        out = f"{stamp} {msg}"
        if record.exc_info:
            out += "\n" + self.formatException(record.exc_info)
        return out


def setup_logging(verbose: bool = False, stream: TextIO | None = None) -> None:
    """Configure the root logger for a terminal (``verbose``: DEBUG and every library's output)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(ConsoleFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.captureWarnings(True)
    if not verbose:
        # Library deprecation and "you may want to" warnings: not the operator's to act on.
        logging.getLogger("py.warnings").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        quiet_libraries()


def quiet_libraries() -> None:
    """Progress bars and advice of the model libraries off. Their settings are read when they are
    imported (tqdm's at import), so the command line calls this before it imports anything."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")   # e.g. the GGUF conversion's bar: loading() says it instead
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


# ---- progress while models load -------------------------------------------------------------

class Step:
    """One loading stage; ``detail()`` adds what it found (shown with the time it took)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.details: list[str] = []

    def detail(self, text: str) -> None:
        if text:
            self.details.append(text)


@contextlib.contextmanager
def loading(what: str, *, hint: str = "") -> Iterator[Step]:
    """``with loading("language model"):`` logs "loading language model…" then its time."""
    step = Step(what)
    log.info("loading %s…%s", what, f" ({hint})" if hint else "")
    t0 = time.perf_counter()
    try:
        yield step
    except BaseException:
        log.info("  %s: failed after %.1f s", what, time.perf_counter() - t0)
        raise
    extra = f" ({'; '.join(step.details)})" if step.details else ""
    log.info("  %s: ready in %.1f s%s", what, time.perf_counter() - t0, extra)


# ---- the configuration in a few lines -------------------------------------------------------

def config_summary(config: Any) -> list[str]:
    """The effective server configuration as a few lines for people (secrets never shown)."""
    agent = config.agent or {}
    responder = agent.get("responder", {}) if isinstance(agent, dict) else {}
    kind = responder.get("kind", "local")
    if kind == "local":
        model = (responder.get("local") or {}).get("model") or "SmolLM2-135M (embedded)"
    elif kind == "openai":
        oa = responder.get("openai") or {}
        model = f"{oa.get('model', 'default')} at {oa.get('base_url', '?')}"
    else:
        model = "pack text only"
    perception = config.perception or {}
    speech = perception.get("speech_model") or "Whisper tiny.en (embedded)"
    access = (f"{len(config.tokens)} token{'s' if len(config.tokens) != 1 else ''}" if config.tokens
              else "no token (this machine only)" if not config.allow_remote_without_token else "NO TOKEN, any machine")
    origins = ", ".join(config.allowed_origins) if config.allowed_origins else "same host"
    vad = config.vad
    lim = config.limits
    return [
        f"pack {config.pack or 'packs/demo_kiosk (demo)'} · {config.host}:{config.port} · access: {access} · "
        f"browsers from: {origins}",
        f"replies: {kind} ({model}) · speech: {speech} · turn end: {vad.backend} VAD, "
        f"{vad.silence_duration_ms} ms of silence · fusion: {config.pipeline.fusion_checkpoint or 'demo checkpoint'}",
        f"batching {'on' if config.batching.enabled else 'off'} · models load {'at start' if config.pipeline.warmup else 'on first use'} · "
        f"up to {lim.max_sessions} sessions, idle ones closed after {lim.idle_timeout_s:g} s · "
        f"history in {config.state_dir}/",
        "(full configuration: mmagent serve --print-config)",
    ]


# ---- one line per turn ----------------------------------------------------------------------

_ROUTES = {"local": "answered (local model)", "openai": "answered (OpenAI-compatible model)",
           "extractive": "answered (pack text)", "greeting": "greeted", "handoff": "handed off",
           "refuse": "refused", "repeat": "asked to repeat", "empty": "no reply (nothing to answer)"}
_CANCEL = {"turn_detected": "interrupted (the person spoke)", "client_cancelled": "stopped by the client"}


def _ms(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.1f} s"


def _action(a: dict[str, Any]) -> str:
    args = a.get("arguments") or {}
    if isinstance(args, dict) and args:
        return f"{a.get('name')} " + " ".join(f"{k}={v}" for k, v in args.items())
    return str(a.get("name"))


def turn_line(session_id: str, response: dict[str, Any], modalities: Sequence[str]) -> str:
    """The operator's line for one finished turn, from the ``response.done`` body it sent."""
    status = response.get("status") or "?"
    details = response.get("status_details") or {}
    turn = response.get("turn") or {}
    timings = response.get("timings_ms") or {}
    mods = "+".join(modalities) or "camera"
    intent = turn.get("intent") or "—"
    latency = f"first {_ms(timings.get('first_delta'))}, total {_ms(timings.get('total'))}"
    route = turn.get("route") or ""
    if status == "completed":
        outcome = _ROUTES.get(route, f"completed ({route})" if route else "completed")
    elif status == "cancelled":
        reason = details.get("reason") or ""
        outcome = _CANCEL.get(reason, f"cancelled ({reason})" if reason else "cancelled")
    elif status == "failed":
        err = details.get("error") or {}
        outcome = f"FAILED {err.get('code', '?')}: {str(err.get('message', ''))[:120]}"
    else:
        outcome = status
    actions = ", ".join(_action(a) for a in turn.get("actions") or [])
    parts = [f"turn {session_id}", mods, intent, latency, outcome]
    if actions:
        parts.append(actions)
    return "  ".join(parts)


def log_turn(session_id: str, response: dict[str, Any], modalities: Sequence[str]) -> None:
    """Log :func:`turn_line` (a failed turn at WARNING, so it stands out)."""
    line = turn_line(session_id, response, modalities)
    log.log(logging.WARNING if response.get("status") == "failed" else logging.INFO, "%s", line)
