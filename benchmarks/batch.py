"""Batch throughput: one process against ``--workers 2``, on the same folder of photos.

Usage::

    .venv/bin/python benchmarks/batch.py [--faces 48] [--fast] [--workers 2]

Builds a folder of ``--faces`` photos (copies of the photos in ../shared/data/faces, the
largest face each, under distinct names), runs ``faceclip reconstruct`` on it once in one
process and once with ``--workers N`` (each a fresh command, model loading and worker start-up
included), checks both produced the same folders, and prints faces per second for each. With
``--repeat R`` the pair is run R times, alternating, and the median of the R ratios is reported
(on a shared machine one pair varies by +-25 %). The last line is
``batch_speedup_<N>_workers: X`` (throughput with N workers / throughput of one process).

Start-up (imports, model loading, each process's first photo) is a fixed cost of a few seconds
that a folder of 48 photos does not hide. Each pair therefore also reports the steady rate, from
the ``finished`` times of the manifest lines: the lines after the N-th (taken as the end of each
process's first photo; the shared photos have one face each), over the time from the N-th line to
the last, and the line before the last gives the median of its ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "faces"


def run(photos: Path, out: Path, extra: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "faceclip.cli", "reconstruct", str(photos), "--out", str(out),
                          "--quiet", *extra], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode not in (0, 2):
        sys.exit(f"benchmarks/batch.py: reconstruct failed ({res.returncode}): {res.stderr[-2000:]}")
    return seconds


def steady_rate(out: Path, processes: int) -> float:
    """Faces per second once every process has finished its first photo: from the manifest's
    ``finished`` times, (lines after the ``processes``-th) / (last time - ``processes``-th time)."""
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()[1:]]
    times = sorted(rec["finished"] for rec in lines if "finished" in rec)  # none before 2026-12-05
    if len(times) <= processes or times[-1] <= times[processes - 1]:
        return float("nan")
    return (len(times) - processes) / (times[-1] - times[processes - 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=48)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="pairs of runs, alternating; the median ratio is reported")
    args = ap.parse_args()
    if args.repeat < 1 or args.workers < 2 or args.faces < 1:
        sys.exit("benchmarks/batch.py: --repeat and --faces must be at least 1, --workers at least 2")
    sources = sorted(p for p in FACES.iterdir() if p.suffix.lower() in (".jpg", ".png") and p.name != "dogs.jpg")
    if not sources:
        sys.exit(f"benchmarks/batch.py: no photos in {FACES}")
    work = Path(tempfile.mkdtemp(prefix="faceclip_batch_"))
    try:
        photos = work / "photos"
        photos.mkdir()
        for i in range(args.faces):
            src = sources[i % len(sources)]
            shutil.copy(src, photos / f"{i:03d}_{src.name}")
        extra = ["--fast"] if args.fast else []
        mode = "fast" if args.fast else "default"
        ratios, steady = [], []
        for r in range(args.repeat):
            for name in ("one", "many"):
                shutil.rmtree(work / name, ignore_errors=True)
            one = run(photos, work / "one", extra)
            many = run(photos, work / "many", extra + ["--workers", str(args.workers)])
            names_one = sorted(p.name for p in (work / "one").iterdir())
            names_many = sorted(p.name for p in (work / "many").iterdir())
            if names_one != names_many:
                sys.exit("benchmarks/batch.py: the two runs produced different folders")
            n = len([p for p in names_one if (work / "one" / p).is_dir()])
            if r == 0:
                print(f"# {n} faces from {args.faces} photos, mode {mode}; wall time includes model loading")
            rate_one, rate_many = steady_rate(work / "one", 1), steady_rate(work / "many", args.workers)
            print(f"pair {r + 1}: one process {one:7.1f} s {n / one:6.2f} faces/s; --workers {args.workers} "
                  f"{many:7.1f} s {n / many:6.2f} faces/s; ratio {one / many:.2f}; steady rates {rate_one:.2f} "
                  f"and {rate_many:.2f} faces/s, ratio {rate_many / rate_one:.2f}")
            ratios.append(one / many)
            steady.append(rate_many / rate_one)
        print(f"steady_speedup_{args.workers}_workers (start-up left out): {statistics.median(steady):.2f}")
        print(f"batch_speedup_{args.workers}_workers: {statistics.median(ratios):.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
