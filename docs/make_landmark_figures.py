"""Make the dense landmark network's pictures (docs/landmark-network.md, the README).

- ``landmarks_training_faces.png``: a contact sheet of realistic synthetic training faces
  (``SyntheticFaceDataset`` with the realism of ``configs/landmarks_cpu.yaml``, seed 21, the
  first 15 indices), as the network sees them (128 px aligned crops), beside the bundled real
  photo ``examples/astronaut.png`` aligned the same way;
- ``landmarks_astronaut.png``: the network's 68 + N points on the astronaut (circles: one sigma),
  and MediaPipe's calibrated 68 points for comparison.

Usage::

    .venv/bin/python docs/make_landmark_figures.py [--net FILE] [--out docs/images]

The realism sources of the config (``runs/realism/textures``, ``runs/realism/bg``) must exist;
the config's header says how to make them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _label(img: np.ndarray, text: str) -> np.ndarray:
    pil = Image.fromarray(img)
    d = ImageDraw.Draw(pil)
    d.rectangle([0, 0, 8 + 6 * len(text), 14], fill=(0, 0, 0))
    d.text((3, 1), text, fill=(255, 255, 255))
    return np.asarray(pil)


def training_sheet(out: Path, size: int = 160) -> Path:
    import cv2

    from faceclip.api import example_image
    from faceclip.detect.align import align_face
    from faceclip.detect.frontend import detect_and_landmark
    from faceclip.io.images import load_image
    from faceclip.train.config import load_config
    from faceclip.train.data import FramingJitter, SyntheticFaceDataset
    from faceclip.train.realism import RealismConfig

    cfg = load_config(REPO / "configs" / "landmarks_cpu.yaml")
    os.chdir(REPO)  # the config's realism paths are relative to the repository
    ds = SyntheticFaceDataset(None, n=15, seed=cfg.data.seed, image_px=cfg.data.render_px, framing=FramingJitter(),
                              realism=RealismConfig(**cfg.data.realism))
    tiles = []
    rgb = load_image(example_image())
    face = detect_and_landmark(rgb, "auto", "mediapipe")[0]
    real = align_face(rgb, face.landmarks, size_px=cfg.data.image_px).crop
    tiles.append(_label(cv2.resize(real, (size, size), interpolation=cv2.INTER_LINEAR), "real photo"))
    for i in range(15):
        img = (ds.render(i).image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        tiles.append(_label(cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR), f"synthetic {i}"))
    rows = [np.concatenate(tiles[r * 8:(r + 1) * 8], 1) for r in range(2)]
    path = out / "landmarks_training_faces.png"
    Image.fromarray(np.concatenate(rows, 0)).save(path, optimize=True)
    return path


def astronaut_overlay(out: Path, net: str | None) -> Path:
    import cv2

    from faceclip.api import example_image
    from faceclip.detect.align import align_face
    from faceclip.detect.frontend import detect_and_landmark
    from faceclip.detect.landmark_net import DenseLandmarker
    from faceclip.io.images import load_image

    rgb = load_image(example_image())
    face = detect_and_landmark(rgb, "auto", "mediapipe")[0]
    pts = DenseLandmarker(net).predict(rgb, face.landmarks)
    S = 448
    aligned = align_face(rgb, pts.landmarks68, size_px=S)
    panels = []
    for name, xy, sig, colour in (
            ("network: 68 + N points, circles = 1 sigma", pts.points_px, pts.sigma_px, (255, 60, 60)),
            ("MediaPipe, calibrated 68", face.landmarks, None, (60, 220, 60))):
        img = aligned.crop.copy()
        c = aligned.transform.image_to_crop(xy)
        for k, (x, y) in enumerate(c):
            if sig is not None:
                r = max(1, int(round(sig[k] * aligned.transform.scale)))
                cv2.circle(img, (int(round(x)), int(round(y))), r, colour if k >= 68 else (255, 220, 0), 1, cv2.LINE_AA)
            dot = colour if (sig is None or k >= 68) else (255, 220, 0)
            cv2.circle(img, (int(round(x)), int(round(y))), 2, dot, -1, cv2.LINE_AA)
        panels.append(_label(img, name))
    path = out / "landmarks_astronaut.png"
    Image.fromarray(np.concatenate(panels, 1)).save(path, optimize=True)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default=None, help="network file (default: the shipped one)")
    ap.add_argument("--out", default=str(REPO / "docs" / "images"))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from faceclip.errors import FaceClipError

    try:
        print(f"wrote {astronaut_overlay(out, args.net)}")
        print(f"wrote {training_sheet(out)}")
    except FaceClipError as exc:
        print(f"error: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
