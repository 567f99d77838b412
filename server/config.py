"""Server configuration: dataclasses with documented defaults, loaded from a YAML/JSON file,
then environment variables (``MMAGENT_*``), then command-line flags; validated in one place.

Environment names: ``MMAGENT_<FIELD>`` for top-level fields (``MMAGENT_PORT``, ``MMAGENT_TOKENS``
as a comma-separated list), ``MMAGENT_<SECTION>_<FIELD>`` for nested ones
(``MMAGENT_LIMITS_MAX_SESSIONS=8``, ``MMAGENT_BATCHING_ENABLED=0``, ``MMAGENT_VAD_SILENCE_DURATION_MS=600``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perception.errors import ConfigError

MiB = 1024 * 1024


@dataclass
class LimitsConfig:
    """Per-session and per-server limits (docs/protocol.md, "Limits")."""

    max_message_bytes: int = 2 * MiB        # larger messages get message_too_large and are dropped
    hard_max_message_bytes: int = 8 * MiB   # larger ones close the socket (1009)
    max_frames_per_s: float = 5.0           # camera frames per second per session
    frame_burst: float = 5.0
    max_audio_seconds_per_s: float = 1.5    # audio seconds per wall-clock second per session, sustained
    audio_burst_s: float = 60.0             # audio accepted at once above that (a recording uploaded
                                            # whole); refills at max_audio_seconds_per_s
    max_pending_audio_s: float = 60.0       # buffered audio of one user turn
    max_frames_per_turn: int = 3            # latest frames kept per session
    max_pending_images: int = 8             # images of conversation.item.create waiting for a response
    frame_window_s: float = 10.0            # frames older than this are not part of a turn
    max_text_chars: int = 4000
    idle_timeout_s: float = 300.0
    # A client that stops reading: its outgoing queue holds at most max_outgoing_bytes (beyond
    # that its messages are not read any more), and once a send or that full queue has waited
    # slow_client_timeout_s it is dropped (close 4410 slow_client) and its slot freed.
    max_outgoing_bytes: int = 1 * MiB
    slow_client_timeout_s: float = 10.0
    max_sessions: int = 64
    max_sessions_per_token: int = 16
    max_errors_per_10s: int = 100
    drain_timeout_s: float = 20.0           # on SIGTERM, turns in flight get this long to finish


@dataclass
class VadConfig:
    """Default turn detection of new sessions (clients may change it with session.update)."""

    backend: str = "silero"           # "silero" (faster-whisper's ONNX model) or "energy"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True   # barge-in
    speculative_ms: int = 100         # start transcribing after this much silence (0 = off); the
                                      # result is used if the turn then ends with no more speech.
                                      # 100 ms: end of speech → first delta p50 782 ms vs 932 ms at
                                      # 200 (N=1, 10 turns, idle 2-core CPU); the price is a wasted
                                      # transcription for each mid-utterance pause of 100–500 ms.
    preemptive_response: bool = True  # at that pause, also start the whole turn (perception,
                                      # fusion, the reply); its events are held back until the
                                      # turn ends, and it is dropped without a trace if speech
                                      # resumes. Needs speculative_ms > 0 and create_response.
    max_hold_ms: int = 10000          # a preemptive response held longer than this is dropped (the
                                      # turn is answered afresh when it ends)
    echo_gate: bool = True            # the agent's own voice (the audio the server sent, as played)
                                      # does not start speech: input not louder than it plus
    echo_margin_db: float = -5.0      # this margin (-5: an echo at least 6 dB below the voice),
    echo_max_delay_ms: int = 400      # within this many ms after it played, is silence to the
                                      # turn detector (server/core/echo.py)
    semantic: str = "smart_turn+lm"   # what a session's semantic_vad runs: "smart_turn+lm" (Smart
                                      # Turn v3.2 on the audio and SmolLM2 on the speculative
                                      # transcript, both must say complete: 0 false cut-ins at a
                                      # 400 ms pause in bench/turn_taking.py), "smart_turn" (audio
                                      # only), or "silence" (eagerness → a fixed silence)
    semantic_check_ms: int = 200      # the semantic model decides at this much silence


@dataclass
class BatchConfig:
    """One model queue: wait at most ``max_wait_ms`` for up to ``max_batch`` calls."""

    max_batch: int = 32
    max_wait_ms: float = 5.0


@dataclass
class BatchingConfig:
    enabled: bool = True              # off: every call is its own forward pass (benchmark baseline)
    text: BatchConfig = field(default_factory=BatchConfig)
    frames: BatchConfig = field(default_factory=lambda: BatchConfig(max_batch=16, max_wait_ms=10.0))
    speech: BatchConfig = field(default_factory=lambda: BatchConfig(max_batch=1, max_wait_ms=0.0))
    model_threads: int = 2            # worker threads running model calls


@dataclass
class PipelineConfig:
    warmup: bool = True               # load every model at start (else on first use)
    fusion_checkpoint: str | None = None   # None = fusion's default demo checkpoint
    require_fusion: bool = False      # False: start without fusion when no checkpoint loads (logged)
    max_output_tokens: int = 96
    presence_interval_ms: int = 1000
    # Frames a turn perceives: its newest ones (the fusion core was trained on one image per
    # turn; several are averaged). The others stay buffered for later turns until they expire.
    frames_per_turn: int = 1
    respond_timeout_s: float = 60.0   # a response not done by then fails (response_timeout); 0 = none
    # Admission control: a new turn while this many turns (all sessions) wait for their first
    # reply delta is refused at once with server_busy and a retry hint; 0 = no limit. Sized on
    # the 2-core reference machine (bench/server.py, README): 8 waiting turns gave first-delta
    # p95 2.25 s (spoken) / 1.39 s (typed); 32 gave 15 s / 10 s, past the 3 s target.
    max_waiting_turns: int = 8


@dataclass
class DeploymentConfig:
    """One model's Ray Serve deployment (``engine: ray``; docs/deploy.md)."""

    num_replicas: int = 1             # replicas at start (the minimum when autoscaling)
    max_replicas: int = 0             # > num_replicas: autoscale between the two on queued requests
    target_ongoing_requests: float = 8.0   # autoscaling: requests in flight per replica to aim for
    max_batch_size: int = 16          # @serve.batch: calls of all front ends in one forward pass
    batch_wait_ms: float = 5.0        # ... waiting at most this long for the batch to fill
    num_cpus: float = 1.0             # Ray resources per replica
    num_gpus: float = 0.0


@dataclass
class ServingConfig:
    """Where the models run: ``local`` (in this process, the default) or ``ray`` (Ray Serve
    deployments started by ``mmagent models serve``, shared by every front end)."""

    engine: str = "local"
    address: str = "auto"             # the Ray cluster (``auto``: the one running on this machine)
    namespace: str = "mmagent"
    app_prefix: str = "mmagent-"      # applications: <prefix>text, <prefix>speech, <prefix>vision
    text: DeploymentConfig = field(default_factory=DeploymentConfig)
    speech: DeploymentConfig = field(default_factory=lambda: DeploymentConfig(max_batch_size=4))
    vision: DeploymentConfig = field(default_factory=lambda: DeploymentConfig(max_batch_size=8))
    # The local language model (agent.responder.kind: local); batches with its own continuous
    # batching (agent.responder.local.batching), so max_batch_size / batch_wait_ms do not apply.
    llm: DeploymentConfig = field(default_factory=DeploymentConfig)


@dataclass
class ServerConfig:
    """Everything ``mmagent serve`` needs; see the README's configuration table."""

    host: str = "127.0.0.1"
    port: int = 8765
    pack: str | None = None           # knowledge pack directory; None = the demo kiosk pack
    static_dir: str | None = None     # None = server/static next to this module
    tokens: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)   # empty: same host as the request; "*": any
    allow_remote_without_token: bool = False
    state_dir: str = "var"            # agent's SQLite history and caches
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    agent: dict[str, Any] = field(default_factory=dict)   # agent.AgentConfig as nested dicts
    # perception.PerceptionConfig fields (own models by path, devices, threads, limits, ...)
    perception: dict[str, Any] = field(default_factory=dict)
    # voice.VoiceConfig fields (a Piper voice by path, speed, threads, ...) and ``enabled``
    # (default true: sessions may ask for output_modalities ["audio"]); docs/voice.md.
    voice: dict[str, Any] = field(default_factory=dict)
    serving: ServingConfig = field(default_factory=ServingConfig)

    def validate(self) -> ServerConfig:
        """Raise ConfigError naming the first bad value; return self."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 0..65535")
        if self.vad.backend not in ("silero", "energy"):
            raise ConfigError(f"vad.backend must be 'silero' or 'energy', not {self.vad.backend!r}")
        if not 0 < self.vad.threshold < 1:
            raise ConfigError("vad.threshold must be within (0, 1)")
        if not 100 <= self.vad.silence_duration_ms <= 5000:
            raise ConfigError("vad.silence_duration_ms must be within 100..5000")
        if self.vad.semantic not in ("smart_turn+lm", "smart_turn", "silence"):
            raise ConfigError(f"vad.semantic must be 'smart_turn+lm', 'smart_turn' or 'silence', "
                              f"not {self.vad.semantic!r}")
        if not 64 <= self.vad.semantic_check_ms <= 1000:
            raise ConfigError(f"vad.semantic_check_ms must be within 64..1000, not {self.vad.semantic_check_ms!r}")
        if self.vad.max_hold_ms <= 0:
            raise ConfigError("vad.max_hold_ms must be > 0")
        if not 0 <= self.vad.echo_max_delay_ms <= 2000 or not -20 <= self.vad.echo_margin_db <= 20:
            raise ConfigError("vad.echo_max_delay_ms must be within 0..2000 and vad.echo_margin_db within -20..20")
        if self.pipeline.respond_timeout_s < 0:
            raise ConfigError("pipeline.respond_timeout_s must be >= 0 (0 = no timeout)")
        lim = self.limits
        if lim.hard_max_message_bytes < lim.max_message_bytes:
            raise ConfigError("limits.hard_max_message_bytes must be >= limits.max_message_bytes")
        for name in ("max_frames_per_s", "max_audio_seconds_per_s", "max_pending_audio_s", "idle_timeout_s",
                     "frame_window_s", "audio_burst_s", "slow_client_timeout_s", "drain_timeout_s"):
            if getattr(lim, name) <= 0:
                raise ConfigError(f"limits.{name} must be > 0")
        for name in ("max_sessions", "max_sessions_per_token", "max_frames_per_turn", "max_errors_per_10s",
                     "max_message_bytes", "max_text_chars", "max_pending_images", "max_outgoing_bytes"):
            if getattr(lim, name) < 1:
                raise ConfigError(f"limits.{name} must be >= 1")
        for bname in ("text", "frames", "speech"):
            b: BatchConfig = getattr(self.batching, bname)
            if b.max_batch < 1 or b.max_wait_ms < 0:
                raise ConfigError(f"batching.{bname}: max_batch must be >= 1 and max_wait_ms >= 0")
        self.perception_config()   # raises ConfigError naming a bad perception.* key or value
        self.voice_config()        # likewise voice.*
        if self.pipeline.max_waiting_turns < 0:
            raise ConfigError("pipeline.max_waiting_turns must be >= 0 (0 = no limit)")
        if self.serving.engine not in ("local", "ray"):
            raise ConfigError(f"serving.engine must be 'local' or 'ray', not {self.serving.engine!r}")
        for dname in ("text", "speech", "vision", "llm"):
            d: DeploymentConfig = getattr(self.serving, dname)
            if d.num_replicas < 1 or d.max_batch_size < 1 or d.batch_wait_ms < 0 or d.num_cpus < 0:
                raise ConfigError(f"serving.{dname}: num_replicas and max_batch_size must be >= 1, "
                                  "batch_wait_ms and num_cpus >= 0")
        if self.pipeline.frames_per_turn < 1:
            raise ConfigError("pipeline.frames_per_turn must be >= 1")
        if self.batching.model_threads < 1:
            raise ConfigError("batching.model_threads must be >= 1")
        if any(not t or any(c.isspace() for c in t) for t in self.tokens):
            raise ConfigError("tokens must be non-empty and contain no whitespace")
        if not self.tokens and not _is_local(self.host) and not self.allow_remote_without_token:
            raise ConfigError(
                f"refusing to listen on {self.host!r} without an API token: set tokens (MMAGENT_TOKENS) "
                "or allow_remote_without_token (--insecure-no-token)")
        return self

    def perception_config(self) -> Any:
        """The ``perception`` section as a validated :class:`perception.PerceptionConfig`."""
        from perception import PerceptionConfig

        return _from_dict(PerceptionConfig, self.perception, "perception.")

    def voice_config(self, pack_voice: dict[str, Any] | None = None) -> Any:
        """The ``voice`` section as a validated :class:`voice.VoiceConfig` (None: voice off).

        ``pack_voice``: the pack's choice (``voice`` path relative to the pack, ``speed``),
        applied first; the server's own settings win.
        """
        from voice import VoiceConfig

        data = dict(self.voice)
        enabled = _coerce(bool, data.pop("enabled", True), "voice.enabled")
        if not enabled:
            return None
        merged: dict[str, Any] = {}
        if pack_voice:
            merged.update(pack_voice)
        merged.update(data)
        hints = typing.get_type_hints(VoiceConfig)
        known = {f.name for f in dataclasses.fields(VoiceConfig)}
        for key in merged:
            if key not in known:
                raise ConfigError(f"unknown config key {'voice.' + key!r}; known: {sorted(known | {'enabled'})}")
        return VoiceConfig(**{k: _coerce(hints[k], v, "voice." + k) for k, v in merged.items()})

    def masked(self) -> dict[str, Any]:
        """The configuration as a dict, secrets replaced by ``***``."""
        d = dataclasses.asdict(self)
        d["tokens"] = ["***" for _ in self.tokens]
        responder = d.get("agent", {}).get("responder", {})
        if isinstance(responder, dict) and isinstance(responder.get("openai"), dict) \
                and responder["openai"].get("api_key"):
            responder["openai"] = {**responder["openai"], "api_key": "***"}
        store = d.get("agent", {}).get("store")
        if isinstance(store, dict) and isinstance(store.get("url"), str):
            from agent.store_postgres import _redact

            store["url"] = _redact(store["url"])
        return d


def _is_local(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown config key {where + key!r}")
        kwargs[key] = _coerce(hints[key], value, where + key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Convert ``value`` (from a file or an env string) to type ``tp``, or raise ConfigError."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _from_dict(tp, value, name + ".")
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, name)
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping")
        return value
    if typing.get_origin(tp) is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list")
        return [_coerce(args[0], v, name) for v in value]
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if tp in (int, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return tp(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


def _env_overrides(env: typing.Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(ServerConfig):
        if dataclasses.is_dataclass(f.default_factory) if f.default_factory is not dataclasses.MISSING else False:
            section: dict[str, Any] = {}
            sub_cls = f.default_factory
            for sf in dataclasses.fields(sub_cls):  # type: ignore[arg-type]
                key = f"MMAGENT_{f.name}_{sf.name}".upper()
                if key in env:
                    section[sf.name] = env[key]
            if section:
                out[f.name] = section
        else:
            key = f"MMAGENT_{f.name}".upper()
            if key in env:
                out[f.name] = env[key]
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | os.PathLike[str] | None = None, *, env: typing.Mapping[str, str] | None = None,
                overrides: dict[str, Any] | None = None) -> ServerConfig:
    """File, then env (``MMAGENT_*``), then ``overrides`` (flags; nested dicts allowed); validated."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc}") from None
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as exc:  # yaml.YAMLError / JSONDecodeError: report either the same way
            raise ConfigError(f"config file {p} is not valid: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping")
    data = _merge(data, _env_overrides(os.environ if env is None else env))
    data = _merge(data, overrides or {})
    cfg: ServerConfig = _from_dict(ServerConfig, data, "")
    return cfg.validate()


def sessions_db_path(config: ServerConfig | None = None) -> Path:
    """The session database ``mmagent serve`` writes and ``mmagent sessions`` / ``chat`` / ``ask``
    read by default, so each command sees the others' sessions: the config's ``agent.store.path``,
    else ``$MMAGENT_SESSIONS_DB``, else ``<state_dir>/sessions.sqlite3`` (``state_dir``: default
    ``var`` under the working directory, or ``$MMAGENT_STATE_DIR``). ``config`` None: the default
    configuration with the environment (``load_config(None)``)."""
    cfg = config if config is not None else load_config(None)
    store = cfg.agent.get("store") if isinstance(cfg.agent, dict) else None
    if isinstance(store, dict) and store.get("path"):
        return Path(str(store["path"]))
    env = os.environ.get("MMAGENT_SESSIONS_DB")
    if env:
        return Path(env)
    return Path(cfg.state_dir) / "sessions.sqlite3"
