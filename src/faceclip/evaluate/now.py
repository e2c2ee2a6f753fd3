"""NoW: scan-to-mesh error of a neutral-face reconstruction (Sanyal et al., CVPR 2019).

Follows the public evaluation (soubhiksanyal/now_evaluation: ``scan2mesh_computations.py``,
``compute_error.py``, ``cumulative_errors.py``), read and re-implemented:

1. **Crop** the ground-truth scan to a sphere around the face: centre = nose bottom + 0.3 (mid
   inner-eye-corner point - nose bottom), radius = 1.4 * (outer-eye-corner distance +
   nose length) / 2, using the scan's 7 landmarks; keep the vertices inside and the triangles
   whose corners are all kept.
2. **Rigid alignment with scale** of the prediction from its 7 landmarks to the scan's
   (Procrustes, least-squares scale).
3. **Refinement**: the similarity (s, R, t) of the prediction minimising the sum of squared
   scan-to-mesh distances of the cropped scan's vertices (NoW minimises the same objective with
   chumpy's dogleg; we alternate closest points and closed-form similarity fits, which descends
   the same objective, until it changes by < 1e-4 relative or 100 iterations).
4. **Errors**: the distance of every cropped scan vertex to the aligned prediction's surface.
   Over a dataset NoW reports the median, mean and standard deviation of all these distances
   pooled over all images (not of per-image means); :func:`now_summary` does the same.

Landmark order (7): right eye outer corner, right eye inner corner, left eye inner corner, left
eye outer corner, nose bottom, right mouth corner, left mouth corner (iBUG-68 indices
``[36, 39, 42, 45, 33, 48, 54]``).

Deviation: NoW's Procrustes allows a reflection when it fits better ("best"); we never reflect
(a mirrored prediction is not a valid alignment of a face, and for real faces the best fit is
never a reflection).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceclip.evaluate.geometry import Similarity, SurfaceQuery, align_surface_to_points, fit_similarity
from faceclip.evaluate.keypoints import seven_from
from faceclip.evaluate.mesh import Mesh

__all__ = ["NowResult", "now_crop_indices", "now_crop_scan", "now_evaluate", "now_summary"]


@dataclass
class NowResult:
    """Per-image result: the distances (mm) of the cropped scan's vertices to the prediction.

    Attributes:
        distances_mm: (N,) one per cropped scan vertex.
        alignment: the similarity applied to the prediction.
        scan_indices: (N,) the scan vertex of each distance (for error maps).
    """

    distances_mm: np.ndarray
    alignment: Similarity
    scan_indices: np.ndarray | None = None

    @property
    def median_mm(self) -> float:
        return float(np.median(self.distances_mm))

    @property
    def mean_mm(self) -> float:
        return float(np.mean(self.distances_mm))

    @property
    def std_mm(self) -> float:
        return float(np.std(self.distances_mm))

    def as_dict(self) -> dict:
        return {"median_mm": self.median_mm, "mean_mm": self.mean_mm, "std_mm": self.std_mm,
                "n_points": int(len(self.distances_mm)), "scale": float(self.alignment.scale)}


def now_crop_scan(scan: Mesh, scan_landmarks7: np.ndarray) -> Mesh:
    """Crop a scan to NoW's face sphere (see module docstring)."""
    return scan.submesh(now_crop_indices(scan, scan_landmarks7))[0]


def now_crop_indices(scan: Mesh, scan_landmarks7: np.ndarray) -> np.ndarray:
    """Indices of the scan vertices inside NoW's face sphere."""
    lm = seven_from(scan_landmarks7)
    nose_bottom = lm[4]
    bridge = (lm[1] + lm[2]) / 2.0
    centre = nose_bottom + 0.3 * (bridge - nose_bottom)
    radius = 1.4 * (np.linalg.norm(lm[0] - lm[3]) + np.linalg.norm(bridge - nose_bottom)) / 2.0
    return np.nonzero(np.linalg.norm(scan.vertices - centre, axis=1) <= radius)[0]


def now_evaluate(
    pred: Mesh,
    pred_landmarks: np.ndarray,
    scan: Mesh,
    scan_landmarks: np.ndarray,
    *,
    refine: bool = True,
    max_iterations: int = 100,
) -> NowResult:
    """Evaluate one prediction against one scan with the NoW protocol.

    Args:
        pred: predicted mesh (any topology, scale and pose).
        pred_landmarks: (7, 3), (68, 3) or (85, 3) landmarks of the prediction.
        scan: ground-truth scan (mm).
        scan_landmarks: (7, 3) (or 68/85) landmarks of the scan.
        refine: run the scan-to-mesh refinement (NoW does).
    """
    keep = now_crop_indices(scan, scan_landmarks)
    cropped = scan.submesh(keep)[0]
    if cropped.n_vertices == 0:
        raise ValueError("the NoW crop of the scan is empty: are the scan landmarks in the scan's frame?")
    init = fit_similarity(seven_from(pred_landmarks), seven_from(scan_landmarks), with_scale=True)
    surface = SurfaceQuery(pred)
    T = init
    if refine:
        T, _ = align_surface_to_points(surface, cropped.vertices, init=init, with_scale=True,
                                       max_iterations=max_iterations, tolerance=1e-10, relative_tolerance=1e-4)
    _, dist, _ = surface.closest(T.inverse().apply(cropped.vertices))
    return NowResult(dist * T.scale, T, keep)


def now_summary(results: list[NowResult]) -> dict[str, float]:
    """NoW's dataset figures: median / mean / std of all distances pooled over the images."""
    if not results:
        return {"median_mm": float("nan"), "mean_mm": float("nan"), "std_mm": float("nan"), "n_images": 0}
    d = np.concatenate([r.distances_mm for r in results])
    return {"median_mm": float(np.median(d)), "mean_mm": float(np.mean(d)), "std_mm": float(np.std(d)),
            "n_images": len(results)}
