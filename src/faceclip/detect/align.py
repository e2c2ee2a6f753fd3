"""Five-point similarity alignment of a face to a square crop, with its exact inverse.

Five points are taken from the 68 landmarks (two eye centres, nose tip, two mouth corners)
and fitted by least squares to :data:`FIVE_POINT_TEMPLATE` with a 2-D similarity
(scale, rotation, translation). The resulting :class:`SimilarityTransform` maps image pixels
to crop pixels; its inverse is computed in closed form (float64), so anything computed on
the crop (landmarks, renderings, masks) maps back to the original image exactly.

Both the image and the crop use continuous pixel coordinates: x right, y down, origin at the
top-left corner, pixel centres at ``+0.5``.

Example::

    faces = detect_faces(rgb)
    aligned = align_face(rgb, faces[0].landmarks)          # 224 x 224 crop
    aligned.crop.shape                                      # (224, 224, 3) uint8
    pts_img = aligned.transform.crop_to_image(pts_crop)     # (N, 2) -> (N, 2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from faceclip.errors import InputError
from faceclip.conventions import FIVE_POINT_TEMPLATE  # the crop's conventions, shared with the crop camera
from faceclip.io.images import as_rgb_uint8

__all__ = [
    "DEFAULT_CROP_PX",
    "FIVE_POINT_TEMPLATE",
    "AlignedFace",
    "SimilarityTransform",
    "align_face",
    "estimate_similarity",
    "five_points_from_68",
    "warp_to_crop",
]

DEFAULT_CROP_PX = 224


def five_points_from_68(landmarks68: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners from 68 landmarks.

    Args:
        landmarks68: ``(68, 2)`` points in iBUG 300-W order.

    Returns:
        ``(5, 2)``: mean of 36..41, mean of 42..47, point 30, point 48, point 54.
    """
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2):
        raise InputError(f"expected (68, 2) landmarks, got shape {lm.shape}")
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


@dataclass(frozen=True)
class SimilarityTransform:
    """A 2-D similarity ``p_crop = s * R(theta) @ p_image + t`` and its inverse.

    Attributes:
        matrix: ``(3, 3)`` float64 homogeneous matrix, image pixels -> crop pixels.
    """

    matrix: np.ndarray

    @classmethod
    def from_params(cls, scale: float, rotation_rad: float, translation: tuple[float, float]) -> SimilarityTransform:
        """Build from scale, angle and shift: ``[[s cos, -s sin, tx], [s sin, s cos, ty]]``.

        With y pointing down, a positive angle turns points clockwise on screen.
        """
        c, s = scale * np.cos(rotation_rad), scale * np.sin(rotation_rad)
        m = np.array([[c, -s, translation[0]], [s, c, translation[1]], [0.0, 0.0, 1.0]])
        return cls(m)

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return float(np.hypot(self.matrix[0, 0], self.matrix[1, 0]))

    @property
    def rotation_rad(self) -> float:
        """Rotation angle in radians (``atan2(m10, m00)``)."""
        return float(np.arctan2(self.matrix[1, 0], self.matrix[0, 0]))

    @property
    def matrix_2x3(self) -> np.ndarray:
        """``(2, 3)`` image -> crop (continuous pixel coordinates)."""
        return self.matrix[:2].copy()

    @property
    def inverse_matrix(self) -> np.ndarray:
        """``(3, 3)`` crop -> image, the closed-form inverse ``[R^T/s, -R^T t/s]``."""
        a = self.matrix[:2, :2]
        t = self.matrix[:2, 2]
        a_inv = a.T / (self.scale**2)
        out = np.eye(3)
        out[:2, :2] = a_inv
        out[:2, 2] = -a_inv @ t
        return out

    def inverse(self) -> SimilarityTransform:
        """The transform crop -> image."""
        return SimilarityTransform(self.inverse_matrix)

    def image_to_crop(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` image points to crop points (same shape, float64)."""
        return _apply(self.matrix, points)

    def crop_to_image(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` crop points to image points (same shape, float64)."""
        return _apply(self.inverse_matrix, points)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: both 2x3 matrices, scale and rotation."""
        return {
            "image_to_crop": self.matrix_2x3.tolist(),
            "crop_to_image": self.inverse_matrix[:2].tolist(),
            "scale": self.scale,
            "rotation_rad": self.rotation_rad,
        }


@dataclass(frozen=True)
class AlignedFace:
    """A face warped to a square crop.

    Attributes:
        crop: ``(S, S, 3)`` uint8 RGB crop.
        transform: image -> crop similarity (``transform.inverse()`` maps back).
        landmarks: ``(68, 2)`` float64 landmarks in crop pixels.
        valid: ``(S, S)`` bool, True where the crop pixel lies inside the source image
            (outside it the crop holds the border fill and should be masked out of losses).
    """

    crop: np.ndarray
    transform: SimilarityTransform
    landmarks: np.ndarray
    valid: np.ndarray

    @property
    def size_px(self) -> int:
        """Crop side in pixels."""
        return int(self.crop.shape[0])


def estimate_similarity(src: np.ndarray, dst: np.ndarray, *, allow_rotation: bool = True) -> SimilarityTransform:
    """Least-squares similarity mapping ``src`` points onto ``dst`` points.

    Closed form (points as complex numbers ``z``: ``w = a z + b``, Umeyama without
    reflection). With ``allow_rotation=False`` only scale and translation are fitted.

    Args:
        src: ``(N, 2)`` points, N >= 2, not all equal.
        dst: ``(N, 2)`` target points.

    Returns:
        The transform with ``transform.image_to_crop(src) ~= dst``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise InputError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    z = src[:, 0] + 1j * src[:, 1]
    w = dst[:, 0] + 1j * dst[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    denom = float(np.sum(np.abs(zc) ** 2))
    if denom < 1e-12:
        raise InputError("cannot align: the source points coincide")
    a = np.sum(wc * np.conj(zc)) / denom
    if not allow_rotation:
        a = complex(max(a.real, 1e-12), 0.0)
    b = w.mean() - a * z.mean()
    m = np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag], [0.0, 0.0, 1.0]])
    return SimilarityTransform(m)


def align_face(
    image: np.ndarray,
    landmarks68: np.ndarray,
    *,
    size_px: int = DEFAULT_CROP_PX,
    template: np.ndarray = FIVE_POINT_TEMPLATE,
    allow_rotation: bool = True,
    border: str = "constant",
) -> AlignedFace:
    """Warp a face to a square crop from its 68 landmarks.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        landmarks68: ``(68, 2)`` image pixels.
        size_px: crop side ``S``.
        template: ``(5, 2)`` five-point template in unit crop coordinates.
        allow_rotation: fit rotation too (roll-normalised crop); False keeps the image's
            orientation (scale and translation only).
        border: ``"constant"`` (black) or ``"replicate"`` fill outside the image.

    Returns:
        :class:`AlignedFace` with the crop, transform, crop landmarks and validity mask.
    """
    rgb = as_rgb_uint8(image)
    lm = np.asarray(landmarks68, dtype=np.float64)
    transform = estimate_similarity(
        five_points_from_68(lm), np.asarray(template, dtype=np.float64) * size_px, allow_rotation=allow_rotation
    )
    crop = warp_to_crop(rgb, transform, size_px, border=border)
    return AlignedFace(
        crop=crop,
        transform=transform,
        landmarks=transform.image_to_crop(lm),
        valid=_valid_mask(transform, rgb.shape[1], rgb.shape[0], size_px),
    )


def warp_to_crop(
    image: np.ndarray,
    transform: SimilarityTransform,
    size_px: int,
    *,
    border: str = "constant",
) -> np.ndarray:
    """Resample ``image`` into an ``(S, S, C)`` crop through ``transform`` (bilinear).

    Respects the pixel-centre convention exactly (OpenCV works on pixel indices, so the
    matrix is conjugated by the half-pixel shift). When the crop shrinks the face by more
    than 2x, the region under the crop is first reduced with area averaging, so the crop is
    not aliased.

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` array (any dtype OpenCV warps).
        transform: image -> crop similarity.
        size_px: crop side ``S``.
        border: ``"constant"`` (zeros) or ``"replicate"``.
    """
    if border not in ("constant", "replicate"):
        raise InputError(f"border must be 'constant' or 'replicate', got {border!r}")
    src, m = _prefilter(image, transform.matrix, size_px)
    m_idx = m[:2].copy()
    m_idx[:, 2] = m[:2, 2] + m[:2, :2] @ np.array([0.5, 0.5]) - 0.5
    mode = cv2.BORDER_CONSTANT if border == "constant" else cv2.BORDER_REPLICATE
    return cv2.warpAffine(src, m_idx, (size_px, size_px), flags=cv2.INTER_LINEAR, borderMode=mode, borderValue=0)


# --------------------------------------------------------------------------- helpers


def _apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] != 2:
        raise InputError(f"points must have shape (..., 2), got {p.shape}")
    return p @ m[:2, :2].T + m[:2, 2]


def _prefilter(image: np.ndarray, m: np.ndarray, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the region under the crop and area-reduce it when the warp shrinks by > 2x.

    Returns the (possibly) smaller source and the matrix from its pixels to crop pixels.
    """
    t = SimilarityTransform(m)
    if t.scale >= 0.5:
        return image, m
    h, w = image.shape[:2]
    corners = t.crop_to_image(np.array([[0, 0], [size_px, 0], [0, size_px], [size_px, size_px]], dtype=np.float64))
    pad = 2.0 / t.scale
    x0 = int(max(0, np.floor(corners[:, 0].min() - pad)))
    y0 = int(max(0, np.floor(corners[:, 1].min() - pad)))
    x1 = int(min(w, np.ceil(corners[:, 0].max() + pad)))
    y1 = int(min(h, np.ceil(corners[:, 1].max() + pad)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image, m
    roi = image[y0:y1, x0:x1]
    r = 2.0 * t.scale
    nw, nh = max(1, round((x1 - x0) * r)), max(1, round((y1 - y0) * r))
    small = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
    rx, ry = nw / (x1 - x0), nh / (y1 - y0)
    # small-image coords u -> image coords x = u / r + offset
    to_image = np.array([[1.0 / rx, 0.0, x0], [0.0, 1.0 / ry, y0], [0.0, 0.0, 1.0]])
    return small, m @ to_image


def _valid_mask(transform: SimilarityTransform, width: int, height: int, size_px: int) -> np.ndarray:
    """``(S, S)`` bool: crop pixel centres that map inside the image."""
    c = np.arange(size_px, dtype=np.float64) + 0.5
    gx, gy = np.meshgrid(c, c)
    pts = transform.crop_to_image(np.stack([gx, gy], axis=-1))
    return (pts[..., 0] >= 0) & (pts[..., 0] < width) & (pts[..., 1] >= 0) & (pts[..., 1] < height)
