"""Video in, tracked 3D faces out: one identity per face, smooth per-frame pose and expression.

:func:`reconstruct_video` runs four passes over a clip:

1. **Landmarks** (:class:`~faceclip.video.track.LandmarkTracker`): detection on the first frame
   and whenever the face is lost, MediaPipe's mesh re-cropped from the previous frame
   otherwise; 68 calibrated landmarks per face and frame.
2. **Smoothing and gaps**: frames where a face was lost for at most ``max_gap_s`` are filled by
   linear interpolation of its landmarks (and marked ``interpolated``); longer gaps split the
   track's output (nothing is written for those frames). The landmark tracks are smoothed by the
   zero-phase One Euro filter (:func:`~faceclip.video.smooth.smooth_track`).
3. **Identity, then frames** (:class:`~faceclip.fit.sequence.SequenceFitter`): each track's
   identity is solved jointly on ``n_keyframes`` sharp frames of varied pose (frames sharper
   than the track's median, picked greedily far apart in yaw, pitch and expression); then
   every frame's pose and expression are fitted with that identity fixed, warm-started from
   the previous frame and pulled toward it by a weak temporal prior.
4. **Outputs** (written into a temporary folder that replaces ``<out>/<clip name>/`` only when
   complete, see :mod:`faceclip.io.outputs`): ``tracks.jsonl``, ``overlay.mp4`` (the shaded faces
   over the clip, with the clip's audio copied), ``animation.glb`` (per face: the identity's
   mesh with the 53 expression blendshapes as morph targets, the clip's expressions and head
   motion as an animation, and the clip's camera) and with ``meshes`` a posed OBJ per frame and face.

The camera: a pinhole at the frame centre whose focal length follows the photo pipeline's
long-lens convention (:data:`faceclip.facemodel.params.DEFAULT_FOCAL_224` for the 224-pixel crop of
the first face found), fixed for the clip (``focal_px`` overrides it).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from faceclip.errors import FaceClipError, InputError
from faceclip.fit.sequence import FrameCamera, FramePose, SequenceConfig, SequenceFitter, face_size_px

log = logging.getLogger(__name__)

__all__ = ["TrackResult", "VideoOptions", "VideoReport", "VideoReconstructor", "reconstruct_video"]


@dataclass
class VideoOptions:
    """Options of :func:`reconstruct_video` (the ``faceclip video`` flags)."""

    all_faces: bool = False
    detector: str = "auto"
    #: Frame rate of a folder of frames (files carry their own).
    frames_fps: float = 30.0
    #: Zero-phase One Euro smoothing of the landmarks (``min_cutoff`` Hz, ``beta``); the
    #: defaults were chosen on synthetic clips of the tuning seed 1.
    smooth: bool = True
    min_cutoff: float = 4.0
    beta: float = 0.05
    #: The same filter on the fitted pose and expression trajectories (angles in units of
    #: 0.03 rad, translation in cm, blendshape weights x 10). Chosen on two clips of the tuning
    #: seed 1 (the same motion over 90 and over 30 frames; posed-vertex error in px, no
    #: smoothing 4.30 on both): these defaults 4.04 / 4.04 with the slow clip's acceleration
    #: 2.37 -> 0.71 px/frame^2 (ground truth 0.38); a stronger filter (2, 0.01, 4, 0.002) gave
    #: 3.80 on the slow clip but 8.52 on the fast one (fast head turns damped).
    param_min_cutoff: float = 8.0
    param_beta: float = 0.01
    n_keyframes: int = 8
    #: Gaps (frames without landmarks) up to this long are interpolated; longer ones split.
    max_gap_s: float = 1.0
    focal_px: float | None = None
    max_frames: int | None = None
    overlay: bool = True
    glb: bool = True
    meshes: bool = False
    overwrite: bool = False
    face_model: str = "ict"
    face_model_path: str | None = None
    sequence: SequenceConfig = field(default_factory=SequenceConfig)


@dataclass
class TrackResult:
    """One face followed through the clip (T frames where it has a result).

    Attributes:
        track: id; frames: (T,) frame indices; times_s: (T,).
        identity: (I,) identity coefficients.
        poses: T :class:`FramePose`.
        landmarks68: (T, 68, 2) the landmarks fitted (smoothed; interpolated in gaps).
        observed: (T,) the face was found in that frame (False: interpolated).
        detected: (T,) found by the detectors (else by tracking).
        keyframes: frame indices the identity was solved on.
        reprojection_px: (T,) mean distance between the fitted and the fitted-to landmarks.
    """

    track: int
    frames: np.ndarray
    times_s: np.ndarray
    identity: np.ndarray
    poses: list[FramePose]
    landmarks68: np.ndarray
    observed: np.ndarray
    detected: np.ndarray
    keyframes: list[int]
    reprojection_px: np.ndarray


@dataclass
class VideoReport:
    """What :func:`reconstruct_video` did."""

    video: Path
    folder: Path | None
    files: list[Path]
    n_frames: int
    fps: float
    width: int
    height: int
    camera: FrameCamera | None
    tracks: list[TrackResult]
    #: Frames where some face had to be interpolated (lost, or the frame unreadable).
    interpolated_frames: list[int] = field(default_factory=list)
    #: Frames that could not be read or decoded: ``(index, message)``.
    bad_frames: list[tuple[int, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    #: (N,) time stamp of every frame (seconds).
    times_s: np.ndarray | None = None
    #: Frames that could not be read at all (their faces interpolated).
    unreadable_frames: list[int] = field(default_factory=list)


def check_options(o: VideoOptions) -> None:
    """Raise :class:`FaceClipError` for options that cannot work."""
    from faceclip.detect.frontend import DETECTORS

    if o.detector not in DETECTORS:
        raise FaceClipError(f"unknown face detector {o.detector!r}", hint="use one of: " + ", ".join(DETECTORS))
    if o.n_keyframes < 1:
        raise FaceClipError("n_keyframes must be at least 1")
    if o.focal_px is not None and not (math.isfinite(o.focal_px) and o.focal_px > 0):
        raise FaceClipError(f"focal length must be positive, got {o.focal_px}")
    if not (math.isfinite(o.frames_fps) and o.frames_fps > 0):
        raise FaceClipError(f"frame rate must be positive, got {o.frames_fps}")
    if o.max_frames is not None and o.max_frames < 1:
        raise FaceClipError(f"max_frames must be at least 1, got {o.max_frames}")
    if not (o.min_cutoff > 0 and o.param_min_cutoff > 0 and o.beta >= 0 and o.param_beta >= 0 and o.max_gap_s >= 0):
        raise FaceClipError("the smoothing parameters must be positive (cut-offs) and non-negative (beta, gap)")


class VideoReconstructor:
    """Holds the face model and the sequence fitter; reuse it across clips."""

    def __init__(self, options: VideoOptions | None = None) -> None:
        from faceclip.facemodel import load_face_model
        from faceclip.reconstruction import RECONSTRUCTION_GEOMETRY

        self.options = o = options or VideoOptions()
        check_options(o)
        geometry = RECONSTRUCTION_GEOMETRY if o.face_model == "ict" else None
        self.model = load_face_model(o.face_model, path=o.face_model_path, geometry=geometry)
        self.fitter = SequenceFitter(self.model, o.sequence)
        self.bad_frames: list[tuple[int, str]] = []
        self.unreadable: list[int] = []

    # ------------------------------------------------------------------ passes 1-3

    def track_landmarks(self, info, progress: Callable[[int, int], None] | None = None):
        """Pass 1: ``(times (N,), {track: {frame: FaceObservation}}, tracker, first)`` over the clip,
        ``first`` = ``(frame index, rgb)`` of the first frame where a face was found (or None).

        Problems are recorded in ``self.bad_frames`` as ``(index, message)``, and the indices of
        frames that could not be read at all (a folder's broken image) in ``self.unreadable``."""
        from faceclip.io.video import iter_frames
        from faceclip.video.track import LandmarkTracker

        o = self.options
        tracker = LandmarkTracker(detector=o.detector, all_faces=o.all_faces)
        times: list[float] = []
        obs: dict[int, dict] = {}
        first = None
        total = min(info.n_frames, o.max_frames) if o.max_frames else info.n_frames
        for i, t, rgb in iter_frames(info, bad=self.bad_frames):
            if o.max_frames is not None and i >= o.max_frames:
                break
            times.append(t)
            if rgb is None:  # unreadable: recorded in bad_frames, its faces interpolated
                self.unreadable.append(i)
                tracker.skip()
            else:
                for ob in tracker.step(rgb):
                    ob.mesh478 = None  # only the tracker needs the mesh (memory on long clips)
                    obs.setdefault(ob.track, {})[i] = ob
                    if first is None:
                        first = (i, rgb)
            if progress is not None:
                progress(i + 1, max(total, i + 1))
        return np.asarray(times), obs, tracker, first

    def camera_for(self, rgb_or_size, landmarks68: np.ndarray) -> FrameCamera:
        """The clip's camera from the first face's 68 landmarks (see the module docstring)."""
        from faceclip.detect.align import align_face
        from faceclip.facemodel.params import DEFAULT_FOCAL_224

        rgb = rgb_or_size
        h, w = rgb.shape[:2]
        if self.options.focal_px:
            return FrameCamera(float(self.options.focal_px), w, h)
        aligned = align_face(rgb, landmarks68, size_px=224)
        return FrameCamera(DEFAULT_FOCAL_224 / aligned.transform.scale, w, h)

    def fit_track(self, track: int, frame_obs: dict, times: np.ndarray, cam: FrameCamera) -> list[TrackResult]:
        """Passes 2-3 for one track: one result per stretch without a long gap."""
        o = self.options
        idx = np.array(sorted(frame_obs))
        fps = _rate(times)
        max_gap = max(1, int(round(o.max_gap_s * fps)))
        # Stretches: split where more than max_gap frames are missing.
        breaks = np.where(np.diff(idx) > max_gap + 1)[0]
        stretches = np.split(idx, breaks + 1)
        identity = None
        # The identity comes from the longest stretch (most frames to choose keyframes from).
        order = sorted(range(len(stretches)), key=lambda k: -(stretches[k][-1] - stretches[k][0]))
        parts: dict[int, TrackResult] = {}
        for k in order:
            seg = stretches[k]
            frames = np.arange(seg[0], seg[-1] + 1)
            lm = np.full((len(frames), 68, 2), np.nan)
            observed = np.zeros(len(frames), bool)
            detected = np.zeros(len(frames), bool)
            sharp = np.zeros(len(frames))
            for j, f in enumerate(frames):
                ob = frame_obs.get(int(f))
                if ob is not None:
                    lm[j], observed[j], detected[j], sharp[j] = ob.landmarks68, True, ob.detected, ob.sharpness
            lm = _interpolate_gaps(lm, observed)
            t = times[frames]
            if o.smooth and len(frames) >= 3:
                lm = _smooth(lm, t, _running_median(np.array([face_size_px(x) / 100.0 for x in lm]), 9),
                             o.min_cutoff, o.beta)
            keyframes: list[int] = []
            if identity is None:  # one identity per track
                identity, keys = self.solve_identity(lm, observed, sharp, cam)
                keyframes = [int(frames[i]) for i in keys]
            poses = self.fit_frames(lm, identity, cam)
            if o.smooth and len(frames) >= 3:
                poses = smooth_poses(poses, t, o.param_min_cutoff, o.param_beta, self.fitter.blendshapes)
            err = self.reprojection(lm, identity, poses, cam)
            parts[k] = TrackResult(track, frames, t, identity, poses, lm, observed, detected, keyframes, err)
        return [parts[k] for k in range(len(stretches))]

    def solve_identity(self, lm: np.ndarray, observed: np.ndarray, sharp: np.ndarray, cam: FrameCamera):
        """The identity from keyframes of one stretch: ``(identity (I,), keyframe rows)``."""
        o = self.options
        sf = self.fitter
        cand = np.where(observed)[0]
        if len(cand) == 0:
            cand = np.arange(len(lm))
        # Quick poses of the mean face on a subsample of candidates (at most 60).
        sub = cand[np.unique(np.linspace(0, len(cand) - 1, min(len(cand), 60)).round().astype(int))]
        med = np.median(sharp[sub]) if np.any(sharp[sub] > 0) else 0.0
        sub = sub[sharp[sub] >= med] if med > 0 else sub
        zero = np.zeros(sf.n_id)
        quick = {int(i): sf.fit_frame(lm[i], cam, zero, iterations=3) for i in sub}
        feats = {i: np.concatenate([np.degrees(p.angles_rad[:2]) / 10.0, p.expression * 3.0]) for i, p in quick.items()}
        # Start from the most frontal, least expressive frame; then farthest-point sampling.
        first = min(quick, key=lambda i: abs(quick[i].angles_rad[1]) + abs(quick[i].angles_rad[0])
                    + 0.5 * float(np.abs(quick[i].expression).sum()))
        keys = [first]
        while len(keys) < min(o.n_keyframes, len(quick)):
            rest = [i for i in quick if i not in keys]
            keys.append(max(rest, key=lambda i: min(np.linalg.norm(feats[i] - feats[k]) for k in keys)))
        keys.sort()
        identity, _ = sf.fit_identity([lm[i] for i in keys], cam, [quick[i] for i in keys])
        return identity, keys

    def fit_frames(self, lm: np.ndarray, identity: np.ndarray, cam: FrameCamera) -> list[FramePose]:
        """Every frame with the identity fixed, each warm-started from the previous one."""
        poses: list[FramePose] = []
        prev = None
        for j in range(len(lm)):
            prev = self.fitter.fit_frame(lm[j], cam, identity, init=prev, prior=prev)
            poses.append(prev)
        return poses

    def reprojection(self, lm: np.ndarray, identity: np.ndarray, poses: list[FramePose], cam: FrameCamera) -> np.ndarray:
        """(T,) mean distance (px) of the inner 51 model landmarks, posed as written, to ``lm``."""
        sf = self.fitter
        return np.array([float(np.linalg.norm(sf.project(sf.landmark_points(identity, p.expression)[17:], p, cam)
                                              - lm[j][17:], axis=1).mean()) for j, p in enumerate(poses)])


def _running_median(x: np.ndarray, width: int) -> np.ndarray:
    """Centred running median (the face size's scale: robust to a few noisy frames)."""
    h = width // 2
    return np.array([np.median(x[max(0, i - h):i + h + 1]) for i in range(len(x))])


def _rate(times: np.ndarray) -> float:
    d = np.diff(times)
    d = d[d > 0]
    return float(1.0 / np.median(d)) if len(d) else 30.0


def _interpolate_gaps(lm: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """(T, 68, 2) with the rows of unobserved frames linearly interpolated (ends held)."""
    if observed.all():
        return lm
    t = np.arange(len(lm))
    ok = np.where(observed)[0]
    flat = lm.reshape(len(lm), -1).copy()
    for c in range(flat.shape[1]):
        flat[:, c] = np.interp(t, ok, flat[ok, c])
    return flat.reshape(lm.shape)


#: Units the pose and expression are filtered in (see VideoOptions.param_min_cutoff).
_PARAM_UNITS = (0.03, 10.0, 0.1)


def smooth_poses(poses: list[FramePose], times: np.ndarray, min_cutoff: float, beta: float,
                 blendshapes: bool = True) -> list[FramePose]:
    """Zero-phase One Euro smoothing of pose and expression trajectories (T poses)."""
    from faceclip.video.smooth import smooth_track

    ua, ut, ue = _PARAM_UNITS
    th = np.stack([np.concatenate([p.angles_rad / ua, p.translation_mm / ut, p.expression / ue]) for p in poses])
    th = smooth_track(th[:, :, None], times, np.ones(len(th)), min_cutoff=min_cutoff, beta=beta)[:, :, 0]
    out = []
    for row in th:
        e = row[6:] * ue
        out.append(FramePose(row[:3] * ua, row[3:6] * ut, np.clip(e, 0.0, 1.0) if blendshapes else e))
    return out


def _smooth(lm, t, scale, min_cutoff, beta):
    from faceclip.video.smooth import smooth_track

    return smooth_track(lm, t, scale, min_cutoff=min_cutoff, beta=beta)


# ---------------------------------------------------------------------- the job


def reconstruct_video(path: str | Path, out_dir: str | Path, options: VideoOptions | None = None,
                      progress: Callable[[str, int, int], None] | None = None,
                      reconstructor: VideoReconstructor | None = None, name: str | None = None) -> VideoReport:
    """Reconstruct the faces of a clip into ``<out_dir>/<clip name>/`` (see the module docstring).

    Args:
        path: a video file (.mp4, .mov, .webm, .avi, ...) or a folder of frames.
        options: the job's options (default: the reconstructor's, else the defaults).
        progress: optional ``progress(stage, done, total)``; stages ``"landmarks"``, ``"fit"``,
            ``"overlay"``.
        reconstructor: a :class:`VideoReconstructor` to reuse across clips (its face model).
        name: the result folder's name (default: the clip's, made safe; a batch hands out unique
            names with :class:`faceclip.io.outputs.NameAllocator`).

    Raises:
        InputError: unreadable clip, or no face in any frame.
        OutputError: the result folder exists and is not faceclip's (see ``overwrite``).
    """
    from faceclip.io.outputs import check_output_root, check_replaceable, safe_name, write_result_folder
    from faceclip.io.video import probe_video

    rec = copy.copy(reconstructor or VideoReconstructor(options))  # per-job state stays with this job
    if options is not None and options is not rec.options:  # this job's options, the held model
        if (options.face_model, options.face_model_path) != (rec.options.face_model, rec.options.face_model_path):
            raise FaceClipError("the reconstructor holds another face model than the options ask for")
        check_options(options)
        rec.options = options
    if rec.options.sequence != rec.fitter.config:
        rec.fitter = SequenceFitter(rec.model, rec.options.sequence)
    o = rec.options
    rec.bad_frames, rec.unreadable = [], []
    info = probe_video(path, fps=o.frames_fps)
    out_root = check_output_root(Path(out_dir))
    name = safe_name(name or (info.path.stem if info.kind == "video" else info.path.name), default="video")
    folder = out_root / name
    check_replaceable(folder, o.overwrite)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    times, obs, tracker, first = rec.track_landmarks(info, None if progress is None else
                                                     (lambda d, n: progress("landmarks", d, n)))
    seconds["landmarks"] = time.perf_counter() - t0
    n = len(times)
    if not obs:
        raise InputError(f"{info.path}: no face found in any of its {n} frames",
                         hint="is the face large enough (at least ~40 px) and lit?")
    t0 = time.perf_counter()
    first_frame, rgb0 = first  # kept by pass 1: the clip is not decoded again for it
    first_track = min(k for k in obs if first_frame in obs[k])
    cam = rec.camera_for(rgb0, obs[first_track][first_frame].landmarks68)
    tracks: list[TrackResult] = []
    for k, track in enumerate(sorted(obs)):
        tracks += rec.fit_track(track, obs[track], times, cam)
        if progress is not None:
            progress("fit", k + 1, len(obs))
    seconds["fit"] = time.perf_counter() - t0
    interpolated = sorted({int(f) for tr in tracks for f, ob in zip(tr.frames, tr.observed) if not ob})
    report = VideoReport(info.path, folder, [], n, _rate(times) if n > 1 else info.fps, info.width, info.height,
                         cam, tracks, interpolated, list(rec.bad_frames), seconds, times, list(rec.unreadable))

    def write(tmp: Path) -> None:
        from faceclip.video.outputs import write_glb, write_meshes, write_overlay, write_tracks

        t1 = time.perf_counter()
        write_tracks(tmp / "tracks.jsonl", report, rec.model, o)
        single = len({tr.track for tr in tracks}) == 1
        if o.glb:
            for tr_id in sorted({tr.track for tr in tracks}):
                parts = [tr for tr in tracks if tr.track == tr_id]
                write_glb(tmp / ("animation.glb" if single else f"animation_face{tr_id}.glb"), parts, rec.model, cam,
                          clip_start_s=float(times[0]))
        if o.meshes:
            write_meshes(tmp, tracks, rec.fitter, single)
        seconds["write"] = time.perf_counter() - t1
        if o.overlay:
            t1 = time.perf_counter()
            write_overlay(tmp / "overlay.mp4", info, tracks, rec.model, cam, n,
                          None if progress is None else (lambda d, m: progress("overlay", d, m)))
            seconds["overlay"] = time.perf_counter() - t1

    meta = {"video": str(info.path)}
    report.files = write_result_folder(folder, write, meta=meta, overwrite=o.overwrite)
    report.seconds = seconds
    return report
