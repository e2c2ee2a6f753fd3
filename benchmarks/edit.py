"""Benchmark: seconds per expression edit on CPU.

Usage (from the repository root; needs the ICT model installed)::

    python benchmarks/edit.py                  # reconstructs examples/astronaut.png once (--fast)
    python benchmarks/edit.py --result results/astronaut --repeat 7

Figures (medians of ``--repeat`` runs after one warm-up):

- ``edit_named_compute_seconds``: working out a named expression (``happy``) on a loaded result;
- ``edit_named_seconds``: one whole ``faceclip edit RESULT --expression happy`` as the API does it:
  read the result folder, edit, write every output (meshes, params.json, overlay.png,
  before_after.png), i.e. what a user waits for (no animation);
- ``mapper_step_seconds``: one optimisation step of the CLIP-guided mapper (render a 224 px crop,
  ViT-B/32 image encoder forward and backward, Adam) with **randomly initialised, full-size**
  ViT-B/32 stand-ins (the cost of the real weights; ``--small`` uses the narrow test stand-in).

The last line is the headline, ``edit_named_seconds: X``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def _median_s(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--result", default=None, help="a reconstruct result folder (default: reconstruct the example)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="narrow CLIP stand-in instead of full-size ViT-B/32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from faceclip.cli import main as cli
    from faceclip.edit import EditRequest, ExpressionEdit, edit_result, load_result, plan_edit
    from faceclip.edit.mapper import TextEditConfig, TextEditObjective, optimise_mapper
    from faceclip.edit.render import FaceRenderer
    from faceclip.nets.clip import VITB32, ClipImageText, build_clip_tower

    work = Path(tempfile.mkdtemp(prefix="faceclip-edit-bench-"))
    if args.result is None:
        example = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
        assert cli(["reconstruct", str(example), "--out", str(work / "rec"), "--fast", "--quiet"]) == 0
        result = work / "rec" / "astronaut"
    else:
        result = Path(args.result)

    request = EditRequest(expressions=(ExpressionEdit("happy"),))
    face = load_result(result)
    compute = _median_s(lambda: plan_edit(face, request, clip=None), args.repeat)
    whole = _median_s(lambda: edit_result(result, work / "edited", request, clip=None), args.repeat)

    if args.small:
        clip = ClipImageText.small_random()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            clip = ClipImageText(build_clip_tower(VITB32, with_text=True).float().eval(), source="random ViT-B/32")
    objective = TextEditObjective(FaceRenderer(face), clip, "a very surprised face", TextEditConfig())
    steps = max(3, args.repeat)
    t0 = time.perf_counter()
    optimise_mapper(objective, TextEditConfig(steps=1))  # warm-up
    warm = time.perf_counter() - t0
    times: list[float] = []
    optimise_mapper(objective, TextEditConfig(steps=steps), progress=lambda s, _: times.append(time.perf_counter()))
    per_step = statistics.median(b - a for a, b in zip(times, times[1:]))  # between step ends

    print(f"result: {result}")
    print(f"threads: {args.threads}, repeat: {args.repeat}, CLIP stand-in: {clip.source}")
    print(f"mapper warm-up (1 step incl. text encoding): {warm:.2f} s")
    print(f"edit_named_compute_seconds: {compute:.4f}")
    print(f"mapper_step_seconds: {per_step:.3f}")
    print(f"edit_named_seconds: {whole:.3f}")


if __name__ == "__main__":
    main()
