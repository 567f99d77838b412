"""Fusion variants by name: ``build_model(FusionConfig(variant=...))``."""

from __future__ import annotations

from collections.abc import Callable

from fusion.baselines import ConcatMLPFusion, LateFusion, UnimodalModel, WeightedSumFusion
from fusion.config import FusionConfig
from fusion.model import AttentionFusion, FusionModel

VARIANTS: dict[str, Callable[[FusionConfig], FusionModel]] = {
    "attention": AttentionFusion,
    "weighted_sum": WeightedSumFusion,
    "concat_mlp": ConcatMLPFusion,
    "late_fusion": LateFusion,
    "unimodal_text": lambda c: UnimodalModel(c, "text"),
    "unimodal_speech": lambda c: UnimodalModel(c, "speech"),
    "unimodal_vision": lambda c: UnimodalModel(c, "vision"),
}


def build_model(config: FusionConfig) -> FusionModel:
    """A freshly initialised model of ``config.variant``."""
    config.validate()
    return VARIANTS[config.variant](config)
