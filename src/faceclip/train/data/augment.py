"""Augmentation: :class:`Augment` (random similarity + flip of image, landmarks and mask, then a
colour jitter), its parts (:func:`geometry_matrix`, :func:`warp_sample`, :func:`color_jitter`),
and the per-``(seed, epoch, index)`` generator and dataset base that make it reproducible."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from faceclip.train.data.samples import FLIP_PERMUTATION_68, FaceSample


# =========================================================================== augmentation

_GRAY = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


@dataclass(frozen=True)
class AugmentDraw:
    """One draw of :class:`Augment`'s random values.

    Attributes:
        matrix: ``(3, 3)`` float64, input crop pixels -> output crop pixels (flip included).
        flip: whether the image is mirrored (landmarks are re-indexed).
        brightness, contrast, saturation: multiplicative factors (1 = unchanged).
        hue: hue rotation in turns (0 = unchanged).
    """

    matrix: np.ndarray
    flip: bool
    brightness: float
    contrast: float
    saturation: float
    hue: float


@dataclass(frozen=True)
class Augment:
    """Random similarity + flip (image, landmarks, mask) and colour jitter (image).

    Defaults follow Deep3DFaceRecon's training augmentation (shift +-10 px, scale 0.9-1.1,
    rotation +-10 deg about the crop centre, flip with probability 0.5) plus a small colour
    jitter. Samples with ground-truth parameters get the colour jitter only (see the module
    docstring). Pixels that the warp brings in from outside the crop are black and not skin.

    Attributes:
        shift_px: maximum shift in x and y (crop pixels, uniform).
        scale_range: scale about the crop centre (uniform).
        rotation_deg: maximum in-plane rotation (uniform; positive turns clockwise on screen).
        flip_p: probability of a horizontal flip.
        brightness, contrast, saturation: maximum relative change (factor uniform in 1 +- x).
        hue: maximum hue rotation in turns (0.02 = 7.2 degrees of hue).
    """

    shift_px: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    rotation_deg: float = 10.0
    flip_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02

    def draw(self, generator: torch.Generator | None = None, size_px: int = 224) -> AugmentDraw:
        """Draw the random values (always 9 uniforms from ``generator``, whatever the settings)."""
        u = torch.rand(9, generator=generator, dtype=torch.float64).tolist()
        lo, hi = self.scale_range
        matrix = geometry_matrix(
            size_px,
            scale=lo + u[2] * (hi - lo),
            rotation_rad=math.radians((2 * u[3] - 1) * self.rotation_deg),
            shift_px=((2 * u[0] - 1) * self.shift_px, (2 * u[1] - 1) * self.shift_px),
            flip=u[4] < self.flip_p,
        )
        return AugmentDraw(
            matrix=matrix,
            flip=u[4] < self.flip_p,
            brightness=1.0 + (2 * u[5] - 1) * self.brightness,
            contrast=1.0 + (2 * u[6] - 1) * self.contrast,
            saturation=1.0 + (2 * u[7] - 1) * self.saturation,
            hue=(2 * u[8] - 1) * self.hue,
        )

    def __call__(self, sample: FaceSample, generator: torch.Generator | None = None) -> FaceSample:
        """Augment one sample (a new object; the input is not modified)."""
        d = self.draw(generator, sample.size_px)
        if sample.params is None:
            sample = warp_sample(sample, d.matrix, flip=d.flip)
        image = color_jitter(sample.image, d.brightness, d.contrast, d.saturation, d.hue)
        return replace(sample, image=image)


def geometry_matrix(size_px: int, *, scale: float = 1.0, rotation_rad: float = 0.0,
                    shift_px: tuple[float, float] = (0.0, 0.0), flip: bool = False) -> np.ndarray:
    """``(3, 3)`` crop -> crop map: mirror (optional), scale and rotate about the centre, shift.

    ``p' = c + shift + s * R(theta) @ F @ (p - c)`` with ``c = (S/2, S/2)`` and
    ``F = diag(-1, 1)`` when flipping (``x -> S - x``: pixel ``j`` lands on pixel ``S-1-j``).
    """
    c = size_px / 2.0
    cos, sin = math.cos(rotation_rad), math.sin(rotation_rad)
    a = scale * np.array([[cos, -sin], [sin, cos]]) @ np.diag([-1.0 if flip else 1.0, 1.0])
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = np.array([c + shift_px[0], c + shift_px[1]]) - a @ np.array([c, c])
    return m


def warp_sample(sample: FaceSample, matrix: np.ndarray, *, flip: bool = False) -> FaceSample:
    """Apply a crop -> crop affine ``matrix`` to the image, landmarks and skin mask of a sample.

    Args:
        sample: the input (its ``params`` are carried over unchanged: only use this on samples
            without parameters, or drop them).
        matrix: ``(3, 3)`` input crop pixels -> output crop pixels.
        flip: the matrix mirrors the image: re-index the landmarks (:data:`FLIP_PERMUTATION_68`).

    Returns:
        A new sample; the mask is re-binarised (bilinear, threshold 0.5), outside pixels are 0.
    """
    import cv2

    s = sample.size_px
    stack = torch.cat([sample.image, sample.skin_mask[None].to(sample.image.dtype)]).permute(1, 2, 0)
    src = np.ascontiguousarray(stack.numpy(), dtype=np.float32)
    m_idx = matrix[:2].copy()  # OpenCV uses pixel indices: conjugate by the half-pixel shift
    m_idx[:, 2] = matrix[:2, 2] + matrix[:2, :2] @ np.array([0.5, 0.5]) - 0.5
    out = cv2.warpAffine(src, m_idx, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out_t = torch.from_numpy(out).permute(2, 0, 1)
    lm = sample.landmarks_px.double() @ torch.from_numpy(matrix[:2, :2].T) + torch.from_numpy(matrix[:2, 2])
    if flip:
        lm = lm[torch.from_numpy(FLIP_PERMUTATION_68.copy())]
    return replace(sample, image=out_t[:3].clamp(0, 1).contiguous(), landmarks_px=lm.to(sample.landmarks_px.dtype),
                   skin_mask=(out_t[3] > 0.5).to(sample.skin_mask.dtype))


def color_jitter(image: Tensor, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0,
                 hue: float = 0.0) -> Tensor:
    """Brightness, contrast, saturation and hue changes, in that order, clamped to [0, 1].

    Args:
        image: ``(..., 3, H, W)`` RGB in [0, 1].
        brightness: factor on all values.
        contrast: factor on the deviation from the mean gray level.
        saturation: factor on the deviation from each pixel's gray level.
        hue: rotation of the chroma plane (YIQ) in turns.

    Returns:
        Same shape as ``image``.
    """
    # Element-wise arithmetic only (and a float64 mean), so that the result does not depend on
    # the number of threads: a DataLoader worker gives the same bits as the main process.
    def mix(x: Tensor, w: Sequence[float]) -> Tensor:
        r, g, b = x.unbind(-3)
        return (w[0] * r + w[1] * g + w[2] * b).unsqueeze(-3)

    x = image * brightness
    mean = mix(x, _GRAY).double().mean(dim=(-2, -1), keepdim=True).to(x.dtype)
    x = (x - mean) * contrast + mean
    gray = mix(x, _GRAY)
    x = (x - gray) * saturation + gray
    if hue != 0.0:
        a = 2.0 * math.pi * hue
        rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
        m = (np.linalg.inv(_RGB_TO_YIQ) @ rot @ _RGB_TO_YIQ).tolist()
        x = torch.cat([mix(x, row) for row in m], dim=-3)
    return x.clamp(0.0, 1.0)


def _index_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on ``(seed, epoch, index)``."""
    hi, lo = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2)
    g = torch.Generator()
    g.manual_seed((int(hi) << 31) ^ int(lo))
    return g


class _AugmentedDataset(Dataset):
    """Per-index deterministic augmentation shared by the datasets."""

    augment: Augment | None
    augment_seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call once per epoch)."""
        self.epoch = int(epoch)

    def _augment(self, sample: FaceSample, index: int) -> FaceSample:
        if self.augment is None:
            return sample
        return self.augment(sample, _index_generator(self.augment_seed, self.epoch, index))
