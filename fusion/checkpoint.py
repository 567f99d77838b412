"""Checkpoint files: weights + config + label maps + the identities of the encoders behind them.

Format (``torch.save`` of a dict, loaded with ``weights_only=True``)::

    {"format": "mmagent-fusion", "version": 1, "config": FusionConfig.to_dict(),
     "state_dict": {...}, "labels": {"intents": [...], "emotions": [...]},
     "encoders": {"text": id, "speech": id, "vision": id}, "feature_dims": {...}, "info": {...}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fusion.config import FusionConfig
from fusion.errors import CheckpointError
from fusion.model import FusionModel
from fusion.registry import build_model
from perception.errors import ConfigError

FORMAT = "mmagent-fusion"
VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "kiosk_default.pt"


def save_checkpoint(path: str | Path, model: FusionModel, *, encoders: dict[str, str],
                    feature_dims: dict[str, int], info: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    payload = {
        "format": FORMAT, "version": VERSION, "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "labels": {"intents": list(cfg.intents), "emotions": list(cfg.emotions)},
        "encoders": dict(encoders), "feature_dims": dict(feature_dims), "info": info or {},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path | None = None) -> tuple[FusionModel, dict[str, Any]]:
    """Model (eval mode) and the checkpoint's metadata. Raises CheckpointError when the file is
    missing, corrupt, of another format, or its weights do not fit its config."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"fusion checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"fusion checkpoint {path} is corrupt or unreadable: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fusion checkpoint (format {FORMAT!r} expected)")
    if ck.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ck.get('version')} is not supported (expected {VERSION})")
    try:
        config = FusionConfig.from_dict(ck["config"])
        model = build_model(config)
        model.load_state_dict(ck["state_dict"], strict=True)
    except (KeyError, TypeError, RuntimeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: weights do not match the stored config: {exc}") from exc
    model.eval()
    meta = {k: ck.get(k) for k in ("labels", "encoders", "feature_dims", "info")}
    meta["path"] = str(path)
    return model, meta


def encoder_differences(expected: dict[str, str], actual: dict[str, str],
                        expected_dims: dict[str, int] | None = None,
                        actual_dims: dict[str, int] | None = None) -> list[str]:
    """Human-readable differences between the checkpoint's encoders and the ones in use."""
    diffs = []
    for m in sorted(set(expected) | set(actual)):
        if expected.get(m) != actual.get(m):
            diffs.append(f"{m}: checkpoint trained with {expected.get(m)!r}, perception has {actual.get(m)!r}")
    if expected_dims and actual_dims:
        for m in sorted(set(expected_dims) & set(actual_dims)):
            if expected_dims[m] != actual_dims[m]:
                diffs.append(f"{m}: feature size {expected_dims[m]} in checkpoint, {actual_dims[m]} from perception")
    return diffs
