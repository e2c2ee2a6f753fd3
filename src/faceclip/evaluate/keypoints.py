"""Keypoint conventions of the benchmarks, as indices into the iBUG / Multi-PIE 68-point scheme.

The 68-point scheme (0-based): jaw 0-16, brows 17-26 (17-21 the subject's right), nose bridge
27-30, lower nose 31-35 (33 = subnasale, the "nose bottom"), eyes 36-47 (36/39 outer/inner corner
of the subject's right eye, 42/45 inner/outer corner of the left), outer lips 48-59 (48/54 mouth
corners), inner lips 60-67.

- The **seven keypoints** of NoW and REALY's global alignment: right eye outer/inner corner, left
  eye inner/outer corner, nose bottom, right/left mouth corner = ``[36, 39, 42, 45, 33, 48, 54]``
  (REALY's ``keypoints_region_map["seven_keypoints"]``; NoW's ``.pp`` order, see its
  ``landmarks_7_annotated.png``).
- **REALY** works with 85 barycentric keypoints on the HIFI3D topology: the 68 above plus 17
  extra ones (68-84: nose-wing / cheek points). Its region sets use 70, 71 (nose) and 76, 77
  (cheek) from the extra ones. With 85 keypoints we use REALY's sets exactly; with 68 we use the
  same sets without those four points.
- **Face models** supply their 68 landmark vertices (``FaceModel.landmarks68``); for a mesh on a
  model's topology the keypoints are simply those vertices.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SEVEN_KEYPOINTS_68",
    "REALY_RIGID_KEYPOINTS",
    "REALY_NONRIGID_KEYPOINTS",
    "realy_keypoint_set",
    "seven_from",
    "OUTER_EYE_CORNERS_68",
    "realy_regions_for_model",
]

SEVEN_KEYPOINTS_68: tuple[int, ...] = (36, 39, 42, 45, 33, 48, 54)
#: Outer eye corners (the 300-W "inter-ocular" distance of the 2D NME).
OUTER_EYE_CORNERS_68: tuple[int, int] = (36, 45)

_BROWS = tuple(range(17, 27))
_EYES = tuple(range(36, 48))
_MOUTH = tuple(range(48, 60)) + (60, 64)
_NOSE = tuple(range(27, 36))

#: REALY's per-region keypoints for the regional rigid ICP (``rICP``; region -> index list).
REALY_RIGID_KEYPOINTS: dict[str, tuple[int, ...]] = {
    "forehead": _EYES + _BROWS,
    "mouth": _MOUTH,
    "nose": (27, 28, 29, 30, 31, 35, 32, 33, 34, 70, 71),  # REALY's "nose_part"
    "cheek": _MOUTH + (76, 77, 36, 41, 40, 39, 42, 47, 46, 45, 7, 8, 9),
}

#: REALY's per-region keypoints for the non-rigid step of the bidirectional evaluation
#: (the cheek uses none).
REALY_NONRIGID_KEYPOINTS: dict[str, tuple[int, ...]] = {
    "forehead": _EYES + _BROWS,
    "mouth": _MOUTH,
    "nose": _NOSE,
    "cheek": (),
}


def realy_keypoint_set(table: dict[str, tuple[int, ...]], region: str, n_keypoints: int) -> np.ndarray:
    """The indices of ``table[region]`` that exist among ``n_keypoints`` (68 or 85)."""
    idx = np.asarray([i for i in table[region] if i < n_keypoints], dtype=np.int64)
    return idx


def seven_from(keypoints: np.ndarray) -> np.ndarray:
    """(7, 3) seven keypoints from 7, 68 or 85 keypoints (rows in the documented order)."""
    k = np.asarray(keypoints, np.float64)
    if k.shape[0] == 7:
        return k
    if k.shape[0] in (68, 85):
        return k[list(SEVEN_KEYPOINTS_68)]
    raise ValueError(f"expected 7, 68 or 85 keypoints, got {k.shape[0]}")


def realy_regions_for_model(model) -> dict[str, np.ndarray]:
    """REALY-style region vertex sets on a face model's topology (for synthetic ground truth).

    REALY's four regions are crops of the scan: ``nose``, ``mouth``, ``forehead`` (the upper face
    *including the eyebrows and eyes*: its keypoints are the 22 brow and eye landmarks, pinned
    during the non-rigid step) and ``cheek``. The model's own ``nose``, ``mouth`` and ``cheeks``
    regions are used as they are; its ``forehead`` (above the brows) is extended down to 3 mm
    below the lower eyelids and sideways to 5 mm beyond the brow ends, without the nose, so that
    every brow and eye keypoint lies on the region as in REALY.

    Args:
        model: a :class:`faceclip.facemodel.FaceModel`.
    Returns:
        ``{"nose", "mouth", "forehead", "cheek"} -> (N,) int64`` vertex indices.
    """
    mean = model.mean_mm.detach().cpu().numpy().astype(np.float64)
    regions = {k: v.detach().cpu().numpy().astype(np.int64) for k, v in model.regions.items()}
    lm = mean[model.landmarks68.detach().cpu().numpy()]
    face = regions["face"]
    front = mean[face, 2] > min(lm[0, 2], lm[16, 2]) - 10.0
    xy = mean[face, :2]
    x_lo = min(lm[17, 0], lm[26, 0]) - 5.0
    x_hi = max(lm[17, 0], lm[26, 0]) + 5.0
    y_lo = lm[36:48, 1].min() - 3.0
    top = mean[regions["forehead"], 1].max() if len(regions["forehead"]) else lm[17:27, 1].max() + 40.0
    band = front & (xy[:, 0] >= x_lo) & (xy[:, 0] <= x_hi) & (xy[:, 1] >= y_lo) & (xy[:, 1] <= top)
    upper = np.setdiff1d(face[band], regions["nose"])
    forehead = np.union1d(regions["forehead"], upper)
    eyeballs = np.setdiff1d(regions.get("eyes", np.zeros(0, np.int64)), face)
    forehead = np.setdiff1d(forehead, eyeballs)
    return {
        "nose": regions["nose"],
        "mouth": regions["mouth"],
        "forehead": forehead,
        "cheek": regions["cheeks"],
    }
