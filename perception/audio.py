"""Audio input: validation, conversion to mono float32, resampling to 16 kHz, and file decoding.

Accepted in memory: PCM16 little-endian bytes, or a 1-D numpy array / torch tensor of float
samples in [-1, 1] or int16 samples. A (n, 1) or (1, n) array is mono and accepted; any other
channel count is refused (downmixing silently would hide a caller's layout mistake, e.g. an
interleaved stereo buffer passed as mono).
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np

from .config import SAMPLE_RATE, Limits
from .errors import AudioTooLongError, InvalidAudioError

MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
# Float samples may overshoot [-1, 1] a little after processing; far beyond means int values
# were passed as floats (e.g. int16 samples cast to float32 without dividing by 32768).
MAX_FLOAT_PEAK = 4.0


def _as_array(audio: Any) -> np.ndarray:
    if isinstance(audio, bytes | bytearray | memoryview):
        raw = bytes(audio)
        if len(raw) % 2:
            raise InvalidAudioError(f"PCM16 audio must have an even number of bytes, got {len(raw)}")
        return np.frombuffer(raw, dtype="<i2")
    if isinstance(audio, np.ndarray):
        return audio
    try:
        import torch

        if isinstance(audio, torch.Tensor):
            return audio.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    raise InvalidAudioError(f"audio is a {type(audio).__name__}; expected PCM16 bytes or a 1-D numpy array "
                            f"(float in [-1, 1] or int16)")


def prepare_audio(audio: Any, sample_rate: int, limits: Limits) -> np.ndarray:
    """Validate caller audio and return mono float32 samples at 16 kHz, shape (n,)."""
    if isinstance(audio, bytes | bytearray | memoryview) and len(audio) > limits.max_audio_bytes:
        raise AudioTooLongError(f"audio is {len(audio):,} bytes, over the limit max_audio_bytes="
                                f"{limits.max_audio_bytes:,}")
    if not isinstance(sample_rate, int | np.integer) or isinstance(sample_rate, bool) \
            or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise InvalidAudioError(f"sample_rate must be an integer in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz, "
                                f"got {sample_rate!r}")
    arr = _as_array(audio)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        channels = min(arr.shape) if arr.ndim == 2 else None
        raise InvalidAudioError(f"audio must be mono (1 channel, shape (n,)); got shape {arr.shape}"
                                + (f" = {channels} channels; downmix to mono first" if channels else ""))
    if arr.dtype not in (np.int16, np.float32, np.float64, np.float16):
        raise InvalidAudioError(f"audio dtype {arr.dtype} is not supported; expected float32/float64 in [-1, 1] "
                                f"or int16")
    if arr.size == 0:
        raise InvalidAudioError("audio is empty (0 samples)")
    duration = arr.size / float(sample_rate)
    if duration > limits.max_audio_seconds:  # before any copy: the input may be huge
        raise AudioTooLongError(f"audio is {duration:.1f} s long, over the limit max_audio_seconds="
                                f"{limits.max_audio_seconds:g}")
    if arr.dtype == np.int16:
        samples = arr.astype(np.float32) / 32768.0
    else:
        samples = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(samples)):
        raise InvalidAudioError("audio contains NaN or infinite samples")
    peak = float(np.max(np.abs(samples)))
    if peak > MAX_FLOAT_PEAK:
        raise InvalidAudioError(f"float audio must be in [-1, 1]; peak is {peak:g} (int16 values passed as "
                                f"float? divide by 32768 or pass dtype int16)")
    if sample_rate != SAMPLE_RATE:
        import soxr

        samples = soxr.resample(samples, int(sample_rate), SAMPLE_RATE, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(samples)


def read_audio_file(path: str | Path, limits: Limits) -> tuple[np.ndarray, int]:
    """Read a file as (mono float32 samples, sample_rate).

    Mono 16-bit WAV is read with the standard library; anything else (other WAVs, MP3, FLAC,
    OGG, ...) is decoded by ffmpeg to 16 kHz, downmixed to mono: a file's header says its layout,
    so unlike a bare in-memory buffer, downmixing it cannot misread the samples.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidAudioError(f"audio file not found: {path}")
    if path.stat().st_size > limits.max_audio_bytes:
        raise AudioTooLongError(f"audio file {path} is {path.stat().st_size:,} bytes, over the limit "
                                f"max_audio_bytes={limits.max_audio_bytes:,}")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if channels == 1 and width == 2:  # the common case, without a subprocess
                if rate and n / rate > limits.max_audio_seconds:
                    raise AudioTooLongError(f"{path} is {n / rate:.1f} s long, over the limit "
                                            f"max_audio_seconds={limits.max_audio_seconds:g}")
                data = w.readframes(n)
                return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, rate
    except (wave.Error, EOFError):
        pass  # not a PCM WAV: let ffmpeg decode it
    if shutil.which("ffmpeg") is None:
        raise InvalidAudioError(f"{path} is not a PCM WAV and ffmpeg is not installed to decode it")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-t", str(limits.max_audio_seconds + 1),
           "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise InvalidAudioError(f"ffmpeg cannot decode {path}: {proc.stderr.decode(errors='replace').strip()[:300]}")
    return np.frombuffer(proc.stdout, dtype="<i2").astype(np.float32) / 32768.0, SAMPLE_RATE
