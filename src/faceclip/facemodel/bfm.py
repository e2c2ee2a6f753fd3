"""Loader for the Basel Face Model in Deep3DFaceRecon's ``BFM_model_front.mat`` layout.

The BFM is licensed by the University of Basel to each user; FaceCLIP never ships it. Users who
hold a licence produce ``BFM_model_front.mat`` with Deep3DFaceRecon's conversion script and point
FaceCLIP at it (``--face-model bfm --face-model-path FILE`` or ``faceclip models install bfm
--from FILE``).

Expected variables (row vectors are 1 x 3N, bases 3N x K, xyz interleaved per vertex):

    meanshape (1, 3N)   idBase (3N, 80)   exBase (3N, 64)
    meantex   (1, 3N)   texBase (3N, 80)  (0-255 RGB)
    tri       (F, 3)    1-based vertex indices
    keypoints (68,) or (1, 68)  1-based vertex indices of the 68 landmarks
    skinmask  (optional) per-vertex 0/1 skin mask

Units: Deep3DFaceRecon's file is in BFM units divided by 1e5 (1 unit = 100 mm); the scale to mm
is inferred from the face width (see :func:`infer_scale_to_mm`), which also accepts files in
micrometres (the original BFM) or millimetres. BFM has no UV layout; per-corner UVs are a
cylindrical projection around the vertical axis (documented so, good enough for texture export).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceclip.errors import ModelNotInstalledError
from faceclip.facemodel.cache import ModelArrays
from faceclip.facemodel.regions import derive_regions

BFM_LICENCE = "Basel Face Model licence (user-provided; not distributed with FaceCLIP)"
BFM_HINT = (
    "obtain BFM 2009 from the University of Basel, convert it with Deep3DFaceRecon's "
    "BFM_model_front.mat script, then pass it with `--face-model bfm --face-model-path FILE` "
    "or run `faceclip models install bfm --from FILE`"
)
_REQUIRED = ("meanshape", "idBase", "exBase", "tri", "keypoints")


def infer_scale_to_mm(mean_xyz: np.ndarray) -> float:
    """Scale from file units to mm, from the face's width (x extent) being 100-250 mm.

    Returns 100 for Deep3DFaceRecon files (width ~1.5), 1e-3 for micrometres, 1 for mm.

    Raises:
        ModelNotInstalledError: no candidate scale gives a plausible face width.
    """
    width = float(mean_xyz[:, 0].max() - mean_xyz[:, 0].min())
    for scale in (100.0, 1.0, 1e-3, 10.0, 1000.0):
        if 80.0 <= width * scale <= 400.0:
            return scale
    raise ModelNotInstalledError(
        f"BFM mean shape is {width:.3g} units wide: cannot infer its units", hint=BFM_HINT
    )


def cylindrical_uv(xyz: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Per-corner UVs (F, 3, 2) from a cylindrical projection about +Y, front at u = 0.5."""
    c = xyz - xyz.mean(axis=0)
    u = 0.5 + np.arctan2(c[:, 0], c[:, 2]) / (2 * np.pi)
    y = c[:, 1]
    v = (y - y.min()) / max(float(np.ptp(y)), 1e-9)
    uv = np.stack([u, v], axis=1)
    return uv[triangles]


def convert_bfm(path: Path) -> ModelArrays:
    """Read ``BFM_model_front.mat`` (Deep3DFaceRecon layout) into :class:`ModelArrays`.

    Raises:
        ModelNotInstalledError: file missing, unreadable, or lacking the expected variables.
    """
    from scipy.io import loadmat

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotInstalledError(f"BFM file not found: {path}", hint=BFM_HINT)
    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise ModelNotInstalledError(f"cannot read BFM file {path}: {exc}", hint=BFM_HINT) from None
    missing = [k for k in _REQUIRED if k not in mat]
    if missing:
        raise ModelNotInstalledError(
            f"{path} is not a BFM_model_front.mat: missing {', '.join(missing)}", hint=BFM_HINT
        )
    mean = np.asarray(mat["meanshape"], dtype=np.float64).reshape(-1, 3)
    n = mean.shape[0]

    def basis(key: str) -> np.ndarray:
        b = np.asarray(mat[key], dtype=np.float64)
        if b.shape[0] != 3 * n:
            raise ModelNotInstalledError(
                f"{path}: {key} has shape {b.shape}, expected ({3 * n}, K)", hint=BFM_HINT
            )
        return b.T.reshape(b.shape[1], n, 3)

    id_basis, exp_basis = basis("idBase"), basis("exBase")
    tri = np.asarray(mat["tri"], dtype=np.int64).reshape(-1, 3) - 1
    lmk = np.asarray(mat["keypoints"], dtype=np.int64).reshape(-1) - 1
    if tri.min() < 0 or tri.max() >= n or lmk.shape != (68,) or lmk.min() < 0 or lmk.max() >= n:
        raise ModelNotInstalledError(f"{path}: tri or keypoints index outside the {n} vertices",
                                     hint=BFM_HINT)
    scale = infer_scale_to_mm(mean)
    mean_c = mean - mean.mean(axis=0)  # centred, as Deep3DFaceRecon does
    tri = _orient_outward(mean_c, tri)

    albedo_mean = albedo_basis = None
    if "meantex" in mat and "texBase" in mat:
        albedo_mean = np.asarray(mat["meantex"], dtype=np.float64).reshape(-1, 3) / 255.0
        albedo_basis = basis("texBase") / 255.0
    regions = derive_regions(mean_c * scale, lmk, face_vertices=np.arange(n))
    if "skinmask" in mat:
        skin = np.nonzero(np.asarray(mat["skinmask"]).reshape(-1) > 0)[0]
        if skin.size and skin.max() < n:
            regions["skin"] = skin.astype(np.int64)
    n_tri = tri.shape[0]
    return ModelArrays(
        name="bfm",
        mean=mean_c.astype(np.float32),
        identity_basis=id_basis.astype(np.float32),
        expression_basis=exp_basis.astype(np.float32),
        expression_names=[f"exp{i:02d}" for i in range(exp_basis.shape[0])],
        triangles=tri,
        uv=cylindrical_uv(mean_c, tri).astype(np.float32),
        tri_polygon=np.arange(n_tri),
        landmarks68=lmk,
        regions=regions,
        geometries={"full": {"vertex_ranges": [[0, n - 1]], "polygon_ranges": [[0, n_tri - 1]],
                             "doc": "the whole front-face BFM mesh"}},
        default_geometry="full",
        scale_to_mm=scale,
        licence=BFM_LICENCE,
        source=str(path),
        expression_range="pca",
        albedo_mean=None if albedo_mean is None else albedo_mean.astype(np.float32),
        albedo_basis=None if albedo_basis is None else albedo_basis.astype(np.float32),
    )


def _orient_outward(xyz: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Flip all triangles if most face inward (normals against the +Z viewing side)."""
    p = xyz[tri]
    normals = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    # A front-face mesh: most area faces +Z (toward the viewer).
    if normals[:, 2].sum() < 0:
        return tri[:, [0, 2, 1]]
    return tri
