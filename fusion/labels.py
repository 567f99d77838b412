"""The fixed label sets and modality names of the fusion layer.

The label set is the demo knowledge pack's; it is fixed so that any data set can be scored
against the default checkpoint. Checkpoints still store their own label maps.
"""

from __future__ import annotations

INTENTS: tuple[str, ...] = (
    "greeting", "goodbye", "return_item", "price_check", "find_product",
    "store_hours", "payment_help", "talk_to_human", "other",
)
EMOTIONS: tuple[str, ...] = ("negative", "neutral", "positive")

# Input modalities, in token order. "context" is the previous turn's fused vector (d_model).
MEDIA_MODALITIES: tuple[str, ...] = ("text", "speech", "vision")
MODALITIES: tuple[str, ...] = (*MEDIA_MODALITIES, "context")
