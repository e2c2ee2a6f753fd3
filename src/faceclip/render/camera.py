"""Pinhole camera (OpenCV convention) and landmark projection.

Conventions (shared by the whole project):

- Model/world space: millimetres, right-handed, +X toward the subject's left, +Y up, +Z out of
  the face toward the viewer.
- Camera space (OpenCV): ``X_cam = R @ X + t``; x right, y down, z forward (positive depth).
- Pixels: x right, y down, origin at the image's top-left corner, pixel ``(i, j)`` covers
  ``[j, j+1) x [i, i+1)`` and its centre is ``(j + 0.5, i + 0.5)``.

A frontal view of a face is ``R = diag(1, -1, -1)``, ``t = (0, 0, distance_mm)``; see
:meth:`PerspectiveCamera.frontal`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from faceclip.render.backend import use_numba

__all__ = ["PerspectiveCamera", "project_landmarks", "OPENCV_TO_VIEW"]

#: Maps OpenCV camera axes (x right, y down, z forward) to the "view" frame used for
#: lighting (x right, y up, z toward the viewer), as in Deep3DFaceRecon.
OPENCV_TO_VIEW = (1.0, -1.0, -1.0)


def _as_batch(value: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """Broadcast a scalar or (B,) / (1,) value to a (B,) tensor on ``like``'s device."""
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.ndim == 0:
        v = v.expand(batch)
    return v.reshape(-1).expand(batch) if v.numel() == 1 else v.reshape(batch)


@dataclass(frozen=True)
class PerspectiveCamera:
    """A batch of pinhole cameras.

    Attributes:
        R: (B, 3, 3) rotations, model -> camera.
        t: (B, 3) translations in mm.
        fx, fy: (B,) focal lengths in pixels.
        cx, cy: (B,) principal point in pixels (top-left origin, pixel centres at +0.5).
        image_size: (height, width) in pixels.
    """

    R: Tensor
    t: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    image_size: tuple[int, int]

    @staticmethod
    def create(
        R: Tensor,
        t: Tensor,
        focal_px: Tensor | float | tuple[float, float],
        image_size: tuple[int, int],
        principal_point_px: Tensor | tuple[float, float] | None = None,
    ) -> PerspectiveCamera:
        """Build a camera, broadcasting scalars.

        Args:
            R: (3, 3) or (B, 3, 3) rotation.
            t: (3,) or (B, 3) translation in mm.
            focal_px: scalar (fx = fy), a pair (fx, fy), or a (B,) / (B, 2) tensor.
            image_size: (height, width).
            principal_point_px: (cx, cy), (B, 2) tensor, or None for the image centre.
        """
        R = torch.as_tensor(R)
        if not R.is_floating_point():
            R = R.float()
        R = R.reshape(-1, 3, 3)
        t = torch.as_tensor(t, dtype=R.dtype, device=R.device).reshape(-1, 3)
        batch = max(R.shape[0], t.shape[0])
        R, t = R.expand(batch, 3, 3), t.expand(batch, 3)
        f = torch.as_tensor(focal_px, dtype=R.dtype, device=R.device)
        if f.ndim >= 1 and f.shape[-1] == 2:
            f2 = f.reshape(-1, 2)
            fx, fy = _as_batch(f2[:, 0], batch, R), _as_batch(f2[:, 1], batch, R)
        else:
            fx = fy = _as_batch(f, batch, R)
        h, w = int(image_size[0]), int(image_size[1])
        if principal_point_px is None:
            c = torch.tensor([w / 2.0, h / 2.0], dtype=R.dtype, device=R.device)
        else:
            c = torch.as_tensor(principal_point_px, dtype=R.dtype, device=R.device)
        c = c.reshape(-1, 2)
        return PerspectiveCamera(
            R=R, t=t, fx=fx, fy=fy,
            cx=_as_batch(c[:, 0], batch, R), cy=_as_batch(c[:, 1], batch, R),
            image_size=(h, w),
        )

    @staticmethod
    def frontal(
        distance_mm: float,
        focal_px: float,
        image_size: tuple[int, int],
        batch_size: int = 1,
        center_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> PerspectiveCamera:
        """A camera on the +Z axis looking at ``center_mm`` (face upright, facing the camera).

        ``R = diag(1, -1, -1)`` and ``t = (-cx, cy, cz + distance_mm)`` for ``center_mm = (cx, cy, cz)``,
        so that ``center_mm`` lands on the principal point at depth ``distance_mm``.
        """
        R = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=dtype, device=device))
        c = torch.tensor(center_mm, dtype=dtype, device=device)
        t = -(R @ c) + torch.tensor([0.0, 0.0, distance_mm], dtype=dtype, device=device)
        cam = PerspectiveCamera.create(R, t, focal_px, image_size)
        return cam.expand(batch_size) if batch_size != 1 else cam

    @property
    def batch_size(self) -> int:
        return int(self.R.shape[0])

    @property
    def device(self) -> torch.device:
        return self.R.device

    @property
    def K(self) -> Tensor:
        """(B, 3, 3) intrinsic matrices."""
        K = torch.zeros(self.batch_size, 3, 3, dtype=self.R.dtype, device=self.R.device)
        K[:, 0, 0], K[:, 1, 1] = self.fx, self.fy
        K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = self.cx, self.cy, 1.0
        return K

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PerspectiveCamera:
        """Move (and optionally cast) every tensor."""
        def mv(x: Tensor) -> Tensor:
            return x.to(device=device, dtype=dtype)
        return replace(self, R=mv(self.R), t=mv(self.t), fx=mv(self.fx), fy=mv(self.fy),
                       cx=mv(self.cx), cy=mv(self.cy))

    def expand(self, batch_size: int) -> PerspectiveCamera:
        """Repeat a single camera ``batch_size`` times (no-op if already that size)."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot expand a batch of {self.batch_size} cameras to {batch_size}")
        return replace(
            self, R=self.R.expand(batch_size, 3, 3), t=self.t.expand(batch_size, 3),
            fx=self.fx.expand(batch_size), fy=self.fy.expand(batch_size),
            cx=self.cx.expand(batch_size), cy=self.cy.expand(batch_size),
        )

    def to_camera(self, points_mm: Tensor) -> Tensor:
        """Model -> camera coordinates.

        Args:
            points_mm: (N, 3) or (B, N, 3) points in model space.
        Returns:
            (B, N, 3) points in OpenCV camera space (mm), z = depth.
        """
        if points_mm.ndim == 2:
            points_mm = points_mm.unsqueeze(0)
        return torch.matmul(points_mm, self.R.transpose(1, 2)) + self.t.unsqueeze(1)

    def camera_to_pixels(self, points_cam: Tensor) -> Tensor:
        """Perspective division and intrinsics: (B, N, 3) camera points -> (B, N, 2) pixels."""
        z = points_cam[..., 2]
        x = self.fx[:, None] * points_cam[..., 0] / z + self.cx[:, None]
        y = self.fy[:, None] * points_cam[..., 1] / z + self.cy[:, None]
        return torch.stack([x, y], dim=-1)

    def project(self, points_mm: Tensor) -> Tensor:
        """Project model-space points to pixels.

        Args:
            points_mm: (N, 3) or (B, N, 3).
        Returns:
            (B, N, 2) pixel coordinates (x right, y down, pixel centres at +0.5).
        """
        return self.camera_to_pixels(self.to_camera(points_mm))

    def project_with_depth(self, points_mm: Tensor) -> tuple[Tensor, Tensor]:
        """Like :meth:`project`, also returning (B, N) camera depth in mm."""
        pts = points_mm.unsqueeze(0) if points_mm.ndim == 2 else points_mm
        if pts.ndim == 3 and pts.shape[0] in (1, self.batch_size) and use_numba(pts, self.R):
            from faceclip.render._numba_ops import Project  # compiled CPU path, same values

            return Project.apply(pts, self.R, self.t, torch.stack([self.fx, self.fy], 1),
                                 torch.stack([self.cx, self.cy], 1))
        cam = self.to_camera(points_mm)
        return self.camera_to_pixels(cam), cam[..., 2]

    def to_view(self, directions: Tensor) -> Tensor:
        """Rotate model-space directions (e.g. normals) into the lighting view frame.

        The view frame is x right, y up, z toward the camera (``diag(1,-1,-1) @ R``), the frame
        in which spherical-harmonics coefficients are expressed (Deep3DFaceRecon convention).
        For a frontal camera it coincides with model space.

        Args:
            directions: (N, 3) or (B, N, 3).
        Returns:
            (B, N, 3).
        """
        if directions.ndim == 2:
            directions = directions.unsqueeze(0)
        flip = torch.tensor(OPENCV_TO_VIEW, dtype=self.R.dtype, device=self.R.device)
        R_view = self.R * flip[None, :, None]
        return torch.matmul(directions, R_view.transpose(1, 2))


def project_landmarks(vertices_mm: Tensor, landmark_indices: Tensor, camera: PerspectiveCamera) -> Tensor:
    """Project mesh landmarks (vertex indices) to pixels.

    Args:
        vertices_mm: (V, 3) or (B, V, 3) mesh vertices in model space.
        landmark_indices: (K,) long vertex indices (e.g. the 68 Multi-PIE landmarks).
        camera: a batch of B cameras (or 1, broadcast).
    Returns:
        (B, K, 2) pixel coordinates; differentiable wrt vertices and camera.
    """
    idx = torch.as_tensor(landmark_indices, dtype=torch.long, device=vertices_mm.device)
    return camera.project(vertices_mm.index_select(-2, idx))
