"""Face detection (dlib HOG by default, CNN/MMOD as an option) and 68-point landmarks.

Images are ``(H, W, 3)`` ``uint8`` RGB arrays (see :func:`faceclip.io.images.load_image`);
``(H, W)`` grayscale, RGBA, ``uint16`` and float arrays are accepted too. All results are
in original-image pixels (x right, y down, origin at the top-left corner, pixel centres at
``+0.5``).

Speed: large images are detected on a copy downscaled so that its longer side is at most
``max_side_px``; boxes are mapped back and landmarks are predicted on the full-resolution
image. ``upsample=None`` (auto) runs the detector at the image's own scale and, when that
finds no confident face (none scoring at least ``AUTO_CONFIDENT_SCORE``) on a modest-size
image, once more at 2x, whose results replace the first (the 2x pyramid covers the same
scales and finer ones). That keeps photos with a clear face fast while still finding small
faces; a group photo that holds one large face and many small ones needs ``upsample=1``
(HOG finds faces down to about 80 px at ``upsample=0``, 40 px at 1, 20 px at 2).

Example::

    from faceclip.io.images import load_image
    from faceclip.detect import detect_faces

    faces = detect_faces(load_image("group.jpg"), upsample=1)
    for f in faces:                     # largest first
        print(f.box, f.score, f.landmarks.shape)   # (4,), float, (68, 2)
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import cv2
import numpy as np

from faceclip.detect import models
from faceclip.detect.types import Face
from faceclip.errors import InputError
from faceclip.io.images import as_rgb_uint8

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_SIDE_PX", "DetectorName", "check_image_size", "detect_boxes", "detect_faces",
           "predict_landmarks"]

DetectorName = Literal["hog", "cnn"]

#: Longer side (pixels) of the copy that detection runs on; larger images are downscaled.
DEFAULT_MAX_SIDE_PX = 1600
#: Auto upsampling retries at 2x only when the detection image has at most this many pixels.
AUTO_UPSAMPLE_MAX_PIXELS = 1_300_000
#: Auto upsampling keeps the first pass when one of its faces scores at least this.
AUTO_CONFIDENT_SCORE = 0.5
_MAX_UPSAMPLE = 4
#: Images with a shorter side below this cannot hold a detectable face (dlib's smallest
#: detection window is 80 px at 1x, 40 px upsampled once); they are refused up front.
MIN_IMAGE_SIDE_PX = 32


def check_image_size(rgb: np.ndarray) -> None:
    """Refuse images with a side under :data:`MIN_IMAGE_SIDE_PX` (InputError), for every detector."""
    if min(rgb.shape[:2]) < MIN_IMAGE_SIDE_PX:
        raise InputError(f"the image is {rgb.shape[1]}x{rgb.shape[0]} pixels, too small to hold a face "
                         f"(at least {MIN_IMAGE_SIDE_PX} px on each side)")


def detect_faces(
    image: np.ndarray,
    *,
    detector: DetectorName = "hog",
    upsample: int | None = None,
    threshold: float = 0.0,
    max_side_px: int | None = DEFAULT_MAX_SIDE_PX,
    landmarks: bool = True,
    landmark_max_face_px: float | None = None,
) -> list[Face]:
    """Find all faces in an image, with 68-point landmarks, largest first.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (other layouts: see :func:`as_rgb_uint8`).
        detector: ``"hog"`` (fast, frontal and near-frontal faces) or ``"cnn"`` (dlib's
            MMOD CNN: more poses, much slower on CPU).
        upsample: times to double the image before detecting (finds smaller faces, costs
            ~4x per step); ``None``: automatic (see the module docstring).
        threshold: minimum detector score (HOG: SVM margin, may be negative to get more
            candidates; CNN: MMOD confidence).
        max_side_px: detect on a copy downscaled to this longer side (``None``: never).
        landmarks: also predict the 68 landmarks of each face.
        landmark_max_face_px: predict the landmarks of larger faces on a copy of the face's
            surroundings downscaled to this box size (see :func:`predict_landmarks`).

    Returns:
        Faces sorted by box area, largest first; empty when there is none.
    """
    rgb = as_rgb_uint8(image)
    faces = detect_boxes(rgb, detector=detector, upsample=upsample, threshold=threshold, max_side_px=max_side_px)
    if landmarks:
        for face in faces:
            face.landmarks = predict_landmarks(rgb, face.box, max_face_px=landmark_max_face_px)
    return faces


def detect_boxes(
    image: np.ndarray,
    *,
    detector: DetectorName = "hog",
    upsample: int | None = None,
    threshold: float = 0.0,
    max_side_px: int | None = DEFAULT_MAX_SIDE_PX,
) -> list[Face]:
    """Face boxes and scores only (``Face.landmarks`` is ``None``), largest first.

    Arguments as in :func:`detect_faces`.
    """
    if detector not in ("hog", "cnn"):
        raise InputError(f"unknown face detector {detector!r}", hint="use 'hog' or 'cnn'")
    if upsample is not None and not 0 <= upsample <= _MAX_UPSAMPLE:
        raise InputError(f"upsample must be between 0 and {_MAX_UPSAMPLE}, got {upsample}")
    rgb = as_rgb_uint8(image)
    check_image_size(rgb)
    small, sx, sy = _downscale(rgb, max_side_px)
    steps = [upsample] if upsample is not None else _auto_steps(small)
    faces: list[Face] = []
    for up in steps:
        found = _run_detector(small, detector, up, threshold)
        log.debug(
            "%s detector, upsample %d on %dx%d: %d faces", detector, up, small.shape[1], small.shape[0], len(found)
        )
        faces = found or faces
        if any(f.score >= AUTO_CONFIDENT_SCORE for f in faces):
            break
    for face in faces:
        face.box = face.box / np.array([sx, sy, sx, sy])
    faces.sort(key=lambda f: (-f.area, -f.score))
    return faces


def predict_landmarks(image: np.ndarray, box: np.ndarray | list[float],
                      max_face_px: float | None = None) -> np.ndarray:
    """Predict dlib's 68 landmarks inside a face box.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        box: ``(4,)`` ``[x0, y0, x1, y1]`` image pixels (edges), typically from
            :func:`detect_boxes`.
        max_face_px: when the box's longer side exceeds this, predict on the box's
            surroundings (the box plus half its size on each side) downscaled (area filter)
            so that the box is this size, and map the points back. dlib's predictor samples
            single pixels, so this makes its result independent of the photo's resolution
            for large faces (an upscaled photo gives the same landmarks), and bounds the work.

    Returns:
        ``(68, 2)`` float64 ``(x, y)`` image pixels, pixel centres at ``+0.5``.
    """
    rgb = as_rgb_uint8(image)
    box = np.asarray(box, dtype=np.float64)
    size = float(max(box[2] - box[0], box[3] - box[1]))
    if max_face_px is not None and size > max_face_px:
        h, w = rgb.shape[:2]
        pad = 0.5 * size
        rx0, ry0 = int(max(0, np.floor(box[0] - pad))), int(max(0, np.floor(box[1] - pad)))
        rx1, ry1 = int(min(w, np.ceil(box[2] + pad))), int(min(h, np.ceil(box[3] + pad)))
        s = max_face_px / size
        nw, nh = max(1, round((rx1 - rx0) * s)), max(1, round((ry1 - ry0) * s))
        small = cv2.resize(rgb[ry0:ry1, rx0:rx1], (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = nw / (rx1 - rx0), nh / (ry1 - ry0)
        small_box = (box - np.array([rx0, ry0, rx0, ry0])) * np.array([sx, sy, sx, sy])
        pts = predict_landmarks(small, small_box)
        return pts / np.array([sx, sy]) + np.array([rx0, ry0])
    dlib = models.import_dlib()
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    rect = dlib.rectangle(x0, y0, max(x0, x1 - 1), max(y0, y1 - 1))
    shape = models.shape_predictor_68()(rgb, rect)
    pts = np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], dtype=np.float64)
    return pts + 0.5


# --------------------------------------------------------------------------- helpers


def _auto_steps(small: np.ndarray) -> list[int]:
    if small.shape[0] * small.shape[1] <= AUTO_UPSAMPLE_MAX_PIXELS:
        return [0, 1]
    return [0]


def _downscale(rgb: np.ndarray, max_side_px: int | None) -> tuple[np.ndarray, float, float]:
    """Downscale so the longer side is at most ``max_side_px``; returns (image, sx, sy).

    ``sx, sy`` are the exact per-axis factors (new size / old size), so continuous pixel
    coordinates map back as ``x / sx``, ``y / sy`` (OpenCV's resize keeps pixel-centre
    alignment, which makes this exact).
    """
    h, w = rgb.shape[:2]
    if max_side_px is None or max(h, w) <= max_side_px:
        return rgb, 1.0, 1.0
    s = max_side_px / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    return small, nw / w, nh / h


def _run_detector(rgb: np.ndarray, detector: DetectorName, upsample: int, threshold: float) -> list[Face]:
    if detector == "hog":
        rects, scores, _ = models.hog_detector().run(rgb, upsample, threshold)
        return [_face_from_rect(r, s, "hog", upsample) for r, s in zip(rects, scores, strict=False)]
    dets = models.cnn_detector()(rgb, upsample)
    return [_face_from_rect(d.rect, d.confidence, "cnn", upsample) for d in dets if float(d.confidence) >= threshold]


def _face_from_rect(rect: Any, score: float, detector: str, upsample: int) -> Face:
    """dlib rectangle (inclusive integer pixel indices) -> pixel-edge box [x0, y0, x1, y1]."""
    box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64)
    return Face(box=box, score=float(score), detector=detector, extra={"upsample": upsample})
