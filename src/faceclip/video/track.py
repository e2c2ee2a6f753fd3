"""Landmark tracking through a clip: detect once, then follow each face with MediaPipe's mesh.

Per frame, each live track re-crops around its previous 478-point mesh, levelled by the
previous eyes (as MediaPipe's own video mode does) and runs the mesh there (~7 ms on a 2-core
CPU instead of ~30 ms of detection). A track is lost when the mesh finds no face in the crop or
a mesh that does not match the crop; the front-end's detectors (:mod:`faceclip.detect.frontend`)
then run on that frame, and again on following frames until a face is found (a face found
far from where the lost one was, after a cut for example, starts a new track). With
``all_faces`` the detectors also run every ``redetect_every`` frames to pick up faces that enter
the picture, and every third frame while a track is lost; a detected face that overlaps a live
track is that track, one near where a lost track was last seen resumes it, any other starts a
new track. Two tracks that drift onto one face are merged (the younger one stops).

Coordinates are frame pixels (x right, y down, pixel centres at +0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from faceclip.detect.types import box_iou

__all__ = ["FaceObservation", "LandmarkTracker"]


@dataclass
class FaceObservation:
    """One face in one frame.

    Attributes:
        track: the track id (0, 1, ... in order of first appearance).
        landmarks68: (68, 2) calibrated 68 landmarks; mesh478: (478, 3) MediaPipe's mesh.
        detected: the face came from the detectors in this frame (else from tracking).
        sharpness: variance of the Laplacian of the face, resized to 128 px (higher: sharper).
    """

    track: int
    landmarks68: np.ndarray
    mesh478: np.ndarray
    detected: bool
    sharpness: float


def _mesh_box(mesh: np.ndarray) -> np.ndarray:
    pts = mesh[:468, :2]
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])


def sharpness(rgb: np.ndarray, box: np.ndarray, size_px: int = 128) -> float:
    """Variance of the Laplacian of the box's grey image resized to ``size_px`` (blur lowers it)."""
    import cv2

    h, w = rgb.shape[:2]
    x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
    x1, y1 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0.0
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (size_px, size_px), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


@dataclass
class _Track:
    id: int
    mesh: np.ndarray | None  # last mesh (None: lost)
    last_box: np.ndarray
    lost_for: int = 0


@dataclass
class LandmarkTracker:
    """Follows faces from frame to frame (see the module docstring).

    Args:
        detector: the front-end detector (``"auto"``, ``"mediapipe"``, ``"hog"``, ``"cnn"``).
        all_faces: follow every face (else the largest face found, one track).
        min_face_px: faces whose box is smaller are ignored.
        redetect_every: with ``all_faces``, run the detectors every this many frames (0: only
            when a track is lost or none exists).
        max_lost_frames: a lost track is resumed by a detection within this many frames (else a
            new track starts).
    """

    detector: str = "auto"
    all_faces: bool = False
    min_face_px: float = 32.0
    redetect_every: int = 30
    max_lost_frames: int = 90
    tracks: list[_Track] = field(default_factory=list)
    frame_index: int = -1
    n_detections: int = 0

    def skip(self) -> None:
        """A frame that could not be read: nothing is observed in it; faces keep being followed
        from their last mesh."""
        self.frame_index += 1

    def step(self, rgb: np.ndarray) -> list[FaceObservation]:
        """Landmarks of the tracked faces in the next frame ``rgb`` (H, W, 3) uint8."""
        from faceclip.detect.calibration import load_calibration
        from faceclip.detect.mediapipe import mesh_eye_centres, predict_mesh478

        self.frame_index += 1
        cal = load_calibration()
        seen: list[FaceObservation] = []
        for tr in self.tracks:
            if tr.mesh is None:
                tr.lost_for += 1
                continue
            box = _mesh_box(tr.mesh)
            mesh = predict_mesh478(rgb, box, mesh_eye_centres(tr.mesh))
            if mesh is None or not _follows(mesh, box):
                tr.mesh, tr.lost_for = None, 1
                continue
            tr.mesh, tr.last_box = mesh, _mesh_box(mesh)
            seen.append(FaceObservation(tr.id, cal.landmarks68(mesh), mesh, False, sharpness(rgb, tr.last_box)))
        # Two tracks that drifted onto one face: the younger one stops (its frame is dropped).
        live = [t for t in self.tracks if t.mesh is not None]
        for a in live:
            for b in live:
                if a.id < b.id and a.mesh is not None and b.mesh is not None \
                        and box_iou(_mesh_box(a.mesh), _mesh_box(b.mesh)) > 0.5:
                    b.mesh, b.lost_for = None, 1
                    seen = [o for o in seen if o.track != b.id]
        live = [t for t in self.tracks if t.mesh is not None]
        if self.all_faces:  # a recently lost track (every 3rd frame), or time to look for new faces
            lost = any(t.mesh is None and t.lost_for <= self.max_lost_frames and t.lost_for % 3 == 1
                       for t in self.tracks)
            want_detect = (not live or lost
                           or (self.redetect_every > 0 and self.frame_index % self.redetect_every == 0))
        else:
            want_detect = not live
        if want_detect:
            seen += self._detect(rgb, live)
        seen.sort(key=lambda o: o.track)
        return seen

    def _detect(self, rgb: np.ndarray, live: list[_Track]) -> list[FaceObservation]:
        from faceclip.detect.calibration import load_calibration
        from faceclip.detect.frontend import detect_and_landmark

        self.n_detections += 1
        cal = load_calibration()
        faces = [f for f in detect_and_landmark(rgb, self.detector)
                 if max(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= self.min_face_px]
        out: list[FaceObservation] = []
        for f in faces:  # largest first
            mesh = f.extra["mesh478"]
            box = _mesh_box(mesh)
            if any(box_iou(box, _mesh_box(t.mesh)) > 0.3 for t in live if t.mesh is not None):
                continue  # a face already followed
            if not self.all_faces:  # one face: the last track, unless this face is elsewhere (a cut)
                tr = self.tracks[-1] if self.tracks else None
                if tr is not None and _centre_distance(tr.last_box, box) >= max(_side(box), _side(tr.last_box)):
                    tr = None  # another person, or the same one elsewhere: a new track
            else:
                lost = [t for t in self.tracks if t.mesh is None and t.lost_for <= self.max_lost_frames]
                tr = min(lost, key=lambda t: _centre_distance(t.last_box, box), default=None)
                if tr is not None and _centre_distance(tr.last_box, box) >= _side(box):
                    tr = None
            if tr is None:
                tr = _Track(len(self.tracks), None, box)
                self.tracks.append(tr)
            tr.mesh, tr.last_box, tr.lost_for = mesh, box, 0
            live.append(tr)
            out.append(FaceObservation(tr.id, cal.landmarks68(mesh), mesh, True, sharpness(rgb, box)))
            if not self.all_faces:
                break
        return out


def _side(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1]))


def _centre_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2.0, (a[1] + a[3] - b[1] - b[3]) / 2.0))


def _follows(mesh: np.ndarray, prev_box: np.ndarray) -> bool:
    """The new mesh is the tracked face: near the previous box and of a similar size."""
    box = _mesh_box(mesh)
    side, prev = _side(box), _side(prev_box)
    return bool(_centre_distance(box, prev_box) < 0.5 * prev and 0.6 < side / max(prev, 1e-9) < 1.6)
