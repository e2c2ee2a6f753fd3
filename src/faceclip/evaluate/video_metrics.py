"""Metrics of tracked faces in a clip: jitter (vertex acceleration) and posed-vertex error.

Different methods place the head with different cameras (a per-frame crop camera, a clip
camera, the ground-truth camera), so the vertices are compared in a camera-independent frame:
each posed vertex ``X_cam`` (OpenCV camera frame, mm) becomes ``(u, v, d)`` where ``(u, v)``
are its pixels and ``d = f (z - z_bar) / z_bar`` its depth relative to the face's mean depth
``z_bar``, in the same pixel units (the weak-perspective frame of the image).

- :func:`vertex_acceleration`: mean over frames ``1..T-2`` and vertices of
  ``|P[t+1] - 2 P[t] + P[t-1]|`` (pixels per frame^2). Jitter shows up here; the true motion
  contributes too (its own value, measured on the ground truth, is the floor).
- :func:`posed_error`: mean over frames and vertices of ``|P[t] - P_gt[t]|`` (pixels).
"""

from __future__ import annotations

import numpy as np

__all__ = ["image_frame_vertices", "posed_error", "vertex_acceleration"]


def image_frame_vertices(vertices_cam_mm: np.ndarray, focal_px: float, centre_px: tuple[float, float]) -> np.ndarray:
    """(T, N, 3) ``(u, v, d)`` of (T, N, 3) camera-frame vertices (see the module docstring)."""
    X = np.asarray(vertices_cam_mm, np.float64)
    z = X[..., 2]
    zbar = z.mean(axis=-1, keepdims=True)
    u = focal_px * X[..., 0] / z + centre_px[0]
    v = focal_px * X[..., 1] / z + centre_px[1]
    d = focal_px * (z - zbar) / zbar
    return np.stack([u, v, d], -1)


def vertex_acceleration(P: np.ndarray) -> float:
    """Mean second difference (pixels per frame^2) of (T, N, 3) image-frame vertices, T >= 3."""
    P = np.asarray(P, np.float64)
    if P.shape[0] < 3:
        raise ValueError("acceleration needs at least 3 frames")
    a = P[2:] - 2 * P[1:-1] + P[:-2]
    return float(np.linalg.norm(a, axis=-1).mean())


def posed_error(P: np.ndarray, P_gt: np.ndarray) -> float:
    """Mean distance (pixels) between (T, N, 3) image-frame vertices and the ground truth."""
    P, G = np.asarray(P, np.float64), np.asarray(P_gt, np.float64)
    if P.shape != G.shape:
        raise ValueError(f"shapes differ: {P.shape} vs {G.shape}")
    return float(np.linalg.norm(P - G, axis=-1).mean())
