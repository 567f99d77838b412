"""What the encoders share: their small interface, device choice, once-per-process loading."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import torch

from .errors import MMAgentError, ModelLoadError

# transformers' from_pretrained builds a model on the "meta" device by patching torch globally,
# so two loads in different threads at once break each other ("Cannot copy out of meta tensor"):
# every transformers load in this project (text encoder, CLIP/SigLIP, the language models) holds it.
TRANSFORMERS_LOAD_LOCK = threading.RLock()

T = TypeVar("T")
InT = TypeVar("InT", contravariant=True)
OutT = TypeVar("OutT", covariant=True)


@runtime_checkable
class Encoder(Protocol[InT, OutT]):
    """The interface the facade uses for each modality (TextEncoder, SpeechEncoder, VisionEncoder).

    ``encode`` takes validated input (a batch of texts, one 16 kHz utterance, a batch of decoded
    frames); ``dim`` is the embedding size; ``identity`` a stable name checkpoints can record.
    """

    dim: int
    identity: str

    def encode(self, inputs: InT) -> OutT: ...


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → the first CUDA device when one is usable, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def torch_dtype(device: torch.device, fp16_on_cuda: bool) -> torch.dtype:
    """fp16 on CUDA (twice the throughput, same rankings); fp32 on CPU, where fp16 is slow."""
    return torch.float16 if device.type == "cuda" and fp16_on_cuda else torch.float32


class Lazy(Generic[T]):
    """A value built on first use, exactly once, even when many threads ask at the same time.

    ``load_seconds`` records how long the build took (None until built).
    """

    def __init__(self, name: str, build: Callable[[], T]) -> None:
        self.name = name
        self._build = build
        self._value: T | None = None
        self._lock = threading.Lock()
        self.load_seconds: float | None = None

    @property
    def loaded(self) -> bool:
        return self._value is not None

    def get(self) -> T:
        value = self._value
        if value is not None:
            return value
        with self._lock:
            if self._value is None:
                t0 = time.perf_counter()
                try:
                    self._value = self._build()
                except MMAgentError:
                    raise
                except Exception as exc:  # surface any loader failure as the project's own error
                    raise ModelLoadError(f"cannot load the {self.name} model: {type(exc).__name__}: {exc}") from exc
                self.load_seconds = time.perf_counter() - t0
            return self._value


# One Lazy per distinct model setting, for the whole process: two Perception objects with the
# same settings (the server's and a CLI tool's, say) share the loaded weights.
_SHARED: dict[tuple[Any, ...], Lazy[Any]] = {}
_SHARED_LOCK = threading.Lock()


def shared_lazy(name: str, key: tuple[Any, ...], build: Callable[[], T]) -> Lazy[T]:
    """The process-wide Lazy for ``key`` (created with ``build`` on first request)."""
    with _SHARED_LOCK:
        lazy = _SHARED.get(key)
        if lazy is None:
            lazy = _SHARED[key] = Lazy(name, build)
        return lazy
