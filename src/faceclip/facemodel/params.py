"""The parameters of one reconstructed face, as one typed object that travels along the pipeline.

Frames: the face model lives in model space (mm; +X subject's left, +Y up, +Z out of the face).
The head pose is a rotation given by Euler angles (pitch about +X, yaw about +Y, roll about +Z,
applied in that order: ``R_head = Rz(roll) @ Ry(yaw) @ Rx(pitch)``) and a translation. The camera
is OpenCV-style (x right, y down, z forward), so model -> camera is
``X_cam = F @ R_head @ X + t`` with ``F = diag(1, -1, -1)``: zero angles give a frontal face.
Positive yaw turns the face toward the subject's left (the nose moves to the image's right);
positive pitch tilts the face down (the nose moves down in the image); positive roll turns it
counter-clockwise as seen by the camera... in model terms, about +Z.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

import math

import numpy as np

from faceclip.conventions import DEFAULT_FOCAL_224, FIVE_POINT_TEMPLATE  # the crop's conventions, re-exported
from faceclip.render.camera import OPENCV_TO_VIEW, PerspectiveCamera

#: ``F = diag(1, -1, -1)``: the model frame's axes (y up, z toward the viewer) to the OpenCV
#: camera's (y down, z forward) and back (its own inverse).
MODEL_TO_OPENCV = np.diag(OPENCV_TO_VIEW)
MODEL_TO_OPENCV.setflags(write=False)


def euler_matrix_np(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """:func:`euler_to_matrix` for one face in float64 NumPy: ``Rz(roll) @ Ry(yaw) @ Rx(pitch)``."""
    cx, sx, cy, sy, cz, sz = math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw), math.cos(roll), math.sin(roll)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def euler_jacobian_np(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """(3, 3, 3) derivatives of :func:`euler_matrix_np` (last axis: pitch, yaw, roll), float64."""
    p, y, r = pitch, yaw, roll
    cp, sp, cy, sy, cr, sr = np.cos(p), np.sin(p), np.cos(y), np.sin(y), np.cos(r), np.sin(r)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    drx = np.array([[0, 0, 0], [0, -sp, -cp], [0, cp, -sp]])
    dry = np.array([[-sy, 0, cy], [0, 0, 0], [-cy, 0, -sy]])
    drz = np.array([[-sr, -cr, 0], [cr, -sr, 0], [0, 0, 0]])
    return np.stack([rz @ ry @ drx, rz @ dry @ rx, drz @ ry @ rx], axis=-1)


def pose_from_landmarks(points_mm: np.ndarray, landmarks_px: np.ndarray, K: np.ndarray,
                        distance_mm: float | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Head pose by PnP: the one place faces are posed from 2D landmarks (OpenCV's iterative
    Levenberg-Marquardt, ``cv2.solvePnP``), on the inner landmarks 17-67 (the jaw contour
    slides with the pose, so it is left out).

    The search starts frontal (the model's axes turned into the OpenCV camera's), with the
    points' centroid on the ray through the landmarks' centroid at ``distance_mm`` (None: the
    distance at which the outer eye corners, 36 and 45, are as far apart as in the image).

    Args:
        points_mm: (68, 3) the model's landmark points, model frame (mm).
        landmarks_px: (68, 2) the detected landmarks (pixels).
        K: (3, 3) camera intrinsics (no distortion).

    Returns:
        ``(R, t, ok)``: the OpenCV camera rotation (3, 3) and translation (3,) mm,
        ``X_cam = R @ X_model + t``; ``ok`` False when PnP failed or put the face behind the
        camera, in which case the frontal start is returned.
    """
    import cv2

    obj = np.asarray(points_mm, np.float64)
    img = np.asarray(landmarks_px, np.float64)
    f = float(K[0, 0])
    if distance_mm is None:
        spread = float(np.linalg.norm(img[36] - img[45])) + 1e-6
        distance_mm = f * float(np.linalg.norm(obj[36] - obj[45])) / spread
    if not np.isfinite(distance_mm) or distance_mm <= 0:
        distance_mm = 600.0  # broken landmarks: an arm's length, so the fallback stays usable
    inner = img[17:][np.isfinite(img[17:]).all(1)]
    centre = inner.mean(0) if len(inner) else K[:2, 2].astype(np.float64)
    rvec0, _ = cv2.Rodrigues(MODEL_TO_OPENCV)
    ray = np.array([(centre[0] - K[0, 2]) / f, (centre[1] - K[1, 2]) / K[1, 1], 1.0])
    tvec0 = (ray * distance_mm - MODEL_TO_OPENCV @ obj[17:].mean(0)).reshape(3, 1)
    usable = np.isfinite(img[17:]).all(1) & np.isfinite(obj[17:]).all(1)
    ok, rvec, tvec = False, rvec0, tvec0
    if usable.sum() >= 6:  # PnP needs a few points; a broken detector's NaNs are left out
        ok, rvec, tvec = cv2.solvePnP(obj[17:][usable], img[17:][usable], K.astype(np.float64), None, rvec0.copy(),
                                      tvec0.copy(), useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    ok = bool(ok) and bool(np.isfinite(tvec).all()) and bool(np.isfinite(rvec).all()) and float(tvec[2, 0]) > 0
    if not ok:
        rvec, tvec = rvec0, tvec0
    R, _ = cv2.Rodrigues(rvec)
    return R, tvec.reshape(3).astype(np.float64), ok


def euler_to_matrix(angles_rad: Tensor) -> Tensor:
    """(B, 3) (pitch, yaw, roll) in radians -> (B, 3, 3) ``Rz(roll) @ Ry(yaw) @ Rx(pitch)``."""
    p, y, r = angles_rad.unbind(-1)
    cp, sp, cy, sy, cr, sr = p.cos(), p.sin(), y.cos(), y.sin(), r.cos(), r.sin()
    one, zero = torch.ones_like(p), torch.zeros_like(p)
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(-1, 3, 3)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def matrix_to_euler(R: Tensor) -> Tensor:
    """Inverse of :func:`euler_to_matrix` for |yaw| < 90 degrees: (B, 3, 3) -> (B, 3)."""
    yaw = torch.asin((-R[:, 2, 0]).clamp(-1.0, 1.0))
    pitch = torch.atan2(R[:, 2, 1], R[:, 2, 2])
    roll = torch.atan2(R[:, 1, 0], R[:, 0, 0])
    return torch.stack([pitch, yaw, roll], dim=-1)


@dataclass
class FaceParams:
    """Parameters of B faces.

    Attributes:
        identity: (B, K_id) identity coefficients (N(0, 1) prior).
        expression: (B, K_exp) expression coefficients (ICT: blendshape weights in [0, 1]).
        angles_rad: (B, 3) head pitch, yaw, roll.
        translation_mm: (B, 3) translation in camera space (z = distance to the camera).
        focal_px: (B,) focal length in pixels of the image the face is fitted in.
        sh: (B, 9, 3) spherical-harmonics lighting, 9 bands x RGB (see faceclip.render).
        albedo: (B, K_alb, 3) albedo coefficients (meaning set by the albedo model).
        image_size: (H, W) of the image the camera refers to.
    """

    identity: Tensor
    expression: Tensor
    angles_rad: Tensor
    translation_mm: Tensor
    focal_px: Tensor
    sh: Tensor
    albedo: Tensor
    image_size: tuple[int, int]

    @property
    def batch_size(self) -> int:
        return int(self.identity.shape[0])

    def rotation(self) -> Tensor:
        """(B, 3, 3) head rotation in model space."""
        return euler_to_matrix(self.angles_rad)

    def camera(self) -> PerspectiveCamera:
        """The OpenCV camera that images the posed head (principal point at the image centre)."""
        flip = torch.tensor(OPENCV_TO_VIEW, dtype=self.angles_rad.dtype, device=self.angles_rad.device)
        R = flip[None, :, None] * self.rotation()
        h, w = self.image_size
        return PerspectiveCamera.create(R, self.translation_mm, self.focal_px, (h, w),
                                        principal_point_px=(w / 2.0, h / 2.0))

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "image_size"}

    def detach(self) -> "FaceParams":
        return replace(self, **{k: v.detach().clone() for k, v in self.tensors().items()})

    def at_crop_size(self, size_px: int) -> "FaceParams":
        """The same camera field of view for a square crop of ``size_px`` pixels (focal scaled)."""
        h, _ = self.image_size
        if h == size_px:
            return self
        return replace(self, focal_px=self.focal_px * (size_px / h), image_size=(size_px, size_px))

    def to(self, device: torch.device | str) -> "FaceParams":
        return replace(self, **{k: v.to(device) for k, v in self.tensors().items()})

    @staticmethod
    def initial(batch: int, n_identity: int, n_expression: int, n_albedo: int, image_size: tuple[int, int],
                focal_px: float, distance_mm: float, device: torch.device | str = "cpu") -> "FaceParams":
        """Mean face, frontal, at ``distance_mm``, with ambient white light and mean albedo."""
        sh = torch.zeros(batch, 9, 3, device=device)
        sh[:, 0] = 0.8
        return FaceParams(
            identity=torch.zeros(batch, n_identity, device=device),
            expression=torch.zeros(batch, n_expression, device=device),
            angles_rad=torch.zeros(batch, 3, device=device),
            translation_mm=torch.tensor([[0.0, 0.0, distance_mm]], device=device).repeat(batch, 1),
            focal_px=torch.full((batch,), float(focal_px), device=device),
            sh=sh,
            albedo=torch.zeros(batch, n_albedo, 3, device=device),
            image_size=image_size,
        )
