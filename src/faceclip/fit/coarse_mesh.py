"""A coarser, mirror-symmetric triangulation of the face area for the photometric stage.

The photometric stage renders the face area at 160 px, where the ICT model's 13,120 face
triangles are smaller than a pixel around the eyes and mouth. Its cost per step is mostly per
vertex (the identity and expression bases, normals, projection, albedo), so fitting against a
coarser triangulation of the *same* vertices is cheaper without changing what can be fitted:
the coarse mesh keeps a subset of the model's vertices, so every basis is the model's own,
sliced.

:func:`decimate_symmetric` removes vertices by half-edge collapses (a vertex merges into a
neighbour, which keeps its position), cheapest first by the quadric error of the faces around
them (Garland and Heckbert 1997) plus a small edge-length term that favours short edges where
the surface is flat. Collapses are done in mirror pairs (a vertex and its mirror image), so the
kept vertices stay symmetric, which the albedo symmetry prior needs (a vertex whose mirror is
not in the mesh, or does not map back, is kept as it is). The outline and the holes (eyes,
mouth) are kept: their vertices are never removed. A collapse that would fold a triangle
over or break the mesh's manifold structure is skipped.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np

__all__ = ["decimate_symmetric"]

#: Weight of the squared edge length (mm^2) added to the quadric error (mm^2) of a collapse.
LENGTH_WEIGHT = 0.05
#: A collapse is refused when a moved triangle's normal turns by more than this (cosine).
MIN_NORMAL_COS = 0.5
#: Part of the disk cache's key: change it when the algorithm's result changes.
_VERSION = 1


def _plane_quadrics(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(V, 4, 4) sum of the squared-distance quadrics of the planes of each vertex's faces."""
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    plane = np.concatenate([n, -(n * v[f[:, 0]]).sum(1, keepdims=True)], 1)  # (F, 4)
    K = plane[:, :, None] * plane[:, None, :]
    Q = np.zeros((len(v), 4, 4))
    for k in range(3):
        np.add.at(Q, f[:, k], K)
    return Q


def decimate_symmetric(vertices: np.ndarray, triangles: np.ndarray, mirror: np.ndarray,
                       target_vertices: int) -> np.ndarray:
    """A coarser triangulation of ``triangles`` using a mirror-symmetric subset of its vertices.

    Args:
        vertices: (V, 3) positions (mm), e.g. the model's mean face.
        triangles: (F, 3) vertex ids (counter-clockwise from outside), a manifold surface with
            boundary (the face area).
        mirror: (V,) each vertex's mirror image (an involution on the triangles' vertices;
            self-mirrored vertices lie on the midline).
        target_vertices: stop when this many of the triangles' vertices are left (or when no
            valid collapse remains).

    Returns:
        (F', 3) triangles over the kept vertices (the same vertex ids), same orientation.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(triangles, dtype=np.int64).copy()
    mirror = np.asarray(mirror, dtype=np.int64)
    if mirror.shape != (len(v),) or (len(mirror) and (mirror.min() < 0 or mirror.max() >= len(v))):
        raise ValueError(f"mirror must map each of the {len(v)} vertices to a vertex")
    used = np.unique(f)
    Q = _plane_quadrics(v, f)
    # Vertex -> faces, and the locked (outline and hole) vertices, with their mirrors.
    vf: dict[int, set[int]] = {int(i): set() for i in used}
    for k in range(3):
        for t, i in enumerate(f[:, k]):
            vf[int(i)].add(t)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
    uniq, count = np.unique(edges, axis=0, return_counts=True)
    locked = np.zeros(len(v), dtype=bool)
    locked[uniq[count != 2].reshape(-1)] = True  # the outline, holes and any non-manifold edge
    # A vertex whose mirror is not a vertex here, or not mirrored back, has no partner to
    # collapse with: it stays (as does its mirror).
    in_mesh = np.zeros(len(v), dtype=bool)
    in_mesh[used] = True
    odd = used[~in_mesh[mirror[used]] | (mirror[mirror[used]] != used)]
    locked[odd] = True
    locked[mirror[odd]] = True
    locked |= locked[mirror]
    alive_face = np.ones(len(f), dtype=bool)
    removed = np.zeros(len(v), dtype=bool)
    version = np.zeros(len(v), dtype=np.int64)
    n_left = len(used)

    def neighbours(i: int) -> set[int]:
        out: set[int] = set()
        for t in vf[i]:
            out.update(int(x) for x in f[t])
        out.discard(i)
        return out

    def cost(u: int, w: int) -> float:
        p = np.append(v[w], 1.0)
        d = v[u] - v[w]
        return float(p @ (Q[u] + Q[w]) @ p) + LENGTH_WEIGHT * float(d @ d)

    def valid(u: int, w: int) -> bool:
        """u -> w keeps the mesh manifold (link condition) and folds no triangle."""
        if removed[u] or removed[w] or locked[u]:
            return False
        shared = vf[u] & vf[w]
        if len(shared) != 2 or len(neighbours(u) & neighbours(w)) != 2:
            return False
        for t in vf[u] - shared:
            a = v[f[t]]
            n0 = np.cross(a[1] - a[0], a[2] - a[0])
            a = a.copy()
            a[list(f[t]).index(u)] = v[w]
            n1 = np.cross(a[1] - a[0], a[2] - a[0])
            l0, l1 = np.linalg.norm(n0), np.linalg.norm(n1)
            if l1 < 1e-9 or float(n0 @ n1) < MIN_NORMAL_COS * l0 * l1:
                return False
        return True

    def collapse(u: int, w: int) -> None:
        nonlocal n_left
        shared = vf[u] & vf[w]
        for t in shared:
            alive_face[t] = False
            for x in f[t]:
                vf[int(x)].discard(t)
        for t in vf[u]:
            f[t][f[t] == u] = w
            vf[w].add(t)
        vf[u] = set()
        Q[w] += Q[u]
        removed[u] = True
        n_left -= 1

    heap: list[tuple[float, int, int, int, int]] = []

    def push(u: int, w: int) -> None:
        """Queue the paired collapse u -> w (and mirror(u) -> mirror(w))."""
        mu, mw = int(mirror[u]), int(mirror[w])
        if locked[u] or removed[u] or removed[w] or not in_mesh[mw]:
            return
        if (mu == u) != (mw == w) or mu == w:  # midline vertices move along the midline only
            return
        c = cost(u, w) + (cost(mu, mw) if mu != u else 0.0)
        heapq.heappush(heap, (c, u, w, int(version[u] + version[w]), int(version[mu] + version[mw])))

    for a, b in uniq:
        push(int(a), int(b))
        push(int(b), int(a))
    while n_left > target_vertices and heap:
        _, u, w, s1, s2 = heapq.heappop(heap)
        mu, mw = int(mirror[u]), int(mirror[w])
        if removed[u] or removed[w] or version[u] + version[w] != s1 or version[mu] + version[mw] != s2:
            continue
        pair = mu != u
        if not valid(u, w) or (pair and (not valid(mu, mw) or (vf[u] | vf[w]) & (vf[mu] | vf[mw]))):
            continue
        collapse(u, w)
        if pair:
            collapse(mu, mw)
        # Only the kept vertices' quadrics changed: their collapses are queued again (with the
        # new edges u's neighbours now share with them); entries queued before are stale.
        version[w] += 1
        if pair:
            version[mw] += 1
        for x in (w, mw) if pair else (w,):
            for y in neighbours(x):
                push(y, x)
                push(x, y)
    return f[alive_face]


#: Decimations shipped with the package (the default ICT geometry's face area at the default
#: fraction; ``tools/make_coarse_face.py`` writes it), named as in the disk cache.
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data"


def _inputs(vertices, triangles, mirror, fraction: float):
    """The inputs as the cache sees them, the target vertex count and the cache file's name."""
    import hashlib

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"photo_mesh_fraction must be in (0, 1], got {fraction}")
    v = np.ascontiguousarray(vertices, dtype=np.float32)
    t = np.ascontiguousarray(triangles, dtype=np.int64)
    m = np.ascontiguousarray(mirror, dtype=np.int64)
    target = int(round(fraction * len(np.unique(t))))
    h = hashlib.sha1()
    for a in (v, t, m, np.array([target, LENGTH_WEIGHT, MIN_NORMAL_COS, _VERSION])):
        h.update(a.tobytes())
        h.update(str(a.shape).encode())
    return v, t, m, target, f"coarse_face_{h.hexdigest()[:16]}.npz"


def _load(path: Path, t: np.ndarray) -> np.ndarray | None:
    """A cached decimation of triangles ``t``, or None (missing, truncated or not of ``t``)."""
    try:
        with np.load(path) as data:
            out = data["triangles"].astype(np.int64)
        if out.ndim == 2 and out.shape[1] == 3 and len(out) and np.isin(out, t).all():
            return out
    except Exception:  # noqa: BLE001 - missing, truncated or foreign: compute it again
        pass
    return None


def shipped_file(vertices: np.ndarray, triangles: np.ndarray, mirror: np.ndarray, fraction: float) -> Path:
    """Where the package keeps (or would keep) the decimation of these inputs."""
    return SHIPPED_DIR / _inputs(vertices, triangles, mirror, fraction)[4]


def coarse_face_triangles(vertices: np.ndarray, triangles: np.ndarray, mirror: np.ndarray,
                          fraction: float) -> np.ndarray:
    """:func:`decimate_symmetric` to ``fraction`` of the triangles' vertices, computed once per
    machine: the result is kept in memory and on disk (``<models dir>/derived/``, keyed by the
    content of the inputs; a decimation of the ICT face area takes about 3 s). The default
    geometry's is shipped with the package (:data:`SHIPPED_DIR`)."""
    from faceclip.io.files import atomic_open
    from faceclip.io.mesh import memo_by_content
    from faceclip.paths import models_dir

    v, t, m, target, name = _inputs(vertices, triangles, mirror, fraction)

    def compute() -> np.ndarray:
        path = models_dir() / "derived" / name
        for known in (SHIPPED_DIR / name, path):
            out = _load(known, t)
            if out is not None:
                return out
        out = decimate_symmetric(v, t, m, target)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path, "wb") as fh:
                np.savez(fh, triangles=out.astype(np.int32))
        except OSError:  # a read-only models folder: compute it again next time
            pass
        return out

    return memo_by_content("coarse_face", v, t, m, np.array([target]), compute=compute)
