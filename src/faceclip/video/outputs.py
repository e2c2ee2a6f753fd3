"""The files of a video result: ``tracks.jsonl``, ``animation.glb``, ``overlay.mp4``, ``meshes/``.

``tracks.jsonl`` (one JSON object per line, format ``faceclip-tracks/1``):

1. ``{"type": "clip", ...}``: the video, frame size, rate, frame count, the camera (focal length
   and principal point in pixels, OpenCV axes), the face model, the expression names and the
   conventions;
2. one ``{"type": "identity", "track": k, "identity": [...], "keyframes": [...]}`` per face;
3. one ``{"type": "frame", "frame": i, "time_s": t, "faces": [...]}`` per frame, in order, each
   face with its ``track``, ``angles_deg`` (pitch, yaw, roll), ``rotation`` (3 x 3, model ->
   OpenCV camera), ``translation_mm``, ``expression`` (in the order of ``expression_names``),
   ``landmarks68`` (pixels), ``observed`` (false: interpolated over a gap), ``detected`` and
   ``reprojection_px``. A frame without a face has ``"faces": []``; a frame that could not be
   read has ``"unreadable": true`` (its faces are interpolated).

``animation.glb`` (``animation_face<k>.glb`` with several faces): the identity's neutral mesh
(mm, +Y up) with the model's expression blendshapes as morph targets, and one animation that
drives the morph weights, the head's rotation and its translation per frame, seen by a glTF
camera at the origin (looking down -Z, the clip's field of view): Blender's "view through the
camera" shows the face where it was in the video.

``frame_<i>[_face<k>].obj`` (with ``meshes``): the posed mesh of each frame in the same camera
frame (files beside the others: a result folder holds files only, see :mod:`faceclip.io.outputs`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from faceclip.fit.sequence import FrameCamera

__all__ = ["OverlayRenderer", "gl_pose", "write_glb", "write_meshes", "write_overlay", "write_tracks"]

TRACKS_FORMAT = "faceclip-tracks/1"

#: OpenCV camera axes -> glTF / OpenGL camera axes (x right, y up, z toward the viewer).
_CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(type(x))


def dumps(obj) -> str:
    """Compact JSON (NumPy scalars allowed)."""
    return json.dumps(obj, default=_json_default, separators=(",", ":"))


def _r(x, nd: int = 5):
    return np.round(np.asarray(x, np.float64), nd).tolist()


def write_tracks(path: Path, report, model, options) -> Path:
    """Write ``tracks.jsonl`` (see the module docstring)."""
    from faceclip import __version__
    from faceclip.io.files import atomic_open

    cam = report.camera
    by_frame: dict[int, list] = {}
    for tr in report.tracks:
        for j, f in enumerate(tr.frames):
            p = tr.poses[j]
            by_frame.setdefault(int(f), []).append({
                "track": tr.track, "angles_deg": _r(np.degrees(p.angles_rad), 4), "rotation": _r(p.rotation_cv(), 6),
                "translation_mm": _r(p.translation_mm, 3), "expression": _r(p.expression, 4),
                "landmarks68": _r(tr.landmarks68[j], 2), "observed": bool(tr.observed[j]),
                "detected": bool(tr.detected[j]), "reprojection_px": round(float(tr.reprojection_px[j]), 3)})
    times = report.times_s
    with atomic_open(path, "w") as fh:
        fh.write(dumps({
            "type": "clip", "format": TRACKS_FORMAT, "faceclip_version": __version__, "video": str(report.video),
            "width": report.width, "height": report.height, "fps": round(report.fps, 6), "n_frames": report.n_frames,
            "camera": {"focal_px": round(cam.focal_px, 4), "principal_point_px": [cam.centre[0], cam.centre[1]]},
            "face_model": options.face_model, "expression_names": list(model.expression_names),
            "tracks": sorted({tr.track for tr in report.tracks}),
            "options": {"smooth": options.smooth, "min_cutoff": options.min_cutoff, "beta": options.beta,
                        "n_keyframes": options.n_keyframes, "max_gap_s": options.max_gap_s},
            "conventions": {
                "pixels": "x right, y down, origin at the frame's top-left corner, pixel centres at +0.5",
                "camera": "OpenCV: X_cam = rotation @ X_model + translation_mm; x right, y down, z forward",
                "model": "mm, +X subject's left, +Y up, +Z out of the face",
                "angles_deg": "pitch (X), yaw (Y), roll (Z): rotation = diag(1,-1,-1) @ Rz(roll) Ry(yaw) Rx(pitch)",
            }}) + "\n")
        seen = set()
        for tr in report.tracks:
            if tr.track in seen:
                continue
            seen.add(tr.track)
            kf = sorted({k for t2 in report.tracks if t2.track == tr.track for k in t2.keyframes})
            fh.write(dumps({"type": "identity", "track": tr.track, "identity": _r(tr.identity, 6), "keyframes": kf})
                     + "\n")
        unreadable = set(report.unreadable_frames)
        for i in range(report.n_frames):
            line = {"type": "frame", "frame": i, "time_s": round(float(times[i]), 6),
                    "faces": by_frame.get(i, [])}
            if i in unreadable:
                line["unreadable"] = True
            fh.write(dumps(line) + "\n")
    return path


def _quaternion_xyzw(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_quat()  # (x, y, z, w)


def gl_pose(pose) -> tuple[np.ndarray, np.ndarray]:
    """The head's rotation (3, 3) and translation (3,) mm in the glTF camera frame."""
    R_gl = _CV_TO_GL @ pose.rotation_cv()  # = euler(angles): the model frame is already +Y up
    return R_gl, _CV_TO_GL @ pose.translation_mm


_TEXTURES: dict[int, tuple] = {}  # id(model) -> (model, texture): the model kept, so its id is not reused


def write_glb(path: Path, parts: list, model, cam: FrameCamera, clip_start_s: float = 0.0) -> Path:
    """The animated face of one track (its stretches joined; see the module docstring); key
    times count from ``clip_start_s``, the clip's first frame."""
    from faceclip.io.gltf import write_morph_glb
    from faceclip.io.mesh import bake_vertex_colors

    tr0 = parts[0]
    with torch.no_grad():
        neutral = model.vertices(torch.as_tensor(tr0.identity, dtype=torch.float32)[None])[0].numpy()
    # Keys at the frames' times from the clip's start; across a gap between stretches the last
    # pose is held until just before the next stretch (no sweep through frames without output).
    times_l: list[float] = []
    poses = []
    for k, tr in enumerate(parts):
        if k and tr.times_s[0] - parts[k - 1].times_s[-1] > 1e-3:
            times_l.append(float(tr.times_s[0]) - 1e-3)
            poses.append(parts[k - 1].poses[-1])
        times_l += [float(t) for t in tr.times_s]
        poses += list(tr.poses)
    times = np.asarray(times_l)
    keep = np.concatenate([[True], np.diff(times) > 0])  # strictly increasing key times
    t0 = clip_start_s
    weights = np.stack([p.expression for p in poses])[keep]
    quats, trans = [], []
    for p in poses:
        R, t = gl_pose(p)
        q = _quaternion_xyzw(R)
        if quats and float(np.dot(q, quats[-1])) < 0:
            q = -q  # the same rotation; keeps linear interpolation on the short arc
        quats.append(q)
        trans.append(t)
    key = id(model)
    if key not in _TEXTURES or _TEXTURES[key][0] is not model:  # the same for every face: baked once (0.6 s)
        _TEXTURES[key] = (model, bake_vertex_colors(model.uv, model.triangles, _skin_colours(model), size_px=256))
    texture = _TEXTURES[key][1]
    yfov = 2.0 * math.atan(cam.height / 2.0 / cam.focal_px)
    return write_morph_glb(path, neutral, model.triangles.numpy(), model.uv.numpy(), texture,
                           model.expression_basis_mm.numpy(), list(model.expression_names),
                           weights=weights[0], times_s=times[keep] - t0, frame_weights=weights,
                           animation_name="video", frame_rotations_xyzw=np.stack(quats)[keep],
                           frame_translations=np.stack(trans)[keep],
                           camera={"yfov_rad": yfov, "aspect": cam.width / cam.height, "znear": 10.0,
                                   "zfar": 100000.0})


def _skin_colours(model) -> np.ndarray:
    """(V, 3) the model's mean albedo in [0, 1] (the fitter's albedo model)."""
    from faceclip.facemodel.albedo import make_albedo_model

    return make_albedo_model(model).mean.clamp(0, 1).cpu().numpy()


def write_meshes(folder: Path, tracks: list, fitter, single: bool) -> list[Path]:
    """One posed OBJ per frame and face in ``folder`` (glTF camera frame, mm)."""
    from faceclip.io.mesh import write_obj

    tri = fitter.model.triangles.numpy()
    files = []
    for tr in tracks:
        for j, f in enumerate(tr.frames):
            p = tr.poses[j]
            R, t = gl_pose(p)
            v = fitter.vertices(tr.identity, p.expression) @ R.T + t
            name = f"frame_{int(f):06d}" + ("" if single else f"_face{tr.track}") + ".obj"
            files += write_obj(folder / name, v, tri)[:1]
    return files


class OverlayRenderer:
    """Shades the fitted faces (the model's mean skin, a fixed soft frontal light) over frames."""

    def __init__(self, model, cam: FrameCamera) -> None:
        from faceclip.fit.texture import overlay_triangles
        from faceclip.render.shading import sh_directional

        self.model = model
        self.cam = cam
        tri = overlay_triangles(model)
        self.vids = torch.unique(tri)
        remap = torch.full((model.n_vertices,), -1, dtype=torch.long)
        remap[self.vids] = torch.arange(len(self.vids))
        self.tri = remap[tri]
        self.exp_basis = model.expression_basis_mm[:, self.vids]
        self.albedo = torch.from_numpy(_skin_colours(model)[self.vids.numpy()]).float()[None]
        self.sh = sh_directional((0.3, 0.4, 0.87), ambient=0.75, diffuse=0.45)
        self._neutral: dict[int, torch.Tensor] = {}

    def neutral(self, track: int, identity: np.ndarray) -> torch.Tensor:
        if track not in self._neutral:
            with torch.no_grad():
                v = self.model.vertices(torch.as_tensor(identity, dtype=torch.float32)[None])[0]
            self._neutral[track] = v[self.vids]
        return self._neutral[track]

    @torch.no_grad()
    def draw(self, frame: np.ndarray, faces: list[tuple[int, np.ndarray, object]]) -> np.ndarray:
        """``frame`` (H, W, 3) uint8 with each ``(track, identity, pose)`` drawn over it."""
        from faceclip.fit.texture import face_window, paste_window, window_camera
        from faceclip.render import PerspectiveCamera
        from faceclip.render.interpolate import interpolate_vertex_attributes
        from faceclip.render.rasterize import rasterize_mesh
        from faceclip.render.shading import sh_shade_vertices

        out = frame
        c = self.cam
        for track, identity, pose in faces:
            expr = torch.as_tensor(pose.expression, dtype=torch.float32)
            v = (self.neutral(track, identity) + torch.einsum("k,knc->nc", expr, self.exp_basis))[None]
            camera = PerspectiveCamera.create(torch.as_tensor(pose.rotation_cv(), dtype=torch.float32)[None],
                                              torch.as_tensor(pose.translation_mm, dtype=torch.float32)[None],
                                              c.focal_px, (c.height, c.width))
            if float(pose.translation_mm[2]) <= 10.0:
                continue
            win = face_window(camera, v, (c.height, c.width), max_side_px=512)
            cw = window_camera(camera, win)
            colors = sh_shade_vertices(v, self.tri, self.albedo, self.sh, to_view=cw.to_view)
            frag, _, _ = rasterize_mesh(v, self.tri, cw, cull_backfaces=True)
            col = interpolate_vertex_attributes(colors, frag, self.tri)
            rgb = frag.to_image(col.clamp(0, 1), 0.0)[0].numpy()
            alpha = frag.mask[0].float().numpy() * 0.85
            out = paste_window(out, rgb * 0.85, alpha, win)
        return out


def write_overlay(path: Path, info, tracks: list, model, cam: FrameCamera, n_frames: int,
                  progress: Callable[[int, int], None] | None = None) -> Path:
    """``overlay.mp4``: every frame with the fitted faces drawn over it, the clip's audio copied."""
    from faceclip.io.video import VideoWriter, iter_frames

    renderer = OverlayRenderer(model, cam)
    at: dict[int, list] = {}
    for tr in tracks:
        for j, f in enumerate(tr.frames):
            at.setdefault(int(f), []).append((tr.track, tr.identity, tr.poses[j]))
    audio = info.path if info.kind == "video" and info.has_audio else None
    import cv2

    last = None
    with VideoWriter(path, info.fps, audio_from=audio) as w:
        for i, t, rgb in iter_frames(info, bad=[]):
            if i >= n_frames:
                break
            if rgb is None:  # an unreadable frame: the last one again keeps the timing
                rgb = last if last is not None else np.zeros((info.height, info.width, 3), np.uint8)
            elif rgb.shape[:2] != (info.height, info.width):  # the stream changed size mid-clip
                rgb = cv2.resize(rgb, (info.width, info.height), interpolation=cv2.INTER_AREA)
            last = rgb
            w.write(renderer.draw(rgb, at.get(i, [])), time_s=t)
            w.max_time_s = t + 1.0 / max(info.fps, 1e-3)
            if progress is not None:
                progress(i + 1, n_frames)
    return path
