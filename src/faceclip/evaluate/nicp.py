"""Optimal-step non-rigid ICP (Amberg, Romdhani, Vetter, CVPR 2007) as REALY uses it.

Every source vertex ``i`` carries a 4x3 affine ``X_i``; one step solves the sparse linear
least-squares problem

    min_X  alpha^2 ||(M (x) G) X||^2  +  ||W (D X - U)||^2  +  ||K (D X - P)||^2

where ``M`` is the edge-vertex incidence matrix of the source mesh (stiffness: neighbouring
affines agree), ``G = diag(1, 1, 1, gamma)``, ``D`` holds the current source positions
``[x_i, 1]``, ``U`` their nearest target points, ``W`` zeroes pairs farther than
``max(2 * mean distance, 1 unit)``, and ``K`` weights keypoint rows whose targets ``P`` are fixed.
The source is then moved to ``D X`` and the next step starts from there.

Schedules follow REALY's ``utils/NICP.py`` (read, not copied):

- without keypoints (REALY's cheek): stiffness ``alpha * exp(-0.5 d)`` for ``d = 0, 1, 2``, each
  stage iterated until ``||X - X_prev|| <= epsilon * 0.5^d``. REALY iterates the cheek without a
  step limit; we cap every stage at ``max_steps`` (default 11, REALY's cap for the other regions)
  so a slowly converging scan cannot run for minutes.
- with keypoints (nose, mouth, forehead): one keypoint-only step with stiffness ``alpha2`` and
  ``G_kp = diag(2, 2, 3, 2 gamma)`` (no data term), then three stages with stiffness
  ``alpha * exp(-0.5 (d - 1))`` and keypoint weight ``kp_weight * exp(-0.9 step) / 10`` decaying
  with the global step count, at most 11 steps each.

All weights are unit-dependent (the 1-unit distance floor, the translation part of the
stiffness). REALY's scans are stored in a normalised unit of about 9 mm (its
``metrical_scale.txt``: 6.5-10.2 mm per unit, median about 9); :func:`nicp` therefore takes a
``unit`` and works on ``points / unit`` so millimetre inputs see the same effective weights.

The normal equations ``(A^T A) X = A^T B`` (4N x 4N, symmetric positive definite, shared by the
three right-hand sides) are solved with SuperLU, which ships with scipy (REALY uses CHOLMOD via
scikit-sparse, which needs SuiteSparse built from source). With ``max_nodes`` the same energy is
minimised over affine fields blended from fewer nodes (see :func:`nicp`), for dense scans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu
from scipy.spatial import cKDTree

__all__ = ["NicpParams", "nicp"]

_REG = 1e-8


@dataclass(frozen=True)
class NicpParams:
    """REALY's hyper-parameters (``utils/eval.py``)."""

    epsilon: float = 1.0
    gamma: float = 1.0
    alpha: float = 50.0
    alpha2: float = 150.0
    kp_weight: float = 50.0
    max_steps: int = 11


def nicp(
    source: np.ndarray,
    triangles: np.ndarray,
    target_points: np.ndarray,
    *,
    keypoint_index: np.ndarray | None = None,
    keypoint_target: np.ndarray | None = None,
    params: NicpParams = NicpParams(),
    unit: float = 1.0,
    max_nodes: int | None = None,
    blend: int = 4,
) -> np.ndarray:
    """Deform ``source`` (a mesh) onto the point set ``target_points``.

    Args:
        source: (N, 3) source vertices.
        triangles: (F, 3) source triangles (define the stiffness graph).
        target_points: (M, 3) target points (nearest-neighbour targets).
        keypoint_index: (K,) source vertex indices with fixed targets, or None.
        keypoint_target: (K, 3) their targets.
        unit: length unit of the weights, in the units of the inputs (see module docstring).
        max_nodes: None solves for one affine per vertex (REALY's formulation). An integer
            ``n`` < N solves the same energy restricted to affine fields interpolated from ``n``
            nodes (farthest-point samples of the source; every vertex blends its 4 nearest nodes
            with Sumner et al.'s embedded-deformation weights): a Galerkin reduction that
            keeps the energy and its weights but costs O(n) instead of O(N) unknowns.

    Returns:
        (N, 3) deformed source vertices, in the input units.
    """
    src = np.asarray(source, np.float64) / unit
    dst = np.asarray(target_points, np.float64) / unit
    n = len(src)
    lap = _graph_laplacian(np.asarray(triangles, np.int64), n)
    basis = _Basis.exact(n) if max_nodes is None or max_nodes >= n else _Basis.embedded(src, int(max_nodes), blend)
    lap_nodes = (basis.phi.T @ lap @ basis.phi).tocsr()
    basis = basis.with_pattern(lap_nodes)
    stiff = basis.blocks_of(lap_nodes)
    tree = cKDTree(dst)
    with_kp = keypoint_index is not None and len(keypoint_index) > 0
    g2 = np.array([1.0, 1.0, 1.0, params.gamma]) ** 2
    cur = src.copy()
    # REALY compares consecutive solutions X and X_prev (per-vertex affines, each relative to the
    # vertices it was solved at); the comparison carries over from one stage to the next.
    last: list[np.ndarray | None] = [None, None]

    def converged(eps: float) -> bool:
        if last[0] is None or last[1] is None:
            return False
        diff = (last[1] - last[0]).reshape(-1)
        return float(np.sqrt(np.einsum("i,i->", diff, diff))) <= eps

    def push(x: np.ndarray) -> None:
        last[0], last[1] = last[1], x

    if with_kp:
        kp_idx = np.asarray(keypoint_index, np.int64)
        kp_dst = np.asarray(keypoint_target, np.float64).reshape(-1, 3) / unit
        # Stage 0: keypoints only, very stiff (moves the region as a whole onto its keypoints).
        kp_w = np.zeros(n)
        kp_w[kp_idx] = params.kp_weight
        g_kp2 = np.array([2.0, 2.0, 3.0, 2.0 * params.gamma]) ** 2
        cur, x = _step(cur, basis, stiff, g_kp2, params.alpha2, None, None, kp_w, kp_idx, kp_dst)
        push(x)
        count = 1
        for decay in range(1, 4):
            alpha = params.alpha * np.exp(-0.5 * (decay - 1))
            eps = params.epsilon * 0.5 ** (decay - 1)
            for _ in range(params.max_steps):
                if converged(eps):
                    break
                dist, idx = tree.query(cur, k=1)
                kp_w = np.zeros(n)
                kp_w[kp_idx] = params.kp_weight * np.exp(-0.9 * count) / 10.0
                cur, x = _step(cur, basis, stiff, g2, alpha, dst[idx], _inlier_weights(dist), kp_w, kp_idx, kp_dst)
                push(x)
                count += 1
    else:
        for decay in range(3):
            alpha = params.alpha * np.exp(-0.5 * decay)
            eps = params.epsilon * 0.5 ** decay
            for _ in range(params.max_steps):
                if converged(eps):
                    break
                dist, idx = tree.query(cur, k=1)
                cur, x = _step(cur, basis, stiff, g2, alpha, dst[idx], _inlier_weights(dist), None, None, None)
                push(x)
    return cur * unit


def _inlier_weights(dist: np.ndarray) -> np.ndarray:
    """REALY's pair rejection: 1 for pairs closer than ``max(2 * mean, 1)``, else 0."""
    threshold = max(2.0 * float(dist.mean()), 1.0)
    return (dist < threshold).astype(np.float64)


def _graph_laplacian(triangles: np.ndarray, n: int) -> sp.csr_matrix:
    """``M^T M`` for the edge-vertex incidence matrix ``M`` (unique undirected edges)."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [0, 2]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    m = len(e)
    rows = np.repeat(np.arange(m), 2)
    inc = sp.csr_matrix((np.tile([1.0, -1.0], m), (rows, e.reshape(-1))), shape=(m, n))
    return (inc.T @ inc).tocsr()


@dataclass
class _Basis:
    """Per-vertex affines as blends of node affines, ``X_i = sum_j phi[i, j] X_j``, and the
    block-sparse pattern (4x4 blocks over node pairs) of the normal equations."""

    phi: sp.csr_matrix  # (N, M)
    nbr: np.ndarray  # (N, k) node indices
    w: np.ndarray  # (N, k) weights (rows sum to 1)
    pattern: tuple[np.ndarray, np.ndarray] | None = None  # (indptr, indices) of the node-pair blocks
    scatter: sp.csr_matrix | None = None  # (P, N): sum over a, b of phi_ia phi_ib into pair block p

    @property
    def n_nodes(self) -> int:
        return int(self.phi.shape[1])

    @staticmethod
    def exact(n: int) -> "_Basis":
        idx = np.arange(n)[:, None]
        return _Basis(sp.identity(n, format="csr"), idx, np.ones((n, 1)))

    @staticmethod
    def embedded(points: np.ndarray, n_nodes: int, k: int = 4) -> "_Basis":
        nodes = _farthest_points(points, n_nodes)
        k = min(k, len(nodes) - 1)
        dist, nbr = cKDTree(points[nodes]).query(points, k=k + 1)
        # Sumner, Schmid, Pauly 2007: w_j = (1 - d_j / d_{k+1})^2, normalised. d_{k+1} is
        # enlarged by 1% so that ties (d_k == d_{k+1}, common on regular grids) never zero
        # every weight of a vertex.
        d_max = dist[:, k:k + 1] * 1.01 + 1e-12
        w = (1.0 - dist[:, :k] / d_max) ** 2
        w /= w.sum(1, keepdims=True)
        nbr = nbr[:, :k]
        n = len(points)
        phi = sp.csr_matrix((w.reshape(-1), (np.repeat(np.arange(n), k), nbr.reshape(-1))), shape=(n, len(nodes)))
        return _Basis(phi, nbr, w)

    def with_pattern(self, lap_nodes: sp.csr_matrix) -> "_Basis":
        """Add the union block pattern of the stiffness and data terms."""
        m = self.n_nodes
        k = self.nbr.shape[1]
        data_keys = (self.nbr[:, :, None] * m + self.nbr[:, None, :]).reshape(-1)
        lc = lap_nodes.tocoo()
        keys = np.unique(np.concatenate([data_keys, lc.row.astype(np.int64) * m + lc.col, np.arange(m) * (m + 1)]))
        rows, cols = keys // m, keys % m
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))])
        pair_of = np.searchsorted(keys, data_keys)
        n = len(self.nbr)
        pair_w = (self.w[:, :, None] * self.w[:, None, :]).reshape(-1)
        scatter = sp.csr_matrix((pair_w, (pair_of, np.repeat(np.arange(n), k * k))), shape=(len(keys), n))
        return _Basis(self.phi, self.nbr, self.w, (indptr, cols), scatter)

    def blocks_of(self, mat: sp.csr_matrix) -> np.ndarray:
        """(P,) values of an (M, M) matrix on the pattern's node pairs."""
        indptr, cols = self.pattern
        rows = np.repeat(np.arange(self.n_nodes), np.diff(indptr))
        return np.asarray(mat[rows, cols]).reshape(-1)


def _farthest_points(points: np.ndarray, m: int) -> np.ndarray:
    """Indices of ``m`` farthest-point samples (deterministic: starts at the first point)."""
    chosen = np.empty(m, dtype=np.int64)
    chosen[0] = 0
    d = ((points - points[0]) ** 2).sum(1)
    for i in range(1, m):
        chosen[i] = int(d.argmax())
        d = np.minimum(d, ((points - points[chosen[i]]) ** 2).sum(1))
    return chosen


def _step(
    cur: np.ndarray,
    basis: _Basis,
    stiff_blocks: np.ndarray,
    g2: np.ndarray,
    alpha: float,
    data_target: np.ndarray | None,
    data_w: np.ndarray | None,
    kp_w: np.ndarray | None,
    kp_idx: np.ndarray | None,
    kp_dst: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One linear solve; returns the moved vertices (N, 3) and the per-vertex affines (N, 4, 3).

    ``stiff_blocks`` holds the reduced Laplacian ``phi^T L phi`` on the pattern's node pairs.
    """
    n = len(cur)
    m = basis.n_nodes
    d = np.concatenate([cur, np.ones((n, 1))], axis=1)  # (N, 4)
    w2 = np.zeros(n)
    tgt_w = np.zeros((n, 3))  # sum over terms of weight^2 * target, per vertex
    if data_target is not None:
        w2 += data_w ** 2
        tgt_w += (data_w ** 2)[:, None] * data_target
    if kp_w is not None:
        k2 = kp_w[kp_idx] ** 2
        w2[kp_idx] += k2
        tgt_w[kp_idx] += k2[:, None] * kp_dst
    # Normal equations in 4x4 blocks over node pairs: stiffness (phi^T L phi) (x) G^2 alpha^2,
    # plus the data blocks sum_i w_i^2 phi_ij phi_il d_i d_i^T, plus a tiny identity pull.
    ddt = (d[:, :, None] * d[:, None, :]).reshape(n, 16)
    blocks = stiff_blocks[:, None] * (np.diag(g2) * alpha ** 2).reshape(1, 16)
    blocks = (blocks + basis.scatter @ (w2[:, None] * ddt)).reshape(-1, 4, 4)
    indptr, cols = basis.pattern
    blocks[_diag_positions(indptr, cols)] += _REG * np.eye(4)
    system = sp.bsr_matrix((blocks, cols, indptr), shape=(4 * m, 4 * m)).tocsc()
    rhs_v = d[:, :, None] * tgt_w[:, None, :]  # (N, 4, 3)
    rhs = (basis.phi.T @ rhs_v.reshape(n, 12)).reshape(m, 4, 3)
    rhs += _REG * np.eye(4)[None, :, :3]
    x_nodes = splu(system, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                   options={"SymmetricMode": True}).solve(rhs.reshape(4 * m, 3)).reshape(m, 4, 3)
    x = (basis.phi @ x_nodes.reshape(m, 12)).reshape(n, 4, 3)
    moved = np.einsum("ni,nij->nj", d, x)
    return moved, x


def _diag_positions(indptr: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Index in ``cols`` of each row's diagonal entry (the pattern always contains it)."""
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return np.nonzero(rows == cols)[0]
