"""Vision encoder (in progress): identity and size helpers."""

from __future__ import annotations

from pathlib import Path

from .config import PerceptionConfig

LITE0_DIM = 1280


def vision_dim(config: PerceptionConfig) -> int | None:
    if config.vision_backend == "efficientnet-lite0":
        return LITE0_DIM
    return None


def vision_identity(config: PerceptionConfig, dim: int) -> str:
    if config.vision_backend == "efficientnet-lite0":
        name = "efficientnet-lite0" if config.vision_model is None else Path(config.vision_model).name
        return f"vision:{name}:imagenet:{dim}"
    return f"vision:clip:{Path(config.vision_model or '').name}:{dim}"
