"""Training data: aligned face crops with 68 landmarks and skin masks, from photos or synthetic renders.

Two sources, one sample type (:class:`FaceSample`), one batch type (:class:`FaceBatch`, made by
:func:`collate`):

- **Photos.** :func:`preprocess_folder` walks a folder of photos once (recursively) and runs the
  reconstruction's front end on each: dlib detection and 68 landmarks, the five-point alignment
  to a 224 x 224 crop (:func:`faceclip.detect.align_face`) and the skin mask
  (:func:`faceclip.detect.skin_mask`). Every face is cached as one ``.npz``; a manifest records
  what was done (keyed by path, size and modification time, so a re-run only does new or changed
  files) and ``failures.tsv`` lists the files that gave nothing, with a reason (``unreadable``,
  ``no_face``, ``too_small``, ``error``). :class:`FolderFaceDataset` reads the cache.
- **Synthetic faces.** :class:`SyntheticFaceDataset` draws faces with the evaluation's
  generator (:class:`faceclip.evaluate.synthetic.SyntheticFaceGenerator`: identity, expression,
  pose, lighting, skin tone, background, all from ``(seed, index)``) and renders each directly in
  the *crop camera*: focal ``DEFAULT_FOCAL_224 * S / 224`` with the principal point at the crop
  centre, the camera the fitter and the regressor assume. The head is placed (distance, lateral
  offset, roll about the optical axis) so that its five alignment points fit the alignment
  template exactly as :func:`~faceclip.detect.align_face` frames a photo, hence synthetic crops
  look like preprocessed photos, and the ground-truth :class:`~faceclip.facemodel.params.FaceParams`
  reproduce the rendering exactly (projecting their landmarks through ``params.camera()`` gives
  the sample's landmarks).

**Augmentation** (:class:`Augment`, the ranges of Deep3DFaceRecon): a random similarity (shift,
scale, rotation about the crop centre) and a horizontal flip, applied consistently to the image,
the landmarks (exactly; a flip mirrors x and re-indexes the 68 points with
:data:`FLIP_PERMUTATION_68`) and the skin mask, then a colour jitter of the image. Samples with
ground-truth parameters only get the colour jitter: a warp of the image cannot be expressed
exactly by the parameters of a perspective camera (and a flip not at all by identity
coefficients), so the geometry of synthetic samples is varied in 3D instead, at render time
(``SyntheticFaceDataset(framing=FramingJitter())``), where the parameters stay exact. Colour
jitter does not change the geometry; the SH lighting then no longer reproduces the image's
colours exactly, which matters only for a supervised lighting loss (use ``augment=None`` there).

Randomness is reproducible: a dataset derives one :class:`torch.Generator` per
``(seed, epoch, index)``, so sample ``i`` of epoch ``e`` is the same whichever worker loads it
and in whatever order (call ``dataset.set_epoch(e)`` each epoch).

Conventions: crop pixels, x right, y down, origin at the crop's top-left corner, pixel centres
at ``+0.5`` (as in :mod:`faceclip.detect`); landmarks in iBUG 300-W order, the jaw following the
visible contour as 2D detectors place it.

Example::

    from torch.utils.data import DataLoader
    from faceclip.train.data import (Augment, FolderFaceDataset, SyntheticFaceDataset, collate,
                                     preprocess_folder)

    report = preprocess_folder("photos/", "cache/photos")          # once; re-runs skip done files
    photos = FolderFaceDataset("cache/photos", augment=Augment())
    synth = SyntheticFaceDataset(None, n=10_000, seed=1)             # ICT head_eyes by default
    batch = next(iter(DataLoader(photos, batch_size=8, shuffle=True, collate_fn=collate)))
    batch.image.shape, batch.landmarks_px.shape, batch.skin_mask.shape   # (8,3,224,224) (8,68,2) (8,224,224)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from faceclip.errors import InputError
from faceclip.facemodel.params import MODEL_TO_OPENCV, FaceParams

if TYPE_CHECKING:
    from faceclip.facemodel import FaceModel

log = logging.getLogger(__name__)

__all__ = [
    "FLIP_PERMUTATION_68",
    "Augment",
    "AugmentDraw",
    "FaceBatch",
    "FaceSample",
    "FolderFaceDataset",
    "FramingJitter",
    "PreprocessFailure",
    "PreprocessReport",
    "SyntheticFaceDataset",
    "collate",
    "color_jitter",
    "geometry_matrix",
    "iter_batches",
    "mirror_landmarks",
    "preprocess_folder",
    "read_manifest",
    "resize_sample",
    "warp_sample",
]

CACHE_FORMAT = "faceclip-face-cache"
CACHE_VERSION = 1
MANIFEST_NAME = "manifest.json"
FAILURES_NAME = "failures.tsv"
FACES_DIR = "faces"
SYNTH_FORMAT = "faceclip-synthetic-cache"
SYNTH_META_NAME = "synthetic.json"
BUILD_HINT = "build it with: faceclip prepare-data PHOTOS --out CACHE  (Python: faceclip.train.data.preprocess_folder)"
_FLUSH_EVERY = 25  # manifest is rewritten after this many processed images (a killed run keeps its work)


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


# =========================================================================== photos: preprocessing


@dataclass(frozen=True)
class PreprocessFailure:
    """A file that gave no face: ``reason`` is ``unreadable``, ``no_face``, ``too_small`` or ``error``."""

    path: str
    reason: str
    message: str


@dataclass
class PreprocessReport:
    """What :func:`preprocess_folder` did.

    Attributes:
        cache_dir: the cache.
        n_images: image files found under the source folder.
        n_processed: files processed by this run (new, changed, or processed with other options).
        n_skipped: files already in the cache, unchanged (not processed again).
        n_faces: faces in the cache after the run.
        n_new_faces: faces written by this run.
        failures: every file of the source that has no face in the cache, with its reason
            (also in ``cache_dir/failures.tsv``).
        seconds: wall time of the run.
        seconds_processing: time spent on the processed files (load, detect, align, mask, write).
    """

    cache_dir: Path
    n_images: int = 0
    n_processed: int = 0
    n_skipped: int = 0
    n_faces: int = 0
    n_new_faces: int = 0
    failures: list[PreprocessFailure] = field(default_factory=list)
    seconds: float = 0.0
    seconds_processing: float = 0.0

    @property
    def ms_per_processed_image(self) -> float:
        """Mean processing time per processed file (ms), 0 if none was processed."""
        return 1000.0 * self.seconds_processing / self.n_processed if self.n_processed else 0.0


@dataclass(frozen=True)
class _Options:
    detector: str
    all_faces: bool
    min_face_px: float
    min_score: float
    crop_px: int
    cnn_fallback: bool
    landmarks: str = "mediapipe"

    def signature(self) -> str:
        return json.dumps({"version": CACHE_VERSION, **asdict(self)}, sort_keys=True)


class _Failed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def preprocess_folder(
    src_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    detector: str = "auto",
    all_faces: bool = False,
    min_face_px: float = 32.0,
    min_score: float = 0.3,
    crop_px: int = 224,
    cnn_fallback: bool = False,
    progress: bool = True,
    landmarks: str = "mediapipe",
) -> PreprocessReport:
    """Detect, align and mask every face of a photo folder (recursively) into a training cache.

    Per photo: :func:`faceclip.io.images.load_image` (EXIF rotation, any format),
    :func:`faceclip.detect.frontend.detect_and_landmark` (the front-end of ``faceclip
    reconstruct``: ``detector`` and ``landmarks`` as there), the same selection
    (:func:`faceclip.detect.select_faces`: weak detections below ``min_score`` dropped when a
    confident one exists; the largest face, or all faces of at least ``min_face_px``),
    :func:`faceclip.detect.align_face` to an ``crop_px`` crop and
    :func:`faceclip.detect.skin_mask`. Each face becomes ``cache_dir/faces/<key>_<k>.npz``
    (``crop`` uint8 (S, S, 3), ``landmarks`` float32 (68, 2) crop pixels, ``skin_mask`` and
    ``valid`` bool (S, S), ``image_to_crop`` (3, 3), ``box`` (4,), ``score``, ``source``,
    ``face_index``), written atomically. ``manifest.json`` records every file (size, mtime,
    options, faces or failure) and is rewritten every few files, so an interrupted run keeps
    its work; ``failures.tsv`` lists failures as ``path<TAB>reason<TAB>message``.

    A re-run skips files whose relative path, size, modification time and options are
    unchanged (failures included), processes the others, and forgets files that no longer
    exist (deleting their faces). One bad file never stops the run: it is logged and listed.

    Args:
        src_dir: folder of photos (any depth; files with an image suffix; ``cache_dir`` is
            skipped if it lies inside).
        cache_dir: the cache folder (created).
        detector: ``"auto"`` (MediaPipe + dlib HOG), ``"mediapipe"``, ``"hog"`` or ``"cnn"``
            (dlib's MMOD CNN; ~2 s per photo on a CPU).
        landmarks: ``"mediapipe"`` (68 points from the calibrated mesh map) or ``"dlib68"``.
        all_faces: keep every face of a photo, not only the largest.
        min_face_px: smaller faces (shorter box side, photo pixels) are not used.
        min_score: detections scoring below this are dropped when a stronger one exists.
        crop_px: crop side ``S``.
        cnn_fallback: try the CNN detector on photos where HOG finds nothing (slow).
        progress: show a tqdm progress bar.

    Returns:
        A :class:`PreprocessReport`.

    Raises:
        InputError: ``src_dir`` is not a folder, or ``cache_dir`` was built from another
            folder or is not a face cache.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    src = Path(src_dir).expanduser().resolve()
    cache = Path(cache_dir).expanduser().resolve()
    if not src.is_dir():
        raise InputError(f"{src_dir}: not a folder of photos")
    from faceclip.detect.frontend import DETECTORS, LANDMARKERS

    if detector not in DETECTORS:
        raise InputError(f"unknown face detector {detector!r}", hint="use one of: " + ", ".join(DETECTORS))
    if landmarks not in LANDMARKERS:
        raise InputError(f"unknown landmarks {landmarks!r}", hint="use one of: " + ", ".join(LANDMARKERS))
    opts = _Options(detector, bool(all_faces), float(min_face_px), float(min_score), int(crop_px), bool(cnn_fallback),
                    landmarks)
    sig = opts.signature()
    manifest = _open_manifest(cache, src, crop_px)
    entries: dict[str, dict[str, Any]] = manifest["images"]
    files = _walk_images(src, exclude=cache)
    report = PreprocessReport(cache_dir=cache, n_images=len(files))

    rels = {f.relative_to(src).as_posix(): f for f in files}
    for gone in sorted(set(entries) - set(rels)):
        _remove_faces(cache, entries.pop(gone).get("faces", []))

    todo = []
    for rel, path in rels.items():
        try:
            st = path.stat()
        except OSError:  # vanished since the walk: processing reports it as unreadable
            todo.append((rel, path, None))
            continue
        e = entries.get(rel)
        if e and e.get("size") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns and e.get("options") == sig \
                and all((cache / name).is_file() for name in e.get("faces", [])):
            report.n_skipped += 1
        else:
            todo.append((rel, path, st))

    dirty = 0
    try:
        for rel, path, st in tqdm(todo, desc="prepare-data", unit="image", disable=not progress):
            t0 = time.perf_counter()
            old_faces = set(entries.get(rel, {}).get("faces", []))
            entry: dict[str, Any] = {"size": st.st_size if st else -1, "mtime_ns": st.st_mtime_ns if st else -1,
                                     "options": sig}
            try:
                names = _process_image(path, rel, cache, opts)
                entry.update(status="ok", faces=names)
                report.n_new_faces += len(names)
            except _Failed as exc:
                entry.update(status="failed", reason=exc.reason, message=exc.message, faces=[])
                log.info("%s: skipped (%s): %s", rel, exc.reason, exc.message)
            except Exception as exc:  # one bad file never stops the run
                log.debug("%s: unexpected failure", rel, exc_info=True)
                entry.update(status="failed", reason="error", message=f"{type(exc).__name__}: {exc}", faces=[])
                log.warning("%s: skipped (error): %s: %s", rel, type(exc).__name__, exc)
            _remove_faces(cache, sorted(old_faces - set(entry["faces"])))
            entries[rel] = entry
            report.n_processed += 1
            report.seconds_processing += time.perf_counter() - t0
            dirty += 1
            if dirty >= _FLUSH_EVERY:
                _write_manifest(cache, manifest)
                dirty = 0
    finally:
        _write_manifest(cache, manifest)
        _write_failures(cache, entries)

    report.n_faces = sum(len(e.get("faces", [])) for e in entries.values())
    report.failures = _failures_of(entries)
    report.seconds = time.perf_counter() - t_start
    log.info("prepare-data %s: %d images (%d processed, %d unchanged), %d faces in the cache, %d failures",
             src, report.n_images, report.n_processed, report.n_skipped, report.n_faces, len(report.failures))
    return report


def _process_image(path: Path, rel: str, cache: Path, opts: _Options) -> list[str]:
    """Detect, align and mask the faces of one photo; write their npz files; return their names."""
    from faceclip.detect import FacePolicy, NoFaceError, align_face, select_faces, skin_mask
    from faceclip.detect.frontend import detect_and_landmark
    from faceclip.io.images import load_image
    from faceclip.io.files import atomic_path

    try:
        rgb = load_image(path)
    except InputError as exc:
        raise _Failed("unreadable", exc.message) from exc
    faces = detect_and_landmark(rgb, opts.detector, opts.landmarks)  # type: ignore[arg-type]
    if not faces and opts.detector == "hog" and opts.cnn_fallback:
        faces = detect_and_landmark(rgb, "cnn", opts.landmarks)  # type: ignore[arg-type]
    if not faces:
        raise _Failed("no_face", "no face found")
    try:
        policy = FacePolicy(all_faces=opts.all_faces, min_face_px=opts.min_face_px, min_score=opts.min_score)
        selected = select_faces(faces, policy, source=rel)
    except NoFaceError as exc:
        raise _Failed("too_small", exc.message) from exc
    key = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:16]
    names = []
    for k, face in enumerate(selected):
        aligned = align_face(rgb, face.landmarks, size_px=opts.crop_px)
        mask = skin_mask(aligned.crop, aligned.landmarks, valid=aligned.valid)
        name = f"{FACES_DIR}/{key}_{k}.npz"
        with atomic_path(cache / name) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, crop=aligned.crop, landmarks=aligned.landmarks.astype(np.float32), skin_mask=mask,
                valid=aligned.valid, image_to_crop=aligned.transform.matrix, box=face.box,
                score=np.float64(face.score), source=np.str_(rel), face_index=np.int64(k))
        names.append(name)
    return names


def _walk_images(src: Path, exclude: Path) -> list[Path]:
    from faceclip.io.images import IMAGE_SUFFIXES

    out = []
    for root, dirs, names in os.walk(src):
        r = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (r / d).resolve() != exclude)
        out.extend(r / n for n in sorted(names) if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES)
    return out


def _open_manifest(cache: Path, src: Path, crop_px: int) -> dict[str, Any]:
    path = cache / MANIFEST_NAME
    if not path.exists():
        if cache.exists() and not cache.is_dir():
            raise InputError(f"{cache}: exists and is not a folder")
        return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "source": str(src), "crop_px": crop_px, "images": {}}
    manifest = read_manifest(cache)
    if manifest.get("source") != str(src):
        raise InputError(f"{cache}: this cache was built from {manifest.get('source')}, not {src}",
                         hint="use a separate cache folder per photo folder")
    if manifest.get("crop_px") != crop_px:
        raise InputError(f"{cache}: this cache holds {manifest.get('crop_px')} px crops, not {crop_px} px",
                         hint="use a separate cache folder per crop size")
    return manifest


def read_manifest(cache_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``manifest.json`` of a face cache.

    Raises:
        InputError: the folder or manifest is missing, unreadable or not a face cache.
    """
    cache = Path(cache_dir)
    path = cache / MANIFEST_NAME
    if not cache.is_dir():
        raise InputError(f"{cache_dir}: no such face cache", hint=BUILD_HINT)
    if not path.is_file():
        raise InputError(f"{cache_dir}: not a face cache (no {MANIFEST_NAME})", hint=BUILD_HINT)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable manifest ({exc})", hint="delete the cache folder and " + BUILD_HINT[0].lower()
                         + BUILD_HINT[1:]) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT or "images" not in manifest:
        raise InputError(f"{path}: not a FaceCLIP face-cache manifest", hint=BUILD_HINT)
    if manifest.get("version") != CACHE_VERSION:
        raise InputError(f"{path}: face-cache version {manifest.get('version')}, this FaceCLIP reads {CACHE_VERSION}",
                         hint="build the cache again into a new folder")
    return manifest


def _write_manifest(cache: Path, manifest: dict[str, Any]) -> None:
    from faceclip.io.files import atomic_path

    with atomic_path(cache / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _failures_of(entries: dict[str, dict[str, Any]]) -> list[PreprocessFailure]:
    return [PreprocessFailure(rel, e.get("reason", "error"), e.get("message", ""))
            for rel, e in sorted(entries.items()) if e.get("status") != "ok"]


def _write_failures(cache: Path, entries: dict[str, dict[str, Any]]) -> None:
    from faceclip.io.files import atomic_path

    lines = ["path\treason\tmessage"]
    for f in _failures_of(entries):
        lines.append("\t".join([f.path, f.reason, " ".join(f.message.split())]))
    with atomic_path(cache / FAILURES_NAME) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _remove_faces(cache: Path, names: Sequence[str]) -> None:
    for name in names:
        try:
            (cache / name).unlink()
        except FileNotFoundError:
            pass


class FolderFaceDataset(_AugmentedDataset):
    """The faces of a cache made by :func:`preprocess_folder`, as :class:`FaceSample` (no params).

    Args:
        cache_dir: the cache folder.
        augment: optional :class:`Augment`, drawn per ``(seed, epoch, index)``.
        seed: augmentation seed.

    Raises:
        InputError: the cache is missing, not a face cache, or holds no face (the message
            names the command that builds it).
    """

    def __init__(self, cache_dir: str | os.PathLike[str], augment: Augment | None = None, *, seed: int = 0) -> None:
        self.cache_dir = Path(cache_dir)
        manifest = read_manifest(self.cache_dir)
        self.crop_px = int(manifest.get("crop_px", 224))
        self.files: list[str] = sorted(n for e in manifest["images"].values() for n in e.get("faces", []))
        if not self.files:
            n = len(manifest["images"])
            raise InputError(f"{cache_dir}: the face cache holds no face ({n} image(s) processed, none usable; "
                             f"see {self.cache_dir / FAILURES_NAME})", hint=BUILD_HINT)
        self.augment = augment
        self.augment_seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> FaceSample:
        if not 0 <= index < len(self.files):
            raise IndexError(index)
        return self._augment(self.load(index), index)

    def load(self, index: int) -> FaceSample:
        """Sample ``index`` without augmentation."""
        path = self.cache_dir / self.files[index]
        try:
            with np.load(path, allow_pickle=False) as z:
                crop, lm, mask = z["crop"], z["landmarks"], z["skin_mask"]
                source = f"{z['source']}#{int(z['face_index'])}"
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{path}: unreadable cached face ({exc})",
                             hint="delete it and run the preprocessing again (it redoes missing faces)") from exc
        return FaceSample(
            image=torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div_(255.0),
            landmarks_px=torch.from_numpy(lm.astype(np.float32)),
            skin_mask=torch.from_numpy(mask.astype(np.float32)),
            params=None,
            source=source,
        )


# =========================================================================== synthetic faces

_F = MODEL_TO_OPENCV  # model frame -> OpenCV camera axes


@dataclass(frozen=True)
class FramingJitter:
    """Random re-framing of synthetic faces, done in 3D so that their parameters stay exact.

    The five alignment points are placed on the alignment template moved by a random
    similarity about the crop centre (the 3D equivalent of :class:`Augment`'s warp: the head
    moves and rolls in front of the crop camera). ``FramingJitter()`` uses Augment's ranges.

    Attributes:
        shift_px: maximum shift of the template in x and y (crop pixels, uniform).
        scale_range: template scale about the crop centre (uniform).
        rotation_deg: maximum template rotation (uniform).
    """

    shift_px: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    rotation_deg: float = 10.0


class SyntheticFaceDataset(_AugmentedDataset):
    """Synthetic faces with ground-truth parameters, rendered as aligned crops in the crop camera.

    Sample ``i`` depends only on ``(seed, i)`` (and the settings): the generator's draws for
    ``(seed, i)`` (identity, expression, pitch/yaw/roll, SH light, skin, hair, background,
    sensor noise), rendered with focal ``focal_px`` and the principal point at the crop centre;
    the head's distance, lateral offset and roll about the optical axis are solved so that the
    five alignment points (eye centres, nose tip, mouth corners of the landmarks) fit the
    alignment template exactly (to < 0.01 px), as :func:`~faceclip.detect.align_face` frames a
    photo. The ground truth is:

    - ``landmarks_px``: the 68 landmarks in 2D-detector convention (the jaw follows the visible
      contour, :func:`faceclip.fit.contour.landmark_vertex_ids`), like the photos' dlib points;
    - ``skin_mask``: the rendered pixels of the model's ``skin`` region not covered by the
      synthetic hair or eyebrows;
    - ``params``: :class:`FaceParams` in the crop camera (``params.camera()`` reproduces the
      rendering; angles include the solved roll; ``albedo`` is empty, ``(1, 0, 3)``: the
      synthetic skin is a procedural per-vertex colour, not coefficients of an albedo basis).

    Note: the synthetic benchmark (``faceclip benchmark synthetic``) uses seed 0; train with
    other seeds, and validate with yet another.

    Args:
        face_model: the model to draw and render (``None``: ICT ``head_eyes``, the
            reconstruction geometry). The generator needs the ICT regions.
        n: number of samples.
        seed: the generator's seed.
        image_px: crop side ``S``.
        augment: optional :class:`Augment` (colour jitter only: samples carry parameters).
        framing: optional :class:`FramingJitter` (exact geometric variation; ``None``: every face
            framed exactly on the template).
        focal_px: crop-camera focal length (default ``DEFAULT_FOCAL_224 * S / 224``).
        cache_dir: optional folder of pre-rendered samples (``s_<index>.npz``); samples missing
            there are rendered and written (atomically) on first use; see :meth:`prerender`.
        augment_seed: augmentation seed (default: ``seed``).
        realism: optional :class:`faceclip.train.realism.RealismConfig` (or a dict of its fields): photo textures and
            backgrounds, hard light, occluders, camera effects, the whole expression space
            (drawn from another stream of ``(seed, index)``; the geometry stays exact).
    """

    def __init__(
        self,
        face_model: FaceModel | None,
        n: int,
        seed: int,
        image_px: int = 224,
        augment: Augment | None = None,
        *,
        framing: FramingJitter | None = None,
        focal_px: float | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        augment_seed: int | None = None,
        realism: Any = None,
    ) -> None:
        from faceclip.evaluate.synthetic import SyntheticConfig, SyntheticFaceGenerator
        from faceclip.fit.contour import build_contour_bands
        from faceclip.facemodel.params import DEFAULT_FOCAL_224
        from faceclip.render import edge_topology

        if n < 0:
            raise InputError(f"the number of synthetic samples must be >= 0, got {n}")
        if image_px < 32:
            raise InputError(f"image_px must be at least 32, got {image_px}")
        self.n = int(n)
        self.seed = int(seed)
        self.image_px = int(image_px)
        self.focal_px = float(focal_px) if focal_px is not None else DEFAULT_FOCAL_224 * self.image_px / 224.0
        self.framing = framing
        self.augment = augment
        self.augment_seed = self.seed if augment_seed is None else int(augment_seed)
        self.epoch = 0
        self.generator = SyntheticFaceGenerator(face_model, seed=self.seed, config=SyntheticConfig(sizes_px=(self.image_px,)))
        m = self.generator.model
        self._bands = build_contour_bands(m)
        self._topology = edge_topology(m.triangles)  # cached: ~15 ms per render otherwise
        mean = m.mean_mm.double().numpy()
        lm_mean = mean[m.landmarks68.numpy()]
        self._centre = lm_mean.mean(0)
        self._eye_distance_mm = float(np.linalg.norm(lm_mean[36:42].mean(0) - lm_mean[42:48].mean(0)))
        self._skin_vertex = np.zeros(m.n_vertices, dtype=bool)
        self._skin_vertex[m.regions["skin"].numpy()] = True
        self.realism = None
        if realism is not None:
            from faceclip.train.realism import Realism, RealismConfig

            self.realism = Realism(RealismConfig(**realism) if isinstance(realism, dict) else realism, m)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self._check_cache_meta()

    @property
    def face_model(self) -> FaceModel:
        """The model the samples' parameters refer to (CPU, float32)."""
        return self.generator.model

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> FaceSample:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self._augment(self.load(index), index)

    def load(self, index: int) -> FaceSample:
        """Sample ``index`` without augmentation (from the cache when there is one)."""
        if self.cache_dir is None:
            return self.render(index)
        path = self.cache_dir / f"s_{index:07d}.npz"
        if path.is_file():
            try:
                return self._read_cached(path, index)
            except (OSError, KeyError, ValueError) as exc:
                log.warning("%s: unreadable cached sample (%s); rendering it again", path, exc)
        sample = self.render(index)
        self._write_cached(path, sample)
        return sample

    def prerender(self, progress: bool = True) -> int:
        """Render every sample missing from ``cache_dir``; returns how many were rendered."""
        from tqdm import tqdm

        if self.cache_dir is None:
            raise InputError("prerender needs a cache_dir", hint="SyntheticFaceDataset(..., cache_dir='cache/synth')")
        done = 0
        for i in tqdm(range(self.n), desc="synthetic", unit="face", disable=not progress):
            path = self.cache_dir / f"s_{i:07d}.npz"
            if not path.is_file():
                self._write_cached(path, self.render(i))
                done += 1
        return done

    # ------------------------------------------------------------------ rendering

    def render(self, index: int) -> FaceSample:
        """Draw and render sample ``index`` (no augmentation, no cache)."""
        from faceclip.evaluate.synthetic import background_image
        from faceclip.fit.contour import landmark_vertex_ids
        from faceclip.facemodel.params import euler_to_matrix, matrix_to_euler
        from faceclip.render import render_mesh

        gen, m, S = self.generator, self.generator.model, self.image_px
        sp = gen.draw_params(index)
        rr = None
        if self.realism is not None:
            rr = np.random.default_rng([self.seed, int(index), 11])  # the realism stream
            sp = replace(sp, expression=self.realism.expression(rr, sp.expression))
        verts = gen.vertices(sp)
        head_r = euler_to_matrix(torch.tensor(np.radians(sp.angles_deg), dtype=torch.float64)[None])[0].numpy()
        r_cam, t = self._frame(verts, _F @ head_r, self._template(index))
        angles = matrix_to_euler(torch.from_numpy(_F @ r_cam)[None])
        expr = torch.zeros(1, m.n_expression)
        for name, w in sp.expression.items():
            expr[0, m.expression_index(name)] = w
        params = FaceParams(
            identity=torch.tensor(sp.identity, dtype=torch.float32)[None],
            expression=expr,
            angles_rad=angles.float(),
            translation_mm=torch.from_numpy(t).float()[None],
            focal_px=torch.tensor([self.focal_px], dtype=torch.float32),
            sh=torch.tensor(sp.sh, dtype=torch.float32)[None],
            albedo=torch.zeros(1, 0, 3),
            image_size=(S, S),
        )
        cam = params.camera()
        rng = np.random.default_rng([self.seed, int(index), 1])  # the generator's albedo / noise stream
        albedo = gen.albedo(sp, rng)
        noise_seed = int(rng.integers(2 ** 31))
        v_t = torch.from_numpy(verts)[None]
        if rr is None:
            out = render_mesh(v_t, m.triangles, cam, vertex_colors=torch.from_numpy(albedo)[None], sh_coeffs=params.sh,
                              background=0.0, cull_backfaces=True, antialiased=True, topology=self._topology)
        else:
            colours, sh = self._realistic_colours(rr, sp, albedo, v_t, cam)
            params = replace(params, sh=torch.from_numpy(sh).float()[None])
            out = render_mesh(v_t, m.triangles, cam, vertex_colors=colours, sh_coeffs=None,
                              background=0.0, cull_backfaces=True, antialiased=True, topology=self._topology)
        rgb = out.image[0].clamp(0, 1).numpy().astype(np.float64)
        alpha = out.alpha[0].clamp(0, 1).numpy()[..., None].astype(np.float64)
        if rr is None:
            img = rgb + (1.0 - alpha) * background_image(sp.background, S)
            img += np.random.default_rng([noise_seed, S]).normal(0.0, gen.config.noise_level, img.shape)
            img_u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        else:
            from faceclip.train.realism import camera_effects

            assert self.realism is not None
            img = rgb + (1.0 - alpha) * self.realism.background(rr, S, background_image(sp.background, S))
            img = self.realism.occlude(rr, img, np.array(sp.skin_rgb))
            img_u8 = camera_effects(img, rr, self.realism.config)
        ids = landmark_vertex_ids(m, self._bands, v_t, cam)[0]
        lm = cam.project(v_t[:, ids])[0]
        tri_skin = torch.from_numpy(self._skin_vertices(sp)[m.triangles.numpy()].all(1))
        p2f = out.fragments.pix_to_face[0]
        skin = (p2f >= 0) & tri_skin[p2f.clamp(min=0)]
        return FaceSample(
            image=torch.from_numpy(img_u8).permute(2, 0, 1).float().div_(255.0),
            landmarks_px=lm.float(),
            skin_mask=skin.float(),
            params=params,
            source=f"synthetic:{self.seed}:{index}",
        )

    def _template(self, index: int) -> np.ndarray:
        """``(5, 2)`` target five points in crop pixels (jittered when ``framing`` is set)."""
        from faceclip.detect.align import FIVE_POINT_TEMPLATE

        S = self.image_px
        pts = FIVE_POINT_TEMPLATE * S
        if self.framing is None:
            return pts
        f = self.framing
        rng = np.random.default_rng([self.seed, int(index), 7])  # a stream the generator does not use
        u = rng.uniform(size=4)
        lo, hi = f.scale_range
        m = geometry_matrix(S, scale=lo + u[2] * (hi - lo), rotation_rad=math.radians((2 * u[3] - 1) * f.rotation_deg),
                            shift_px=((2 * u[0] - 1) * f.shift_px, (2 * u[1] - 1) * f.shift_px))
        return pts @ m[:2, :2].T + m[:2, 2]

    def _frame(self, verts: np.ndarray, r_cam: np.ndarray, target5: np.ndarray,
               iterations: int = 12) -> tuple[np.ndarray, np.ndarray]:
        """Camera rotation and translation that put the five alignment points on ``target5``.

        Fixed-point iteration on the residual 2-D similarity of the projected five points: its
        rotation is realised exactly by rolling the scene about the optical axis, its scale by
        moving the head along its viewing ray, its shift by moving it sideways.
        """
        from faceclip.detect.align import (
            FIVE_POINT_TEMPLATE,
            estimate_similarity,
            five_points_from_68,
        )

        m = self.generator.model
        pts = verts[m.landmarks68.numpy()].astype(np.float64)  # the five points use no contour landmark
        f, c = self.focal_px, self.image_px / 2.0
        eyes_px = (FIVE_POINT_TEMPLATE[1, 0] - FIVE_POINT_TEMPLATE[0, 0]) * self.image_px
        distance = f * self._eye_distance_mm / eyes_px  # start: the mean face's eyes at the template's distance
        t = np.array([0.0, 0.0, distance]) - r_cam @ self._centre
        for _ in range(iterations):
            cam_pts = pts @ r_cam.T + t
            proj = f * cam_pts[:, :2] / cam_pts[:, 2:] + c
            sim = estimate_similarity(five_points_from_68(proj), target5)
            s, phi = sim.scale, sim.rotation_rad
            shift = sim.image_to_crop(np.array([c, c])) - c
            if abs(s - 1) < 1e-7 and abs(phi) < 1e-8 and np.abs(shift).max() < 1e-5:
                break
            rz = np.array([[math.cos(phi), -math.sin(phi), 0.0], [math.sin(phi), math.cos(phi), 0.0], [0.0, 0.0, 1.0]])
            r_cam, t = rz @ r_cam, rz @ t
            centre = r_cam @ self._centre + t
            centre_new = centre / s
            centre_new[:2] += shift * centre_new[2] / f
            t = t + centre_new - centre
        return r_cam, t

    def _hair(self, sp: Any) -> np.ndarray:
        """(V,) the generator's hair coverage of a sample, in [0, 1]."""
        parts = self.generator.albedo_parts
        hair = np.clip((parts["above_brows_mm"] - sp.hairline_mm) / 8.0, 0, 1)
        if sp.hairline_mm < 50.0:  # the generator's rule: hair on the back of the head too
            hair = np.maximum(hair, parts["behind_ears"])
        return hair

    def _skin_vertices(self, sp: Any) -> np.ndarray:
        """(V,) bool: skin-region vertices without the sample's hair and eyebrows."""
        parts = self.generator.albedo_parts
        return self._skin_vertex & (self._hair(sp) < 0.5) & (parts["brows"] < 0.3)

    def _realistic_colours(self, rr: np.random.Generator, sp: Any, albedo: np.ndarray, v_t: Tensor,
                           cam: Any) -> tuple[Tensor, np.ndarray]:
        """Lit per-vertex colours (1, V, 3) and the SH used (9, 3), with the realism draws:
        a real skin texture, hair streaks, hard light and a specular highlight."""
        from faceclip.render.shading import sh_irradiance, vertex_normals

        assert self.realism is not None
        parts = self.generator.albedo_parts
        hair = self._hair(sp)
        eyes_mouth = np.maximum(np.maximum(parts["sclera"], parts["mouth_interior"]), parts["iris"])
        tex = self.realism.texture_colours(rr)
        if tex is not None:
            w = ((1.0 - hair) * (1.0 - np.clip(eyes_mouth, 0, 1)))[:, None]
            # The texture brings real detail (pores, stubble, make-up, brows); the drawn skin tone
            # keeps the palette's range: the texture's mean skin colour is scaled to it per channel
            # (photos' textures are mostly dim and would make every face dark).
            skin = self._skin_vertex & (w[:, 0] > 0.5)
            if skin.any():
                gain = np.asarray(sp.skin_rgb) / np.maximum(tex[skin].mean(0), 1e-3)
                tex = np.clip(tex * gain[None], 0, 1).astype(np.float32)
            albedo = albedo * (1 - w) + tex * w
        hair_w = np.maximum(hair, 0.8 * parts["brows"])[:, None]
        streaks = self.realism.hair_streaks(rr, parts["xyz"])[:, None]
        albedo = np.clip(albedo * (1 - hair_w) + albedo * streaks * hair_w, 0, 1).astype(np.float32)
        sh, spec = self.realism.light(rr, np.asarray(sp.sh, np.float64))
        normals = cam.to_view(vertex_normals(v_t, self.generator.model.triangles))  # (1, V, 3)
        irr = sh_irradiance(normals, torch.from_numpy(sh).float()[None]).clamp_min(0.0)
        colours = torch.from_numpy(albedo)[None] * irr
        if spec is not None:
            light = torch.tensor(spec["direction"], dtype=torch.float32)
            half = torch.nn.functional.normalize(light + torch.tensor([0.0, 0.0, 1.0]), dim=0)
            n_dot_h = (normals @ half).clamp_min(0.0)
            lit = ((normals @ light) > 0).float()
            shine = (1.0 - torch.from_numpy(hair_w[:, 0]).float() * 0.7)[None]  # hair is less shiny
            colours = colours + (spec["strength"] * n_dot_h ** spec["shininess"] * lit * shine).unsqueeze(-1)
        return colours.float(), sh

    # ------------------------------------------------------------------ cache

    def _cache_meta(self) -> dict[str, Any]:
        m = self.generator.model
        return {"format": SYNTH_FORMAT, "version": CACHE_VERSION, "seed": self.seed, "image_px": self.image_px,
                "focal_px": self.focal_px, "framing": None if self.framing is None else asdict(self.framing),
                "model": {"name": m.name, "geometry": m.geometry, "n_vertices": m.n_vertices},
                "generator": asdict(self.generator.config),
                **({"realism": self.realism.describe()} if self.realism is not None else {})}

    def _check_cache_meta(self) -> None:
        from faceclip.io.files import atomic_path

        assert self.cache_dir is not None
        path = self.cache_dir / SYNTH_META_NAME
        meta = json.loads(json.dumps(self._cache_meta()))  # tuples -> lists, as stored
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: unreadable ({exc})", hint="delete the folder to render again") from exc
            if stored != meta:
                raise InputError(f"{self.cache_dir}: holds synthetic samples made with other settings",
                                 hint="use another cache folder for these settings (or delete this one)")
            return
        if self.cache_dir.exists() and any(self.cache_dir.glob("s_*.npz")):
            raise InputError(f"{self.cache_dir}: holds samples but no {SYNTH_META_NAME}", hint="use an empty folder")
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))

    def _write_cached(self, path: Path, s: FaceSample) -> None:
        from faceclip.io.files import atomic_path

        p = s.params
        assert p is not None
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, image=(s.image.permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).numpy(),
                landmarks=s.landmarks_px.numpy(), skin_mask=s.skin_mask.numpy() > 0.5,
                **{k: v.numpy() for k, v in p.tensors().items()})

    def _read_cached(self, path: Path, index: int) -> FaceSample:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        S = self.image_px
        params = FaceParams(**{k: torch.from_numpy(data[k]) for k in (
            "identity", "expression", "angles_rad", "translation_mm", "focal_px", "sh", "albedo")}, image_size=(S, S))
        return FaceSample(
            image=torch.from_numpy(data["image"]).permute(2, 0, 1).float().div_(255.0),
            landmarks_px=torch.from_numpy(data["landmarks"]),
            skin_mask=torch.from_numpy(data["skin_mask"].astype(np.float32)),
            params=params,
            source=f"synthetic:{self.seed}:{index}",
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
