"""The photo dataset: :class:`FolderFaceDataset` reads a face cache made by
:func:`~faceclip.train.data.preprocess.preprocess_folder`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from faceclip.errors import InputError
from faceclip.train.data.augment import Augment, _AugmentedDataset
from faceclip.train.data.preprocess import BUILD_HINT, FAILURES_NAME, read_manifest
from faceclip.train.data.samples import FaceSample


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
