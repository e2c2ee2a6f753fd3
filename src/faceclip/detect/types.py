"""Typed results of face detection.

Coordinates are original-image pixels: x right, y down, origin at the top-left corner of the
image, pixel centres at ``+0.5`` (dlib's integer pixel index ``i`` is coordinate ``i + 0.5``;
a box covering pixels ``left..right`` spans ``[left, right + 1)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Face", "LANDMARK_GROUPS_68", "box_iou"]

#: Index ranges of the 68-point (iBUG 300-W / Multi-PIE) scheme, 0-based, end exclusive.
LANDMARK_GROUPS_68: dict[str, tuple[int, int]] = {
    "jaw": (0, 17),
    "right_brow": (17, 22),  # the subject's right = image left in a frontal photo
    "left_brow": (22, 27),
    "nose_bridge": (27, 31),
    "nose_lower": (31, 36),
    "right_eye": (36, 42),
    "left_eye": (42, 48),
    "outer_lip": (48, 60),
    "inner_lip": (60, 68),
}


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: ``(4,)`` float64 ``[x0, y0, x1, y1]``, the detector's box in image pixels
            (edges, so width = ``x1 - x0``).
        score: detector confidence (HOG: SVM margin, > 0 above the default threshold;
            CNN: MMOD confidence). Comparable only within one detector.
        landmarks: ``(68, 2)`` float64 ``(x, y)`` image pixels (iBUG 300-W order), or
            ``None`` when landmarks were not requested.
        detector: ``"hog"``, ``"cnn"``, ``"mediapipe"`` or a merge such as
            ``"mediapipe+hog"`` (found by both).
        extra: detector-specific data: ``"mesh478"`` ``(478, 3)`` MediaPipe's face mesh
            (x, y image pixels, relative depth z), ``"keypoints6"``, ``"boxes"``, ``"scores"``.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray | None = None
    detector: str = "hog"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        """Box height in pixels."""
        return float(self.box[3] - self.box[1])

    @property
    def size_px(self) -> float:
        """Face size: the shorter box side in pixels."""
        return min(self.width, self.height)

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return self.width * self.height

    def to_dict(self, decimals: int = 2) -> dict[str, Any]:
        """JSON-ready ``{"box": [...], "score": s, "detector": name, "landmarks68": [[x, y], ...]}``,
        plus ``"landmarks478": [[x, y, z], ...]`` when the face has MediaPipe's mesh and
        ``"network_points"`` when the dense landmark network ran on it."""
        out: dict[str, Any] = {
            "box": [round(float(v), decimals) for v in self.box],
            "score": round(float(self.score), 4),
            "detector": self.detector,
        }
        if self.landmarks is not None:
            out["landmarks68"] = [[round(float(x), decimals), round(float(y), decimals)] for x, y in self.landmarks]
        mesh = self.extra.get("mesh478")
        if mesh is not None:
            out["landmarks478"] = [[round(float(v), decimals) for v in p] for p in mesh]
        net = self.extra.get("network_points")
        if net is not None:  # a faceclip.detect.landmark_net.DenseLandmarks
            out["network_points"] = {
                "vertex_ids": [int(i) for i in net.vertex_ids],
                "points": [[round(float(x), decimals), round(float(y), decimals)] for x, y in net.points_px],
                "sigma_px": [round(float(s), decimals) for s in net.sigma_px],
                "layout": "68 landmarks (2D-detector convention), then one point per vertex id"}
        return out
