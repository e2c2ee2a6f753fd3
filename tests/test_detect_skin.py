"""Face-region and skin masks of aligned crops."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from faceclip.detect import align_face, detect_faces, face_region_mask, skin_mask
from faceclip.detect.align import AlignedFace
from faceclip.errors import InputError
from faceclip.io.images import load_image

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"


@pytest.fixture(scope="module")
def aligned() -> AlignedFace:
    if not FACES.is_dir():
        pytest.skip("../shared/data/faces is not beside the repository")
    rgb = load_image(FACES / "astronaut.png")
    return align_face(rgb, detect_faces(rgb)[0].landmarks)


def at(mask: np.ndarray, p: np.ndarray) -> bool:
    """Mask value at a continuous point (pixel centres at +0.5)."""
    return bool(mask[int(np.floor(p[1])), int(np.floor(p[0]))])


def test_region_geometry(aligned: AlignedFace) -> None:
    lm = aligned.landmarks
    region = face_region_mask(lm, 224)
    assert region.shape == (224, 224) and region.dtype == bool
    assert at(region, lm[30])  # nose tip
    assert at(region, (lm[2] + lm[31]) / 2)  # cheek
    assert at(region, lm[19] + (lm[19] - lm[8]) * 0.2)  # forehead above the brow
    for eye in (lm[36:42].mean(0), lm[42:48].mean(0)):
        assert not at(region, eye)
    assert not at(region, lm[19])  # eyebrow carved out
    assert not region[:10].any() and not region[:, :10].any()  # crop border is background
    keep_eyes = face_region_mask(lm, 224, exclude_eyes=False, exclude_brows=False)
    assert at(keep_eyes, lm[36:42].mean(0)) and keep_eyes.sum() > region.sum()
    assert face_region_mask(lm, (100, 300)).shape == (100, 300)


def test_skin_mask_on_a_real_face(aligned: AlignedFace) -> None:
    lm = aligned.landmarks
    region = face_region_mask(lm, 224)
    skin = skin_mask(aligned.crop, lm, valid=aligned.valid)
    assert skin.shape == (224, 224) and skin.dtype == bool
    assert not (skin & ~region).any()  # a subset of the region
    assert 0.55 < skin.sum() / region.sum() < 0.98
    for p in (lm[30], (lm[2] + lm[31]) / 2, (lm[14] + lm[35]) / 2, lm[8] + (lm[57] - lm[8]) * 0.4):
        assert at(skin, p), p
    # her fringe of brown hair covers the upper forehead inside the polygon: not skin
    hair = region & ~skin
    top = int(region.any(axis=1).argmax())
    assert hair[top : top + 15].sum() > 0.3 * region[top : top + 15].sum()
    assert hair[top + 60 :].sum() < 0.1 * region[top + 60 :].sum()


def test_foreign_colour_inside_the_region_is_not_skin() -> None:
    size = 224
    lm = synthetic_landmarks(size)
    crop = np.zeros((size, size, 3), np.uint8)
    crop[:] = (40, 90, 200)  # blue background
    whole = face_region_mask(lm, size, exclude_eyes=False, exclude_brows=False, exclude_mouth_interior=False)
    crop[cv2.dilate(whole.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0] = (205, 150, 125)  # skin
    cv2.circle(crop, (int(lm[30, 0]) + 35, int(lm[30, 1])), 12, (30, 160, 40), -1)  # green sticker on the cheek
    rng = np.random.default_rng(0)
    crop = np.clip(crop + rng.normal(0, 4, crop.shape), 0, 255).astype(np.uint8)
    skin = skin_mask(crop, lm)
    region = face_region_mask(lm, size)
    sticker = np.zeros((size, size), np.uint8)
    cv2.circle(sticker, (int(lm[30, 0]) + 35, int(lm[30, 1])), 10, 1, -1)
    assert not (skin & sticker.astype(bool)).any()
    rest = region & ~cv2.dilate(sticker, np.ones((7, 7), np.uint8)).astype(bool)
    assert skin[rest].mean() > 0.97


def test_grayscale_crop_falls_back_to_the_region(aligned: AlignedFace) -> None:
    gray = cv2.cvtColor(cv2.cvtColor(aligned.crop, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    skin = skin_mask(gray, aligned.landmarks)
    region = face_region_mask(aligned.landmarks, 224)
    assert not (skin & ~region).any() and skin.sum() > 0.6 * region.sum()


def test_valid_mask_is_respected(aligned: AlignedFace) -> None:
    valid = np.ones((224, 224), bool)
    valid[:, :112] = False
    skin = skin_mask(aligned.crop, aligned.landmarks, valid=valid)
    assert not skin[:, :112].any() and skin[:, 112:].any()


def test_bad_landmarks_are_refused() -> None:
    with pytest.raises(InputError):
        face_region_mask(np.zeros((5, 2)), 224)
    with pytest.raises(InputError):
        skin_mask(np.zeros((8, 8, 3), np.uint8), np.full((68, 2), np.nan))


def synthetic_landmarks(size: int) -> np.ndarray:
    """A plausible frontal 68-point layout for a ``size`` crop (jaw ellipse, eyes, brows, nose, mouth)."""
    c = size / 2
    lm = np.zeros((68, 2))
    t = np.linspace(np.pi * 0.05, np.pi * 0.95, 17)
    lm[0:17] = np.stack([c - 0.27 * size * np.cos(t), 0.45 * size + 0.36 * size * np.sin(t)], 1)
    for start, cx in ((17, c - 0.12 * size), (22, c + 0.12 * size)):
        lm[start : start + 5] = np.stack([cx + np.linspace(-0.08, 0.08, 5) * size, np.full(5, 0.33 * size)], 1)
    lm[27:31] = np.stack([np.full(4, c), np.linspace(0.4, 0.55, 4) * size], 1)
    lm[31:36] = np.stack([c + np.linspace(-0.05, 0.05, 5) * size, np.full(5, 0.58 * size)], 1)
    ang = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    for start, cx in ((36, c - 0.11 * size), (42, c + 0.11 * size)):
        lm[start : start + 6] = np.stack([cx + 0.04 * size * np.cos(ang), 0.4 * size + 0.015 * size * np.sin(ang)], 1)
    ang12 = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    lm[48:60] = np.stack([c - 0.09 * size * np.cos(ang12), 0.68 * size + 0.03 * size * np.sin(ang12)], 1)
    ang8 = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    lm[60:68] = np.stack([c - 0.06 * size * np.cos(ang8), 0.68 * size + 0.005 * size * np.sin(ang8)], 1)
    return lm
