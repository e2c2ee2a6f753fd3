"""Benchmark: regressor forward time per 224x224 crop (batch 1 and 8), CPU (and CUDA when present).

Usage (from the repository root)::

    python benchmarks/regressor.py                # MobileNetV2 + PRM, 2 threads, 30 runs
    python benchmarks/regressor.py --runs 50 --threads 2 --backbone resnet50

The network is built for the ICT reconstruction geometry (100 identity, 53 expression
coefficients) with random heads (the time does not depend on the weights). Prints the median
of ``--runs`` timed forward passes (inference mode, after 5 warm-up passes) for each variant,
and ends with ``regressor_forward_ms_224_b1_cpu: X`` (MobileNetV2 + PRM unless --backbone).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from faceclip.nets.regressor import FaceRegressor, RegressorConfig


def make_net(backbone: str, prm: bool) -> FaceRegressor:
    cfg = RegressorConfig(n_identity=100, n_expression=53, n_albedo=81, rest_translation_mm=(0.0, 6.3, 1443.0),
                          backbone=backbone, prm=prm)
    return FaceRegressor(cfg, pretrained=False).eval()


def time_forward(net: FaceRegressor, batch: int, runs: int, device: str) -> float:
    """Median milliseconds of one forward pass of ``batch`` crops."""
    x = torch.rand(batch, 3, 224, 224, device=device)
    net = net.to(device)
    times = []
    with torch.inference_mode():
        for _ in range(5):
            net(x)
        for _ in range(runs):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            net(x)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2: the target machine)")
    ap.add_argument("--backbone", default="mobilenet_v2", choices=["mobilenet_v2", "resnet50"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"{'backbone':<14} {'PRM':<4} {'device':<6} {'batch':>5} {'ms/batch':>9} {'ms/crop':>8}")
    headline = None
    for backbone in dict.fromkeys([args.backbone, "mobilenet_v2"]):
        for prm in (True, False):
            net = make_net(backbone, prm)
            for device in devices:
                for batch in (1, 8):
                    ms = time_forward(net, batch, args.runs, device)
                    print(f"{backbone:<14} {'on' if prm else 'off':<4} {device:<6} {batch:>5} {ms:>9.2f} {ms / batch:>8.2f}")
                    if backbone == args.backbone and prm and device == "cpu" and batch == 1:
                        headline = ms
    print(f"regressor_forward_ms_224_b1_cpu: {headline:.2f}")


if __name__ == "__main__":
    main()
