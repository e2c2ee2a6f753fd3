"""Drawing detections on an image, for looking at results."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from faceclip.detect.types import LANDMARK_GROUPS_68, Face
from faceclip.io.images import as_rgb_uint8

__all__ = ["draw_faces"]

_SHIFT = 4
_CLOSED = {"right_eye", "left_eye", "outer_lip", "inner_lip"}
_BOX_RGB = (0, 255, 0)
_LINE_RGB = (255, 200, 0)
_POINT_RGB = (255, 0, 0)


def draw_faces(image: np.ndarray, faces: Sequence[Face], *, label: bool = True) -> np.ndarray:
    """Return a copy of ``image`` with boxes, scores and 68-point landmarks drawn on it.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        faces: detections in this image's pixels.
        label: write each face's index and score above its box.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    out = as_rgb_uint8(image).copy()
    for i, face in enumerate(faces):
        size = max(face.size_px, 1.0)
        thick = max(1, int(round(size / 120)))
        cv2.rectangle(out, _pt(face.box[:2] + 0.5), _pt(face.box[2:] - 0.5), _BOX_RGB, thick, cv2.LINE_AA, _SHIFT)
        if face.landmarks is not None:
            _draw_landmarks(out, face.landmarks, size, thick)
        if label:
            scale = max(0.35, min(1.5, size / 160))
            org = (int(face.box[0]), max(int(face.box[1]) - 4, 10))
            cv2.putText(
                out, f"{i}: {face.score:.2f}", org, cv2.FONT_HERSHEY_SIMPLEX, scale, _BOX_RGB, thick, cv2.LINE_AA
            )
    return out


def _draw_landmarks(out: np.ndarray, lm: np.ndarray, size: float, thick: int) -> None:
    for name, (a, b) in LANDMARK_GROUPS_68.items():
        poly = _pts(lm[a:b])
        cv2.polylines(out, [poly], name in _CLOSED, _LINE_RGB, max(1, thick // 2), cv2.LINE_AA, _SHIFT)
    radius = max(1.0, size / 80)
    for p in lm:
        cv2.circle(out, _pt(p), int(round(radius * (1 << _SHIFT))), _POINT_RGB, -1, cv2.LINE_AA, _SHIFT)


def _pts(points: np.ndarray) -> np.ndarray:
    """Continuous coordinates (pixel centres at +0.5) -> OpenCV fixed-point indices."""
    return np.round((np.asarray(points, np.float64) - 0.5) * (1 << _SHIFT)).astype(np.int32)


def _pt(p: np.ndarray) -> tuple[int, int]:
    q = _pts(np.asarray(p).reshape(1, 2))[0]
    return int(q[0]), int(q[1])
