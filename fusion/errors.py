"""Errors of the fusion layer (drawn in the tree of ``perception/errors.py``)."""

from __future__ import annotations

from perception.errors import InputError, ModelLoadError


class CheckpointError(ModelLoadError):
    """A fusion checkpoint is corrupt, or does not match the encoders / dims it is used with."""

    code = "checkpoint_mismatch"


class ManifestError(InputError):
    """A JSONL manifest (or one of its rows) is unusable; the message names the line numbers."""

    code = "invalid_manifest"
