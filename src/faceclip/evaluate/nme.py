"""2D landmark accuracy: normalised mean error (NME) of 68 landmarks.

``NME = mean_k ||p_k - g_k|| / d`` per image, with ``d`` either

- ``"inter_ocular"``: the distance between the outer eye corners (iBUG 36 and 45), the 300-W
  convention; or
- ``"box"``: ``sqrt(w * h)`` of the ground-truth landmarks' bounding box, the AFLW2000-3D
  convention of 3DDFA and later work.

Pixel coordinates follow the project's convention (x right, y down, origin at the top-left
corner, pixel centres at +0.5), but any consistent 2D frame works since the NME is scale-free.
"""

from __future__ import annotations

import numpy as np

from faceclip.evaluate.keypoints import OUTER_EYE_CORNERS_68

__all__ = ["NORMALISATIONS", "nme", "normaliser"]

NORMALISATIONS = ("inter_ocular", "box")


def normaliser(gt: np.ndarray, normalisation: str = "inter_ocular") -> np.ndarray:
    """Per-image normalising distance ``d``.

    Args:
        gt: (68, 2) or (B, 68, 2) ground-truth landmarks.
    Returns:
        () or (B,) distances.
    """
    g = np.asarray(gt, np.float64)
    if g.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks must be (..., 68, 2), got {g.shape}")
    if normalisation == "inter_ocular":
        a, b = OUTER_EYE_CORNERS_68
        return np.linalg.norm(g[..., a, :] - g[..., b, :], axis=-1)
    if normalisation == "box":
        size = g.max(axis=-2) - g.min(axis=-2)
        return np.sqrt(size[..., 0] * size[..., 1])
    raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")


def nme(pred: np.ndarray, gt: np.ndarray, normalisation: str = "inter_ocular",
        visible: np.ndarray | None = None) -> np.ndarray | float:
    """Normalised mean error of 68 2D landmarks.

    Args:
        pred, gt: (68, 2) or (B, 68, 2).
        normalisation: ``"inter_ocular"`` or ``"box"``.
        visible: optional (68,) or (B, 68) bool: average over these landmarks only.
    Returns:
        a float for one image, else (B,) per-image NME (a fraction: multiply by 100 for %).
    """
    p = np.asarray(pred, np.float64)
    g = np.asarray(gt, np.float64)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in shape")
    err = np.linalg.norm(p - g, axis=-1)  # (..., 68)
    if visible is None:
        mean_err = err.mean(axis=-1)
    else:
        v = np.broadcast_to(np.asarray(visible, bool), err.shape)
        mean_err = (err * v).sum(-1) / np.maximum(v.sum(-1), 1)
    d = normaliser(g, normalisation)
    out = mean_err / np.maximum(d, 1e-12)
    return float(out) if np.ndim(out) == 0 else out
