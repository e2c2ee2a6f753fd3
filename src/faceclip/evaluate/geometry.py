"""Geometry kernels shared by the protocols: closest points on a surface, similarity fits, ICP.

Everything is numpy / scipy (``cKDTree``); no rtree or embree is needed.

Closest point on a triangle mesh (:class:`SurfaceQuery`)
    For each query point the candidate triangles are the star (incident triangles) of its nearest
    vertex plus the triangles whose centroids are among its ``k_centroids`` nearest; the exact
    closest point on each candidate is computed (Ericson, *Real-Time Collision Detection*, 5.1.5)
    and the nearest kept. This is exact whenever the true closest triangle is among those
    candidates, which holds for any query whose distance to the surface is not large compared
    with the triangle size (the tests compare it with brute force on irregular meshes). The
    official tools use an AABB tree (psbody) or trimesh's ``nearest.on_surface``; they give the
    same answer up to that candidate search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from faceclip.evaluate.mesh import Mesh

__all__ = [
    "SurfaceQuery",
    "closest_points_on_triangles",
    "Similarity",
    "fit_similarity",
    "align_surface_to_points",
]


# ----------------------------------------------------------------------------- closest point


def closest_points_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest point to ``p`` on triangle ``(a, b, c)``, broadcast over leading axes.

    Args:
        p, a, b, c: (..., 3) arrays (broadcastable).
    Returns:
        (..., 3) closest points. Degenerate triangles give a point on one of their edges.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ab, ac, ap = b - a, c - a, p - a
        d1 = np.einsum("...i,...i->...", ab, ap)
        d2 = np.einsum("...i,...i->...", ac, ap)
        bp = p - b
        d3 = np.einsum("...i,...i->...", ab, bp)
        d4 = np.einsum("...i,...i->...", ac, bp)
        cp = p - c
        d5 = np.einsum("...i,...i->...", ab, cp)
        d6 = np.einsum("...i,...i->...", ac, cp)
        va = d3 * d6 - d5 * d4
        vb = d5 * d2 - d1 * d6
        vc = d1 * d4 - d3 * d2
        tiny = 1e-300
        # Barycentric (v, w) of the closest point, region by region; later assignments take precedence
        # (vertex regions over edge regions over the interior), as in Ericson's early returns.
        denom = va + vb + vc
        denom = np.where(np.abs(denom) < tiny, tiny, denom)
        v = vb / denom
        w = vc / denom
        # edge BC
        e_bc = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
        t_bc = (d4 - d3) / np.maximum((d4 - d3) + (d5 - d6), tiny)
        v = np.where(e_bc, 1.0 - t_bc, v)
        w = np.where(e_bc, t_bc, w)
        # edge AC
        e_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
        t_ac = d2 / np.where(np.abs(d2 - d6) < tiny, tiny, d2 - d6)
        v = np.where(e_ac, 0.0, v)
        w = np.where(e_ac, t_ac, w)
        # vertex C
        r_c = (d6 >= 0) & (d5 <= d6)
        v = np.where(r_c, 0.0, v)
        w = np.where(r_c, 1.0, w)
        # edge AB
        e_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
        t_ab = d1 / np.where(np.abs(d1 - d3) < tiny, tiny, d1 - d3)
        v = np.where(e_ab, t_ab, v)
        w = np.where(e_ab, 0.0, w)
        # vertex B
        r_b = (d3 >= 0) & (d4 <= d3)
        v = np.where(r_b, 1.0, v)
        w = np.where(r_b, 0.0, w)
        # vertex A
        r_a = (d1 <= 0) & (d2 <= 0)
        v = np.where(r_a, 0.0, v)
        w = np.where(r_a, 0.0, w)
        v = np.clip(v, 0.0, 1.0)
        w = np.clip(w, 0.0, 1.0 - v)
    return a + ab * v[..., None] + ac * w[..., None]


class SurfaceQuery:
    """Nearest points on a fixed triangle mesh, for many query points.

    Args:
        mesh: the surface (needs triangles).
        k_centroids: triangle centroids considered per query in addition to the nearest vertex's
            star (more = safer for large or sliver triangles, slower).
    """

    def __init__(self, mesh: Mesh, k_centroids: int = 8) -> None:
        if mesh.n_triangles == 0:
            raise ValueError("closest points need a triangle mesh (no triangles given)")
        self.mesh = mesh
        self.k_centroids = int(min(k_centroids, mesh.n_triangles))
        self._tri_xyz = mesh.vertices[mesh.triangles]  # (F, 3, 3)
        self._vertex_tree = cKDTree(mesh.vertices)
        self._centroid_tree = cKDTree(self._tri_xyz.mean(axis=1))
        self._star = _vertex_stars(mesh.triangles, mesh.n_vertices)  # (V, S) padded with -1

    def closest(self, points: np.ndarray, chunk: int = 20000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Closest surface points.

        Args:
            points: (Q, 3).
        Returns:
            closest (Q, 3), distance (Q,), triangle index (Q,).
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        out_p = np.empty_like(points)
        out_d = np.empty(len(points))
        out_t = np.empty(len(points), dtype=np.int64)
        for s in range(0, len(points), chunk):
            q = points[s:s + chunk]
            _, vi = self._vertex_tree.query(q, k=1)
            cand = self._star[vi]
            if self.k_centroids > 0:
                _, ci = self._centroid_tree.query(q, k=self.k_centroids)
                cand = np.concatenate([cand, ci.reshape(len(q), -1)], axis=1)
            valid = cand >= 0
            safe = np.where(valid, cand, 0)
            tri = self._tri_xyz[safe]  # (q, K, 3, 3)
            cp = closest_points_on_triangles(q[:, None, :], tri[:, :, 0], tri[:, :, 1], tri[:, :, 2])
            d2 = ((cp - q[:, None, :]) ** 2).sum(-1)
            d2 = np.where(valid, d2, np.inf)
            best = d2.argmin(axis=1)
            rows = np.arange(len(q))
            out_p[s:s + chunk] = cp[rows, best]
            out_d[s:s + chunk] = np.sqrt(d2[rows, best])
            out_t[s:s + chunk] = safe[rows, best]
        return out_p, out_d, out_t

    def distances(self, points: np.ndarray) -> np.ndarray:
        """(Q,) unsigned point-to-surface distances."""
        return self.closest(points)[1]


def _vertex_stars(triangles: np.ndarray, n_vertices: int, max_star: int = 24) -> np.ndarray:
    """(V, S) indices of the triangles incident to each vertex, -1 padded (at most ``max_star``)."""
    flat_v = triangles.reshape(-1)
    flat_t = np.repeat(np.arange(len(triangles)), 3)
    order = np.argsort(flat_v, kind="stable")
    flat_v, flat_t = flat_v[order], flat_t[order]
    counts = np.bincount(flat_v, minlength=n_vertices)
    width = int(min(max(counts.max(initial=1), 1), max_star))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(flat_v)) - starts[flat_v]
    keep = rank < width
    star = np.full((n_vertices, width), -1, dtype=np.int64)
    star[flat_v[keep], rank[keep]] = flat_t[keep]
    return star


# ----------------------------------------------------------------------------- similarity


@dataclass
class Similarity:
    """``x -> scale * R @ x + t``."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @staticmethod
    def identity() -> "Similarity":
        return Similarity(1.0, np.eye(3), np.zeros(3))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) -> (N, 3)."""
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation

    def then(self, other: "Similarity") -> "Similarity":
        """The composition ``other(self(x))``."""
        return Similarity(
            other.scale * self.scale,
            other.rotation @ self.rotation,
            other.scale * other.rotation @ self.translation + other.translation,
        )

    def inverse(self) -> "Similarity":
        r_inv = self.rotation.T
        return Similarity(1.0 / self.scale, r_inv, -(r_inv @ self.translation) / self.scale)


def fit_similarity(
    source: np.ndarray,
    target: np.ndarray,
    *,
    with_scale: bool = True,
    weights: np.ndarray | None = None,
    scale_estimator: str = "least_squares",
) -> Similarity:
    """Best similarity (or rigid) transform mapping ``source`` points onto ``target`` points.

    Rotation from the weighted cross-covariance SVD (Kabsch/Umeyama) with the reflection
    removed (a mirrored face is never a valid alignment).

    Args:
        source, target: (N, 3) corresponding points.
        with_scale: estimate an isotropic scale (else scale = 1).
        weights: (N,) non-negative point weights.
        scale_estimator: ``"least_squares"`` (Umeyama: minimises the squared residuals; used by
            NoW's Procrustes) or ``"l1_ratio"`` (REALY's ``fit_icp_RT``: the ratio of the summed
            absolute centred coordinates of target and rotated source).
    """
    src = np.asarray(source, np.float64).reshape(-1, 3)
    dst = np.asarray(target, np.float64).reshape(-1, 3)
    if src.shape != dst.shape or len(src) < 3:
        raise ValueError(f"need >= 3 corresponding points of equal count, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s0, d0 = src - mu_s, dst - mu_d
    cov = (d0 * w[:, None]).T @ s0
    u, sig, vt = np.linalg.svd(cov)
    fix = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[-1] = -1.0
    rot = u @ np.diag(fix) @ vt
    if not with_scale:
        scale = 1.0
    elif scale_estimator == "least_squares":
        var_s = (w * (s0 ** 2).sum(1)).sum()
        scale = float((sig * fix).sum() / max(var_s, 1e-300))
    elif scale_estimator == "l1_ratio":
        scale = float((w[:, None] * np.abs(d0)).sum() / max((w[:, None] * np.abs(s0 @ rot.T)).sum(), 1e-300))
    else:
        raise ValueError(f"unknown scale_estimator {scale_estimator!r}")
    t = mu_d - scale * rot @ mu_s
    return Similarity(scale, rot, t)


# ----------------------------------------------------------------------------- ICP


def align_surface_to_points(
    surface: SurfaceQuery,
    points: np.ndarray,
    *,
    init: Similarity | None = None,
    with_scale: bool = False,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
    relative_tolerance: float = 0.0,
    surface_keypoints: np.ndarray | None = None,
    point_keypoints: np.ndarray | None = None,
    keypoint_weight: float = 0.0,
) -> tuple[Similarity, int]:
    """ICP moving a *surface* onto fixed points (scan-to-mesh alignment).

    Minimises ``sum_i d(points_i, T(surface))^2`` over similarity (``with_scale``) or rigid ``T``
    by alternating closest points and closed-form fits; optional keypoint pairs
    (``surface_keypoints`` move with the surface) carry ``keypoint_weight`` each, in units of one
    surface pair. The surface index stays static: the closest point on ``T(S)`` of ``q`` is
    ``T(closest point on S of T^-1(q))`` for any similarity ``T``.

    Stops when the weighted mean squared residual changes by less than ``tolerance`` (absolute)
    or ``relative_tolerance`` (relative), or after ``max_iterations``; as in REALY's rICP the fit
    of the last iteration is measured but not applied.

    Returns:
        ``T`` (apply it to the surface's vertices) and the number of iterations.
    """
    pts = np.asarray(points, np.float64)
    T = init or Similarity.identity()
    prev = 0.0
    it = 0
    has_kp = surface_keypoints is not None and len(surface_keypoints) > 0 and keypoint_weight > 0
    for it in range(max_iterations + 1):
        closest, _, _ = surface.closest(T.inverse().apply(pts))
        src = T.apply(closest)
        dst = pts
        w = np.ones(len(src))
        if has_kp:
            src = np.concatenate([src, T.apply(surface_keypoints)])
            dst = np.concatenate([dst, point_keypoints])
            w = np.concatenate([w, np.full(len(point_keypoints), float(keypoint_weight))])
        fit = fit_similarity(src, dst, with_scale=with_scale, weights=w)
        err = float((w * ((fit.apply(src) - dst) ** 2).sum(1)).sum() / w.sum())
        change = abs(err - prev)
        if it >= max_iterations or change < tolerance or (it > 0 and change <= relative_tolerance * prev):
            break
        prev = err
        T = T.then(fit)
    return T, it
