"""Dense landmarks from the project's own network (:mod:`faceclip.nets.landmarks`) on a photo.

The network sees a face the way it was trained: an aligned crop (the five-point alignment of
:func:`faceclip.detect.align_face`, at the network's input size). A first pass aligns on the
front-end's 68 landmarks (MediaPipe or dlib); a second pass re-aligns on the network's own 68
points, which makes the crop independent of the front-end's errors. Points and their sigmas are
returned in image pixels.

Example::

    from faceclip.detect.landmark_net import DenseLandmarker
    lm = DenseLandmarker()                          # the shipped network
    dense = lm.predict(rgb, face.landmarks)         # face from faceclip.detect.find_faces
    dense.points_px.shape, dense.sigma_px.shape     # (318, 2) (318,)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DenseLandmarks", "DenseLandmarker"]


@dataclass
class DenseLandmarks:
    """The network's points for one face.

    Attributes:
        points_px: (K, 2) image pixels: the 68 landmarks (2D-detector convention), then the
            N dense model vertices ``vertex_ids``.
        sigma_px: (K,) standard deviation of each point (image pixels).
        vertex_ids: (N,) model vertices of the dense points.
    """

    points_px: np.ndarray
    sigma_px: np.ndarray
    vertex_ids: np.ndarray

    @property
    def landmarks68(self) -> np.ndarray:
        """(68, 2) the iBUG landmarks."""
        return self.points_px[:68]

    @property
    def dense_px(self) -> np.ndarray:
        """(N, 2) the dense vertices' positions."""
        return self.points_px[68:]

    @property
    def dense_sigma_px(self) -> np.ndarray:
        """(N,) their sigmas."""
        return self.sigma_px[68:]


class DenseLandmarker:
    """Runs a dense landmark network on faces of photos.

    Args:
        path: network file (default :func:`faceclip.nets.landmarks.default_landmark_net_path`).
        device: torch device.
        face_model: when given, the file must be made for it.
        passes: 1 (align on the given landmarks only) or 2 (then re-align on the network's).
    """

    def __init__(self, path: str | Path | None = None, device: str = "cpu", face_model=None, passes: int = 2) -> None:
        from faceclip.nets.landmarks import default_landmark_net_path, load_landmark_net

        if passes not in (1, 2):
            raise ValueError(f"passes must be 1 or 2, got {passes}")
        self.path = Path(path) if path else default_landmark_net_path()
        self.net = load_landmark_net(self.path, device=device, face_model=face_model)
        self.device = device
        self.passes = int(passes)
        self.vertex_ids = np.asarray(self.net.config.vertex_ids, np.int64)

    @property
    def crop_px(self) -> int:
        return self.net.config.crop_px

    @torch.no_grad()
    def predict_crop(self, crop_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(S, S, 3) uint8 aligned crop -> points (K, 2) and sigmas (K,) in crop pixels."""
        x = torch.from_numpy(np.ascontiguousarray(crop_rgb)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        mu, log_sigma = self.net(x)
        return mu[0].cpu().numpy().astype(np.float64), self.net.sigma_px(log_sigma)[0].cpu().numpy().astype(np.float64)

    def predict(self, rgb: np.ndarray, landmarks68: np.ndarray) -> DenseLandmarks:
        """Points of the face whose 68 landmarks (image pixels) are given, in image pixels."""
        from faceclip.detect.align import align_face

        lm = np.asarray(landmarks68, np.float64)
        pts = sig = None
        for _ in range(max(1, self.passes)):
            aligned = align_face(rgb, lm, size_px=self.crop_px)
            mu, s = self.predict_crop(aligned.crop)
            pts = aligned.transform.crop_to_image(mu)
            sig = s / aligned.transform.scale
            lm = pts[:68]
        assert pts is not None and sig is not None
        return DenseLandmarks(pts, sig, self.vertex_ids)
