"""MediaPipe's face-mesh points tied to the ICT face model's surface, with their uncertainty.

The file ``faceclip/data/mediapipe_ict_calibration.npz`` is made by
``tools/calibrate_mediapipe.py`` from synthetic renders with known geometry (seed 101, never the
benchmark's seed 0 or the tuning seed 7); the script prints its residuals. It holds, for each of
the 478 MediaPipe points:

- ``triangle`` ``(478,)``: the ICT triangle (``head_eyes`` geometry) the point lies on, ``-1``
  for points not tied to the surface (the 36 face-oval points, which are silhouette points, and
  the 10 iris points, which follow the gaze);
- ``bary`` ``(478, 3)``: barycentric coordinates in that triangle (least squares over the
  renders where the triangle is visible);
- ``sigma_mm`` ``(478, 3)``: the spread of the point around its surface point (isotropic 2D
  Gaussian, millimetres at the face) in each yaw bin ``pose_bins_deg`` (0-20, 20-40, 40+);

and a linear map from the 478 points to the 68 landmarks of the 2D-detector convention
(iBUG order, jaw contour on the silhouette): ``map68_index`` ``(68, J)`` and ``map68_weight``
``(68, J)`` (weights sum to 1 per landmark, so the map commutes with translation, rotation and
scale of the image).

Example::

    cal = load_calibration()
    lm68 = cal.landmarks68(mesh478[:, :2])         # (68, 2)
    pts = cal.dense_points()                       # DensePoints for the fitter
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceclip.errors import ModelNotInstalledError

__all__ = ["CALIBRATION_FILE", "FACE_OVAL", "IRIS", "DensePoints", "MeshCalibration", "load_calibration"]

CALIBRATION_FILE = Path(__file__).resolve().parents[1] / "data" / "mediapipe_ict_calibration.npz"

#: MediaPipe face-mesh indices of the face oval, in order around the face (forehead first).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
#: The refined iris points (centre and four around it, both eyes).
IRIS = tuple(range(468, 478))


@dataclass(frozen=True)
class DensePoints:
    """Model surface points with observed 2D positions' uncertainty, for the fitter.

    Attributes:
        point_ids: ``(K,)`` MediaPipe indices of the points used.
        vertex_ids: ``(K, 3)`` ICT vertices of each point's triangle.
        bary: ``(K, 3)`` barycentric coordinates.
        sigma_mm: ``(K, B)`` standard deviation per pose bin (mm at the face).
        pose_bins_deg: ``(B, 2)`` |yaw| bin edges in degrees.
    """

    point_ids: np.ndarray
    vertex_ids: np.ndarray
    bary: np.ndarray
    sigma_mm: np.ndarray
    pose_bins_deg: np.ndarray

    def sigma_at(self, yaw_deg: float) -> np.ndarray:
        """``(K,)`` sigma (mm) for a head yaw (degrees)."""
        a = abs(float(yaw_deg))
        j = int(np.searchsorted(self.pose_bins_deg[:, 1], a, side="right"))
        return self.sigma_mm[:, min(j, self.sigma_mm.shape[1] - 1)]


class MeshCalibration:
    """The contents of the calibration file (see the module docstring)."""

    def __init__(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        self.path = path
        self.triangle = np.asarray(arrays["triangle"], np.int64)
        self.bary = np.asarray(arrays["bary"], np.float64)
        self.sigma_mm = np.asarray(arrays["sigma_mm"], np.float64)
        self.pose_bins_deg = np.asarray(arrays["pose_bins_deg"], np.float64)
        self.map68_index = np.asarray(arrays["map68_index"], np.int64)
        w = np.asarray(arrays["map68_weight"], np.float64)
        self.map68_weight = w / w.sum(1, keepdims=True)  # exactly affine despite float32 storage
        self.n_vertices = int(arrays["n_vertices"])
        self.n_triangles = int(arrays["n_triangles"])
        if self.triangle.shape != (478,) or self.map68_index.shape[0] != 68:
            raise ModelNotInstalledError(f"{path}: not a MediaPipe calibration file (unexpected shapes)",
                                         hint="regenerate it: python tools/calibrate_mediapipe.py")

    def landmarks68(self, mesh_xy: np.ndarray) -> np.ndarray:
        """``(478, 2)`` MediaPipe points -> ``(68, 2)`` landmarks (same pixel frame)."""
        pts = np.asarray(mesh_xy, np.float64)[:, :2]
        return np.einsum("kj,kjc->kc", self.map68_weight, pts[self.map68_index])

    def dense_points(self, triangles: np.ndarray, exclude: tuple[int, ...] = ()) -> DensePoints:
        """The points tied to the surface, for a model with these ``(F, 3)`` triangles.

        Raises:
            ModelNotInstalledError: the model's mesh is not the one calibrated (ICT head_eyes).
        """
        tris = np.asarray(triangles)
        if len(tris) != self.n_triangles:
            raise ModelNotInstalledError(
                f"the MediaPipe calibration is for a mesh of {self.n_triangles} triangles, the face model has "
                f"{len(tris)}", hint="dense MediaPipe landmarks work with the ICT model (--face-model ict)")
        use = self.triangle >= 0
        if exclude:
            use[list(exclude)] = False
        ids = np.flatnonzero(use)
        return DensePoints(ids, tris[self.triangle[ids]], self.bary[ids], self.sigma_mm[ids], self.pose_bins_deg)


@functools.cache
def load_calibration(path: str | None = None) -> MeshCalibration:
    """Load the calibration file (the shipped one by default), once per process."""
    p = Path(path) if path else CALIBRATION_FILE
    if not p.is_file():
        raise ModelNotInstalledError(f"MediaPipe calibration file not found: {p}",
                                     hint="it ships with faceclip; regenerate it with python tools/calibrate_mediapipe.py")
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    return MeshCalibration(arrays, p)
