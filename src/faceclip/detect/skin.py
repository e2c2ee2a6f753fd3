"""Skin / face-region masks for an aligned crop, for photometric losses.

Two layers:

1. :func:`face_region_mask`: the landmark polygon (jawline, and the eyebrows raised onto
   the forehead), minus the eyes, the eyebrows and the open mouth.
2. :func:`skin_mask`: inside that region, the pixels whose chroma fits a Gaussian colour
   model in YCbCr space (Cr, Cb), fitted robustly (two passes, outliers trimmed) on the
   region's inner part. This drops hair, beards, glasses frames and occluders whose colour
   differs from the skin. Grayscale images carry no chroma: the mask is then the region.

All masks are ``(S, S)`` bool arrays aligned with the crop; landmarks are ``(68, 2)`` crop
pixels (pixel centres at ``+0.5``), e.g. :attr:`faceclip.detect.align.AlignedFace.landmarks`.

Example::

    aligned = align_face(rgb, face.landmarks)
    mask = skin_mask(aligned.crop, aligned.landmarks, valid=aligned.valid)   # (224, 224) bool
"""

from __future__ import annotations

import cv2
import numpy as np

from faceclip.errors import InputError
from faceclip.io.images import as_rgb_uint8

__all__ = ["face_region_mask", "skin_mask"]

_SHIFT = 4  # fractional bits for cv2 polygon drawing
_CHROMA_FLOOR_VAR = 4.0  # variance floor (Cr, Cb units^2): keeps the model sane on flat chroma


def face_region_mask(
    landmarks68: np.ndarray,
    size_px: int | tuple[int, int],
    *,
    forehead: float = 0.4,
    exclude_eyes: bool = True,
    exclude_brows: bool = True,
    exclude_mouth_interior: bool = True,
) -> np.ndarray:
    """Landmark-bounded face region.

    Args:
        landmarks68: ``(68, 2)`` points in the target image's pixels.
        size_px: output side ``S`` or ``(H, W)``.
        forehead: how far the eyebrow line is raised to cover the forehead, as a fraction
            of the eye-to-chin distance.
        exclude_eyes, exclude_brows, exclude_mouth_interior: carve those out.

    Returns:
        ``(H, W)`` bool mask.
    """
    lm = _check_landmarks(landmarks68)
    h, w = (size_px, size_px) if isinstance(size_px, int) else size_px
    eye_mid = lm[36:48].mean(0)
    chin = lm[8]
    up = eye_mid - chin
    brows = lm[17:27][::-1] + forehead * up
    outline = np.concatenate([lm[0:17], brows])
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [_to_cv(cv2.convexHull(outline.astype(np.float32)).reshape(-1, 2))], 1, cv2.LINE_8, _SHIFT)
    face_px = float(np.linalg.norm(up))
    if exclude_eyes:
        for sl in (slice(36, 42), slice(42, 48)):
            _carve(mask, lm[sl], closed=True, thickness=max(1, round(0.04 * face_px)))
    if exclude_brows:
        for sl in (slice(17, 22), slice(22, 27)):
            _carve(mask, lm[sl], closed=False, thickness=max(1, round(0.06 * face_px)))
    if exclude_mouth_interior:
        _carve(mask, lm[60:68], closed=True, thickness=1)
    return mask.astype(bool)


def skin_mask(
    crop: np.ndarray,
    landmarks68: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    max_mahalanobis: float = 3.0,
    forehead: float = 0.4,
) -> np.ndarray:
    """Skin pixels of a face crop.

    Args:
        crop: ``(S, S, 3)`` uint8 RGB (any ``(H, W, 3)`` image works).
        landmarks68: ``(68, 2)`` landmarks in the crop's pixels.
        valid: optional ``(H, W)`` bool, pixels that carry image content
            (:attr:`AlignedFace.valid`); others are never skin.
        max_mahalanobis: chroma distance (in standard deviations) still counted as skin.
        forehead: see :func:`face_region_mask`.

    Returns:
        ``(H, W)`` bool mask, a subset of the face region.
    """
    rgb = as_rgb_uint8(crop)
    h, w = rgb.shape[:2]
    region = face_region_mask(landmarks68, (h, w), forehead=forehead)
    if valid is not None:
        region &= np.asarray(valid, dtype=bool)
    chroma = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[:, :, 1:].astype(np.float64)  # (H, W, 2) Cr, Cb
    sample = _inner(region, landmarks68)
    if sample.sum() < 20:
        return region
    d2 = _mahalanobis_sq(chroma, chroma[sample])
    skin = region & (d2 <= max_mahalanobis**2)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    skin = cv2.morphologyEx(skin.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    skin = cv2.morphologyEx(skin, cv2.MORPH_CLOSE, kernel)
    return skin.astype(bool) & region


# --------------------------------------------------------------------------- helpers


def _check_landmarks(landmarks68: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
        raise InputError(f"expected finite (68, 2) landmarks, got shape {lm.shape}")
    return lm


def _to_cv(points: np.ndarray) -> np.ndarray:
    """Continuous coordinates (centres at +0.5) -> OpenCV fixed-point pixel indices."""
    return np.round((np.asarray(points, np.float64) - 0.5) * (1 << _SHIFT)).astype(np.int32)


def _carve(mask: np.ndarray, pts: np.ndarray, *, closed: bool, thickness: int) -> None:
    poly = _to_cv(pts)
    if closed:
        cv2.fillPoly(mask, [poly], 0, cv2.LINE_8, _SHIFT)
    cv2.polylines(mask, [poly], closed, 0, thickness, cv2.LINE_8, _SHIFT)


def _inner(region: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
    """The region's inner part (eroded by ~10% of the face size): the colour sample."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    face_px = float(np.linalg.norm(lm[36:48].mean(0) - lm[8]))
    k = max(3, int(round(0.1 * face_px)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    return cv2.erode(region.astype(np.uint8), kernel).astype(bool)


def _mahalanobis_sq(chroma: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of ``(H, W, 2)`` chroma to a robust fit of ``(N, 2)`` samples."""
    keep = sample
    for _ in range(2):  # fit, trim outliers (hair, glasses), refit
        mean = keep.mean(0)
        cov = np.cov(keep.T) + np.eye(2) * _CHROMA_FLOOR_VAR
        inv = np.linalg.inv(cov)
        d = sample - mean
        d2_sample = np.einsum("ni,ij,nj->n", d, inv, d)
        trimmed = sample[d2_sample <= 9.0]
        if len(trimmed) >= 10:
            keep = trimmed
    diff = chroma - mean
    return np.einsum("hwi,ij,hwj->hw", diff, inv, diff)
