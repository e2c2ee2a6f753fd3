"""Face detection and 68 landmarks against dlib's own annotations in ../shared/data/faces.

The XML files hold boxes and landmarks produced by dlib itself: a regression check of the
wrapper (coordinate convention, box conversion, upsampling, downscaling), not an accuracy
measure.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from faceclip.detect import (
    Face,
    FacePolicy,
    NoFaceError,
    detect_boxes,
    detect_faces,
    models,
    predict_landmarks,
    select_faces,
)
from faceclip.errors import InputError, ModelNotInstalledError
from faceclip.io.images import load_image

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"
XMLS = ("training_with_face_landmarks.xml", "testing_with_face_landmarks.xml")

pytestmark = pytest.mark.skipif(not FACES.is_dir(), reason="../shared/data/faces is not beside the repository")


def read_annotations() -> list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """[(file, [(box [x0, y0, x1, y1] edges, landmarks (68, 2) with +0.5 centres), ...]), ...]"""
    out = []
    for xml in XMLS:
        for image in ET.parse(FACES / xml).getroot().iter("image"):
            faces = []
            for b in image.iter("box"):
                x, t, w, h = (int(b.get(k)) for k in ("left", "top", "width", "height"))
                parts = sorted(b.iter("part"), key=lambda p: int(p.get("name")))
                lm = np.array([[int(p.get("x")), int(p.get("y"))] for p in parts], dtype=np.float64) + 0.5
                faces.append((np.array([x, t, x + w, t + h], dtype=np.float64), lm))
            out.append((image.get("file"), faces))
    return out


ANNOTATIONS = read_annotations() if FACES.is_dir() else []


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return load_image(FACES / "astronaut.png")


def head_tile(astronaut: np.ndarray) -> np.ndarray:
    """A 210 x 200 cut around the astronaut's head (face box about 88 px)."""
    return np.ascontiguousarray(astronaut[30:240, 120:320])


# --------------------------------------------------------------------------- regression vs XML


def test_annotations_are_all_there() -> None:
    assert len(ANNOTATIONS) == 9
    assert sum(len(f) for _, f in ANNOTATIONS) == 43


@pytest.mark.parametrize("name,annotated", ANNOTATIONS, ids=[a[0] for a in ANNOTATIONS])
def test_detector_finds_every_annotated_face(name: str, annotated: list) -> None:
    rgb = load_image(FACES / name)
    faces = detect_faces(rgb, upsample=1)  # these faces are 37..109 px: they need upsampling
    assert len(annotated) <= len(faces) <= len(annotated) + 1
    for box, lm_ref in annotated:
        best = max(faces, key=lambda f: iou(f.box, box))
        assert iou(best.box, box) > 0.5, (name, box, best.box)
        err = np.linalg.norm(best.landmarks - lm_ref, axis=1).mean() / (box[2] - box[0])
        assert err < 0.06, (name, box, err)  # landmarks from a slightly different box


def test_auto_upsampling_finds_the_small_faces_of_group_photos() -> None:
    found = total = 0
    for name, annotated in ANNOTATIONS:
        faces = detect_faces(load_image(FACES / name), landmarks=False)  # upsample=None: auto
        total += len(annotated)
        found += sum(any(iou(f.box, box) > 0.5 for f in faces) for box, _ in annotated)
    assert found >= 0.9 * total


def test_landmarks_from_the_annotated_box_reproduce_dlib_exactly() -> None:
    exact, mean_err = 0, []
    for name, annotated in ANNOTATIONS:
        rgb = load_image(FACES / name)
        for box, lm_ref in annotated:
            lm = predict_landmarks(rgb, box)
            assert lm.shape == (68, 2) and lm.dtype == np.float64
            diff = np.abs(lm - lm_ref)
            exact += int(diff.max() == 0)
            mean_err.append(diff.mean())
    assert exact >= 0.75 * len(mean_err)  # a few differ by a pixel (JPEG decoder versions)
    assert np.median(mean_err) == 0 and max(mean_err) < 1.0


def test_no_face_in_dogs() -> None:
    rgb = load_image(FACES / "dogs.jpg")
    assert detect_faces(rgb) == []
    assert detect_faces(rgb, upsample=1) == []
    with pytest.raises(NoFaceError, match="dogs.jpg: no face found"):
        select_faces(detect_faces(rgb), source="dogs.jpg")


# --------------------------------------------------------------------------- behaviour


def test_single_face_result(astronaut: np.ndarray) -> None:
    faces = detect_faces(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert f.detector == "hog" and f.score > 0.5
    assert f.box.shape == (4,) and 60 < f.width < 120
    lm = f.landmarks
    assert lm is not None and lm.shape == (68, 2)
    m = 0.15 * f.width
    inside = (
        (lm[:, 0] > f.box[0] - m) & (lm[:, 0] < f.box[2] + m) & (lm[:, 1] > f.box[1] - m) & (lm[:, 1] < f.box[3] + m)
    )
    assert inside.all()
    assert lm[36:42, 0].mean() < lm[42:48, 0].mean()  # point 36.. is the image-left eye
    assert lm[19, 1] < lm[30, 1] < lm[57, 1] < lm[8, 1]  # brow above nose above mouth above chin
    d = f.to_dict()
    assert set(d) == {"box", "score", "detector", "landmarks68"} and len(d["landmarks68"]) == 68


def test_boxes_only(astronaut: np.ndarray) -> None:
    faces = detect_boxes(astronaut)
    assert len(faces) == 1 and faces[0].landmarks is None
    assert detect_faces(astronaut, landmarks=False)[0].landmarks is None


def test_grayscale_array_input(astronaut: np.ndarray) -> None:
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    assert len(detect_faces(gray)) == 1


def test_tiny_face_needs_upsampling_and_auto_finds_it(astronaut: np.ndarray) -> None:
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)  # face ~44 px
    assert detect_boxes(small, upsample=0) == []
    auto = detect_faces(small)
    assert len(auto) == 1 and auto[0].extra["upsample"] == 1
    big = detect_faces(astronaut)[0]
    assert iou(auto[0].box * 2, big.box) > 0.6
    assert np.linalg.norm(auto[0].landmarks * 2 - big.landmarks, axis=1).mean() < 0.05 * big.width
    with pytest.raises(NoFaceError, match="below the minimum"):
        select_faces(auto, FacePolicy(min_face_px=64))


def test_many_faces_and_policy(astronaut: np.ndarray) -> None:
    tile = head_tile(astronaut)
    half = cv2.resize(tile, (150, 158), interpolation=cv2.INTER_AREA)
    canvas = np.full((420, 700, 3), 90, np.uint8)
    canvas[0:210, 0:200] = tile
    canvas[0:210, 220:420] = tile
    canvas[210:420, 0:200] = tile
    canvas[210:420, 240:440] = tile
    canvas[230:388, 500:650] = half  # a smaller fifth face
    faces = detect_faces(canvas)
    assert len(faces) == 5
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
    assert faces[-1].box[0] > 480  # the small face is last
    assert len(select_faces(faces)) == 1
    assert len(select_faces(faces, FacePolicy(all_faces=True))) == 5
    cut = (faces[-2].size_px + faces[-1].size_px) / 2
    assert len(select_faces(faces, FacePolicy(all_faces=True, min_face_px=cut))) == 4


def test_large_image_is_detected_on_a_downscaled_copy(astronaut: np.ndarray) -> None:
    ref = detect_faces(astronaut)[0]
    big = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    faces = detect_faces(big, max_side_px=1024)  # detection at 1024 = 2x the original
    assert all(f.score < 0.3 for f in faces[1:])  # at most a weak false positive (mission patch)
    assert iou(faces[0].box, ref.box * 4) > 0.7
    assert np.linalg.norm(faces[0].landmarks - ref.landmarks * 4, axis=1).mean() < 0.05 * faces[0].width


def test_exif_rotated_photo_is_detected_upright(tmp_path: Path, astronaut: np.ndarray) -> None:
    stored = Image.fromarray(astronaut).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "phone.jpg"
    stored.save(p, quality=92, exif=exif.tobytes())
    assert detect_faces(np.asarray(stored)) == []  # lying on its side: HOG finds nothing
    faces = detect_faces(load_image(p))
    assert len(faces) >= 1 and all(f.score < 0.3 for f in faces[1:])
    assert iou(faces[0].box, detect_faces(astronaut)[0].box) > 0.7


def test_cnn_detector(astronaut: np.ndarray) -> None:
    tile = head_tile(astronaut)
    faces = detect_faces(tile, detector="cnn", upsample=0)
    assert len(faces) == 1 and faces[0].detector == "cnn" and faces[0].score > 0.5
    hog = detect_faces(tile)[0]
    assert iou(faces[0].box, hog.box) > 0.4  # MMOD boxes are tighter than HOG's
    assert np.linalg.norm(faces[0].landmarks - hog.landmarks, axis=1).mean() < 0.1 * hog.width


def test_bad_arguments(astronaut: np.ndarray) -> None:
    with pytest.raises(InputError, match="unknown face detector"):
        detect_faces(astronaut, detector="yolo")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="upsample"):
        detect_faces(astronaut, upsample=9)
    with pytest.raises(InputError):
        detect_faces(np.zeros((0, 0, 3), np.uint8))


def test_select_faces_policy_on_synthetic_faces() -> None:
    def face(x0: float, size: float, score: float = 1.0) -> Face:
        return Face(box=np.array([x0, 0.0, x0 + size, size]), score=score)

    faces = [face(0, 40), face(100, 90), face(300, 20)]
    assert select_faces(faces)[0].width == 90
    assert [f.width for f in select_faces(faces, FacePolicy(all_faces=True))] == [90, 40]  # 20 < 32 px
    assert [f.width for f in select_faces(faces, FacePolicy(all_faces=True, min_face_px=0))] == [90, 40, 20]
    with pytest.raises(NoFaceError):
        select_faces([])
    assert issubclass(NoFaceError, InputError)


# --------------------------------------------------------------------------- model files


def test_model_files_are_found_without_importing_the_package() -> None:
    import sys

    path = models.dlib_model_path(models.SHAPE_PREDICTOR_68)
    assert path.is_file() and path.stat().st_size > 50_000_000
    assert "face_recognition_models" not in sys.modules


def test_missing_model_package_gives_an_actionable_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FACECLIP_DLIB_MODELS", raising=False)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)

    def no_dist(name: str) -> None:
        raise models.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "files", no_dist)
    with pytest.raises(ModelNotInstalledError) as info:
        models.dlib_model_path(models.MMOD_DETECTOR)
    assert "face_recognition_models" in str(info.value) and "pip install" in (info.value.hint or "")
    # an explicit folder wins
    (tmp_path / models.MMOD_DETECTOR).write_bytes(b"x")
    monkeypatch.setenv("FACECLIP_DLIB_MODELS", str(tmp_path))
    assert models.dlib_model_path(models.MMOD_DETECTOR) == tmp_path / models.MMOD_DETECTOR
