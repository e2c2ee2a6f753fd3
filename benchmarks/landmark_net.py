"""Benchmark: speed of the dense landmark network on one face (CPU).

Usage (from the repository root)::

    python benchmarks/landmark_net.py                      # the shipped network, 2 threads
    python benchmarks/landmark_net.py --net runs/landmarks/landmarks.pt --threads 1

Times, on ``examples/astronaut.png`` (its face found once by the front-end beforehand):

- ``forward``: the network on one aligned crop (the 68 + N points and sigmas);
- ``predict_1pass`` / ``predict_2pass``: :meth:`DenseLandmarker.predict` with one or two
  passes (alignment warp + forward, twice: the second crop is placed by the network's own 68).

Each figure is the median of ``--repeat`` runs after warm-up; the MediaPipe face mesh on the
same face is timed too, as a reference measured in the same run (its ratio is printed). The last
line is ``landmark_net_ms_per_face: X`` for the default number of passes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _median_ms(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default=None, help="network file (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from faceclip.api import example_image
    from faceclip.detect.align import align_face
    from faceclip.detect.frontend import detect_and_landmark
    from faceclip.detect.landmark_net import DenseLandmarker
    from faceclip.detect.mediapipe import predict_mesh478
    from faceclip.io.images import load_image

    rgb = load_image(example_image())
    face = detect_and_landmark(rgb, "mediapipe", "mediapipe")[0]
    lm = DenseLandmarker(args.net)
    crop = align_face(rgb, face.landmarks, size_px=lm.crop_px).crop
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255.0

    with torch.no_grad():
        t_forward = _median_ms(lambda: lm.net(x), args.repeat)
    one = DenseLandmarker(args.net, passes=1)
    t_1 = _median_ms(lambda: one.predict(rgb, face.landmarks), args.repeat)
    t_2 = _median_ms(lambda: lm.predict(rgb, face.landmarks), args.repeat)
    t_mp = _median_ms(lambda: predict_mesh478(rgb, face.box), args.repeat)
    n_params = sum(p.numel() for p in lm.net.parameters())
    size_mb = os.path.getsize(lm.path) / 2 ** 20
    print(f"network {lm.path} ({n_params / 1e6:.2f} M parameters, {size_mb:.1f} MiB file), "
          f"{lm.net.config.n_points} points, {lm.crop_px} px crops, {args.threads} thread(s), median of {args.repeat}")
    print(f"forward:        {t_forward:7.2f} ms")
    print(f"predict_1pass:  {t_1:7.2f} ms")
    print(f"predict_2pass:  {t_2:7.2f} ms")
    print(f"mediapipe mesh: {t_mp:7.2f} ms (reference; predict_{lm.passes}pass / mesh = "
          f"{(t_2 if lm.passes == 2 else t_1) / t_mp:.2f})")
    print(f"landmark_net_ms_per_face: {(t_2 if lm.passes == 2 else t_1):.2f}")


if __name__ == "__main__":
    main()
