"""The perception facade: owns the three encoders, loads each once, validates every input.

>>> p = Perception(PerceptionConfig())   # nothing loaded yet
>>> p.encode_text(["where is the milk?"])[0].embedding.shape
torch.Size([384])
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from .config import PerceptionConfig
from .errors import ConfigError
from .runtime import Lazy, resolve_device, shared_lazy, torch_dtype
from .text import TextEncoder, text_dim, text_identity, validate_texts
from .types import FACE_FEATURES, PROSODY_FEATURES, FrameEncoding, SpeechEncoding, TextEncoding

# Config fields each encoder depends on (by name prefix): equal values → one shared encoder.
TEXT_FIELDS = ("text_",)
SPEECH_FIELDS = ("speech_", "vad_", "no_speech_", "logprob_")
VISION_FIELDS = ("vision_", "clip_", "top_k", "face_")

if TYPE_CHECKING:
    from .speech import SpeechEncoder
    from .vision import VisionEncoder


class Perception:
    """Text, speech and camera-frame encoders behind one object.

    Models load lazily on first use (or all at once with :meth:`warmup`), once per process
    (facades with equal settings share them), behind a lock; one instance is safe to share
    between threads. Inputs are validated against
    ``config.limits`` before any model runs; a bad input raises a subclass of
    :class:`~perception.errors.InputError` naming the problem and the limit.
    """

    def __init__(self, config: PerceptionConfig | None = None) -> None:
        self.config = config or PerceptionConfig()
        self.device = resolve_device(self.config.device)
        self.dtype = torch_dtype(self.device, self.config.fp16_on_cuda)
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        # Encoders are shared process-wide between facades whose settings for them are equal.
        self._text: Lazy[TextEncoder] = shared_lazy(
            "text", self._key("text", TEXT_FIELDS), lambda: TextEncoder(self.config, self.device, self.dtype))
        self._speech: Lazy[SpeechEncoder] = shared_lazy(
            "speech", self._key("speech", SPEECH_FIELDS), self._build_speech)
        self._vision: Lazy[VisionEncoder] = shared_lazy(
            "vision", self._key("vision", VISION_FIELDS), self._build_vision)
        self._dims: dict[str, int] | None = None

    def _key(self, modality: str, prefixes: tuple[str, ...]) -> tuple[Any, ...]:
        fields = tuple((name, getattr(self.config, name)) for name in sorted(self.config.__dataclass_fields__)
                       if name.startswith(prefixes))
        return (modality, str(self.device), str(self.dtype), *fields)

    def _build_speech(self) -> SpeechEncoder:
        from .speech import SpeechEncoder

        return SpeechEncoder(self.config, self.device)

    def _build_vision(self) -> VisionEncoder:
        from .vision import VisionEncoder

        return VisionEncoder(self.config, self.device, self.dtype)

    # -- lifecycle -----------------------------------------------------------------------------

    def warmup(self, modalities: tuple[str, ...] = ("text", "speech", "vision")) -> dict[str, float]:
        """Load the named encoders now, in parallel; return each one's load time in seconds.

        Loading is mostly imports and file reads in Python (text) overlapping with native code
        (CTranslate2, ONNX Runtime), so parallel threads cut the wall-clock time to about the
        slowest single model.
        """
        lazies: dict[str, Lazy[Any]] = {"text": self._text, "speech": self._speech, "vision": self._vision}
        for name in modalities:
            if name not in lazies:
                raise ConfigError(f"unknown modality {name!r}; expected text, speech or vision")
        if len(modalities) == 1:
            lazies[modalities[0]].get()
        else:
            with ThreadPoolExecutor(max_workers=len(modalities), thread_name_prefix="perception-load") as pool:
                for future in [pool.submit(lazies[name].get) for name in modalities]:
                    future.result()  # re-raises a loader's error here
        return self.load_times()

    def load_times(self) -> dict[str, float]:
        """Seconds each loaded encoder took to load (absent: not loaded yet)."""
        return {lz.name: float(lz.load_seconds) for lz in (self._text, self._speech, self._vision)
                if lz.load_seconds is not None}

    # -- encoders ------------------------------------------------------------------------------

    def encode_text(self, texts: list[str]) -> list[TextEncoding]:
        """Encode a batch of texts (one forward pass per ``config.text_batch_size`` texts).

        Each ``embedding`` is (D_text,) = (384,) for the default model, L2-normalised.
        """
        texts = validate_texts(texts, self.config.limits)
        if not texts:
            return []
        return self._text.get().encode(texts)

    def encode_speech(self, audio: bytes | Any, sample_rate: int) -> SpeechEncoding:
        """Transcribe and embed one mono utterance.

        ``audio``: PCM16 little-endian bytes, or a 1-D numpy array / torch tensor of float
        (-1..1) or int16 samples, at ``sample_rate`` Hz (resampled to 16 kHz).
        """
        from .audio import prepare_audio

        samples = prepare_audio(audio, sample_rate, self.config.limits)
        return self._speech.get().encode(samples)

    def encode_frames(self, images: list[Any]) -> list[FrameEncoding]:
        """Encode a batch of camera frames (one forward pass for the batch).

        Each image: JPEG/PNG bytes, a PIL image, or a numpy (H, W, 3) uint8 array in
        ``config.numpy_channel_order`` (RGB by default). ``embedding``: (D_vision,) = (1280,).
        """
        from .images import load_images

        decoded = load_images(images, self.config)
        if not decoded:
            return []
        return self._vision.get().encode(decoded)

    # -- identity, for checkpoints that depend on the encoders --------------------------------

    def identities(self) -> dict[str, str]:
        """Stable identity string of each encoder (fusion checkpoints record and check these)."""
        from .speech import speech_identity
        from .vision import vision_identity

        dims = self._encoder_dims()
        return {
            "text": text_identity(self.config.text_model, dims["text"]),
            "speech": speech_identity(self.config, dims["speech"]),
            "vision": vision_identity(self.config, dims["vision"]),
        }

    def feature_dims(self) -> dict[str, int]:
        """Size of each modality's ``feature_vector()`` (embedding + metadata features)."""
        dims = self._encoder_dims()
        return {"text": dims["text"], "speech": dims["speech"] + PROSODY_FEATURES,
                "vision": dims["vision"] + FACE_FEATURES}

    def _encoder_dims(self) -> dict[str, int]:
        # Read from model configs (cheap) or from an encoder already loaded; never hard-coded.
        if self._dims is None:
            from .speech import speech_dim
            from .vision import vision_dim

            speech = self._speech.get().dim if self._speech.loaded else speech_dim(self.config)
            vision = self._vision.get().dim if self._vision.loaded else vision_dim(self.config)
            self._dims = {
                "text": self._text.get().dim if self._text.loaded else text_dim(self.config.text_model),
                # None: not knowable from the config alone; load the encoder to ask it.
                "speech": speech if speech is not None else self._speech.get().dim,
                "vision": vision if vision is not None else self._vision.get().dim,
            }
        return self._dims

    def timed(self, stage: str, timings: dict[str, float]) -> _Timer:
        """Context manager adding the elapsed seconds of a block to ``timings[stage]``."""
        return _Timer(stage, timings)


class _Timer:
    def __init__(self, stage: str, timings: dict[str, float]) -> None:
        self.stage, self.timings = stage, timings

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.stage] = self.timings.get(self.stage, 0.0) + time.perf_counter() - self.t0
