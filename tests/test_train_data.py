"""Training data: photo preprocessing cache, datasets, collate, augmentation, synthetic crops."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from faceclip.detect.align import (
    FIVE_POINT_TEMPLATE,
    estimate_similarity,
    five_points_from_68,
)
from faceclip.detect.types import LANDMARK_GROUPS_68
from faceclip.errors import InputError
from faceclip.train.data import (
    FLIP_PERMUTATION_68,
    Augment,
    FaceSample,
    FolderFaceDataset,
    FramingJitter,
    SyntheticFaceDataset,
    collate,
    color_jitter,
    geometry_matrix,
    mirror_landmarks,
    preprocess_folder,
    read_manifest,
)

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"
PHOTOS = ["astronaut.png", "2008_001322.jpg", "2009_004587.jpg"]


# --------------------------------------------------------------------------- flip permutation


def test_flip_permutation_is_an_involution_mapping_sides():
    perm = FLIP_PERMUTATION_68
    assert sorted(perm.tolist()) == list(range(68))
    assert (perm[perm] == np.arange(68)).all()
    g = LANDMARK_GROUPS_68
    for a, b in [("right_eye", "left_eye"), ("right_brow", "left_brow")]:
        assert set(perm[slice(*g[a])].tolist()) == set(range(*g[b]))
    assert perm[36] == 45 and perm[39] == 42 and perm[37] == 44 and perm[41] == 46  # eye corners and lids
    assert perm[0] == 16 and perm[8] == 8 and perm[48] == 54 and perm[60] == 64 and perm[31] == 35
    for fixed in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
        assert perm[fixed] == fixed


def test_mirror_of_a_symmetric_face_is_itself(ict_head):
    from faceclip.render import PerspectiveCamera

    cam = PerspectiveCamera.frontal(distance_mm=1300.0, focal_px=1015.0, image_size=(224, 224))
    lm = cam.project(ict_head.mean_mm[ict_head.landmarks68][None])[0]
    mirrored = mirror_landmarks(lm, 224.0)
    iod = float((lm[36] - lm[45]).norm())
    assert float((mirrored - lm).norm(dim=-1).max()) < 0.03 * iod  # ICT's mean face is near symmetric
    wrong = lm.clone()
    wrong[:, 0] = 224.0 - wrong[:, 0]  # mirrored without re-indexing: far off
    assert float((wrong - lm).norm(dim=-1).max()) > 0.5 * iod
    assert torch.allclose(mirror_landmarks(mirrored, 224.0), lm, atol=1e-5)


# --------------------------------------------------------------------------- augmentation


def _dot_sample(landmarks: torch.Tensor, size: int = 224) -> FaceSample:
    """Black image with a red dot at landmark 36, a green one at 30; skin mask = a disc at 33."""
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    image = torch.zeros(3, size, size)

    def blob(p):
        return torch.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 2.0 ** 2))

    image[0] = blob(landmarks[36])
    image[1] = blob(landmarks[30])
    mask = (((xx - landmarks[33, 0]) ** 2 + (yy - landmarks[33, 1]) ** 2) < 12.0 ** 2).float()
    return FaceSample(image=image, landmarks_px=landmarks.clone(), skin_mask=mask)


def _centroid(channel: torch.Tensor) -> torch.Tensor:
    size = channel.shape[-1]
    c = torch.arange(size, dtype=torch.float32) + 0.5
    w = channel / channel.sum()
    return torch.stack([(w.sum(0) * c).sum(), (w.sum(1) * c).sum()])


@pytest.fixture(scope="module")
def crop_landmarks() -> torch.Tensor:
    """Plausible (68, 2) crop landmarks: a generic face laid out around the template."""
    rng = np.random.default_rng(0)
    lm = rng.uniform(60, 164, (68, 2))
    lm[36], lm[45], lm[30], lm[33] = (80.0, 90.0), (144.0, 90.0), (112.0, 116.0), (112.0, 126.0)
    return torch.tensor(lm, dtype=torch.float32)


@pytest.mark.parametrize("flip", [False, True])
def test_augment_moves_image_features_with_their_landmarks(crop_landmarks, flip):
    sample = _dot_sample(crop_landmarks)
    aug = Augment(shift_px=10.0, scale_range=(0.9, 1.1), rotation_deg=10.0, flip_p=1.0 if flip else 0.0,
                  brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    g = torch.Generator().manual_seed(3)
    d = aug.draw(torch.Generator().manual_seed(3))
    assert d.flip == flip and not np.allclose(d.matrix, geometry_matrix(224, flip=flip))
    out = aug(sample, g)
    red, green = _centroid(out.image[0]), _centroid(out.image[1])
    # the red dot was on landmark 36 (subject's right eye corner); mirrored, it is the left one (45)
    assert float((red - out.landmarks_px[45 if flip else 36]).norm()) < 0.15
    assert float((green - out.landmarks_px[30]).norm()) < 0.15
    mask_c = _centroid(out.skin_mask)
    assert float((mask_c - out.landmarks_px[33]).norm()) < 0.3
    assert set(out.skin_mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(sample.landmarks_px, crop_landmarks)  # input untouched


def test_flip_alone_is_an_exact_pixel_mirror(crop_landmarks):
    sample = _dot_sample(crop_landmarks)
    aug = Augment(shift_px=0.0, scale_range=(1.0, 1.0), rotation_deg=0.0, flip_p=1.0,
                  brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    out = aug(sample, torch.Generator().manual_seed(0))
    assert torch.allclose(out.image, sample.image.flip(-1), atol=1e-6)
    assert torch.equal(out.skin_mask, sample.skin_mask.flip(-1))
    assert torch.allclose(out.landmarks_px, mirror_landmarks(sample.landmarks_px, 224.0), atol=1e-5)


def test_augment_is_deterministic_by_seed(crop_landmarks):
    sample = _dot_sample(crop_landmarks)
    sample.image[2] = 0.5
    aug = Augment()
    a = aug(sample, torch.Generator().manual_seed(7))
    b = aug(sample, torch.Generator().manual_seed(7))
    c = aug(sample, torch.Generator().manual_seed(8))
    assert torch.equal(a.image, b.image) and torch.equal(a.landmarks_px, b.landmarks_px)
    assert not torch.equal(a.landmarks_px, c.landmarks_px)


def test_color_jitter():
    img = torch.rand(3, 8, 8)
    assert torch.allclose(color_jitter(img), img, atol=1e-6)
    gray = torch.full((3, 4, 4), 0.4)
    assert torch.allclose(color_jitter(gray, hue=0.3), gray, atol=1e-5)  # hue leaves grays alone
    assert torch.allclose(color_jitter(img, brightness=0.5), img * 0.5, atol=1e-6)
    out = color_jitter(img, 1.3, 0.8, 1.2, 0.02)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1


# --------------------------------------------------------------------------- photos: preprocessing


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    shutil.copy(FACES / PHOTOS[0], root / PHOTOS[0])
    shutil.copy(FACES / PHOTOS[1], root / PHOTOS[1])
    (root / "sub").mkdir()
    shutil.copy(FACES / PHOTOS[2], root / "sub" / PHOTOS[2])
    shutil.copy(FACES / "dogs.jpg", root / "sub" / "dogs.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def photo_cache(photo_folder, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache") / "photos"
    report = preprocess_folder(photo_folder, cache, progress=False)
    return cache, report


def test_preprocess_caches_faces_and_logs_failures(photo_folder, photo_cache):
    cache, report = photo_cache
    assert report.n_images == 5 and report.n_processed == 5 and report.n_skipped == 0
    assert report.n_faces == 3 == report.n_new_faces
    reasons = {f.path: f.reason for f in report.failures}
    assert reasons == {"broken.jpg": "unreadable", "sub/dogs.jpg": "no_face"}
    rows = (cache / "failures.tsv").read_text().splitlines()
    assert rows[0] == "path\treason\tmessage" and len(rows) == 3
    assert any(r.startswith("sub/dogs.jpg\tno_face") for r in rows)
    manifest = read_manifest(cache)
    assert manifest["images"]["sub/2009_004587.jpg"]["status"] == "ok"
    faces = sorted((cache / "faces").glob("*.npz"))
    assert len(faces) == 3
    with np.load(faces[0]) as z:
        assert z["crop"].shape == (224, 224, 3) and z["crop"].dtype == np.uint8
        assert z["landmarks"].shape == (68, 2) and z["skin_mask"].dtype == bool and z["skin_mask"].any()
        assert z["image_to_crop"].shape == (3, 3)


def test_preprocess_rerun_skips_done_work_and_follows_changes(photo_folder, photo_cache, tmp_path):
    src = tmp_path / "photos"
    shutil.copytree(photo_folder, src, copy_function=shutil.copy2)  # keeps mtimes: nothing changed
    cache = tmp_path / "cache"
    shutil.copytree(photo_cache[0], cache)
    manifest = read_manifest(cache)
    manifest["source"] = str(src.resolve())
    (cache / "manifest.json").write_text(json.dumps(manifest))
    again = preprocess_folder(src, cache, progress=False)
    assert again.n_processed == 0 and again.n_skipped == 5 and again.n_faces == 3

    st = (src / PHOTOS[0]).stat()
    os.utime(src / PHOTOS[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "edited"
    (src / "sub" / PHOTOS[2]).unlink()  # deleted: its face leaves the cache
    third = preprocess_folder(src, cache, progress=False)
    assert third.n_processed == 1 and third.n_skipped == 3 and third.n_faces == 2
    assert len(list((cache / "faces").glob("*.npz"))) == 2

    with pytest.raises(InputError, match="built from"):
        preprocess_folder(photo_folder, cache, progress=False)


def test_preprocess_too_small_and_options_change(tmp_path):
    src = tmp_path / "one"
    src.mkdir()
    shutil.copy(FACES / PHOTOS[0], src / PHOTOS[0])
    cache = tmp_path / "cache"
    assert preprocess_folder(src, cache, progress=False).n_faces == 1
    small = preprocess_folder(src, cache, min_face_px=500, progress=False)  # other options: redone
    assert small.n_processed == 1 and small.n_faces == 0
    assert [(f.path, f.reason) for f in small.failures] == [(PHOTOS[0], "too_small")]
    assert not list((cache / "faces").glob("*.npz"))
    with pytest.raises(InputError, match="holds no face") as err:
        FolderFaceDataset(cache)
    assert "prepare-data" in str(err.value)


def test_folder_dataset_and_collate(photo_cache):
    cache, _ = photo_cache
    ds = FolderFaceDataset(cache)
    assert len(ds) == 3
    s = ds[0]
    assert s.image.shape == (3, 224, 224) and s.image.dtype == torch.float32 and 0 <= s.image.min() <= s.image.max() <= 1
    assert s.landmarks_px.shape == (68, 2) and s.skin_mask.shape == (224, 224) and s.params is None
    assert ((s.landmarks_px > 0) & (s.landmarks_px < 224)).all()
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)
    batch = next(iter(loader))
    assert batch.image.shape == (3, 3, 224, 224) and batch.landmarks_px.shape == (3, 68, 2)
    assert batch.skin_mask.shape == (3, 224, 224) and batch.params is None and not batch.params_valid.any()
    assert len(batch.sources) == 3 and all("#0" in x for x in batch.sources)

    aug = FolderFaceDataset(cache, augment=Augment(), seed=5)
    a, b = aug[1], aug[1]
    assert torch.equal(a.image, b.image) and torch.equal(a.landmarks_px, b.landmarks_px)
    aug.set_epoch(1)
    assert not torch.equal(aug[1].landmarks_px, a.landmarks_px)


def test_folder_dataset_missing_cache(tmp_path):
    with pytest.raises(InputError) as err:
        FolderFaceDataset(tmp_path / "nope")
    assert "prepare-data" in str(err.value)
    with pytest.raises(InputError, match="not a face cache"):
        FolderFaceDataset(tmp_path)


def test_cli_prepare_data(photo_folder, tmp_path, capsys):
    from faceclip.cli import main

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(photo_folder / PHOTOS[0], src / PHOTOS[0])
    (src / "broken.jpg").write_bytes(b"nope")
    assert main(["prepare-data", str(src), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 images" in out and "1 faces" in out and "1 without a face" in out


# --------------------------------------------------------------------------- synthetic faces


@pytest.fixture(scope="module")
def synth(ict_head) -> SyntheticFaceDataset:
    return SyntheticFaceDataset(ict_head, n=8, seed=11)


def test_synthetic_is_deterministic_per_index(synth, ict_head):
    other = SyntheticFaceDataset(ict_head, n=8, seed=11)
    for i in (5, 2):  # another instance, another order
        a, b = synth[i], other[i]
        assert torch.equal(a.image, b.image) and torch.equal(a.landmarks_px, b.landmarks_px)
        assert torch.equal(a.skin_mask, b.skin_mask)
        assert all(torch.equal(x, y) for x, y in zip(a.params.tensors().values(), b.params.tensors().values()))
    assert not torch.equal(synth[1].image, synth[2].image)


def test_synthetic_ground_truth_is_consistent(synth, ict_head):
    from faceclip.fit.contour import build_contour_bands, landmark_vertex_ids
    from faceclip.fit.fitter import DEFAULT_FOCAL_224

    bands = build_contour_bands(synth.face_model)
    for i in range(3):
        s = synth[i]
        p = s.params
        assert s.image.shape == (3, 224, 224) and p.image_size == (224, 224)
        assert float(p.focal_px) == pytest.approx(DEFAULT_FOCAL_224)
        assert ((s.landmarks_px > 0) & (s.landmarks_px < 224)).all()
        # framed exactly like align_face frames a photo
        sim = estimate_similarity(five_points_from_68(s.landmarks_px.double().numpy()), FIVE_POINT_TEMPLATE * 224)
        assert abs(sim.scale - 1) < 1e-4 and abs(sim.rotation_rad) < 1e-4 and np.abs(sim.matrix[:2, 2]).max() < 0.02
        # the parameters reproduce the landmarks through the crop camera
        cam = p.camera()
        verts = ict_head(identity=p.identity, expression=p.expression).vertices_mm
        fixed = cam.project(verts[:, ict_head.landmarks68])[0]
        assert float((fixed - s.landmarks_px)[17:].norm(dim=-1).max()) < 0.05  # inner points: model landmarks
        ids = landmark_vertex_ids(ict_head, bands, verts, cam)
        contour = cam.project(torch.gather(verts, 1, ids[..., None].expand(-1, -1, 3)))[0]
        assert float((contour - s.landmarks_px).norm(dim=-1).max()) < 0.05  # jaw: the visible contour
        # skin: a good part of the face, inside the face outline, not on the eyes
        assert 0.08 < float(s.skin_mask.mean()) < 0.5
        for eye in (s.landmarks_px[36:42].mean(0), s.landmarks_px[42:48].mean(0)):
            x, y = eye.long().tolist()
            assert s.skin_mask[y, x] == 0
        nose = s.landmarks_px[30].long().tolist()
        assert s.skin_mask[nose[1], nose[0]] == 1 or s.skin_mask[nose[1] - 3, nose[0]] == 1


def test_synthetic_framing_jitter_keeps_parameters_exact(ict_head):
    ds = SyntheticFaceDataset(ict_head, n=4, seed=11, framing=FramingJitter())
    s = ds[1]
    sim = estimate_similarity(five_points_from_68(s.landmarks_px.double().numpy()), FIVE_POINT_TEMPLATE * 224)
    assert abs(sim.scale - 1) > 1e-3 or abs(sim.rotation_rad) > 1e-3  # framed off the template...
    verts = ict_head(identity=s.params.identity, expression=s.params.expression).vertices_mm
    fixed = s.params.camera().project(verts[:, ict_head.landmarks68])[0]
    assert float((fixed - s.landmarks_px)[17:].norm(dim=-1).max()) < 0.05  # ...with exact parameters


def test_synthetic_batches_augment_and_cache(synth, ict_head, photo_cache, tmp_path):
    batch = collate([synth[0], synth[1]])
    assert batch.params is not None and batch.params.identity.shape == (2, ict_head.n_identity)
    assert batch.params.expression.shape == (2, ict_head.n_expression) and batch.params_valid.all()
    mixed = collate([synth[0], FolderFaceDataset(photo_cache[0])[0]])
    assert mixed.params_valid.tolist() == [True, False] and float(mixed.params.identity[1].abs().sum()) == 0

    aug = SyntheticFaceDataset(ict_head, n=4, seed=11, augment=Augment())
    a, plain = aug[0], synth[0]
    assert torch.equal(a.landmarks_px, plain.landmarks_px) and torch.equal(a.skin_mask, plain.skin_mask)
    assert not torch.equal(a.image, plain.image)  # colour jitter only: the parameters stay valid

    cached = SyntheticFaceDataset(ict_head, n=3, seed=11, cache_dir=tmp_path / "synth")
    assert cached.prerender(progress=False) == 3 and cached.prerender(progress=False) == 0
    c = SyntheticFaceDataset(ict_head, n=3, seed=11, cache_dir=tmp_path / "synth")[2]
    r = synth[2]
    assert torch.equal(c.image, r.image) and torch.equal(c.skin_mask, r.skin_mask)
    assert torch.allclose(c.landmarks_px, r.landmarks_px)
    assert all(torch.equal(x, y) for x, y in zip(c.params.tensors().values(), r.params.tensors().values()))
    with pytest.raises(InputError, match="other settings"):
        SyntheticFaceDataset(ict_head, n=3, seed=12, cache_dir=tmp_path / "synth")
    with pytest.raises(IndexError):
        synth[8]


def test_collate_rejects_mixed_sizes(crop_landmarks):
    a = _dot_sample(crop_landmarks)
    b = replace(a, image=torch.zeros(3, 112, 112), skin_mask=torch.zeros(112, 112))
    with pytest.raises(InputError):
        collate([a, b])
    with pytest.raises(InputError):
        collate([])
