"""Benchmark: forward+backward cost of each training loss, batch 1 and 8, on CPU.

Usage (from the repository root)::

    python benchmarks/losses.py                 # 2 threads, 5 timed runs per cell
    python benchmarks/losses.py --runs 7 --skip-clip

Each loss is timed on its own, from inputs that require gradients to the gradient of those
inputs (224x224 images; the rendering itself is timed separately as ``render (forward
model)``: the ICT face area rendered at 224 with SH shading, whose cost every image loss
pays once per step). The identity encoder is the ported FaceNet when installed, else a
randomly initialised network of the same architecture; CLIP uses randomly initialised RN50x4
and ViT-B/32 (no weights can be obtained here; the cost does not depend on the weights).
Medians of ``--runs`` runs after one warm-up. Ends with ``losses_fwdbwd_ms_b8_cpu: X``, the
sum over all losses at batch 8 (render excluded).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from faceclip.losses import (
    albedo_skin_prior,
    albedo_smoothness,
    albedo_symmetry,
    coefficient_l2,
    landmark_loss,
    photometric_loss,
)


def timed(fn: Callable[[], torch.Tensor], runs: int) -> float:
    """Median ms of ``fn().backward()``."""
    fn().backward()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn().backward()
        out.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(out)


def identity_encoder():
    from faceclip.errors import ModelNotInstalledError
    from faceclip.nets.facenet import InceptionResnetV1
    from faceclip.nets.facenet_weights import load_facenet

    try:
        return load_facenet(), "FaceNet (ported weights)"
    except ModelNotInstalledError:
        return InceptionResnetV1(), "FaceNet architecture, random weights"


def cases(batch: int, skip_clip: bool, skip_render: bool) -> dict[str, Callable[[], torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(batch, 224, 224, 3, generator=g)
    rend = torch.rand(batch, 224, 224, 3, generator=g).requires_grad_(True)
    mask = torch.rand(batch, 224, 224, generator=g) > 0.3
    lm_t = torch.rand(batch, 68, 2, generator=g) * 224
    lm_p = (lm_t + torch.randn(batch, 68, 2, generator=g)).requires_grad_(True)
    ident = torch.randn(batch, 100, generator=g).requires_grad_(True)
    expr = torch.rand(batch, 53, generator=g).requires_grad_(True)
    alb_c = torch.randn(batch, 81, 3, generator=g).requires_grad_(True)
    eig = torch.rand(81, generator=g)
    n_v = 14388
    albedo = torch.rand(batch, n_v, 3, generator=g).requires_grad_(True)
    mirror = torch.randperm(n_v, generator=g)
    skin = torch.arange(0, n_v, 2)
    out: dict[str, Callable[[], torch.Tensor]] = {
        "photometric": lambda: photometric_loss(rend, img, mask),
        "landmark": lambda: landmark_loss(lm_p, lm_t),
        "regularization": lambda: coefficient_l2(ident) + coefficient_l2(expr) + albedo_smoothness(alb_c, eig),
        "albedo priors": lambda: albedo_symmetry(albedo, mirror, skin) + albedo_skin_prior(albedo, skin),
    }
    from faceclip.losses.identity import IdentityLoss

    enc, _ = identity_encoder()
    id_loss = IdentityLoss(enc, channels_last=True)
    out["identity"] = lambda: id_loss(img, rend)
    if not skip_clip:
        from faceclip.losses.clip import ClipConsistencyLoss
        from faceclip.nets.clip import ClipEncoders

        clip = ClipConsistencyLoss(ClipEncoders.random(seed=0))
        nchw_img, face = img.permute(0, 3, 1, 2), mask[:, None].float()
        out["CLIP (geometric + semantic)"] = lambda: clip(nchw_img, rend.permute(0, 3, 1, 2), face).total
    return out


def render_case(batch: int) -> Callable[[], torch.Tensor]:
    """SH-shaded render of the ICT face area at 224 (the forward model of the image losses)."""
    from faceclip.facemodel import load_face_model
    from faceclip.fit.fitter import FitConfig, Fitter
    from faceclip.facemodel.params import FaceParams

    model = load_face_model("ict", geometry="head_eyes")
    fitter = Fitter(model, FitConfig(render_px=224))
    p = FaceParams.initial(batch, model.n_identity, model.n_expression, fitter.albedo_model.n_coeffs, (224, 224),
                           1015.0, 1443.0)
    p.translation_mm[:, 1] = 6.3
    for t in (p.identity, p.expression, p.sh, p.albedo):
        t.requires_grad_(True)
    return lambda: fitter.forward_subset(p).rendered.mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-clip", action="store_true", help="leave out the (slow) CLIP loss")
    ap.add_argument("--skip-render", action="store_true", help="leave out the render row (needs the ICT model)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, id_name = identity_encoder()
    rows: dict[str, dict[int, float]] = {}
    for batch in (1, 8):
        for name, fn in cases(batch, args.skip_clip, args.skip_render).items():
            rows.setdefault(name, {})[batch] = timed(fn, args.runs)
        if not args.skip_render:
            rows.setdefault("render (forward model)", {})[batch] = timed(render_case(batch), args.runs)
    print(f"loss forward+backward on CPU, {args.threads} threads, median of {args.runs} (ms); identity: {id_name}")
    print(f"{'loss':<30} {'batch 1':>9} {'batch 8':>9} {'per image (b8)':>15}")
    for name, r in rows.items():
        print(f"{name:<30} {r[1]:>9.2f} {r[8]:>9.2f} {r[8] / 8:>15.2f}")
    total = sum(r[8] for name, r in rows.items() if not name.startswith("render"))
    print(f"losses_fwdbwd_ms_b8_cpu: {total:.1f}")


if __name__ == "__main__":
    main()
