"""Skin / face-region masks for an aligned crop, for photometric losses.

Two layers:

1. :func:`face_region_mask`: the landmark polygon (jawline, and the eyebrows raised onto
   the forehead), minus the eyes, the eyebrows and the open mouth.
2. :func:`skin_mask`: inside that region, the pixels that fit a Gaussian colour model in
   YCbCr space, fitted robustly (two passes, outliers trimmed) on the mid-face (cheeks and
   nose, lips left out). Luma is down-weighted (x0.4) so that shading on the skin stays
   skin while hair, beards, glasses frames, occluders and blown-out highlights drop out.
   On grayscale images only the luma term is left, so the mask is close to the region.

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
_FLOOR_VAR = 4.0  # variance floor (8-bit units^2): keeps the model sane on flat colours
_LUMA_WEIGHT = 0.4  # luma counts half: shading varies more than skin chroma


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
    max_mahalanobis: float = 3.5,
    forehead: float = 0.4,
) -> np.ndarray:
    """Skin pixels of a face crop.

    Args:
        crop: ``(S, S, 3)`` uint8 RGB (any ``(H, W, 3)`` image works).
        landmarks68: ``(68, 2)`` landmarks in the crop's pixels.
        valid: optional ``(H, W)`` bool, pixels that carry image content
            (:attr:`AlignedFace.valid`); others are never skin.
        max_mahalanobis: colour distance (in standard deviations) still counted as skin.
        forehead: see :func:`face_region_mask`.

    Returns:
        ``(H, W)`` bool mask, a subset of the face region.
    """
    rgb = as_rgb_uint8(crop)
    lm = _check_landmarks(landmarks68)
    h, w = rgb.shape[:2]
    region = face_region_mask(lm, (h, w), forehead=forehead)
    if valid is not None:
        region &= np.asarray(valid, dtype=bool)
    features = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb).astype(np.float64)  # (H, W, 3) Y, Cr, Cb
    features[:, :, 0] *= _LUMA_WEIGHT
    sample = _mid_face(lm, (h, w)) & region
    if sample.sum() < 20:
        return region
    d2 = _mahalanobis_sq(features, features[sample], max_mahalanobis)
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


def _mid_face(lm: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Upper cheeks and nose (hull of points 1, 2, 14, 15, 28, 33), above any moustache, minus the lips."""
    mask = np.zeros(shape, np.uint8)
    hull = cv2.convexHull(lm[[1, 2, 14, 15, 28, 33]].astype(np.float32)).reshape(-1, 2)
    cv2.fillPoly(mask, [_to_cv(hull)], 1, cv2.LINE_8, _SHIFT)
    lips = np.zeros(shape, np.uint8)
    cv2.fillPoly(lips, [_to_cv(lm[48:60])], 1, cv2.LINE_8, _SHIFT)
    face_px = float(np.linalg.norm(lm[36:48].mean(0) - lm[8]))
    k = max(3, int(round(0.08 * face_px)) | 1)
    lips = cv2.dilate(lips, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return (mask > 0) & (lips == 0)


def _mahalanobis_sq(features: np.ndarray, sample: np.ndarray, trim: float) -> np.ndarray:
    """Squared Mahalanobis distance of ``(H, W, C)`` features to a robust Gaussian fit of ``(N, C)`` samples.

    Robust start (the 75% of samples closest to the per-channel median, in MAD units), then
    fit, drop samples farther than ``trim`` standard deviations (moustache, glasses,
    stickers, nostrils), refit.
    """
    floor = np.eye(sample.shape[1]) * _FLOOR_VAR
    med = np.median(sample, axis=0)
    mad = np.median(np.abs(sample - med), axis=0) * 1.4826 + 1.0
    r = np.sqrt((((sample - med) / mad) ** 2).sum(1))
    keep = sample[r <= np.quantile(r, 0.75)]
    for _ in range(2):
        mean = keep.mean(0)
        inv = np.linalg.inv(np.cov(keep.T) + floor)
        d = sample - mean
        trimmed = sample[np.einsum("ni,ij,nj->n", d, inv, d) <= trim**2]
        if len(trimmed) < 10:
            break
        keep = trimmed
    mean = keep.mean(0)
    inv = np.linalg.inv(np.cov(keep.T) + floor)
    diff = features - mean
    return np.einsum("hwi,ij,hwj->hw", diff, inv, diff)
