"""Decoding and validation of camera frames: bytes, PIL images and numpy arrays → RGB arrays.

Sizes are checked from the header before any pixel is decoded (PIL's ``Image.open`` reads only
the header), so a 20000×20000 image is refused without allocating its 1.2 GB of pixels.
Truncated files raise :class:`InvalidImageError`, from PIL (its default
``ImageFile.LOAD_TRUNCATED_IMAGES = False``, which this module never changes) and from a check
of the JPEG/PNG end marker that holds even if other code changed that flag. PIL's own decompression-bomb
guard (``Image.MAX_IMAGE_PIXELS``) is left at its default, so it still protects other code in the
process; it refuses at open above ~179 Mpx, which caps ``Limits.max_image_pixels`` in effect.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .config import Limits, PerceptionConfig
from .errors import ImageTooLargeError, InvalidImageError

# Formats a camera or browser sends. Anything else (e.g. a 1-bit TIFF fax) is refused.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


@dataclass(frozen=True)
class DecodedImage:
    """An RGB frame ready for the vision encoder.

    ``rgb``: np.ndarray (h, w, 3) uint8 — possibly decoded at a reduced scale (JPEG draft mode)
    when the original is much larger than what the models need; ``width``/``height`` are always
    the original size, and ``scale`` = w / width maps coordinates back.
    """

    rgb: np.ndarray
    width: int
    height: int

    @property
    def scale(self) -> float:
        return self.rgb.shape[1] / self.width


def _missing_end_marker(data: bytes, fmt: str | None) -> bool:
    """True when a JPEG lacks its EOI marker or a PNG its IEND chunk near the end of the data."""
    tail = data[-4096:]
    if fmt == "JPEG":
        return b"\xff\xd9" not in tail
    if fmt == "PNG":
        return b"IEND" not in tail
    return False


def check_size(width: int, height: int, limits: Limits, index: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"image #{index} has an empty size {width}x{height}")
    if width * height > limits.max_image_pixels:
        raise ImageTooLargeError(
            f"image #{index} is {width}x{height} = {width * height:,} pixels, over the limit "
            f"max_image_pixels={limits.max_image_pixels:,}")
    if max(width, height) > limits.max_image_side:
        raise ImageTooLargeError(f"image #{index} is {width}x{height}, its longest side is over the limit "
                                 f"max_image_side={limits.max_image_side}")


def _from_bytes(data: bytes, config: PerceptionConfig, index: int, min_side: int) -> DecodedImage:
    limits = config.limits
    if len(data) == 0:
        raise InvalidImageError(f"image #{index} is empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise ImageTooLargeError(f"image #{index} is {len(data):,} bytes, over the limit "
                                 f"max_image_bytes={limits.max_image_bytes:,}")
    try:
        with warnings.catch_warnings():
            # Our own limit (checked next) decides; PIL's warning tier would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # header only
    except Image.DecompressionBombError as exc:
        # PIL refuses at open past 2 × Image.MAX_IMAGE_PIXELS (~179 Mpx), before we see the size.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ImageTooLargeError(f"image #{index} is {size}, over the limit max_image_pixels="
                                 f"{limits.max_image_pixels:,}") from exc
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        # PIL's text names the BytesIO object (a heap address): the message is ours alone.
        raise InvalidImageError(f"image #{index} cannot be read as an image (not a JPEG, PNG, WebP or BMP "
                                f"file, or its header is damaged)") from exc
    if im.format not in ACCEPTED_FORMATS:
        raise InvalidImageError(f"image #{index} is {im.format}, expected one of {', '.join(ACCEPTED_FORMATS)}")
    width, height = im.size
    check_size(width, height, limits, index)
    if _missing_end_marker(data, im.format):
        # Checked here as well as by PIL: other code in the process may have set PIL's
        # ImageFile.LOAD_TRUNCATED_IMAGES, which makes PIL fill a cut-off image with grey.
        raise InvalidImageError(f"image #{index} ({im.format}, {width}x{height}) is truncated: "
                                f"no end-of-image marker")
    decoded_w, decoded_h = decoded_size(im, min_side)
    if decoded_w * decoded_h > limits.max_decoded_pixels:
        raise ImageTooLargeError(
            f"image #{index} ({im.format}, {width}x{height}) would decode to {decoded_w * decoded_h:,} pixels, "
            f"over the limit max_decoded_pixels={limits.max_decoded_pixels:,}")
    try:
        im.load()
    except Exception as exc:  # truncated or corrupt pixel data
        raise InvalidImageError(f"image #{index} ({im.format}, {width}x{height}) is corrupt or truncated "
                                f"({_reason(exc)})") from exc
    return _from_pil(im, config, index, original=(width, height), checked=True)


def decoded_size(im: Image.Image, min_side: int) -> tuple[int, int]:
    """The size ``im`` (opened, not loaded) will decode to. A JPEG is set to draft mode first:
    libjpeg then decodes at 1/2, 1/4 or 1/8 scale when the frame is far larger than needed."""
    if im.format == "JPEG":
        im.draft("RGB", (min_side, min_side))
    return im.size


def probe_decoded_pixels(data: bytes, min_side: int = 640) -> tuple[str | None, int, int, int]:
    """(format, width, height, pixels a decode would produce) from the header alone; raises
    :class:`InvalidImageError` when there is no readable header. For early checks (the server
    refuses an over-budget frame before it queues it for decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            w, h = decoded_size(im, min_side)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError("the image has too many pixels") from exc
    except Exception as exc:
        raise InvalidImageError("the image cannot be read (not a JPEG, PNG, WebP or BMP file, or its header "
                                "is damaged)") from exc
    return im.format, width, height, w * h


def _reason(exc: BaseException) -> str:
    """An exception's text without object reprs or paths (PIL's are short and plain otherwise)."""
    text = re.sub(r"<[^<>]*\bat 0x[0-9a-fA-F]+>", "the data", str(exc))
    return re.sub(r"(?:/[\w.+\-]+){2,}", "…", text)[:200] or type(exc).__name__


def _from_pil(im: Image.Image, config: PerceptionConfig, index: int,
              original: tuple[int, int] | None = None, checked: bool = False) -> DecodedImage:
    if not checked:
        check_size(im.width, im.height, config.limits, index)
    width, height = original or im.size
    try:
        # Phone photos store rotation in EXIF; apply it so faces and labels see the upright frame.
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # orientations that swap the axes
            width, height = height, width
        im = ImageOps.exif_transpose(im) or im
        if im.mode != "RGB":
            # Transparent pixels become white, not black: a logo on a transparent PNG stays visible.
            if im.mode in ("RGBA", "LA", "P", "PA"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("RGB")
        rgb = np.asarray(im, dtype=np.uint8)
    except Exception as exc:
        raise InvalidImageError(f"image #{index} cannot be converted to RGB ({_reason(exc)})") from exc
    return DecodedImage(rgb=rgb, width=width, height=height)


def _from_array(arr: np.ndarray, config: PerceptionConfig, index: int) -> DecodedImage:
    if arr.ndim != 3 or arr.shape[2] != 3:
        channels = arr.shape[2] if arr.ndim == 3 else 1 if arr.ndim == 2 else None
        raise InvalidImageError(
            f"image #{index} array has shape {arr.shape} ({channels} channels); expected (H, W, 3) "
            f"{config.numpy_channel_order} uint8")
    if arr.dtype != np.uint8:
        raise InvalidImageError(f"image #{index} array has dtype {arr.dtype}; expected uint8 (0..255) "
                                f"{config.numpy_channel_order}")
    height, width = arr.shape[:2]
    check_size(width, height, config.limits, index)  # before copying: arr may be a huge view
    rgb = arr[:, :, ::-1] if config.numpy_channel_order == "BGR" else arr
    return DecodedImage(rgb=np.ascontiguousarray(rgb), width=width, height=height)


def load_image(image: Any, config: PerceptionConfig, index: int = 0, min_side: int = 640) -> DecodedImage:
    """Decode and validate one frame. ``min_side``: smallest size a reduced JPEG decode may have."""
    if isinstance(image, bytes | bytearray | memoryview):
        return _from_bytes(bytes(image), config, index, min_side)
    if isinstance(image, Image.Image):
        return _from_pil(image, config, index)
    if isinstance(image, np.ndarray):
        return _from_array(image, config, index)
    raise InvalidImageError(f"image #{index} is a {type(image).__name__}; expected JPEG/PNG bytes, a PIL image, "
                            f"or a numpy (H, W, 3) uint8 array")


def load_images(images: Any, config: PerceptionConfig) -> list[DecodedImage]:
    """Decode and validate a batch of frames; the first bad one raises (naming its index)."""
    if not isinstance(images, list | tuple):
        raise InvalidImageError(f"encode_frames takes a list of images, got {type(images).__name__}")
    if len(images) > config.limits.max_frames_per_call:
        raise InvalidImageError(f"too many frames in one call: {len(images)} > limit max_frames_per_call="
                                f"{config.limits.max_frames_per_call}")
    min_side = max(config.face_max_side, 256)
    return [load_image(im, config, i, min_side) for i, im in enumerate(images)]
