"""Benchmark: video tracking speed, jitter and accuracy on a synthetic 640x480 clip.

Usage (from the repository root; needs the ICT model installed)::

    python benchmarks/video.py                    # seed 0 (the reported figures)
    python benchmarks/video.py --seed 1           # the tuning seed the smoothing was chosen on

The clip is :func:`faceclip.evaluate.synthetic_video.make_synthetic_clip` ``(seed, 0)``: 90
frames at 30 fps, the head turning +-35 deg, three expressions rising and falling, the light
changing, written as H.264. Two methods run on it:

- **tracked**: ``faceclip video`` as the API runs it (every output: tracks.jsonl, overlay.mp4,
  animation.glb; no per-frame meshes), timed over ``--repeat`` runs (median; the model load
  and the face model's one-time set-up are not counted);
- **per-frame**: the photo pipeline on every frame on its own (``faceclip reconstruct --fast``'s
  detection, landmarks and fit, no texture or files): what users of single-image methods do.

Figures (see :mod:`faceclip.evaluate.video_metrics` for the camera-independent frame):

- ``*_accel_px``: mean vertex acceleration of the posed face (pixels / frame^2); the ground
  truth's own (``gt_accel_px``) is what the true motion contributes;
- ``video_jitter_ratio``: tracked acceleration / per-frame acceleration (goal <= 0.4);
- ``*_posed_err_px``: mean distance of the posed face vertices to the ground truth (pixels);
- ``*_shape_mm``: REALY-style shape error ("all" region) of the canonical mesh (identity and
  expression) on every 10th frame, and ``tracked_identity_mm`` of the neutral face;
- ``tracked_lag_frames``: the shift (frames) that best aligns the tracked yaw with the truth;
- ``video_fps_640x480_cpu``: frames per second of the tracked run (goal >= 15, 2 threads).

The last line is the headline, ``video_fps_640x480_cpu: X``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _posed_tracked(rec, tr, ids, cam):
    from faceclip.evaluate.video_metrics import image_frame_vertices

    V = np.stack([rec.fitter.vertices(tr.identity, p.expression) for p in tr.poses])
    Xc = np.stack([V[k][ids] @ p.rotation_cv().T + p.translation_mm for k, p in enumerate(tr.poses)])
    return image_frame_vertices(Xc, cam.focal_px, cam.centre), V


def _per_frame(frames, ids):
    """The photo pipeline's --fast fit on each frame alone: (posed (T, N, 3), canonical (T, V, 3))."""
    from faceclip.reconstruction import ReconstructOptions, Reconstructor
    from faceclip.fit.texture import image_camera

    rec = Reconstructor(ReconstructOptions(fast=True))
    posed, canon = [], []
    for rgb in frames:
        faces = rec.detect(rgb, "frame")
        if not faces:
            posed.append(None)
            canon.append(None)
            continue
        face = faces[0]
        result, aligned = rec.fit_face(rgb, face.landmarks, face.extra.get("mesh478"))
        cam = image_camera(result.params, aligned.transform.inverse().matrix_2x3, rgb.shape[:2])
        v = result.vertices_mm[ids][None].float()
        xy, z = cam.project_with_depth(v)
        z = z[0].numpy().astype(np.float64)
        zbar = z.mean()
        f = float(cam.fx[0])
        posed.append(np.concatenate([xy[0].numpy(), (f * (z - zbar) / zbar)[:, None]], 1))
        canon.append(result.vertices_mm.numpy().astype(np.float64))
    ok = [p is not None for p in posed]
    for i in range(len(posed)):  # a frame without a face: the nearest found one (rare)
        if posed[i] is None:
            j = min((k for k in range(len(posed)) if ok[k]), key=lambda k: abs(k - i))
            posed[i], canon[i] = posed[j], canon[j]
    return np.stack(posed), np.stack(canon), int(len(ok) - sum(ok))


def _shape_mm(model, pred_v, gt_v):
    from faceclip.evaluate.keypoints import realy_regions_for_model
    from faceclip.evaluate.mesh import Mesh
    from faceclip.evaluate.realy import realy_evaluate, realy_ground_truth_from_mesh

    regions = realy_regions_for_model(model)
    tri = model.triangles.numpy()
    lm = model.landmarks68.numpy()
    gt = realy_ground_truth_from_mesh(Mesh(gt_v, tri), regions, gt_v[lm])
    return realy_evaluate(Mesh(pred_v, tri), pred_v[lm], gt).all_mm


def _lag(yaw, yaw_gt, max_shift=4):
    best = min(range(-max_shift, max_shift + 1),
               key=lambda s: np.abs(yaw[max(s, 0):len(yaw) + min(s, 0)] - yaw_gt[max(-s, 0):len(yaw) - max(s, 0)]).mean())
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from faceclip.evaluate.synthetic_video import ClipConfig, make_synthetic_clip, write_clip_video
    from faceclip.evaluate.video_metrics import image_frame_vertices, posed_error, vertex_acceleration
    from faceclip.facemodel.params import MODEL_TO_OPENCV, matrix_to_euler
    from faceclip.video import VideoOptions, VideoReconstructor, reconstruct_video

    work = Path(tempfile.mkdtemp(prefix="faceclip-video-bench-"))
    print(f"rendering synthetic clip seed {args.seed} ({args.frames} frames, 640x480) ...", file=sys.stderr)
    clip = make_synthetic_clip(args.seed, 0, ClipConfig(n_frames=args.frames))
    path = write_clip_video(clip, work / f"synthetic_{args.seed}.mp4")

    rec = VideoReconstructor(VideoOptions(overwrite=True))
    reconstruct_video(path, work / "warm", rec.options, reconstructor=rec)  # one-time set-up (graphs, caches)
    walls, report = [], None
    for r in range(args.repeat):
        t0 = time.perf_counter()
        report = reconstruct_video(path, work / f"run{r}", rec.options, reconstructor=rec)
        walls.append(time.perf_counter() - t0)
    wall = statistics.median(walls)
    fps = args.frames / wall
    if len(report.tracks) != 1 or len(report.tracks[0].frames) != args.frames:
        raise SystemExit(f"expected one track over all {args.frames} frames, got {[len(t.frames) for t in report.tracks]}")
    tr = report.tracks[0]
    shutil.rmtree(work, ignore_errors=True)  # the clip and the runs' results (the figures need only memory)

    model = rec.model
    ids = model.regions["face"].numpy()[::4]
    gt_cam = np.einsum("tij,tvj->tvi", clip.rotation_cv, clip.vertices_mm[:, ids].astype(np.float64)) \
        + clip.translation_mm[:, None]
    P_gt = image_frame_vertices(gt_cam, clip.focal_px, (clip.frames[0].shape[1] / 2.0, clip.frames[0].shape[0] / 2.0))
    P_tr, V_tr = _posed_tracked(rec, tr, ids, report.camera)
    print("per-frame fits of every frame ...", file=sys.stderr)
    t0 = time.perf_counter()
    P_pf, V_pf, missed = _per_frame(clip.frames, ids)
    t_pf = time.perf_counter() - t0

    a_gt, a_tr, a_pf = vertex_acceleration(P_gt), vertex_acceleration(P_tr), vertex_acceleration(P_pf)
    sub = range(0, args.frames, 10)
    gt_v = clip.vertices_mm.astype(np.float64)
    shape_tr = float(np.mean([_shape_mm(model, V_tr[k], gt_v[k]) for k in sub]))
    shape_pf = float(np.mean([_shape_mm(model, V_pf[k], gt_v[k]) for k in sub]))
    neutral_tr = rec.fitter.vertices(tr.identity, np.zeros(model.n_expression))
    ident_mm = _shape_mm(model, neutral_tr, clip.neutral_mm.astype(np.float64))
    yaw_tr = np.degrees([p.angles_rad[1] for p in tr.poses])
    yaw_gt = np.degrees(matrix_to_euler(torch.from_numpy(MODEL_TO_OPENCV @ clip.rotation_cv)).numpy()[:, 1])

    print(f"seed: {args.seed}  frames: {args.frames}  threads: {args.threads}  runs: {[round(w, 2) for w in walls]}")
    print("stage_seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in report.seconds.items()))
    print(f"per_frame_seconds_per_frame: {t_pf / args.frames:.3f}  (frames without a face: {missed})")
    print(f"gt_accel_px: {a_gt:.3f}")
    print(f"tracked_accel_px: {a_tr:.3f}")
    print(f"per_frame_accel_px: {a_pf:.3f}")
    print(f"tracked_posed_err_px: {posed_error(P_tr, P_gt):.3f}")
    print(f"per_frame_posed_err_px: {posed_error(P_pf, P_gt):.3f}")
    print(f"tracked_shape_mm: {shape_tr:.3f}")
    print(f"per_frame_shape_mm: {shape_pf:.3f}")
    print(f"tracked_identity_mm: {ident_mm:.3f}")
    print(f"tracked_lag_frames: {_lag(yaw_tr, yaw_gt)}")
    print(f"video_jitter_ratio: {a_tr / a_pf:.3f}")
    print(f"video_fps_640x480_cpu: {fps:.1f}")


if __name__ == "__main__":
    main()
