"""Benchmark: mean face vs regressor vs fitting on the synthetic benchmark (REALY-style "all").

Usage (from the repository root)::

    python benchmarks/regressor_vs_fitting.py                     # n=100, seed 0, shipped regressor
    python benchmarks/regressor_vs_fitting.py --n 20 --checkpoint runs/synthetic/regressor.pt

Runs ``faceclip benchmark synthetic``'s protocol (synthetic ICT faces with known shape,
detection + landmarks from the image, REALY-style region errors) for four methods:

- ``mean``: the mean face posed by PnP from the detected landmarks (the floor);
- ``regress``: the regressor alone;
- ``fit_mean``: fitting from the mean face (``faceclip reconstruct --no-regressor``);
- ``fit``: fitting from the regressor (the default of ``faceclip reconstruct``).

Prints one row per method (mean over the faces of each region's NMSE in mm, "all", landmark
NME, median seconds per face of the method itself: detection, alignment and reconstruction)
and ends with ``default_fit_from_regressor_all_mm: X``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

METHODS = ("mean", "regress", "fit_mean", "fit")
LABELS = {"mean": "mean face", "regress": "regressor alone", "fit_mean": "fitting from the mean face",
          "fit": "fitting from the regressor (default)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", default=None, help="regressor checkpoint (default: the shipped one)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--out", default=None, help="also write <out>/synthetic_<method>.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        os.environ["FACECLIP_REGRESSOR"] = str(Path(args.checkpoint).resolve())
    from faceclip.evaluate.benchmark import run_synthetic_benchmark
    from faceclip.evaluate.report import write_json

    rows = {}
    for method in args.methods.split(","):
        report = run_synthetic_benchmark(args.n, seed=args.seed, method=method)
        rows[method] = report.summary()["all"]
        if args.out:
            write_json(Path(args.out) / f"synthetic_{method}.json", report.as_dict())
        s = rows[method]
        print(f"done {method}: all {s['nmse_all_mm']:.3f} mm, {s['seconds_method_median']:.3f} s/face", flush=True)
    print(f"\nsynthetic benchmark n={args.n} seed={args.seed} (REALY-style NMSE, mm; NME by inter-ocular distance)")
    print(f"{'method':<38} {'nose':>6} {'mouth':>6} {'fhead':>6} {'cheek':>6} {'all':>6} {'NME %':>6} {'s/face':>7}")
    for method, s in rows.items():
        print(f"{LABELS[method]:<38} {s['nmse_nose_mm']:>6.3f} {s['nmse_mouth_mm']:>6.3f} {s['nmse_forehead_mm']:>6.3f} "
              f"{s['nmse_cheek_mm']:>6.3f} {s['nmse_all_mm']:>6.3f} {100 * s['nme_inter_ocular']:>6.2f} "
              f"{s['seconds_method_median']:>7.3f}")
    if "fit" in rows:
        print(f"default_fit_from_regressor_all_mm: {rows['fit']['nmse_all_mm']:.4f}")


if __name__ == "__main__":
    main()
