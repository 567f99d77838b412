""":class:`RayEngine`: the :class:`~server.engine.ModelEngine` whose encoders run on Ray Serve.

Everything else is :class:`~server.engine.LocalEngine`'s: the same micro-batchers, text cache,
fusion and agent in this process; only the perception object the engine (and the agent's
retriever) calls is :class:`RemotePerception`, which sends each call to its model's deployment.
The front end then loads no encoder: a few hundred MB instead of ~1.5 GB with the language model.
"""

from __future__ import annotations

import logging
from typing import Any

from perception.errors import ModelLoadError
from server.console import loading
from server.engine import LocalEngine

log = logging.getLogger(__name__)


def connect(serving: Any) -> None:
    """Join the Ray cluster of ``serving.address`` once per process (no dashboard, no log relay)."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=serving.address, namespace=serving.namespace, log_to_driver=False,
                 include_dashboard=False, ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"cannot reach the Ray cluster at {serving.address!r} (start the model tier "
                             f"with `mmagent models serve`): {exc}") from exc


class RemotePerception:
    """Perception's encoding API (``encode_text``, ``encode_speech``, ``encode_frames``,
    ``identities``, ``feature_dims``) over Ray Serve handles. Blocking: called from the engine's
    worker threads, like the in-process encoders. Identities come from the local configuration
    (no model is loaded for them), so fusion's encoder check works as in process."""

    def __init__(self, config: Any, handles: dict[str, Any]) -> None:
        from perception import Perception

        self._spec = Perception(config)   # never loads a model: identities and dimensions only
        self.config = config
        self.handles = handles

    def _call(self, modality: str, items: list[Any]) -> list[Any]:
        from server.serving.deployments import Failed

        handle = self.handles[modality]
        # One request per item, all in flight at once: the replica's @serve.batch batches them
        # (with every other front end's).
        responses = [handle.remote(it) for it in items]
        out = [r.result() for r in responses]
        for o in out:
            if isinstance(o, Failed):
                o.raise_()
        return out

    def encode_text(self, texts: list[str]) -> list[Any]:
        return self._call("text", list(texts))

    def encode_speech(self, audio: Any, sample_rate: int) -> Any:
        return self._call("speech", [(audio, sample_rate)])[0]

    def encode_frames(self, images: list[Any]) -> list[Any]:
        return self._call("vision", list(images))

    def identities(self) -> dict[str, str]:
        return self._spec.identities()

    def feature_dims(self) -> dict[str, int]:
        return self._spec.feature_dims()

    def warmup(self, modalities: tuple[str, ...] = ("text", "speech", "vision")) -> dict[str, float]:
        return {}


class RemoteLLM:
    """What :class:`agent.responders.local.LocalResponder` needs of a
    :class:`~agent.responders.local.LocalLLM` (``load``, ``count_tokens``, ``prime``, ``generate``),
    over the ``llm`` deployment's handle: replies stream back piece by piece, a cancel stops the
    remote generation, and tokens are counted here with the deployment's own tokenizer."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._tokenizer: Any = None

    def load(self) -> None:
        if self._tokenizer is None:
            self._tokenizer = self.handle.tokenizer.remote().result()

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def prime(self, messages: list[dict[str, str]], static_messages: int) -> None:
        self.handle.prime.remote(messages, static_messages).result()

    def generate(self, messages: list[dict[str, str]], on_text: Any, cancel: Any,
                 stats: dict[str, float] | None = None, *, static_messages: int = 0,
                 max_new_tokens: int | None = None) -> str:
        """Blocking, like LocalLLM.generate: ``on_text`` for each piece; returns the text."""
        from ray.serve.exceptions import RequestCancelledError

        stream = self.handle.options(stream=True).generate.remote(messages, static_messages, max_new_tokens)
        if hasattr(cancel, "add_callback"):
            cancel.add_callback(stream.cancel)
        parts: list[str] = []
        try:
            for item in stream:
                if isinstance(item, dict):
                    if stats is not None:
                        stats.update(item.get("stats", {}))
                    continue
                parts.append(item)
                on_text(item)
                if cancel.is_set():
                    stream.cancel()
                    break
        except RequestCancelledError:
            pass
        return "".join(parts)


class RayEngine(LocalEngine):
    """``serving.engine: ray``: the encoders are Ray Serve deployments (``mmagent models serve``)."""

    def _make_perception(self) -> Any:
        from ray import serve

        serving = self.config.serving
        with loading(f"model tier: Ray Serve at {serving.address}") as step:
            connect(serving)
            handles = {}
            names = ("text", "speech", "vision", "llm") if self._llm_on_ray() else ("text", "speech", "vision")
            for name in names:
                app = serving.app_prefix + name
                try:
                    handles[name] = serve.get_app_handle(app)
                except Exception as exc:   # RayServeException: not deployed (yet)
                    raise ModelLoadError(f"Ray Serve application {app!r} is not running: start it with "
                                         f"`mmagent models serve` ({exc})") from exc
            self._llm_handle = handles.pop("llm", None)
            perception = RemotePerception(self._perception_config(), handles)
            perception.encode_text(["ready?"])   # one round trip: the tier answers
            step.detail(", ".join(serving.app_prefix + n for n in names))
        return perception

    def _llm_on_ray(self) -> bool:
        from server.serving.deployments import llm_config_for

        return llm_config_for(self.config) is not None

    def _make_llm(self) -> Any:
        handle = getattr(self, "_llm_handle", None)
        return RemoteLLM(handle) if handle is not None else None
