"""Every bad input raises the project's own error, naming the problem and the limit."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import data

from perception import (
    AudioTooLongError,
    ConfigError,
    ImageTooLargeError,
    InputError,
    InvalidAudioError,
    InvalidImageError,
    InvalidTextError,
    Limits,
    Perception,
    PerceptionConfig,
    TextTooLongError,
)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header declaring width×height RGB, followed by a few bytes of pixel data only."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


# ---- text ---------------------------------------------------------------------------------------

def test_empty_text(perception: Perception) -> None:
    """An empty or whitespace-only text is refused, naming which one."""
    with pytest.raises(InvalidTextError, match="text #1 is empty"):
        perception.encode_text(["fine", "   "])
    with pytest.raises(InvalidTextError, match="empty"):
        perception.encode_text([""])


def test_text_over_limit(perception: Perception) -> None:
    """100 kB of text is refused with the character limit in the message, not silently truncated."""
    with pytest.raises(TextTooLongError, match=r"100000 characters.*max_text_chars=10000") as err:
        perception.encode_text(["x" * 100_000])
    assert err.value.code == "text_too_long"


def test_text_wrong_type(perception: Perception) -> None:
    """A bare string (not a list) and non-string items are refused."""
    with pytest.raises(InvalidTextError, match="single str"):
        perception.encode_text("hello")  # type: ignore[arg-type]
    with pytest.raises(InvalidTextError, match="text #0 is bytes"):
        perception.encode_text([b"hello"])  # type: ignore[list-item]


# ---- audio --------------------------------------------------------------------------------------

@pytest.mark.parametrize("audio", [np.zeros(0, np.float32), b""], ids=["array", "bytes"])
def test_empty_audio(perception: Perception, audio: object) -> None:
    """Empty audio is refused before any model runs."""
    with pytest.raises(InvalidAudioError, match="empty") as err:
        perception.encode_speech(audio, 16000)
    assert err.value.code == "invalid_audio"


def test_ten_minute_audio(perception: Perception) -> None:
    """Ten minutes of audio is over the duration limit, named in the message."""
    ten_minutes = np.zeros(600 * 16000, dtype=np.float32)
    with pytest.raises(AudioTooLongError, match=r"600\.0 s long.*max_audio_seconds=120") as err:
        perception.encode_speech(ten_minutes, 16000)
    assert err.value.code == "audio_too_long"
    pcm = np.zeros(600 * 8000, dtype=np.int16).tobytes()  # 10 min at 8 kHz, as bytes
    with pytest.raises(AudioTooLongError, match="max_audio_seconds"):
        perception.encode_speech(pcm, 8000)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.complex64])
def test_audio_wrong_dtype(perception: Perception, dtype: type) -> None:
    """Only float and int16 samples are accepted; the message names the dtype."""
    with pytest.raises(InvalidAudioError, match=f"dtype {np.dtype(dtype).name} is not supported"):
        perception.encode_speech(np.zeros(16000, dtype=dtype), 16000)


def test_audio_stereo(perception: Perception) -> None:
    """A stereo (n, 2) array is refused, naming the channel count."""
    with pytest.raises(InvalidAudioError, match="2 channels"):
        perception.encode_speech(np.zeros((16000, 2), dtype=np.float32), 16000)
    with pytest.raises(InvalidAudioError, match="6 channels"):
        perception.encode_speech(np.zeros((6, 16000), dtype=np.int16), 16000)


def test_audio_int_values_as_float(perception: Perception) -> None:
    """int16-scaled values in a float array are caught instead of clipping into noise."""
    with pytest.raises(InvalidAudioError, match=r"\[-1, 1\].*peak"):
        perception.encode_speech(np.full(16000, 12000.0, dtype=np.float32), 16000)


def test_audio_other_problems(perception: Perception) -> None:
    """Odd-length PCM16, NaN samples, a bad sample rate and a wrong type are refused."""
    with pytest.raises(InvalidAudioError, match="even number of bytes"):
        perception.encode_speech(b"\x00\x00\x00", 16000)
    with pytest.raises(InvalidAudioError, match="NaN"):
        perception.encode_speech(np.full(1600, np.nan, dtype=np.float32), 16000)
    with pytest.raises(InvalidAudioError, match="sample_rate"):
        perception.encode_speech(np.zeros(1600, dtype=np.float32), 0)
    with pytest.raises(InvalidAudioError, match="list"):
        perception.encode_speech([0.0] * 100, 16000)


def test_audio_bytes_limit() -> None:
    """Raw bytes over max_audio_bytes are refused before decoding."""
    p = Perception(PerceptionConfig(limits=Limits(max_audio_bytes=1000)))
    with pytest.raises(AudioTooLongError, match="max_audio_bytes=1,000"):
        p.encode_speech(b"\x00" * 2000, 16000)


# ---- images -------------------------------------------------------------------------------------

def test_corrupt_image(perception: Perception) -> None:
    """Bytes that are no image raise InvalidImageError naming the frame."""
    with pytest.raises(InvalidImageError, match="image #0 cannot be read") as err:
        perception.encode_frames([b"this is not a jpeg" * 10])
    assert err.value.code == "invalid_image"


def test_truncated_jpeg(perception: Perception) -> None:
    """A JPEG cut in half raises InvalidImageError (PIL's LOAD_TRUNCATED_IMAGES stays off)."""
    full = _jpeg(data.chelsea())
    with pytest.raises(InvalidImageError, match=r"image #1 .*truncated"):
        perception.encode_frames([full, full[: len(full) // 2]])


def test_truncated_image_even_if_pil_allows_it(perception: Perception, monkeypatch: pytest.MonkeyPatch) -> None:
    """Truncated JPEG and PNG are refused even when other code enabled LOAD_TRUNCATED_IMAGES."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    png = io.BytesIO()
    Image.fromarray(data.coffee()).save(png, "PNG")
    for blob in (_jpeg(data.chelsea()), png.getvalue()):
        with pytest.raises(InvalidImageError, match="truncated"):
            perception.encode_frames([blob[: len(blob) * 2 // 3]])


def test_huge_image_rejected_from_header(perception: Perception) -> None:
    """A 20000×20000 image is refused from its header, with the pixel limit in the message."""
    with pytest.raises(ImageTooLargeError, match=r"400,000,000 pixels, over the limit max_image_pixels=40,000,000") as err:
        perception.encode_frames([_png_header_only(20000, 20000)])
    assert err.value.code == "image_too_large"


def test_huge_array_rejected_before_copy(perception: Perception) -> None:
    """A 20000×20000 numpy frame (a zero-stride view: no memory) is refused before any copy."""
    view = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 20000, 3))
    with pytest.raises(ImageTooLargeError, match="max_image_pixels"):
        perception.encode_frames([view])


def test_huge_pil_image(perception: Perception) -> None:
    """A PIL image over the pixel limit is refused (a 1-bit image keeps this test cheap)."""
    with pytest.raises(ImageTooLargeError, match=r"8000x6000 = 48,000,000 pixels.*max_image_pixels"):
        perception.encode_frames([Image.new("1", (8000, 6000))])


def test_large_png_header_under_pil_guard(perception: Perception) -> None:
    """An image between our limit and PIL's own guard is refused by ours, with its dimensions."""
    with pytest.raises(ImageTooLargeError, match=r"9000x9000 = 81,000,000 pixels.*max_image_pixels=40,000,000"):
        perception.encode_frames([_png_header_only(9000, 9000)])


def test_image_bytes_limit() -> None:
    """Encoded bytes over max_image_bytes are refused before decoding."""
    p = Perception(PerceptionConfig(limits=Limits(max_image_bytes=1000)))
    with pytest.raises(ImageTooLargeError, match="max_image_bytes=1,000"):
        p.encode_frames([_jpeg(data.coffee())])


@pytest.mark.parametrize("shape,channels", [((64, 64, 4), "4 channels"), ((64, 64), "1 channels"),
                                            ((64, 64, 3, 1), "None channels")])
def test_image_wrong_channels(perception: Perception, shape: tuple[int, ...], channels: str) -> None:
    """Arrays that are not (H, W, 3) are refused, naming the shape."""
    with pytest.raises(InvalidImageError, match=channels):
        perception.encode_frames([np.zeros(shape, np.uint8)])


def test_image_wrong_dtype(perception: Perception) -> None:
    """A float image array is refused (it would otherwise be read as 0..255)."""
    with pytest.raises(InvalidImageError, match="dtype float32; expected uint8"):
        perception.encode_frames([np.zeros((64, 64, 3), np.float32)])


def test_image_wrong_type(perception: Perception) -> None:
    """A path string is not an image; neither is a non-list batch."""
    with pytest.raises(InvalidImageError, match="is a str"):
        perception.encode_frames(["photo.jpg"])
    with pytest.raises(InvalidImageError, match="list of images"):
        perception.encode_frames(data.chelsea())  # type: ignore[arg-type]


def test_errors_are_input_errors(perception: Perception) -> None:
    """Callers can catch every bad-input case with one except clause."""
    for call in (lambda: perception.encode_text([""]),
                 lambda: perception.encode_speech(b"", 16000),
                 lambda: perception.encode_frames([b""])):
        with pytest.raises(InputError):
            call()


# ---- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"device": "tpu"}, "device"),
    ({"speech_backend": "kaldi"}, "speech_backend"),
    ({"vision_backend": "clip"}, "needs vision_model"),
    ({"top_k": 0}, "top_k"),
    ({"limits": Limits(max_text_chars=0)}, "limits.max_text_chars"),
    ({"text_max_tokens": 4096}, "text_max_tokens"),
])
def test_bad_config(kwargs: dict[str, object], message: str) -> None:
    """A bad configuration value raises ConfigError naming the field."""
    with pytest.raises(ConfigError, match=message):
        PerceptionConfig(**kwargs)  # type: ignore[arg-type]
