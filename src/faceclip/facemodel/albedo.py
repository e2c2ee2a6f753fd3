"""A smooth, low-dimensional albedo model for face models without an albedo basis (ICT-FaceKit).

Representation: per-vertex albedo ``A = base + Phi @ C`` where ``Phi`` (V, K) holds the K
smoothest eigenfunctions of the cotangent Laplacian of the face area ("manifold harmonics", the
mesh analogue of a low-pass Fourier basis; extended to the back of the head by nearest face
vertex, plus one constant component for the eyeballs), ``base`` a uniform skin tone and ``C``
(K, 3) the fitted coefficients.
Why this and not a free UV map:

- it cannot overfit the photo's high frequencies (shading detail, specular highlights, noise):
  only K smooth functions are available, and the prior weights each by its eigenvalue, so the
  rougher a component the more it costs;
- it lives on the surface, so it has no UV seams and costs nothing in texture sampling;
- left-right symmetry is one extra prior through a vertex mirror map.

The photo texture (full resolution, unwrapped in UV) is a separate, later step; this albedo is
what the photometric loss fits and what fills texture regions the photo does not see.

Models with their own albedo basis (BFM) use that instead (:func:`make_albedo_model`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from faceclip.facemodel.base import FaceModel
from faceclip.paths import models_dir

log = logging.getLogger(__name__)

#: A mid skin tone (linear RGB) used as the starting albedo.
DEFAULT_BASE_RGB = (0.62, 0.46, 0.38)
SCLERA_RGB = (0.62, 0.58, 0.55)
IRIS_RGB = (0.16, 0.11, 0.08)


@dataclass
class AlbedoModel:
    """Per-vertex albedo as a linear function of (K, 3) coefficients.

    Attributes:
        kind: ``"harmonic"`` (Laplacian eigenbasis) or ``"basis"`` (the face model's own).
        mean: (V, 3) albedo at zero coefficients.
        basis: (K, V) (harmonic, shared by the 3 channels) or (K, V, 3) (model basis).
        eigenvalues: (K,) smoothness weights for the prior (0 for constant components).
        mirror: (V,) index of each vertex's left-right mirror vertex.
    """

    kind: str
    mean: Tensor
    basis: Tensor
    eigenvalues: Tensor
    mirror: Tensor

    @property
    def n_coeffs(self) -> int:
        return int(self.basis.shape[0])

    def __call__(self, coeffs: Tensor) -> Tensor:
        """(B, K, 3) coefficients -> (B, V, 3) per-vertex albedo (unclamped)."""
        if self.kind == "harmonic":
            # (B, 3, K) x (K, V), transposed back: a wide product is ~2x faster on CPU (forward
            # and backward) than the tall (V, K) x (B, K, 3), with the same values.
            return (self.mean.unsqueeze(0) + torch.matmul(coeffs.transpose(1, 2), self.basis).transpose(1, 2)).contiguous()
        # Model basis: one coefficient per component, applied to all three channels' columns.
        return self.mean.unsqueeze(0) + torch.einsum("kvc,bk->bvc", self.basis, coeffs[..., 0])

    def to(self, device: torch.device | str) -> "AlbedoModel":
        return AlbedoModel(self.kind, self.mean.to(device), self.basis.to(device),
                           self.eigenvalues.to(device), self.mirror.to(device))


def mirror_map(vertices_mm: np.ndarray) -> np.ndarray:
    """(V, 3) symmetric mesh -> (V,) index of the vertex nearest each vertex's mirror (x -> -x)."""
    from scipy.spatial import cKDTree

    mirrored = vertices_mm * np.array([-1.0, 1.0, 1.0])
    return cKDTree(vertices_mm).query(mirrored)[1].astype(np.int64)


#: Part of the mirror-map files' key: change it when :func:`mirror_map` changes.
_MIRROR_VERSION = b"mirror_map 1"


def cached_mirror_map(name: str, vertices_mm: np.ndarray) -> np.ndarray:
    """:func:`mirror_map`, kept in ``$FACECLIP_HOME/models/mirror_<name>_<hash of the vertices>.npy``.

    The KD-tree's import (scipy.spatial) and query take 0.25 s of every process's start-up; the
    stored map is read in a millisecond. A file that does not hold a valid map is recomputed.
    """
    v = np.ascontiguousarray(vertices_mm, dtype=np.float64)
    key = hashlib.sha1(_MIRROR_VERSION + v.tobytes()).hexdigest()[:16]
    path = models_dir() / f"mirror_{name}_{key}.npy"
    try:
        stored = np.load(path, allow_pickle=False)
        if not isinstance(stored, np.ndarray):  # an archive: not ours
            stored.close()
        elif stored.shape == (len(v),) and stored.dtype == np.int64 and len(v) and 0 <= stored.min() and \
                stored.max() < len(v):
            return stored
    except (OSError, ValueError, EOFError):
        pass
    mirror = mirror_map(v)
    try:
        _store(path, lambda f: np.save(f, mirror))
    except OSError as exc:  # a read-only home only costs recomputation
        log.debug("could not cache the mirror map in %s: %s", path, exc)
    return mirror


def _store(path, write) -> None:
    """``write(file)`` into ``path`` atomically (a temporary file renamed onto it)."""
    from faceclip.io.files import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)


def cotangent_laplacian(vertices: np.ndarray, triangles: np.ndarray):
    """Cotangent stiffness matrix L (V, V) and lumped (barycentric) mass matrix M (scipy sparse).

    Geometric weights make the harmonics uniform in space, not in vertex density (ICT is much
    denser around the eyes and mouth than on the cheeks).
    """
    import scipy.sparse as sp

    n = len(vertices)
    p = vertices[triangles]  # (F, 3, 3)
    rows, cols, vals = [], [], []
    area = 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)
    for k in range(3):
        i, j = (k + 1) % 3, (k + 2) % 3
        a, b = p[:, i] - p[:, k], p[:, j] - p[:, k]
        cot = (a * b).sum(1) / np.maximum(np.linalg.norm(np.cross(a, b), axis=1), 1e-12)
        w = 0.5 * np.clip(cot, -10.0, 10.0)
        rows += [triangles[:, i], triangles[:, j]]
        cols += [triangles[:, j], triangles[:, i]]
        vals += [w, w]
    W = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsr()
    L = sp.diags(np.asarray(W.sum(axis=1)).ravel()) - W
    mass = np.bincount(triangles.ravel(), weights=np.repeat(area / 3.0, 3), minlength=n)
    return L.tocsc(), sp.diags(np.maximum(mass, 1e-8)).tocsc()


def harmonic_basis(vertices: np.ndarray, triangles: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smoothest manifold harmonics (V, k) (M-orthonormal) and eigenvalues (k,)."""
    from scipy.sparse.linalg import eigsh

    L, M = cotangent_laplacian(vertices, triangles)
    v0 = np.ones(len(vertices))
    vals, vecs = eigsh(L, k=k, M=M, sigma=-1e-6, which="LM", v0=v0)
    order = np.argsort(vals)
    vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(k)])
    return vecs * signs, vals


def face_harmonics(model: FaceModel, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Harmonics on the model's face area, extended to the rest of the mesh.

    Vertices outside the face area take the value of their nearest face-area vertex, except
    separate eye geometry (eyeballs), which gets its own constant component (last column).

    Returns:
        basis (V, k + 1) with unit peak per column, eigenvalue-like weights (k + 1,).
    """
    from scipy.spatial import cKDTree

    verts = model.mean_mm.detach().cpu().numpy().astype(np.float64)
    tri = model.triangles.cpu().numpy()
    face_ids = model.regions["face"].cpu().numpy()
    in_face = np.zeros(len(verts), dtype=bool)
    in_face[face_ids] = True
    sub_tri = tri[in_face[tri].all(axis=1)]
    remap = np.full(len(verts), -1)
    remap[face_ids] = np.arange(len(face_ids))
    vecs, vals = harmonic_basis(verts[face_ids], remap[sub_tri], k)
    vecs = vecs / np.abs(vecs).max(axis=0, keepdims=True)
    full = np.zeros((len(verts), k + 1))
    full[face_ids, :k] = vecs
    eyes = np.zeros(len(verts), dtype=bool)
    eyes[model.regions["eyes"].cpu().numpy()] = True
    eyeball = eyes & ~in_face
    rest = ~in_face & ~eyeball
    if rest.any():
        nearest = cKDTree(verts[face_ids]).query(verts[rest])[1]
        full[rest, :k] = vecs[nearest]
    full[eyeball, k] = 1.0
    weights = np.concatenate([vals / max(vals.max(), 1e-12), [0.0]])
    return full, weights


def _paint_eyes(albedo: Tensor, model: FaceModel) -> None:
    """Give the eyeballs (ICT ``sclera`` + ``iris`` regions) a sclera colour and a dark iris.

    ICT's sclera mesh includes the cornea bulge that covers the iris, so the iris is painted by
    direction instead: vertices within 27 degrees of each eyeball's forward axis (+Z) are iris.
    """
    if "sclera" not in model.regions or "iris" not in model.regions:
        return
    v = model.mean_mm.detach().cpu()
    ids = torch.cat([model.regions["sclera"], model.regions["iris"]]).cpu()
    for side in (ids[v[ids, 0] < 0], ids[v[ids, 0] >= 0]):
        if side.numel() == 0:
            continue
        d = v[side] - v[side].mean(0)
        cos = d[:, 2] / d.norm(dim=1).clamp_min(1e-9)
        albedo[side] = torch.tensor(SCLERA_RGB)
        albedo[side[cos > 0.89]] = torch.tensor(IRIS_RGB)


def _load_or_compute(path, compute) -> tuple[np.ndarray, np.ndarray]:
    """Read (basis, weights) from ``path`` or compute and store them (atomically)."""
    try:
        with np.load(path) as z:
            return z["basis"], z["weights"]
    except (OSError, KeyError, ValueError):
        pass
    basis, weights = compute()
    # Same precision as a later read from the cache, so a fresh and a cached run agree exactly.
    basis, weights = basis.astype(np.float32), weights.astype(np.float32)
    try:
        _store(path, lambda f: np.savez(f, basis=basis, weights=weights))
    except OSError as exc:  # a read-only home only costs recomputation
        log.warning("could not cache albedo harmonics in %s: %s", path, exc)
    return basis, weights


_CACHE: dict[str, AlbedoModel] = {}


def make_albedo_model(model: FaceModel, n_harmonics: int = 80) -> AlbedoModel:
    """The albedo model for ``model``: its own basis when it has one, else Laplacian harmonics.

    Harmonics are computed once per topology (a few seconds for 15k vertices), then cached in
    ``$FACECLIP_HOME/models/albedo_<model>_<hash>.npz`` and memoised in-process.
    """
    tri = model.triangles.cpu().numpy()
    mean_np = model.mean_mm.detach().cpu().numpy()
    key = hashlib.sha1(tri.tobytes() + str((model.name, model.n_vertices, n_harmonics, model.has_albedo)).encode()).hexdigest()
    if key in _CACHE:
        return _CACHE[key].to(model.device)
    disk = models_dir() / f"albedo_{model.name}_{key[:16]}.npz"
    mirror = torch.from_numpy(cached_mirror_map(model.name, mean_np))
    if model.albedo_mean is not None and model.albedo_basis is not None:
        am = AlbedoModel("basis", model.albedo_mean.cpu(), model.albedo_basis.cpu(),
                         torch.ones(model.n_albedo), mirror)
    else:
        vecs, weights = _load_or_compute(disk, lambda: face_harmonics(model, n_harmonics))
        # A unit coefficient changes the albedo by 0.1 at the component's peak.
        vecs = vecs * 0.1
        mean = torch.tensor(DEFAULT_BASE_RGB, dtype=torch.float32).expand(model.n_vertices, 3).clone()
        _paint_eyes(mean, model)
        am = AlbedoModel("harmonic", mean, torch.from_numpy(vecs.T.astype(np.float32)),
                         torch.from_numpy(weights.astype(np.float32)), mirror)
    _CACHE[key] = am
    return am.to(model.device)
