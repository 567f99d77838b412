"""Ray Serve deployments of the perception encoders (one per model), each with ``@serve.batch``.

A replica loads only its own encoder (perception loads each lazily). Results travel as the same
typed encodings the in-process engine returns (pickled by Ray). A batch that fails because of
one bad input is re-run item by item so only that caller gets the error (an ``MMAgentError``
with its code, raised again in the front end).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from perception.errors import MMAgentError


class Failed:
    """One call's error, returned in place of its result (so the rest of the batch succeeds)."""

    def __init__(self, exc: BaseException) -> None:
        self.code = getattr(exc, "code", "internal_error")
        self.message = str(exc)
        self.kind = type(exc).__name__

    def raise_(self) -> None:
        err = MMAgentError(self.message)
        err.code = self.code
        raise err


def _per_item(fn: Any, items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for it in items:
        try:
            out.append(fn([it])[0])
        except MMAgentError as exc:
            out.append(Failed(exc))
    return out


class _Encoder:
    modality = ""

    def __init__(self, perception_config: Any, max_batch_size: int, batch_wait_ms: float) -> None:
        from perception import Perception

        self.perception = Perception(perception_config)
        self.perception.warmup((self.modality,))
        self.encode.set_max_batch_size(max_batch_size)        # type: ignore[attr-defined]
        self.encode.set_batch_wait_timeout_s(batch_wait_ms / 1000.0)   # type: ignore[attr-defined]

    def _run(self, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    async def _batch(self, items: list[Any]) -> list[Any]:
        def work() -> list[Any]:
            try:
                return self._run(items)
            except MMAgentError:
                return _per_item(self._run, items)
        # A worker thread: the replica's event loop keeps queueing the next batch meanwhile.
        return await asyncio.to_thread(work)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def encode(self, items: list[Any]) -> list[Any]:
        return await self._batch(items)

    async def __call__(self, item: Any) -> Any:
        return await self.encode(item)

    def ping(self) -> str:
        return self.modality


@serve.deployment(name="text")
class TextEncoder(_Encoder):
    modality = "text"

    def _run(self, items: list[Any]) -> list[Any]:
        return list(self.perception.encode_text(items))


@serve.deployment(name="speech")
class SpeechRecognizer(_Encoder):
    modality = "speech"

    def _run(self, items: list[Any]) -> list[Any]:
        return [self.perception.encode_speech(audio, rate) for audio, rate in items]


@serve.deployment(name="vision")
class VisionEncoder(_Encoder):
    modality = "vision"

    def _run(self, items: list[Any]) -> list[Any]:
        return list(self.perception.encode_frames(items))


@serve.deployment(name="llm")
class LanguageModel:
    """The local language model (agent.responder.local), streaming each reply piece by piece.

    Concurrent replies of all front ends share the model's own continuous batching (one decode
    step for every reply in flight), so this deployment needs no ``@serve.batch``. A caller that
    cancels its stream (barge-in, disconnect) stops its reply at the next token."""

    def __init__(self, llm_config: Any) -> None:
        from agent.responders.local import LocalLLM

        self.llm = LocalLLM(llm_config)
        self.llm.load()

    def tokenizer(self) -> Any:
        """The tokenizer (front ends count prompt tokens locally with it)."""
        return self.llm.tokenizer

    def prime(self, messages: list[dict[str, str]], static_messages: int) -> None:
        self.llm.prime(messages, static_messages)

    async def generate(self, messages: list[dict[str, str]], static_messages: int,
                       max_new_tokens: int | None) -> Any:
        import threading

        from agent.responders.base import stream_from_thread

        cancel = threading.Event()
        stats: dict[str, float] = {}

        def target(emit: Any) -> None:
            self.llm.generate(messages, emit, cancel, stats, static_messages=static_messages,
                              max_new_tokens=max_new_tokens)

        try:
            async for piece in stream_from_thread(target, name="serve-llm"):
                yield piece
            yield {"stats": stats}
        finally:   # the caller cancelled (or went away): stop generating
            cancel.set()

    def ping(self) -> str:
        return "llm"


DEPLOYMENTS: dict[str, Any] = {"text": TextEncoder, "speech": SpeechRecognizer, "vision": VisionEncoder,
                               "llm": LanguageModel}


def build_apps(config: Any) -> dict[str, Any]:
    """The Ray Serve applications for ``config`` (a ServerConfig): {app name: bound deployment}."""
    from server.engine import perception_config_for

    pconf = perception_config_for(config)
    apps: dict[str, Any] = {}
    for name, cls in DEPLOYMENTS.items():
        d = getattr(config.serving, name)
        if name == "llm":
            llm_config = llm_config_for(config)
            if llm_config is None:   # the agent answers with another responder (openai, extractive)
                continue
            llm_options: dict[str, Any] = {"ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
                                           "max_ongoing_requests": 256, "num_replicas": d.num_replicas}
            if d.max_replicas > d.num_replicas:
                llm_options.pop("num_replicas")
                llm_options["autoscaling_config"] = {"min_replicas": d.num_replicas, "max_replicas": d.max_replicas,
                                                     "target_ongoing_requests": d.target_ongoing_requests}
            apps[config.serving.app_prefix + name] = cls.options(**llm_options).bind(llm_config)
            continue
        options: dict[str, Any] = {"ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
                                   "max_ongoing_requests": max(4 * d.max_batch_size, 32)}
        if d.max_replicas > d.num_replicas:
            options["autoscaling_config"] = {"min_replicas": d.num_replicas, "max_replicas": d.max_replicas,
                                             "initial_replicas": d.num_replicas,
                                             "target_ongoing_requests": d.target_ongoing_requests}
        else:
            options["num_replicas"] = d.num_replicas
        apps[config.serving.app_prefix + name] = cls.options(**options).bind(pconf, d.max_batch_size,
                                                                             d.batch_wait_ms)
    return apps


def llm_config_for(config: Any) -> Any:
    """The local language model's configuration, or None when the agent uses another responder."""
    from agent import AgentConfig

    agent = AgentConfig.from_dict({k: v for k, v in config.agent.items() if k != "store"})
    return agent.responder.local if agent.responder.kind == "local" else None


def build_app(args: dict[str, Any]) -> Any:
    """Ray Serve application builder (``import_path: server.serving.deployments:build_app``), for a
    Ray Serve config file or KubeRay's RayService: ``args: {model: text|speech|vision,
    config: /path/to/mmagent.yaml}`` (the config's ``serving.<model>`` sets replicas, batching)."""
    from server.config import load_config

    model = str(args.get("model", ""))
    if model not in DEPLOYMENTS:
        from perception.errors import ConfigError

        raise ConfigError(f"build_app: model must be one of {sorted(DEPLOYMENTS)}, got {model!r}")
    config = load_config(args.get("config"))
    apps = build_apps(config)
    if config.serving.app_prefix + model not in apps:
        from perception.errors import ConfigError

        raise ConfigError("build_app: model llm needs agent.responder.kind: local")
    return apps[config.serving.app_prefix + model]
