"""Benchmark: the regressor's refinement module, none / PRM / MSMA, trained identically.

Usage (from the repository root; needs the ICT model installed)::

    python benchmarks/refine_compare.py                 # trains what is missing, then evaluates
    python benchmarks/refine_compare.py --no-train      # evaluate existing runs only

Each variant is trained with ``configs/refine_compare.yaml`` (same synthetic data, steps,
batch, input size 128 px, seed; only ``model.refine`` differs) into ``runs/refine_<variant>``,
then measured:

- ``synthetic mm``: the synthetic benchmark (``faceclip benchmark synthetic --method regress``:
  REALY-style "all" NMSE of the regressor alone; ``--n`` faces of seed ``--seed``, default the
  benchmark's n=100, seed 0; training used data seed 1);
- ``val NME``: the training run's own last validation (synthetic, 68-landmark NME);
- ``photo NME``: the regressor alone on real photos (``examples/astronaut.png`` and the photos
  in ``../shared/data/faces`` with a face): NME of its projected 68 landmarks against
  MediaPipe's calibrated 68, by the outer-eye-corner distance, mean over faces;
- parameters (the whole network and the refinement module) and the forward time at 224 px,
  batch 1, on ``--threads`` CPU threads (median of ``--runs``, after warm-up; measured for the
  three variants in turn, twice, and the medians of both rounds are pooled).

Prints a Markdown table and ends with ``refine_max_forward_ms_224_b1_cpu: X`` (the slowest of
the three; the goal is <= 30 ms each).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "refine_compare.yaml"
VARIANTS = ("none", "prm", "msma")
NO_FACE = {"dogs.jpg"}


def _train(variant: str, out: Path) -> None:
    cmd = [sys.executable, "-m", "faceclip.cli", "train", "--config", str(CONFIG), "--quiet",
           "--set", f"model.refine={variant}", "--out", str(out)]
    print("training:", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def _last_validation(run: Path) -> dict[str, float]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    vals = [r for r in rows if r.get("val_nme") not in (None, "")]
    return {k: float(v) for k, v in vals[-1].items() if k.startswith("val_") and v} if vals else {}


def _forward_ms(config, threads: int, runs: int) -> float:
    from dataclasses import replace

    from faceclip.nets.regressor import FaceRegressor

    torch.set_num_threads(threads)
    net = FaceRegressor(replace(config, crop_px=224), pretrained=False).eval()
    x = torch.rand(1, 3, 224, 224)
    times = []
    with torch.inference_mode():
        for _ in range(5):
            net(x)
        for _ in range(runs):
            t0 = time.perf_counter()
            net(x)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _photos() -> list[Path]:
    faces = REPO.parent / "shared" / "data" / "faces"
    extra = sorted(p for p in faces.glob("*.jpg") if p.name not in NO_FACE) if faces.is_dir() else []
    return [REPO / "examples" / "astronaut.png"] + extra


def _photo_nme(checkpoint: Path, photos: list[Path], work: Path) -> tuple[float, int]:
    from faceclip.reconstruction import ReconstructOptions, Reconstructor

    rec = Reconstructor(ReconstructOptions(method="regress", checkpoint=str(checkpoint), formats=("ply",),
                                           texture_px=64, overwrite=True))
    nmes = []
    for p in photos:
        try:
            faces = rec.reconstruct_image(p, work)
        except Exception as exc:  # noqa: BLE001 - a photo without a face is not the network's fault
            print(f"  skipped {p.name}: {exc}", flush=True)
            continue
        nmes += [f.landmark_nme for f in faces]
    return statistics.mean(nmes), len(nmes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default=str(REPO / "runs"))
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()

    from faceclip.evaluate.benchmark import run_synthetic_benchmark
    from faceclip.nets.regressor import load_regressor

    rows = {}
    for v in VARIANTS:
        run = Path(args.runs_dir) / f"refine_{v}"
        ckpt = run / "regressor.pt"
        if not ckpt.is_file():
            if args.no_train:
                raise SystemExit(f"{ckpt} missing (run without --no-train)")
            _train(v, run)
        net = load_regressor(ckpt)
        assert net.config.refine_kind == v, (ckpt, net.config.refine_kind)
        os.environ["FACECLIP_REGRESSOR"] = str(ckpt.resolve())
        torch.set_num_threads(args.threads)
        report = run_synthetic_benchmark(args.n, seed=args.seed, method="regress")
        photo_nme, n_faces = _photo_nme(ckpt, _photos(), Path(args.runs_dir) / f"refine_{v}" / "photos")
        rows[v] = {"config": net.config, "params": sum(p.numel() for p in net.parameters()),
                   "refine_params": sum(p.numel() for p in net.refine.parameters()),
                   "synthetic_mm": report.nmse_all_mm, "val": _last_validation(run),
                   "photo_nme": photo_nme, "faces": n_faces}
        print(f"done {v}: synthetic {report.nmse_all_mm:.3f} mm, photo NME {photo_nme:.4f} ({n_faces} faces)",
              flush=True)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(2):  # interleaved rounds: load changes hit every variant alike
        for v in VARIANTS:
            times[v].append(_forward_ms(rows[v]["config"], args.threads, args.runs))

    print(f"\nrefinement comparison: {CONFIG.relative_to(REPO)}; synthetic benchmark n={args.n} seed={args.seed}")
    print("| refinement | parameters (refinement) | forward 224 px b1 (ms) | synthetic all (mm) | val NME | "
          "photo NME vs MediaPipe |")
    print("|---|---|---|---|---|---|")
    for v in VARIANTS:
        r = rows[v]
        ms = statistics.median(times[v])
        val = r["val"].get("val_nme", float("nan"))
        print(f"| {v} | {r['params'] / 1e6:.2f} M ({r['refine_params'] / 1e6:.2f} M) | {ms:.1f} | "
              f"{r['synthetic_mm']:.3f} | {val:.4f} | {r['photo_nme']:.4f} ({r['faces']} faces) |")
    print(f"refine_max_forward_ms_224_b1_cpu: {max(statistics.median(t) for t in times.values()):.1f}")


if __name__ == "__main__":
    main()
