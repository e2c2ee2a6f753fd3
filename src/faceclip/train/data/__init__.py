"""Training data: aligned face crops with 68 landmarks and skin masks, from photos or synthetic renders.

Two sources, one sample type (:class:`FaceSample`), one batch type (:class:`FaceBatch`, made by
:func:`collate`):

- **Photos.** :func:`preprocess_folder` walks a folder of photos once (recursively) and runs the
  reconstruction's front end on each: detection (MediaPipe and dlib's HOG, merged) and 68 landmarks, the five-point alignment
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

The package's modules, one job each (everything above is importable from
``faceclip.train.data``):

- :mod:`faceclip.train.data.samples`: :class:`FaceSample`, :class:`FaceBatch`, :func:`collate`,
  :func:`resize_sample`, :func:`iter_batches` and the landmarks' mirror order.
- :mod:`faceclip.train.data.augment`: :class:`Augment` and its parts (geometry, warp, colour
  jitter) and the per-``(seed, epoch, index)`` augmentation shared by the datasets.
- :mod:`faceclip.train.data.preprocess`: :func:`preprocess_folder` (photos -> face cache) and
  the cache's manifest.
- :mod:`faceclip.train.data.folder`: :class:`FolderFaceDataset` (reads the face cache).
- :mod:`faceclip.train.data.synthetic`: :class:`SyntheticFaceDataset` and :class:`FramingJitter`.
"""

from __future__ import annotations

from faceclip.train.data.augment import Augment, AugmentDraw, color_jitter, geometry_matrix, warp_sample
from faceclip.train.data.folder import FolderFaceDataset
from faceclip.train.data.preprocess import (
    BUILD_HINT as BUILD_HINT,  # the cache constants are importable from here too (outside __all__)
    CACHE_FORMAT as CACHE_FORMAT,
    CACHE_VERSION as CACHE_VERSION,
    FACES_DIR as FACES_DIR,
    FAILURES_NAME as FAILURES_NAME,
    MANIFEST_NAME as MANIFEST_NAME,
    PreprocessFailure,
    PreprocessReport,
    preprocess_folder,
    read_manifest,
)
from faceclip.train.data.samples import (
    FLIP_PERMUTATION_68,
    FaceBatch,
    FaceSample,
    collate,
    iter_batches,
    mirror_landmarks,
    resize_sample,
)
from faceclip.train.data.synthetic import (
    SYNTH_FORMAT as SYNTH_FORMAT,
    SYNTH_META_NAME as SYNTH_META_NAME,
    FramingJitter,
    SyntheticFaceDataset,
)

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
