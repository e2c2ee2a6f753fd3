"""Samples and batches: :class:`FaceSample` (one aligned crop with 68 landmarks, skin mask and
optional ground-truth parameters), :class:`FaceBatch` and :func:`collate`, :func:`resize_sample`,
:func:`iter_batches`, and the iBUG-68 mirror order (:data:`FLIP_PERMUTATION_68`,
:func:`mirror_landmarks`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from faceclip.errors import InputError
from faceclip.facemodel.params import FaceParams


# =========================================================================== landmarks: mirror order


def _mirror_permutation_68() -> np.ndarray:
    pairs = [(i, 16 - i) for i in range(8)]  # jaw 0..7 <-> 16..9, 8 is the chin
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows: 17..21 <-> 26..22
    pairs += [(31, 35), (32, 34)]  # nostrils; bridge 27..30 and 33 stay
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lip; 51, 57 stay
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lip; 62, 66 stay
    perm = np.arange(68)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    perm.setflags(write=False)
    return perm


#: iBUG-68 left-right mirror order: after mirroring an image, landmark ``i`` of the mirrored face
#: is the mirrored point ``FLIP_PERMUTATION_68[i]`` of the original (an involution).
FLIP_PERMUTATION_68: np.ndarray = _mirror_permutation_68()


def mirror_landmarks(landmarks_px: Tensor, width_px: float) -> Tensor:
    """Landmarks of the horizontally mirrored image: ``x -> W - x`` and the 68 points re-indexed.

    Args:
        landmarks_px: ``(..., 68, 2)`` pixels (pixel centres at +0.5, so ``W - x`` is exact).
        width_px: image width ``W``.

    Returns:
        ``(..., 68, 2)`` landmarks of the mirrored face, in iBUG order.
    """
    perm = torch.from_numpy(FLIP_PERMUTATION_68.copy()).to(landmarks_px.device)
    out = landmarks_px.index_select(-2, perm).clone()
    out[..., 0] = width_px - out[..., 0]
    return out


# =========================================================================== samples and batches


@dataclass
class FaceSample:
    """One training face.

    Attributes:
        image: ``(3, S, S)`` float32 RGB in [0, 1], the aligned crop.
        landmarks_px: ``(68, 2)`` float32 crop pixels (iBUG order, pixel centres at +0.5).
        skin_mask: ``(S, S)`` float32, 1 on skin (photometric-loss pixels), else 0.
        params: ground-truth :class:`FaceParams` (batch of 1) in the crop camera, synthetic
            samples only; ``None`` for photos.
        source: where it came from (``"photo.jpg#0"``, ``"synthetic:<seed>:<index>"``).
    """

    image: Tensor
    landmarks_px: Tensor
    skin_mask: Tensor
    params: FaceParams | None = None
    source: str = ""

    @property
    def size_px(self) -> int:
        """Crop side ``S``."""
        return int(self.image.shape[-1])


@dataclass
class FaceBatch:
    """A batch of :class:`FaceSample` (see :func:`collate`).

    Attributes:
        image: ``(B, 3, S, S)`` float32 in [0, 1].
        landmarks_px: ``(B, 68, 2)`` float32 crop pixels.
        skin_mask: ``(B, S, S)`` float32 in {0, 1}.
        params: batched ground-truth :class:`FaceParams` (``B`` rows), or ``None`` when no
            sample has any; rows of samples without parameters are zeros.
        params_valid: ``(B,)`` bool, which rows of ``params`` are ground truth.
        sources: ``B`` source names.
    """

    image: Tensor
    landmarks_px: Tensor
    skin_mask: Tensor
    params: FaceParams | None
    params_valid: Tensor
    sources: list[str] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return int(self.image.shape[0])

    def __len__(self) -> int:
        return self.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> FaceBatch:
        """The batch on ``device``."""
        return FaceBatch(
            image=self.image.to(device, non_blocking=non_blocking),
            landmarks_px=self.landmarks_px.to(device, non_blocking=non_blocking),
            skin_mask=self.skin_mask.to(device, non_blocking=non_blocking),
            params=None if self.params is None else self.params.to(device),
            params_valid=self.params_valid.to(device, non_blocking=non_blocking),
            sources=list(self.sources),
        )

    def pin_memory(self) -> FaceBatch:
        """Page-locked copy (``DataLoader(pin_memory=True)`` calls this)."""
        params = None
        if self.params is not None:
            params = replace(self.params, **{k: v.pin_memory() for k, v in self.params.tensors().items()})
        return FaceBatch(self.image.pin_memory(), self.landmarks_px.pin_memory(), self.skin_mask.pin_memory(),
                         params, self.params_valid.pin_memory(), list(self.sources))


def collate(samples: Sequence[FaceSample]) -> FaceBatch:
    """Stack samples into a :class:`FaceBatch` (``DataLoader(..., collate_fn=collate)``).

    Samples may mix photos and synthetic faces: ``params`` is then batched with zero rows for the
    photos and ``params_valid`` says which rows are real.

    Raises:
        InputError: no samples, different crop sizes, or parameter sets of different shapes.
    """
    if len(samples) == 0:
        raise InputError("cannot collate an empty list of samples")
    sizes = {tuple(s.image.shape) for s in samples}
    if len(sizes) != 1:
        raise InputError(f"samples of different image shapes cannot be batched: {sorted(sizes)}")
    valid = torch.tensor([s.params is not None for s in samples], dtype=torch.bool)
    params = None
    if bool(valid.any()):
        first = next(s.params for s in samples if s.params is not None)
        assert first is not None
        filler = replace(first, **{k: torch.zeros_like(v) for k, v in first.tensors().items()})
        rows = [s.params if s.params is not None else filler for s in samples]
        try:
            if len({r.image_size for r in rows}) != 1:
                raise InputError("ground-truth parameters of different image sizes cannot be batched")
            params = replace(first, **{k: torch.cat([getattr(r, k) for r in rows]) for k in first.tensors()})
        except RuntimeError as exc:
            raise InputError(f"ground-truth parameters of different shapes cannot be batched ({exc})") from exc
    return FaceBatch(
        image=torch.stack([s.image for s in samples]),
        landmarks_px=torch.stack([s.landmarks_px for s in samples]).float(),
        skin_mask=torch.stack([s.skin_mask for s in samples]).float(),
        params=params,
        params_valid=valid,
        sources=[s.source for s in samples],
    )


def resize_sample(sample: FaceSample, size_px: int) -> FaceSample:
    """A FaceSample at another crop size: same field of view, image/mask resampled (area),
    landmarks scaled (continuous pixel coordinates), ground-truth focal length scaled."""
    S = sample.image.shape[-1]
    if S == size_px:
        return sample
    s = size_px / S
    image = torch.nn.functional.interpolate(sample.image[None], size=(size_px, size_px), mode="area")[0]
    mask = torch.nn.functional.interpolate(sample.skin_mask[None, None].float(), size=(size_px, size_px), mode="area")[0, 0]
    params = sample.params.at_crop_size(size_px) if sample.params is not None else None
    return replace(sample, image=image, landmarks_px=sample.landmarks_px * s, skin_mask=(mask > 0.5).float(),
                   params=params)


def iter_batches(dataset: Dataset, batch_size: int, indices: Sequence[int] | None = None) -> Iterator[FaceBatch]:
    """Batches of a dataset in order, without a DataLoader (validation, tests)."""
    idx = list(range(len(dataset))) if indices is None else list(indices)  # type: ignore[arg-type]
    for i in range(0, len(idx), batch_size):
        yield collate([dataset[j] for j in idx[i:i + batch_size]])
