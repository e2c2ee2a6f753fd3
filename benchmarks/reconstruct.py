"""Reconstruction speed and landmark accuracy on the photos in ../shared/data/faces.

Usage:
    .venv/bin/python benchmarks/reconstruct.py [--fast] [--no-regressor] [--identity] [--all-faces] [--out DIR] [--faces DIR]
                                               [--busy N]

Reconstructs every photo (the largest face, or all with --all-faces) in one warm process (the
model, detectors and albedo basis load once, as in a batch), writing the full outputs. Prints
per-stage medians over faces, the landmark NME (mean distance between the fitted model's
projected 68 landmarks and the detected ones, over the outer-eye-corner distance), and ends
with ``reconstruct_s_per_face: X`` (median wall time per face: load + detection + fitting +
texture + overlay + writing). With ``--busy N`` the photos are reconstructed a second time while N
CPU-bound processes (``while True: pass``) compete for the cores, and the last line is
``slowdown_<N>_busy: X`` (median time per face under load / quiet, same invocation). Like the
``faceclip`` command, it sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--all-faces", action="store_true")
    ap.add_argument("--no-regressor", action="store_true", help="fit from the mean face (no regressor start)")
    ap.add_argument("--identity", action="store_true", help="fit with the FaceNet identity term (reconstruct --identity)")
    ap.add_argument("--faces", default=str(REPO.parent / "shared" / "data" / "faces"))
    ap.add_argument("--out", default=None, help="keep outputs here (default: a temporary folder)")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="also measure with N competing CPU-bound processes; report the slowdown last")
    args = ap.parse_args()
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the faceclip command does (see cli.main)

    from faceclip.reconstruction import ReconstructOptions, Reconstructor
    from faceclip.fit.identity import DEFAULT_IDENTITY_WEIGHT
    from faceclip.io.images import list_image_files

    images = list_image_files([Path(args.faces)])
    if not images:
        sys.exit(f"no images in {args.faces}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="faceclip_bench_"))
    t0 = time.perf_counter()
    rec = Reconstructor(ReconstructOptions(fast=args.fast, all_faces=args.all_faces, no_regressor=args.no_regressor,
                                           identity_weight=DEFAULT_IDENTITY_WEIGHT if args.identity else 0.0))
    setup_s = time.perf_counter() - t0
    # Warm-up on the first image (first-call costs: imports, allocator), not counted.
    try:
        rec.reconstruct_image(images[0], out / "_warmup")
    except Exception:  # noqa: BLE001 - a warm-up failure shows again below
        pass
    rows, failures = measure(rec, images, out)
    print(f"mode: {'fast' if args.fast else 'default'}{' + identity term' if args.identity else ''}; setup (model, fitter): {setup_s:.2f} s; outputs: {out}")
    print(f"{'image':<22} {'face':>4} {'NME':>7} {'detect':>7} {'fit':>6} {'tex+ov':>7} {'write':>6} {'total':>6}")
    for name, f, wall in rows:
        s = f.seconds
        print(f"{name:<22} {f.face_index:>4} {f.landmark_nme:>7.4f} {s['detect']:>7.3f} {s['fit']:>6.3f} "
              f"{s['texture_overlay']:>7.3f} {s['write']:>6.3f} {wall:>6.3f}")
    for fail in failures:
        print(f"FAILED {fail}")
    if not rows:
        sys.exit("no face reconstructed")

    def med(key: str) -> float:
        return statistics.median(f.seconds[key] for _, f, _ in rows)

    stages = ["load", "detect", "fit_landmarks", "fit_photometric", "fit", "texture_overlay", "write"]
    print("median per stage (s): " + ", ".join(f"{k} {med(k):.3f}" for k in stages))
    nmes = [f.landmark_nme for _, f, _ in rows]
    print(f"faces: {len(rows)}; landmark NME median {statistics.median(nmes):.4f}, mean {statistics.mean(nmes):.4f}, "
          f"max {max(nmes):.4f}")
    print(f"landmark_nme_mean: {statistics.mean(nmes):.4f}")
    quiet = statistics.median(w for _, _, w in rows)
    print(f"reconstruct_s_per_face: {quiet:.3f}")
    if args.busy > 0:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        try:
            busy_rows, _ = measure(rec, images, out)
        finally:
            for h in hogs:
                h.kill()
        busy = statistics.median(w for _, _, w in busy_rows)
        print(f"reconstruct_s_per_face with {args.busy} busy process(es): {busy:.3f}")
        print(f"slowdown_{args.busy}_busy: {busy / quiet:.2f}")


def measure(rec, images, out):
    """Reconstruct every photo; returns ([(name, FaceOutput, wall s per face)], [failure lines])."""
    rows, failures = [], []
    for path in images:
        t = time.perf_counter()
        try:
            faces = rec.reconstruct_image(path, out)
        except Exception as exc:  # noqa: BLE001 - report and go on
            failures.append(f"{path.name}: {str(exc).splitlines()[0]}")
            continue
        wall = time.perf_counter() - t
        for f in faces:
            rows.append((path.name, f, wall / len(faces)))
    return rows, failures


if __name__ == "__main__":
    main()
