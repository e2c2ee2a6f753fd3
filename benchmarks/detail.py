"""Benchmark: what `faceclip reconstruct --detail` costs, and dynamic detail on synthetic faces.

Usage (from the repository root; needs the ICT model installed)::

    python benchmarks/detail.py                       # time: seconds --detail adds per face
    python benchmarks/detail.py --dynamic --seed 0    # dynamic detail (reported seed)
    python benchmarks/detail.py --dynamic --seed 7    # ... the tuning seed

**Time** (default): the bundled astronaut and the first ``--faces`` faces of
``../shared/data/faces/bald_guys.jpg`` are reconstructed with and without ``--detail``
(``--repeat`` times, after one warm-up run that loads the models); per face, the added time is
the detail fit plus the extra writing (``displacement.png``, ``normal_map.png``,
``mesh_detail.obj/.glb``). The last line is ``detail_seconds_per_face: X`` (median; goal <= 1.5
on the 2-core CPU, 2 threads).

**Dynamic** (``--dynamic``): :func:`faceclip.evaluate.detail_benchmark.run_dynamic_benchmark`:
a map fitted at one expression, carried to another, scored on the ground truth's wrinkled
pixels; the last line is ``dynamic_detail_err_ratio: X`` (the map through the static/dynamic
split over the map unchanged; < 1: the split helps).

The accuracy of the detail itself is measured by ``faceclip benchmark synthetic --detail``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def time_detail(n_faces: int, repeat: int) -> list[float]:
    """Seconds ``--detail`` adds, per face and run."""
    from faceclip.api import example_image
    from faceclip.reconstruction import ReconstructOptions, Reconstructor

    photos = [(example_image(), [0]), (FACES / "bald_guys.jpg", list(range(n_faces)))]
    plain = Reconstructor(ReconstructOptions(all_faces=True, overwrite=True))
    detail = Reconstructor(ReconstructOptions(all_faces=True, overwrite=True, detail=True))
    added: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(repeat + 1):  # run 0 warms up (model loads, compiled kernels)
            for photo, faces in photos:
                a = plain.reconstruct_image(Path(photo), Path(tmp) / "plain", faces=faces)
                b = detail.reconstruct_image(Path(photo), Path(tmp) / "detail", faces=faces)
                for fa, fb in zip(a, b):
                    extra = fb.seconds["detail"] + fb.seconds["write"] - fa.seconds["write"]
                    if run > 0:
                        added.append(extra)
                        print(f"{Path(photo).name} face {fb.face_index}: detail fit {fb.seconds['detail']:.3f} s, "
                              f"writing {fa.seconds['write']:.3f} -> {fb.seconds['write']:.3f} s", file=sys.stderr)
    return added


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dynamic", action="store_true", help="measure dynamic detail instead of time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=10, help="faces of the dynamic measurement")
    ap.add_argument("--faces", type=int, default=4, help="faces of bald_guys.jpg timed")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.dynamic:
        from faceclip.evaluate.detail_benchmark import run_dynamic_benchmark

        rows = run_dynamic_benchmark(args.n, seed=args.seed)
        print(f"{'face':>4} {'brows':>11} {'smile':>11} {'unchanged°':>11} {'dynamic°':>9} {'no map°':>8}")
        for r in rows:
            print(f"{r.index:>4} {r.photo_brows:>4.2f}->{r.edit_brows:<4.0f} {r.photo_smile:>4.2f}->{r.edit_smile:<4.0f} "
                  f"{r.unchanged_deg:>11.2f} {r.dynamic_deg:>9.2f} {r.no_detail_deg:>8.2f}")
        u = float(np.nanmean([r.unchanged_deg for r in rows]))  # a face without wrinkled pixels is NaN
        d = float(np.nanmean([r.dynamic_deg for r in rows]))
        z = float(np.nanmean([r.no_detail_deg for r in rows]))
        print(f"seed {args.seed}, {len(rows)} faces: wrinkled pixels at the edited expression: no map {z:.2f}°, "
              f"fitted map unchanged {u:.2f}°, through the dynamic split {d:.2f}°")
        print(f"dynamic_detail_err_ratio: {d / u:.4f}")
        return
    added = time_detail(args.faces, args.repeat)
    print(f"{len(added)} face runs; added seconds: median {statistics.median(added):.3f}, "
          f"max {max(added):.3f} ({args.threads} threads)")
    print(f"detail_seconds_per_face: {statistics.median(added):.3f}")


if __name__ == "__main__":
    main()
