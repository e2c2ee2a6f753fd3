"""Load time and size of the converted ICT-FaceKit cache.

Usage:  .venv/bin/python benchmarks/model_load.py [--runs 7]
Needs `faceclip models install ict` first. Prints the median cold-process load time (a fresh
Python process per run, so the OS page cache is warm but nothing is memoised in-process), the
in-process load time, and ends with ``ict_cache_load_s: X``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

SNIPPET = (
    "import time, torch; from faceclip.facemodel import load_face_model; t=time.perf_counter(); "
    "m=load_face_model('ict'); print(time.perf_counter()-t)"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    from faceclip.facemodel import load_face_model
    from faceclip.facemodel.registry import cache_path

    path = cache_path("ict")
    if not path.is_file():
        sys.exit(f"no ICT cache at {path}: run `faceclip models install ict` first")
    fresh = [float(subprocess.check_output([sys.executable, "-c", SNIPPET], text=True).strip().splitlines()[-1])
             for _ in range(args.runs)]
    inproc = []
    for _ in range(args.runs):
        t = time.perf_counter()
        model = load_face_model("ict")
        inproc.append(time.perf_counter() - t)
    for geometry in ("face", "head_eyes"):
        t = time.perf_counter()
        sub = load_face_model("ict", geometry=geometry)
        print(f"load geometry={geometry}: {time.perf_counter() - t:.3f} s ({sub.n_vertices} vertices)")
    print(f"cache file: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    print(f"model: {model.n_vertices} vertices, {model.n_identity} identity, {model.n_expression} expression")
    print(f"in-process load, median of {args.runs}: {statistics.median(inproc):.3f} s")
    print(f"fresh-process load, median of {args.runs}: {statistics.median(fresh):.3f} s (runs: "
          + ", ".join(f"{x:.3f}" for x in fresh) + ")")
    print(f"ict_cache_load_s: {statistics.median(fresh):.3f}")


if __name__ == "__main__":
    main()
