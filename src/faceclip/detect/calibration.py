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
- ``dense_index``, ``dense_weight`` ``(478, 8)``: the image position of each such surface point
  is predicted from its 8 nearest MediaPipe points by a learnt affine combination (weights sum
  to 1), which removes part of MediaPipe's systematic error (:meth:`MeshCalibration.dense_positions`);
- ``sigma_mm`` ``(478, 3)``: the spread of the point around its surface point (isotropic 2D
  Gaussian, millimetres at the face) in each yaw bin ``pose_bins_deg`` (0-20, 20-40, 40+);
- ``noise_basis`` ``(864, R)``, ``noise_shrink`` ``(R,)``, ``noise_nu``: the errors of
  neighbouring points are strongly correlated (MediaPipe misplaces whole regions together: 24
  patterns hold ~90% of the error variance), so the fitter whitens them with this low-rank plus
  isotropic model instead of treating 432 points as 432 independent measurements;

and a linear map from the 478 points to the 68 landmarks of the 2D-detector convention
(iBUG order, jaw contour on the silhouette): ``map68_index`` ``(68, J)`` and ``map68_weight``
``(C, 68, J)``, one map per head yaw in ``map68_yaw_centres_deg`` (blended linearly; the yaw is
estimated from the mesh's own 3D points with ``yaw_template`` and ``yaw_slope_offset``). Weights
sum to 1 per landmark, so each map commutes with translation, rotation and scale of the image.
``map68_sigma`` ``(3, 68)`` is the spread of each mapped landmark around the true one in each yaw
bin (RMS per axis, in units of the inter-ocular distance), from which
:meth:`MeshCalibration.landmark_weights` weights the fit.

Example::

    cal = load_calibration()
    lm68 = cal.landmarks68(mesh478)                # (68, 2)
    pts = cal.dense_points(model.triangles)        # DensePoints for the fitter
    xy = cal.dense_positions(mesh478, pts.point_ids)   # (K, 2) their observed positions
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceclip.errors import ModelNotInstalledError

__all__ = ["CALIBRATION_FILE", "FACE_OVAL", "IRIS", "DensePoints", "MeshCalibration", "interpolation_weights",
           "load_calibration", "normalised_points", "raw_yaw"]

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
        noise_basis: ``(2K, R)`` the R most correlated error patterns of the points (rows
            ``x0, y0, x1, y1, ...`` in units of each point's sigma), or ``None``.
        noise_shrink: ``(R,)`` and ``noise_nu``: the whitening ``(I - U diag(shrink) U^T) /
            sqrt(nu)`` of errors with correlation ``U diag(lam) U^T + nu I``.
    """

    point_ids: np.ndarray
    vertex_ids: np.ndarray
    bary: np.ndarray
    sigma_mm: np.ndarray
    pose_bins_deg: np.ndarray
    noise_basis: np.ndarray | None = None
    noise_shrink: np.ndarray | None = None
    noise_nu: float = 1.0

    def sigma_at(self, yaw_deg: float) -> np.ndarray:
        """``(K,)`` sigma (mm) for a head yaw (degrees)."""
        a = abs(float(yaw_deg))
        j = int(np.searchsorted(self.pose_bins_deg[:, 1], a, side="right"))
        return self.sigma_mm[:, min(j, self.sigma_mm.shape[1] - 1)]


def normalised_points(x: np.ndarray) -> np.ndarray:
    """(N, 3) points centred and scaled to unit Frobenius norm."""
    x = np.asarray(x, np.float64) - np.mean(x, axis=0)
    return x / max(np.sqrt((x ** 2).sum()), 1e-12)


def raw_yaw(mesh468: np.ndarray, template: np.ndarray) -> float:
    """Rotation angle (degrees) about the vertical axis that best turns ``template`` onto a mesh.

    Args:
        mesh468: ``(468, 3)`` MediaPipe surface points (x, y pixels, relative depth z).
        template: ``(468, 3)`` a frontal layout, centred, unit norm.

    The similarity (Kabsch) rotation ``R`` gives ``asin(-R[2, 0])``: the yaw of ``R = Rz Ry Rx``,
    unchanged by a rotation of the photo (roll, which multiplies ``R`` by ``Rz`` on the left and
    leaves its last row alone). The calibration maps this raw angle linearly to the synthetic
    faces' yaw.
    """
    x = normalised_points(np.asarray(mesh468, np.float64)[:, :3])
    u, _, vt = np.linalg.svd(x.T @ template)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.degrees(np.arctan2(-rot[2, 0], np.hypot(rot[2, 1], rot[2, 2]))))


def interpolation_weights(value: float, centres: np.ndarray) -> np.ndarray:
    """``(C,)`` weights of piecewise-linear interpolation between sorted ``centres`` (clamped)."""
    c = np.asarray(centres, np.float64)
    w = np.zeros(len(c))
    if value <= c[0]:
        w[0] = 1.0
    elif value >= c[-1]:
        w[-1] = 1.0
    else:
        j = int(np.searchsorted(c, value)) - 1
        t = (value - c[j]) / (c[j + 1] - c[j])
        w[j], w[j + 1] = 1.0 - t, t
    return w


class MeshCalibration:
    """The contents of the calibration file (see the module docstring)."""

    def __init__(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        self.path = path
        self.triangle = np.asarray(arrays["triangle"], np.int64)
        self.bary = np.asarray(arrays["bary"], np.float64)
        self.sigma_mm = np.asarray(arrays["sigma_mm"], np.float64)
        self.pose_bins_deg = np.asarray(arrays["pose_bins_deg"], np.float64)
        self.dense_index = np.asarray(arrays["dense_index"], np.int64)
        dw = np.asarray(arrays["dense_weight"], np.float64)
        self.dense_weight = dw / np.where(dw.sum(1, keepdims=True) == 0, 1.0, dw.sum(1, keepdims=True))
        self.noise_basis = np.asarray(arrays["noise_basis"], np.float64) if "noise_basis" in arrays else None
        self.noise_shrink = np.asarray(arrays["noise_shrink"], np.float64) if "noise_shrink" in arrays else None
        self.noise_nu = float(arrays["noise_nu"]) if "noise_nu" in arrays else 1.0
        self.map68_index = np.asarray(arrays["map68_index"], np.int64)
        w = np.asarray(arrays["map68_weight"], np.float64)
        if w.ndim == 2:
            w = w[None]
        self.map68_weight = w / w.sum(-1, keepdims=True)  # (C, 68, J), exactly affine despite float32
        self.map68_yaw_centres = np.asarray(arrays.get("map68_yaw_centres_deg", [0.0]), np.float64)
        self.yaw_template = np.asarray(arrays["yaw_template"], np.float64) if "yaw_template" in arrays else None
        self.yaw_slope_offset = np.asarray(arrays.get("yaw_slope_offset", [1.0, 0.0]), np.float64)
        self.map68_sigma = (np.asarray(arrays["map68_sigma"], np.float64) if "map68_sigma" in arrays
                            else None)  # (bins, 68); older files have none
        self.n_vertices = int(arrays["n_vertices"])
        self.n_triangles = int(arrays["n_triangles"])
        if self.triangle.shape != (478,) or self.map68_index.shape[0] != 68:
            raise ModelNotInstalledError(f"{path}: not a MediaPipe calibration file (unexpected shapes)",
                                         hint="regenerate it: python tools/calibrate_mediapipe.py")

    def yaw_deg(self, mesh: np.ndarray) -> float:
        """Head yaw (degrees, the synthetic faces' convention) estimated from a ``(478, 3)`` mesh."""
        if self.yaw_template is None:
            return 0.0
        a, b = self.yaw_slope_offset
        return float(a * raw_yaw(np.asarray(mesh)[:468], self.yaw_template) + b)

    def landmarks68(self, mesh: np.ndarray) -> np.ndarray:
        """``(478, 3)`` MediaPipe mesh -> ``(68, 2)`` landmarks (same pixel frame).

        The map depends on the head's yaw, estimated from the mesh's own 3D points
        (:meth:`yaw_deg`); the maps of the two nearest trained yaws are blended linearly.
        """
        m = np.asarray(mesh, np.float64)
        w = self.map68_weight[0]
        if len(self.map68_yaw_centres) > 1:
            blend = interpolation_weights(self.yaw_deg(m), self.map68_yaw_centres)
            w = np.einsum("c,ckj->kj", blend, self.map68_weight)
        return np.einsum("kj,kjc->kc", w, m[self.map68_index, :2])

    def landmark_weights(self, yaw_deg: float) -> tuple[np.ndarray, float] | None:
        """How much to trust each of the 68 mapped landmarks, and the landmark term, for a head at
        this yaw (degrees).

        The weights are the Gaussian negative log-likelihood's ``1 / sigma^2`` with each
        landmark's spread on frontal heads (``map68_sigma``'s first bin; eye corners about 0.013
        of the inter-ocular distance, the jaw's silhouette points 0.031), normalised to sum to 68,
        each within [0.25, 4] times the median weight so that no few points dominate. The scale
        is ``(sigma_frontal / sigma(yaw))^2`` with the bins' RMS spreads interpolated linearly
        between the bins' middles (10, 30 and 50 degrees): a turned head's landmarks are less
        certain (2.4x the frontal spread above 40 degrees), so the landmark term counts less
        against the priors and the photo, in both fitting stages. Tuning seed 7 (n=40): 1.373 mm;
        the scale taken per bin 1.379, frontal weights without the scale 1.413 (fixed weights
        1.414); each bin's own per-point weights did worse than the frontal ones.

        Returns:
            ``(68,)`` weights and the scale (1 for heads within 10 degrees of frontal), or None
            when the file holds no spreads (made before they were added).
        """
        if self.map68_sigma is None:
            return None
        weights, middles, level = self._landmark_weight_tables
        spread = float(np.interp(abs(float(yaw_deg)), middles, level))
        return weights.copy(), float((level[0] / spread) ** 2)

    @functools.cached_property
    def _landmark_weight_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What :meth:`landmark_weights` needs, worked out once: the (68,) frontal weights, the
        bins' middle yaws (10, 30, 50) and their (bins,) RMS spreads."""
        w = 1.0 / np.maximum(self.map68_sigma[0], 1e-6) ** 2
        w = np.clip(w / np.median(w), 0.25, 4.0)
        level = np.sqrt((self.map68_sigma ** 2).mean(1))
        middles = np.minimum(self.pose_bins_deg.mean(1), self.pose_bins_deg[:, 0] + 10.0)
        return w * (68.0 / w.sum()), middles, level

    def dense_positions(self, mesh_xy: np.ndarray, point_ids: np.ndarray | None = None) -> np.ndarray:
        """``(478, 2)`` MediaPipe points -> ``(K, 2)`` predicted positions of the surface points.

        ``point_ids``: which points (default: all tied to the surface, as in :meth:`dense_points`).
        """
        ids = np.flatnonzero(self.triangle >= 0) if point_ids is None else np.asarray(point_ids)
        pts = np.asarray(mesh_xy, np.float64)[:, :2]
        return np.einsum("kj,kjc->kc", self.dense_weight[ids], pts[self.dense_index[ids]])

    def dense_points(self, triangles: np.ndarray) -> DensePoints:
        """The points tied to the surface, for a model with these ``(F, 3)`` triangles.

        Raises:
            ModelNotInstalledError: the model's mesh is not the one calibrated (ICT head_eyes).
        """
        tris = np.asarray(triangles)
        if len(tris) != self.n_triangles:
            raise ModelNotInstalledError(
                f"the MediaPipe calibration is for a mesh of {self.n_triangles} triangles, the face model has "
                f"{len(tris)}", hint="dense MediaPipe landmarks work with the ICT model (--face-model ict)")
        ids = np.flatnonzero(self.triangle >= 0)
        return DensePoints(ids, tris[self.triangle[ids]], self.bary[ids], self.sigma_mm[ids], self.pose_bins_deg,
                           self.noise_basis, self.noise_shrink, self.noise_nu)


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
