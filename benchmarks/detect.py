"""Benchmark: image decode, face detection, landmarks, alignment and skin mask on 640x480.

Usage (from the repository root)::

    python benchmarks/detect.py                 # 640x480 photo with one face
    python benchmarks/detect.py --runs 50 --image photo.jpg --cnn

The default photo is the top of ``../shared/data/faces/astronaut.png`` (one face) scaled to
640x480 and stored as a JPEG in a temporary folder. Times three front-ends in the same run:
``auto+mediapipe`` (the default: MediaPipe's two detectors and dlib HOG merged, the 478-point
mesh twice, the 68 points from the calibrated map), ``mediapipe+mediapipe`` (MediaPipe alone)
and ``hog+dlib68`` (the front-end before MediaPipe). Prints the median time of each stage over
``--runs`` runs (after one warm-up). Then ``largest``: `faceclip reconstruct`'s default, the
largest face only (:func:`faceclip.detect.frontend.detect_largest`: MediaPipe first, HOG only
when MediaPipe found no large face, one face landmarked). Ends with the every-face figure of
``auto+mediapipe`` (``..._all_faces``) and the headline ``detect_landmarks_align_ms_640x480: X``
for the largest-face default (median of the per-run sum of detection, landmarks and alignment).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from faceclip.detect import FacePolicy, align_face, skin_mask
from faceclip.detect.frontend import detect_largest, find_faces, landmark_face
from faceclip.io.images import load_image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTO = ROOT.parent / "shared" / "data" / "faces" / "astronaut.png"


def make_640x480(src: Path, out_dir: Path) -> Path:
    """Top 4:3 part of the photo, scaled to 640x480, saved as JPEG (quality 92)."""
    rgb = load_image(src)
    h, w = rgb.shape[:2]
    crop = rgb[: min(h, w * 3 // 4), :w]
    resized = cv2.resize(crop, (640, 480), interpolation=cv2.INTER_AREA)
    path = out_dir / "bench_640x480.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(resized, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn`` once; return (result, milliseconds)."""
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000.0


def run_largest(path: Path) -> dict[str, float]:
    """One pass of `faceclip reconstruct`'s default front-end (the largest face only:
    :func:`faceclip.detect.frontend.detect_largest`); per-stage milliseconds."""
    ms: dict[str, float] = {}
    rgb, ms["load_ms"] = timed(lambda: load_image(path))
    faces, ms["detect_landmarks_ms"] = timed(lambda: detect_largest(rgb, FacePolicy()))
    aligned, ms["align_ms"] = timed(lambda: align_face(rgb, faces[0].landmarks))
    ms["detect_landmarks_align_ms"] = ms["detect_landmarks_ms"] + ms["align_ms"]
    return ms


def run_once(path: Path, frontend: str, upsample: int | None) -> dict[str, float]:
    """One pass of the pipeline; per-stage milliseconds. ``frontend``: "<detector>+<landmarks>"."""
    if frontend == "largest":
        return run_largest(path)
    detector, landmarks = frontend.split("+")
    ms: dict[str, float] = {}
    rgb, ms["load_ms"] = timed(lambda: load_image(path))
    faces, ms["detect_ms"] = timed(lambda: find_faces(rgb, detector, upsample=upsample))  # type: ignore[arg-type]
    if not faces:
        raise SystemExit(f"no face found in {path}")
    ok, ms["landmarks_ms"] = timed(lambda: landmark_face(rgb, faces[0], landmarks))  # type: ignore[arg-type]
    if not ok:
        raise SystemExit(f"no landmarks for the face in {path}")
    lm = faces[0].landmarks
    aligned, ms["align_ms"] = timed(lambda: align_face(rgb, lm))
    _, ms["skin_mask_ms"] = timed(lambda: skin_mask(aligned.crop, aligned.landmarks, valid=aligned.valid))
    ms["detect_landmarks_align_ms"] = ms["detect_ms"] + ms["landmarks_ms"] + ms["align_ms"]
    return ms


def bench(path: Path, runs: int, detector: str, upsample: int | None) -> dict[str, float]:
    """Median per stage over ``runs`` runs after one warm-up (model loading excluded)."""
    run_once(path, detector, upsample)
    samples = [run_once(path, detector, upsample) for _ in range(runs)]
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=None, help="use this photo as is instead of the 640x480 default")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--upsample", type=int, default=None, help="detector upsampling (default: auto)")
    ap.add_argument("--cnn", action="store_true", help="also time the CNN (MMOD) detector (slow)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.image or make_640x480(DEFAULT_PHOTO, Path(tmp))
        h, w = load_image(path).shape[:2]
        print(f"image: {path} ({w}x{h}), {args.runs} runs, medians")
        results = {}
        for frontend in ("hog+dlib68", "mediapipe+mediapipe", "auto+mediapipe", "largest"):
            results[frontend] = med = bench(path, args.runs, frontend, args.upsample)
            for k, v in med.items():
                print(f"  {frontend} {k}: {v:.2f}")
        if args.cnn:
            cnn = bench(path, max(3, args.runs // 10), "cnn+dlib68", args.upsample)
            print(f"  cnn detect_ms: {cnn['detect_ms']:.1f}")
        label = "640x480" if args.image is None else f"{w}x{h}"
        every = results["auto+mediapipe"]["detect_landmarks_align_ms"]
        print(f"every face (faceclip landmarks, --all-faces): detect_landmarks_align_ms_{label}_all_faces: {every:.1f}")
        print(f"detect_landmarks_align_ms_{label}: {results['largest']['detect_landmarks_align_ms']:.1f}")


if __name__ == "__main__":
    main()
