"""Fixed surface points of a face model for dense 2D landmarks.

A dense landmark set is the 68 iBUG landmarks (2D-detector convention: the 17 jaw points slide
along the visible silhouette, :mod:`faceclip.fit.contour`) followed by ``N`` model vertices
spread evenly over the front of the face (farthest-point sampling on the mean shape, started
from the 68 landmark vertices so that the new points fill the gaps between them). A network
that predicts them (:mod:`faceclip.nets.landmarks`) gives the fitter ``68 + N`` observations
instead of 68.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dense_vertex_ids", "farthest_point_order"]


def farthest_point_order(points: np.ndarray, n: int, start: np.ndarray | None = None) -> np.ndarray:
    """Indices of ``n`` points of ``points`` (P, D) picked by farthest-point sampling.

    Args:
        points: (P, D) candidate positions.
        n: how many to pick (at most P).
        start: (M, D) already chosen positions the picks keep away from (None: start from the
            candidate nearest to the centroid).
    Returns:
        (n,) int64 indices into ``points``, in picking order.
    """
    pts = np.asarray(points, np.float64)
    n = min(int(n), len(pts))
    if start is not None and len(start):
        d = np.min(np.linalg.norm(pts[:, None] - np.asarray(start, np.float64)[None], axis=-1), axis=1)
    else:
        d = np.linalg.norm(pts - pts.mean(0), axis=1)
        d = d.max() - d  # first pick: the most central point
    out = np.empty(n, np.int64)
    for i in range(n):
        j = int(np.argmax(d))
        out[i] = j
        d = np.minimum(d, np.linalg.norm(pts - pts[j], axis=1))
    return out


def dense_vertex_ids(model, n_points: int = 250, region: str = "face_narrow") -> np.ndarray:
    """(n_points,) vertex ids of the dense surface points (the 68 landmark vertices excluded).

    Deterministic for a model: the same ids on every call.

    Args:
        model: a :class:`~faceclip.facemodel.FaceModel` with ``region`` in its regions
            (falls back to ``"face"``).
        n_points: N.
    """
    regions = model.regions
    if region not in regions:
        region = "face"
    cand = np.setdiff1d(regions[region].cpu().numpy(), model.landmarks68.cpu().numpy())
    mean = model.mean_mm.cpu().double().numpy()
    order = farthest_point_order(mean[cand], n_points, start=mean[model.landmarks68.cpu().numpy()])
    return cand[order].astype(np.int64)
