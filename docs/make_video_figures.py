"""Make docs/images/video.png: `faceclip video` on the synthetic benchmark clip (seed 0).

Top: four frames of overlay.mp4 (the tracked face shaded over the clip). Bottom: the head's yaw
and the clip's two strongest blendshape weights over time, ground truth against the tracked result and
against the photo pipeline run on every frame alone (``--fast``): per-frame fits jitter, the
tracked face follows the truth smoothly.

Usage (repository root, ICT model installed; about a minute on 2 cores)::

    python docs/make_video_figures.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from faceclip.evaluate.synthetic_video import ClipConfig, make_synthetic_clip, write_clip_video
    from faceclip.facemodel.params import MODEL_TO_OPENCV, matrix_to_euler
    from faceclip.reconstruction import ReconstructOptions, Reconstructor
    from faceclip.io.video import iter_frames, probe_video
    from faceclip.video import VideoOptions, reconstruct_video

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="faceclip-video-fig-"))
    clip = make_synthetic_clip(0, 0, ClipConfig())
    path = write_clip_video(clip, work / "synthetic_0.mp4")
    report = reconstruct_video(path, work / "out", VideoOptions())
    tr = report.tracks[0]
    overlay = [f for _, _, f in iter_frames(probe_video(report.folder / "overlay.mp4"))]
    rec = Reconstructor(ReconstructOptions(fast=True))
    names = rec.model.expression_names
    first, second = np.argsort(-clip.expression.max(0))[:2]  # the clip's two strongest blendshapes
    per_frame = []
    for rgb in clip.frames:
        face = rec.detect(rgb, "frame")[0]
        fit, _ = rec.fit_face(rgb, face.landmarks, face.extra.get("mesh478"))
        p = fit.params
        per_frame.append([float(np.degrees(p.angles_rad[0, 1].item())), float(p.expression[0, first].item()),
                          float(p.expression[0, second].item())])
    per_frame = np.array(per_frame)
    t = np.arange(clip.n_frames) / clip.fps
    gt_yaw = np.degrees(matrix_to_euler(torch.from_numpy(MODEL_TO_OPENCV @ clip.rotation_cv)).numpy()[:, 1])
    tr_yaw = np.degrees([p.angles_rad[1] for p in tr.poses])
    tr_expr = np.array([p.expression for p in tr.poses])

    fig = plt.figure(figsize=(12, 6.4), dpi=100)
    picks = np.linspace(8, clip.n_frames - 8, 4).round().astype(int)
    for k, i in enumerate(picks):
        ax = fig.add_axes([0.01 + k * 0.245, 0.47, 0.24, 0.52])
        h, w = overlay[i].shape[:2]
        ax.imshow(overlay[i][h // 8:h - h // 16, w // 8:w - w // 8])
        ax.set_title(f"frame {i}", fontsize=9)
        ax.axis("off")
    ax1 = fig.add_axes([0.06, 0.08, 0.42, 0.33])
    ax1.plot(t, gt_yaw, "k-", lw=2, label="ground truth")
    ax1.plot(t, per_frame[:, 0], "-", color="tab:orange", lw=1, label="each frame alone")
    ax1.plot(t, tr_yaw, "-", color="tab:blue", lw=1.5, label="tracked (faceclip video)")
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("yaw (deg)")
    ax1.legend(fontsize=8, loc="upper right")
    ax2 = fig.add_axes([0.56, 0.08, 0.42, 0.33])
    for col, idx in ((1, first), (2, second)):
        name = names[idx]
        ax2.plot(t, clip.expression[:, idx], "k-", lw=2 if col == 1 else 1)
        ax2.plot(t, per_frame[:, col], "-", color="tab:orange", lw=1)
        ax2.plot(t, tr_expr[:, idx], "-", color="tab:blue", lw=1.5)
        ax2.text(t[np.argmax(clip.expression[:, idx])], clip.expression[:, idx].max() + 0.03, name, fontsize=8)
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("blendshape weight")
    out = ROOT / "docs" / "images" / "video.png"
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
