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


class RayEngine(LocalEngine):
    """``serving.engine: ray``: the encoders are Ray Serve deployments (``mmagent models serve``)."""

    def _make_perception(self) -> Any:
        from ray import serve

        serving = self.config.serving
        with loading(f"model tier: Ray Serve at {serving.address}") as step:
            connect(serving)
            handles = {}
            for name in ("text", "speech", "vision"):
                app = serving.app_prefix + name
                try:
                    handles[name] = serve.get_app_handle(app)
                except Exception as exc:   # RayServeException: not deployed (yet)
                    raise ModelLoadError(f"Ray Serve application {app!r} is not running: start it with "
                                         f"`mmagent models serve` ({exc})") from exc
            perception = RemotePerception(self._perception_config(), handles)
            perception.encode_text(["ready?"])   # one round trip: the tier answers
            step.detail(", ".join(serving.app_prefix + n for n in handles))
        return perception
