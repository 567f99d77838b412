"""Fusion layer: per-turn attention fusion of text, speech and vision features.

>>> from fusion import FusionPredictor, ModalityInputs
>>> fp = FusionPredictor.load(None)      # the default demo checkpoint
>>> fp.predict([ModalityInputs(text=torch.zeros(384))])[0].intent   # doctest: +SKIP
"""

from fusion.config import FusionConfig
from fusion.errors import CheckpointError, ManifestError
from fusion.labels import EMOTIONS, INTENTS, MODALITIES
from fusion.predictor import FusedTurn, FusionPredictor, ModalityInputs

__all__ = ["EMOTIONS", "INTENTS", "MODALITIES", "CheckpointError", "FusedTurn", "FusionConfig",
           "FusionPredictor", "ManifestError", "ModalityInputs"]
