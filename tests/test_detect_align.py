"""Five-point similarity alignment: estimation, exact inverse, pixel-centre convention, crops."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from faceclip.detect import (
    FIVE_POINT_TEMPLATE,
    SimilarityTransform,
    align_face,
    detect_faces,
    estimate_similarity,
    five_points_from_68,
    predict_landmarks,
    warp_to_crop,
)
from faceclip.errors import InputError
from faceclip.io.images import load_image

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"
needs_faces = pytest.mark.skipif(not FACES.is_dir(), reason="../shared/data/faces is not beside the repository")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    if not FACES.is_dir():
        pytest.skip("../shared/data/faces is not beside the repository")
    return load_image(FACES / "astronaut.png")


@pytest.fixture(scope="module")
def astronaut_landmarks(astronaut: np.ndarray) -> np.ndarray:
    return detect_faces(astronaut)[0].landmarks


def gaussian_blob(h: int, w: int, centre: tuple[float, float], sigma: float) -> np.ndarray:
    """``(h, w)`` float32 Gaussian sampled at pixel centres (index + 0.5)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    return np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def centroid(img: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid in continuous coordinates (centres at +0.5)."""
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(np.float64) + 0.5
    wsum = img.sum()
    return np.array([(xs * img).sum() / wsum, (ys * img).sum() / wsum])


# --------------------------------------------------------------------------- transforms


def test_five_points_from_68() -> None:
    lm = np.arange(136, dtype=np.float64).reshape(68, 2)
    five = five_points_from_68(lm)
    assert five.shape == (5, 2)
    np.testing.assert_allclose(five[0], lm[36:42].mean(0))
    np.testing.assert_allclose(five[1], lm[42:48].mean(0))
    np.testing.assert_allclose(five[2:], lm[[30, 48, 54]])
    with pytest.raises(InputError):
        five_points_from_68(lm[:5])


def test_estimate_similarity_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    truth = SimilarityTransform.from_params(scale=1.7, rotation_rad=0.4, translation=(-30.0, 12.5))
    src = rng.uniform(0, 500, (5, 2))
    est = estimate_similarity(src, truth.image_to_crop(src))
    np.testing.assert_allclose(est.matrix, truth.matrix, atol=1e-9)
    assert est.scale == pytest.approx(1.7) and est.rotation_rad == pytest.approx(0.4)


def test_estimate_similarity_without_rotation() -> None:
    truth = SimilarityTransform.from_params(scale=0.5, rotation_rad=0.0, translation=(3.0, 4.0))
    src = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 8.0]])
    est = estimate_similarity(
        src, truth.image_to_crop(src) + [[0.3, 0.0], [0.0, 0.0], [0.0, 0.3]], allow_rotation=False
    )
    assert est.rotation_rad == 0.0 and est.scale == pytest.approx(0.5, rel=0.05)
    with pytest.raises(InputError):
        estimate_similarity(np.ones((3, 2)), np.zeros((3, 2)))


def test_inverse_is_exact() -> None:
    t = SimilarityTransform.from_params(scale=0.137, rotation_rad=-2.1, translation=(1234.5, -87.25))
    np.testing.assert_allclose(t.inverse_matrix @ t.matrix, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(t.inverse().inverse().matrix, t.matrix, atol=1e-12)
    pts = np.random.default_rng(1).uniform(-1000, 5000, (4, 7, 2))  # any leading shape
    back = t.crop_to_image(t.image_to_crop(pts))
    assert back.shape == pts.shape
    assert np.abs(back - pts).max() < 1e-9
    d = t.to_dict()
    assert np.allclose(np.array(d["crop_to_image"]), t.inverse_matrix[:2])


# --------------------------------------------------------------------------- warping convention


@pytest.mark.parametrize(
    "scale,sigma",
    [(1.7, 3.0), (1.0, 3.0), (0.6, 5.0), (0.2, 25.0)],  # the last one goes through the area prefilter
)
def test_warp_respects_pixel_centres(scale: float, sigma: float) -> None:
    h, w = 900, 1000
    point = (500.3, 430.8)
    img = gaussian_blob(h, w, point, sigma)
    t = SimilarityTransform.from_params(scale=scale, rotation_rad=0.3, translation=(0.0, 0.0))
    # put the point at crop (100.25, 120.5)
    shift = np.array([100.25, 120.5]) - t.image_to_crop(np.array(point))
    t = SimilarityTransform.from_params(scale=scale, rotation_rad=0.3, translation=tuple(shift))
    crop = warp_to_crop(img, t, 224)
    assert crop.shape == (224, 224)
    np.testing.assert_allclose(centroid(crop), [100.25, 120.5], atol=0.03)


# --------------------------------------------------------------------------- faces


@needs_faces
def test_round_trip_of_landmarks_within_1e3_px(astronaut: np.ndarray, astronaut_landmarks: np.ndarray) -> None:
    aligned = align_face(astronaut, astronaut_landmarks)
    assert aligned.crop.shape == (224, 224, 3) and aligned.crop.dtype == np.uint8
    assert aligned.landmarks.shape == (68, 2)
    back = aligned.transform.crop_to_image(aligned.landmarks)
    assert np.abs(back - astronaut_landmarks).max() < 1e-3
    np.testing.assert_allclose(aligned.transform.image_to_crop(back), aligned.landmarks, atol=1e-3)


@needs_faces
def test_five_points_land_on_the_template(astronaut: np.ndarray, astronaut_landmarks: np.ndarray) -> None:
    for size in (224, 256):
        aligned = align_face(astronaut, astronaut_landmarks, size_px=size)
        five = five_points_from_68(aligned.landmarks)
        assert np.abs(five - FIVE_POINT_TEMPLATE * size).max() < 0.04 * size
        assert aligned.valid.all()  # the crop lies inside the photo


@needs_faces
def test_crop_content_matches_its_landmarks(astronaut: np.ndarray, astronaut_landmarks: np.ndarray) -> None:
    """Landmarks predicted on the crop itself agree with the mapped ones."""
    aligned = align_face(astronaut, astronaut_landmarks)
    faces = detect_faces(aligned.crop)
    assert len(faces) == 1
    again = predict_landmarks(aligned.crop, faces[0].box)
    assert np.linalg.norm(again - aligned.landmarks, axis=1).mean() < 3.0


@needs_faces
def test_rotated_face_is_levelled(astronaut: np.ndarray) -> None:
    h, w = astronaut.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 18.0, 1.0)
    tilted = cv2.warpAffine(astronaut, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
    faces = detect_faces(tilted, upsample=1)
    assert faces, "HOG should still find an 18-degree roll"
    aligned = align_face(tilted, faces[0].landmarks)
    eyes = five_points_from_68(aligned.landmarks)[:2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 2.0
    assert abs(np.degrees(aligned.transform.rotation_rad)) == pytest.approx(18.0, abs=4.0)
    flat = align_face(tilted, faces[0].landmarks, allow_rotation=False)
    assert flat.transform.rotation_rad == 0.0


@needs_faces
def test_face_at_the_border_has_an_invalid_region(astronaut: np.ndarray, astronaut_landmarks: np.ndarray) -> None:
    cut = np.ascontiguousarray(astronaut[:, 200:])  # the face's left half is gone
    lm = astronaut_landmarks - [200.0, 0.0]
    aligned = align_face(cut, lm)
    assert 0.05 < (~aligned.valid).mean() < 0.6
    near = cv2.dilate(aligned.valid.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert aligned.crop[~near].max() == 0  # constant border (bilinear blends the first pixel or two)
    assert aligned.valid[:, -1].all() and not aligned.valid[:, 0].any()
    rep = align_face(cut, lm, border="replicate")
    assert rep.crop[~rep.valid].max() > 0


@needs_faces
def test_high_resolution_crop_matches_low_resolution_crop(
    astronaut: np.ndarray, astronaut_landmarks: np.ndarray
) -> None:
    """Downscaling by ~7x goes through the prefilter and still gives the same crop."""
    big = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    small = align_face(astronaut, astronaut_landmarks)
    large = align_face(big, astronaut_landmarks * 4)
    assert large.transform.scale == pytest.approx(small.transform.scale / 4)
    diff = np.abs(large.crop.astype(int) - small.crop.astype(int))
    assert diff.mean() < 4.0
