"""Face presence, count and boxes with OpenCV's frontal-face Haar cascade (opencv 4.x ships it).

Detection runs on a grey copy downscaled to ``config.face_max_side``: a kiosk camera frame has
faces of at least a few percent of its height, and the cascade's cost grows with pixel count.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from .config import PerceptionConfig
from .errors import ModelLoadError
from .images import DecodedImage
from .types import Faces

CASCADE_FILE = "haarcascade_frontalface_default.xml"


class FaceDetector:
    """Thread-safe wrapper: ``CascadeClassifier`` objects are not documented as re-entrant."""

    def __init__(self, config: PerceptionConfig) -> None:
        path = cv2.data.haarcascades + CASCADE_FILE  # type: ignore[attr-defined]
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise ModelLoadError(f"OpenCV Haar cascade not found or unreadable: {path}")
        self.config = config
        self._lock = threading.Lock()

    def detect(self, image: DecodedImage) -> Faces:
        """Faces in one frame; boxes (x, y, w, h) in pixels of the original image, largest first."""
        rgb = image.rgb
        h, w = rgb.shape[:2]
        shrink = min(1.0, self.config.face_max_side / max(h, w))
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if shrink < 1.0:
            grey = cv2.resize(grey, (max(1, round(w * shrink)), max(1, round(h * shrink))),
                              interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)  # evens out backlit kiosk frames
        min_side = max(20, round(self.config.face_min_size_frac * min(grey.shape[:2])))
        with self._lock:
            found = self.cascade.detectMultiScale(
                grey, scaleFactor=self.config.face_scale_factor, minNeighbors=self.config.face_min_neighbors,
                minSize=(min_side, min_side))
        # Back to original pixels: undo the detection shrink and any reduced-scale JPEG decode.
        to_orig = 1.0 / (shrink * image.scale)
        boxes = [
            (round(x * to_orig), round(y * to_orig), round(bw * to_orig), round(bh * to_orig))
            for (x, y, bw, bh) in (np.asarray(found).reshape(-1, 4).tolist())
        ]
        boxes.sort(key=lambda b: b[2] * b[3], reverse=True)
        if not boxes:
            return Faces(count=0)
        x, y, bw, bh = boxes[0]
        center = ((x + bw / 2) / image.width, (y + bh / 2) / image.height)
        rel = min(1.0, (bw * bh) / float(image.width * image.height))
        return Faces(count=len(boxes), boxes=boxes, largest_center=center, largest_rel_size=rel)
