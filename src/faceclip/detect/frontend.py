"""The front-end: find every face (MediaPipe + dlib HOG, merged) and landmark it.

Detectors (``detector=``):

- ``"auto"`` (default): MediaPipe's full-range BlazeFace detector *and* dlib's HOG detector,
  merged. BlazeFace finds turned, tilted and partly hidden faces that HOG misses; HOG finds the
  small faces (down to ~40 px) that BlazeFace misses in large group photos. A face found by both
  is one face (boxes overlapping, see :func:`merge_detections`).
- ``"mediapipe"``, ``"hog"``, ``"cnn"`` (dlib's MMOD CNN): one detector alone.

Landmarks (``landmarks=``):

- ``"mediapipe"`` (default): the 478-point face mesh on a crop around each face, levelled by
  the eyes (``refine=True`` runs it a second time on a crop that follows the first mesh: on 60
  synthetic faces of the tuning seed 7 that did not help, mean NME 0.0435 against 0.0405, so it
  is off by default). Stored in
  ``face.extra["mesh478"]`` (``(478, 3)``: x, y image pixels, relative depth); the 68 points
  ``face.landmarks`` are derived from it by the calibrated linear map of
  :mod:`faceclip.detect.calibration` (measured error in its docstring).
- ``"dlib68"``: dlib's 68-point predictor on the face box (trained on HOG boxes; on other
  detectors' boxes it is unreliable, so faces found by MediaPipe alone get the predictor on a
  HOG-like box derived from the MediaPipe box).

Faces whose landmarks cannot be found are dropped (and logged). Results are largest first.

Example::

    from faceclip.detect.frontend import detect_and_landmark
    faces = detect_and_landmark(rgb)                  # auto detector, MediaPipe landmarks
    faces[0].landmarks.shape, faces[0].extra["mesh478"].shape   # (68, 2), (478, 3)
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Literal

import numpy as np

from faceclip.detect.detector import DEFAULT_MAX_SIDE_PX
from faceclip.detect.types import Face, box_iou
from faceclip.errors import InputError
from faceclip.io.images import as_rgb_uint8

log = logging.getLogger(__name__)

__all__ = ["CNN_FALLBACK_MAX_SIDE_PX", "DETECTORS", "LANDMARKERS", "LARGE_FACE_PX", "detect_and_landmark", "faces_by_policy",
           "detect_largest", "find_faces", "landmark_face",
           "merge_detections"]

DetectorChoice = Literal["auto", "mediapipe", "hog", "cnn"]
LandmarkChoice = Literal["mediapipe", "dlib68"]
DETECTORS = ("auto", "mediapipe", "hog", "cnn")
LANDMARKERS = ("mediapipe", "dlib68")
#: Minimum MediaPipe detection confidence.
MEDIAPIPE_MIN_SCORE = 0.5
#: With ``largest_only``, a MediaPipe face at least this wide (pixels) makes HOG unnecessary:
#: HOG is there for the small faces (40-100 px) MediaPipe misses in group photos. A larger
#: frontal face that only HOG finds would be missed; on the 11 shared photos and 60 synthetic
#: faces (seed 0) the chosen face and its landmarks were the same in every case with and
#: without HOG (detection 5x faster in total).
LARGE_FACE_PX = 100
#: Two boxes are the same face when their intersection over union is at least this, or when
#: the centre of the smaller lies inside the larger and their sizes differ by less than 2x.
MERGE_IOU = 0.3


def find_faces(image: np.ndarray, detector: DetectorChoice = "auto", *, upsample: int | None = None,
               threshold: float = 0.0, max_side_px: int | None = DEFAULT_MAX_SIDE_PX,
               largest_only: bool = False) -> list[Face]:
    """Face boxes (no landmarks), largest first.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        detector: see the module docstring.
        upsample, threshold, max_side_px: passed to dlib's detectors
            (:func:`faceclip.detect.detector.detect_boxes`; ``max_side_px=None``: never downscale).
        largest_only: only the largest face matters (the default policy). With ``"auto"``,
            MediaPipe runs first and dlib's HOG only when MediaPipe found no face at least
            :data:`LARGE_FACE_PX` across. Smaller faces may then be missing, and, in principle,
            a larger frontal face that only HOG finds (none in our measurement, see
            :data:`LARGE_FACE_PX`).
    """
    from faceclip.detect.detector import check_image_size, detect_boxes
    from faceclip.detect.mediapipe import detect_boxes_mediapipe

    if detector not in DETECTORS:
        raise InputError(f"unknown face detector {detector!r}", hint="use one of: " + ", ".join(DETECTORS))
    rgb = as_rgb_uint8(image)
    check_image_size(rgb)
    if detector in ("hog", "cnn"):
        return detect_boxes(rgb, detector=detector, upsample=upsample, threshold=threshold, max_side_px=max_side_px)
    if detector == "mediapipe":
        return detect_boxes_mediapipe(rgb, min_score=MEDIAPIPE_MIN_SCORE)
    # "auto": dlib's HOG runs in a worker thread while MediaPipe's detectors run here (both
    # release the GIL), so detection costs the slower of the two rather than their sum
    # (detection 38.7 -> 28.8 ms on 640x480, docs/front-end.md); the results are the same.
    if largest_only:
        # MediaPipe first; HOG (which finds frontal faces from 40 px) only when MediaPipe found
        # no face of LARGE_FACE_PX or more: otherwise HOG could only add smaller faces.
        mp_faces = detect_boxes_mediapipe(rgb, min_score=MEDIAPIPE_MIN_SCORE)
        if any(f.size_px >= LARGE_FACE_PX for f in mp_faces):
            return merge_detections(mp_faces, [])
        return merge_detections(mp_faces, detect_boxes(rgb, detector="hog", upsample=upsample, threshold=threshold,
                                                       max_side_px=max_side_px))
    hog_job = _hog_thread().submit(detect_boxes, rgb, detector="hog", upsample=upsample, threshold=threshold,
                                   max_side_px=max_side_px)
    mp_faces = detect_boxes_mediapipe(rgb, min_score=MEDIAPIPE_MIN_SCORE)
    return merge_detections(mp_faces, hog_job.result())


_HOG_THREAD = None
_HOG_LOCK = threading.Lock()


def _forget_hog_thread() -> None:
    global _HOG_THREAD, _HOG_LOCK
    _HOG_THREAD = None
    _HOG_LOCK = threading.Lock()


# A forked child inherits the executor object but not its thread: work submitted there would
# wait forever. The child makes its own on first use.
os.register_at_fork(after_in_child=_forget_hog_thread)


def _hog_thread():
    """The one worker thread that runs dlib's HOG detector beside MediaPipe (made on first use,
    per process)."""
    global _HOG_THREAD
    with _HOG_LOCK:
        if _HOG_THREAD is None:
            from concurrent.futures import ThreadPoolExecutor

            _HOG_THREAD = ThreadPoolExecutor(1, thread_name_prefix="faceclip-hog")
        return _HOG_THREAD


def _same_face(a: np.ndarray, b: np.ndarray) -> bool:
    if box_iou(a, b) >= MERGE_IOU:
        return True
    sa, sb = max(a[2] - a[0], a[3] - a[1]), max(b[2] - b[0], b[3] - b[1])
    small, large = (a, b) if sa <= sb else (b, a)
    cx, cy = (small[0] + small[2]) / 2.0, (small[1] + small[3]) / 2.0
    inside = large[0] <= cx <= large[2] and large[1] <= cy <= large[3]
    return inside and max(sa, sb) < 2.0 * min(sa, sb)


def merge_detections(primary: list[Face], secondary: list[Face]) -> list[Face]:
    """One face per person from two detectors' results.

    A ``secondary`` face that overlaps a ``primary`` one (see :data:`MERGE_IOU`) is merged into
    it: the primary box is kept, the detector becomes ``"<primary>+<secondary>"`` and the other
    box is kept in ``extra["boxes"]``. Unmatched faces of both are kept. Largest first.
    """
    out = [Face(box=f.box.copy(), score=f.score, detector=f.detector,
                extra={**f.extra, "boxes": {f.detector: f.box.copy()}, "scores": {f.detector: f.score}})
           for f in primary]
    n_primary = len(out)
    used = [False] * n_primary
    for s in secondary:
        match = next((k for k in range(n_primary) if not used[k] and _same_face(out[k].box, s.box)), None)
        if match is None:
            out.append(Face(box=s.box.copy(), score=s.score, detector=s.detector,
                            extra={**s.extra, "boxes": {s.detector: s.box.copy()}, "scores": {s.detector: s.score}}))
            continue
        used[match] = True
        f = out[match]
        f.detector = f"{f.detector}+{s.detector}"
        f.extra["boxes"][s.detector] = s.box.copy()
        f.extra["scores"][s.detector] = s.score
    out.sort(key=lambda f: (-f.area, -f.score))
    return out


def _box_from_points(pts: np.ndarray) -> np.ndarray:
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])


def landmark_face(image: np.ndarray, face: Face, landmarks: LandmarkChoice = "mediapipe", *,
                  refine: bool = False, landmark_max_face_px: float | None = None, with_68: bool = True) -> bool:
    """Landmark one face in place; returns False when no landmarks could be found.

    ``"mediapipe"``: sets ``face.extra["mesh478"]`` and ``face.landmarks`` (68 points from the
    calibrated map). ``refine``: run the mesh a second time on a crop centred and levelled by
    the first mesh; ``with_68=False`` skips the 68-point map (calibration tools).
    ``"dlib68"``: dlib's predictor (``landmark_max_face_px`` as in
    :func:`faceclip.detect.detector.predict_landmarks`).
    """
    from faceclip.detect.detector import predict_landmarks

    rgb = as_rgb_uint8(image)
    if landmarks not in LANDMARKERS:
        raise InputError(f"unknown landmarks {landmarks!r}", hint="use one of: " + ", ".join(LANDMARKERS))
    if landmarks == "dlib68":
        box = face.extra.get("boxes", {}).get("hog")
        if box is None and face.detector.startswith("mediapipe"):
            box = _hog_like_box(face.box)
        face.landmarks = predict_landmarks(rgb, face.box if box is None else box, max_face_px=landmark_max_face_px)
        return True
    from faceclip.detect.calibration import load_calibration
    from faceclip.detect.mediapipe import mesh_eye_centres, predict_mesh478

    kp = face.extra.get("keypoints6")
    eyes = None if kp is None else kp[:2]
    mesh = predict_mesh478(rgb, face.box, eyes)
    if mesh is None and eyes is not None:
        mesh = predict_mesh478(rgb, face.box, None)
    if mesh is None:
        return False
    if not _mesh_fits_box(mesh, face.box):
        return False
    if refine:
        again = predict_mesh478(rgb, _box_from_points(mesh[:468, :2]), mesh_eye_centres(mesh))
        mesh = again if again is not None else mesh
    face.extra["mesh478"] = mesh
    if with_68:
        face.landmarks = load_calibration().landmarks68(mesh)
    return True


def _mesh_fits_box(mesh: np.ndarray, box: np.ndarray) -> bool:
    """The mesh belongs to the detection: centres within half the box, sizes within 2x.

    A false detection (a torso, a pattern) whose wide crop holds a real face nearby would
    otherwise get that face's mesh, and the face would be reconstructed twice.
    """
    mb = _box_from_points(mesh[:468, :2])
    side = max(box[2] - box[0], box[3] - box[1])
    mside = max(mb[2] - mb[0], mb[3] - mb[1])
    d = np.hypot((mb[0] + mb[2] - box[0] - box[2]) / 2.0, (mb[1] + mb[3] - box[1] - box[3]) / 2.0)
    return bool(d < 0.5 * side and 0.5 < mside / max(side, 1e-9) < 2.0)


def _hog_like_box(box: np.ndarray) -> np.ndarray:
    """A square box roughly like dlib HOG's (brows to chin) from a MediaPipe box.

    The offsets are a rough guess, not measured: dlib's predictor on boxes other than its own
    is unreliable (the front-end issue measured 3.5% to 60% NME for 10% box shifts), which is
    why the default landmarks are MediaPipe's.
    """
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    side = 1.0 * max(box[2] - box[0], box[3] - box[1])
    cy += 0.08 * side
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def detect_largest(image: np.ndarray, policy, detector: DetectorChoice = "auto",
                   landmarks: LandmarkChoice = "mediapipe", *, source: str = "image",
                   max_side_px: int | None = DEFAULT_MAX_SIDE_PX, landmark_max_face_px: float | None = None,
                   refine: bool = False) -> list[Face]:
    """The face ``select_faces(detect_and_landmark(image, ...), policy)`` picks when the policy
    asks for the largest face, with less work: :func:`find_faces` with ``largest_only``, and
    faces landmarked lazily, in the policy's order, only as far as the choice needs.

    The policy's rule is kept: among the faces that can be landmarked, the confident ones (if
    any) are the pool; the largest of the pool at least ``min_face_px`` across is the face, and
    a pool whose faces are all smaller is an error. (One difference remains: the old path's
    check that two boxes did not land on the same landmarks is not needed for one face.)

    Raises:
        NoFaceError: as :func:`faceclip.detect.select.select_faces` does.
    """
    from faceclip.detect.select import is_confident, select_faces

    rgb = as_rgb_uint8(image)
    faces = find_faces(rgb, detector, max_side_px=max_side_px, largest_only=True)
    ok: dict[int, bool] = {}

    def landmarked(face: Face) -> bool:
        if id(face) not in ok:
            ok[id(face)] = landmark_face(rgb, face, landmarks, refine=refine,
                                         landmark_max_face_px=landmark_max_face_px)
        return ok[id(face)]

    by_size = sorted(faces, key=lambda f: (-f.area, -f.score))
    for group in ([f for f in by_size if is_confident(f, policy.min_score)],
                  [f for f in by_size if not is_confident(f, policy.min_score)]):
        for face in group:  # largest first: the first that can be landmarked and is large enough
            if face.size_px >= policy.min_face_px and landmarked(face):
                return [face]
        pool = [f for f in group if landmarked(f)]  # only small ones are left to try
        if pool:  # the pool exists but is too small: the policy's own error
            return select_faces(pool, policy, source=source)
    return select_faces([], policy, source=source)  # none could be landmarked: "no face found", as before


def detect_and_landmark(image: np.ndarray, detector: DetectorChoice = "auto",
                        landmarks: LandmarkChoice = "mediapipe", *, upsample: int | None = None,
                        threshold: float = 0.0, max_side_px: int | None = DEFAULT_MAX_SIDE_PX,
                        landmark_max_face_px: float | None = None, refine: bool = False) -> list[Face]:
    """:func:`find_faces` then :func:`landmark_face` on each; faces without landmarks dropped."""
    rgb = as_rgb_uint8(image)
    faces = find_faces(rgb, detector, upsample=upsample, threshold=threshold, max_side_px=max_side_px)
    kept: list[Face] = []
    for face in faces:
        if not landmark_face(rgb, face, landmarks, refine=refine, landmark_max_face_px=landmark_max_face_px):
            log.debug("no landmarks for the face at %s (%s); dropped", np.round(face.box), face.detector)
            continue
        lb = _box_from_points(face.landmarks)
        if any(box_iou(lb, _box_from_points(k.landmarks)) > 0.5 for k in kept):
            log.debug("the face at %s has the landmarks of another face; dropped", np.round(face.box))
            continue
        kept.append(face)
    return kept


#: dlib's CNN detector, tried when HOG alone finds nothing, runs on a copy with at most this
#: longer side (it costs ~40x HOG per pixel; large turned faces are what it is there for).
CNN_FALLBACK_MAX_SIDE_PX = 800


def faces_by_policy(image: np.ndarray, policy, detector: DetectorChoice = "auto",
                 landmarks: LandmarkChoice = "mediapipe", *, source: str = "image", cnn_fallback: bool = True,
                 landmark_max_face_px: float | None = None) -> list[Face]:
    """The faces a command works on: detected, landmarked and selected by ``policy``.

    The one rule that ``faceclip reconstruct`` (and the API, batches and the web demo) and the
    training data's photo caches share. For the largest face with MediaPipe's detector and
    landmarks this is :func:`detect_largest` (the same face with less work); otherwise every face
    is detected and landmarked (:func:`detect_and_landmark`) and ``policy`` chooses. With the HOG
    detector alone, an image where it finds nothing is tried once more with dlib's CNN detector
    (``cnn_fallback``) on a copy of at most :data:`CNN_FALLBACK_MAX_SIDE_PX` (about a second on
    a CPU; it finds large, strongly turned faces).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        policy: a :class:`faceclip.detect.select.FacePolicy`.
        source: the image's name in error messages.
        landmark_max_face_px: landmark faces larger than this on a downscaled copy (None: never).

    Returns:
        The selected faces, largest first, with 68 landmarks (image pixels).

    Raises:
        NoFaceError: no face, or none the policy accepts (its ``reason`` says which).
    """
    from faceclip.detect.select import select_faces

    if not policy.all_faces and detector in ("auto", "mediapipe") and landmarks == "mediapipe":
        return detect_largest(image, policy, detector, landmarks, source=source,
                              landmark_max_face_px=landmark_max_face_px)
    found = detect_and_landmark(image, detector, landmarks, landmark_max_face_px=landmark_max_face_px)
    if not found and detector == "hog" and cnn_fallback:
        log.debug("%s: no face with HOG, trying the CNN detector", source)
        found = detect_and_landmark(image, "cnn", landmarks, upsample=0, max_side_px=CNN_FALLBACK_MAX_SIDE_PX,
                                    landmark_max_face_px=landmark_max_face_px)
    return select_faces(found, policy, source=source)
