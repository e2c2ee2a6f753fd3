"""Time to the first result: a fresh ``faceclip reconstruct`` process on one photo.

Usage::

    .venv/bin/python benchmarks/first_photo.py [--runs 3] [--fast] [--photo examples/astronaut.png]

Runs the command ``--runs`` times, each a new process (importing the libraries, loading the
models, warming up the detectors and compiled kernels, reconstructing, writing), and prints the
wall time of each run. This is what a user waits for with one photo, what every batch worker
pays once, and what the web demo's first request costs. The last line is ``first_photo_s: X``
(the median).
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
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--photo", type=Path, default=REPO / "examples" / "astronaut.png")
    args = ap.parse_args()
    times = []
    with tempfile.TemporaryDirectory(prefix="faceclip_first_") as tmp:
        for i in range(args.runs):
            cmd = [sys.executable, "-m", "faceclip.cli", "reconstruct", str(args.photo), "--out", f"{tmp}/run{i}",
                   "--quiet", *(["--fast"] if args.fast else [])]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            if res.returncode != 0:
                sys.exit(f"benchmarks/first_photo.py: reconstruct failed ({res.returncode}): {res.stderr[-2000:]}")
            print(f"run {i + 1}: {times[-1]:.2f} s")
    print(f"first_photo_s: {statistics.median(times):.2f}")


if __name__ == "__main__":
    main()
