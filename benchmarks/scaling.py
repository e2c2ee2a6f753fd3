"""The most ``--workers N`` can gain on this machine: N independent warm processes side by side.

Usage::

    .venv/bin/python benchmarks/scaling.py [--processes 2] [--rounds 1] [--repeat 8]

Starts ``--processes`` processes; each loads the models and warms up on one photo by itself.
Then, ``--repeat`` times, alternating: the first process alone reconstructs the photos of
../shared/data/faces ``--rounds`` times (writing the full outputs), and then all the processes do
so at the same moment. Nothing is shared between them (no pool, no manifest) and start-up is
left out, so the combined faces per second of the N processes over the single process's rate is
the ceiling of ``steady_speedup_<N>_workers`` (benchmarks/batch.py) on this machine for this
work: cores share caches and memory bandwidth and, on cloud machines, a host with other tenants.
As with ``faceclip reconstruct``, the process working alone uses PyTorch's default thread count
and N processes use ``cores // N`` threads each. The phases are short and alternate, so a change
in the load of a shared host affects both sides of a ratio alike. The last line is
``independent_speedup_<N>_processes: X``, the median of the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "faces"


def child(rounds: int, shared_threads: int, out: Path) -> None:
    """One process: load, warm up, print ``ready``; then for each line on stdin (``alone`` or
    ``together``) reconstruct the photos ``rounds`` times and print JSON (faces, start, end)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the faceclip command does
    import cv2
    import torch

    from faceclip.io.images import list_image_files
    from faceclip.reconstruction import ReconstructOptions, Reconstructor

    default_threads = torch.get_num_threads(), cv2.getNumThreads()
    photos = [p for p in list_image_files([FACES]) if p.name != "dogs.jpg"]
    rec = Reconstructor(ReconstructOptions())
    rec.reconstruct_image(photos[0], out / "warmup")
    print("ready", flush=True)
    phase = 0
    for line in sys.stdin:
        threads = default_threads if line.strip() == "alone" else (shared_threads, shared_threads)
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
        start, faces = time.time(), 0
        for r in range(rounds):
            for i, p in enumerate(photos):
                faces += len(rec.reconstruct_image(p, out / f"{phase}_{r}_{i}"))
        phase += 1
        print(json.dumps({"faces": faces, "start": start, "end": time.time()}), flush=True)


def rate(procs: list[subprocess.Popen], command: str) -> float:
    """Faces per second of ``procs`` given ``command`` at the same moment."""
    for p in procs:
        p.stdin.write(command + "\n")
        p.stdin.flush()
    res = []
    for p in procs:
        line = p.stdout.readline()
        if not line.startswith("{"):
            sys.exit(f"benchmarks/scaling.py: a process stopped (exit {p.wait()}); its error is above")
        res.append(json.loads(line))
    return sum(r["faces"] for r in res) / (max(r["end"] for r in res) - min(r["start"] for r in res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="passes over the photos per process and phase")
    ap.add_argument("--repeat", type=int, default=8, help="pairs of phases (alone, then together)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(int(args.child[0]), int(args.child[1]), Path(args.child[2]))
    if args.processes < 2 or args.rounds < 1 or args.repeat < 1:
        sys.exit("benchmarks/scaling.py: --processes must be at least 2, --rounds and --repeat at least 1")
    n = args.processes
    shared_threads = max(1, (os.cpu_count() or 1) // n)
    ratios = []
    with tempfile.TemporaryDirectory(prefix="faceclip_scaling_") as tmp:
        procs = [subprocess.Popen([sys.executable, __file__, "--child", str(args.rounds), str(shared_threads),
                                   str(Path(tmp) / f"p{k}")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for k in range(n)]
        try:
            for p in procs:
                if p.stdout.readline().strip() != "ready":
                    sys.exit(f"benchmarks/scaling.py: a process failed to start (exit {p.wait()})")
            for trial in range(args.repeat):
                one = rate(procs[:1], "alone")
                many = rate(procs, "together")
                ratios.append(many / one)
                print(f"pair {trial + 1}: one process {one:.2f} faces/s; {n} together {many:.2f} faces/s; "
                      f"ratio {many / one:.2f}", flush=True)
        finally:
            for p in procs:
                p.stdin.close()
                p.wait()
    print(f"independent_speedup_{n}_processes: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
