"""Benchmark: training throughput, images/s of one training step of the full loss, batch 8.

Usage (from the repository root)::

    python benchmarks/train_step.py                      # configs/synthetic.yaml, batch 8, 2 threads
    python benchmarks/train_step.py --runs 7 --image-px 224 --render-px 224
    python benchmarks/train_step.py --no-identity --no-clip

A step is what ``faceclip train`` does per batch: the regressor's forward pass, the training
objective (:class:`faceclip.train.objective.TrainingObjective`), backward, gradient clipping and
the Adam update (autocast float16 on CUDA when the config has ``amp``). The network, image and
render sizes and the loss weights are the config's (``configs/synthetic.yaml``: MobileNetV2 +
PRM, 128 px crops and renders; photometric, landmark, regularisation, albedo priors, expression
range and the supervised parameter term). The identity (FaceNet) and CLIP terms are added with
the paper's weight 2 when their weights are installed, and reported as excluded otherwise.

The ``--batch`` synthetic faces (the generator's, rendered at ``data.render_px`` and resampled
to ``data.image_px`` as in training) are made once, before any timing. Two warm-up steps, then
the median of ``--runs`` timed steps, on CPU (``--threads`` torch threads) and on CUDA when
available. When the identity or CLIP term is included, the step without them (the config's
own loss) is timed too, for comparison. Ends with ``train_images_per_s_cpu: X``, the full loss
on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch


def make_batch(cfg, face_model):
    """``cfg.batch_size`` synthetic training samples, collated (rendered once, untimed)."""
    from faceclip.train.data import SyntheticFaceDataset, collate
    from faceclip.train.loop import resize_sample

    ds = SyntheticFaceDataset(face_model, n=cfg.batch_size, seed=cfg.data.seed, image_px=cfg.data.render_px)
    return collate([resize_sample(ds[i], cfg.data.image_px) for i in range(len(ds))])


def optional_terms(use_identity: bool, use_clip: bool, device) -> tuple[dict, dict, list[str]]:
    """(objective kwargs, weight overrides, notes) for the identity and CLIP terms."""
    from faceclip.errors import ModelNotInstalledError

    kwargs, weights, notes = {}, {}, []
    if use_identity:
        try:
            from faceclip.losses.identity import IdentityLoss
            from faceclip.nets.facenet_weights import load_facenet

            kwargs["identity_loss"] = IdentityLoss(load_facenet(device=device))
            weights["identity"] = 2.0
            notes.append("identity: included (FaceNet, weight 2)")
        except ModelNotInstalledError as exc:
            notes.append(f"identity: excluded ({exc.message})")
    else:
        notes.append("identity: excluded (--no-identity)")
    if use_clip:
        from faceclip.losses.clip import make_clip_loss

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clip = make_clip_loss(device=device)
        if clip is not None:
            kwargs["clip_loss"] = clip
            weights["clip"] = 2.0
            notes.append("CLIP: included (RN50x4 layers 2-3 + ViT-B/32, weight 2)")
        else:
            notes.append("CLIP: excluded (weights not installed: `faceclip models install clip-rn50x4 ...`)")
    else:
        notes.append("CLIP: excluded (--no-clip)")
    return kwargs, weights, notes


def time_steps(cfg, face_model, batch, device: str, runs: int, use_identity: bool, use_clip: bool):
    """Median seconds of (forward, backward + update, whole step) and the active loss terms."""
    from faceclip.train.loop import _float_params, backward_and_step, build_model
    from faceclip.train.objective import LossWeights, TrainingObjective

    torch.manual_seed(0)
    net = build_model(cfg, face_model).to(device).train()
    extra, extra_weights, notes = optional_terms(use_identity, use_clip, device)
    weights = LossWeights.from_dict({**cfg.loss, **extra_weights})
    objective = TrainingObjective(face_model, weights, render_px=cfg.render_px, device=device, **extra)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr)
    use_amp = cfg.amp and device == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    b = batch.to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fwd, bwd, total = [], [], []
    for i in range(2 + runs):
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.float16, enabled=use_amp):
            params = _float_params(net(b.image))
        loss, terms, _ = objective(params, b.image, b.landmarks_px, b.skin_mask, b.params)
        sync()
        t1 = time.perf_counter()
        backward_and_step(loss, net, opt, scaler, cfg.optim.grad_clip)
        sync()
        t2 = time.perf_counter()
        if i >= 2:  # two warm-up steps
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            total.append(t2 - t0)
    return statistics.median(fwd), statistics.median(bwd), statistics.median(total), sorted(terms), notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/synthetic.yaml", help="training config (default: the synthetic one)")
    ap.add_argument("--runs", type=int, default=5, help="timed steps (median; default 5)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2: the target machine)")
    ap.add_argument("--image-px", type=int, default=None, help="network input side (default: the config's)")
    ap.add_argument("--render-px", type=int, default=None, help="loss render side (default: the config's)")
    ap.add_argument("--no-identity", action="store_true", help="leave the identity term out")
    ap.add_argument("--no-clip", action="store_true", help="leave the CLIP term out")
    ap.add_argument("--no-cuda", action="store_true", help="CPU only")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    torch.set_num_threads(args.threads)

    from faceclip.facemodel import load_face_model
    from faceclip.reconstruction import RECONSTRUCTION_GEOMETRY
    from faceclip.train.config import load_config

    overrides = {"batch_size": args.batch}
    if args.image_px:
        overrides["data.image_px"] = args.image_px
    if args.render_px:
        overrides["render_px"] = args.render_px
    cfg = load_config(args.config, overrides)
    face_model = load_face_model(cfg.face_model, geometry=RECONSTRUCTION_GEOMETRY if cfg.face_model == "ict" else None)
    t = time.perf_counter()
    batch = make_batch(cfg, face_model)
    print(f"config {args.config}: {cfg.model.backbone} + {'PRM ' + str(cfg.model.prm_dim) if cfg.model.prm else 'pooled head'}, "
          f"crops {cfg.data.image_px} px (rendered at {cfg.data.render_px}), loss render {cfg.render_px} px, "
          f"batch {cfg.batch_size}; samples made in {time.perf_counter() - t:.1f} s (untimed)")

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.no_cuda else [])
    rows, headline = [], None
    for device in devices:
        f, b, s, terms, notes = time_steps(cfg, face_model, batch, device, args.runs, not args.no_identity,
                                           not args.no_clip)
        rows.append((device, "full", f, b, s))
        if device == "cpu":
            headline = cfg.batch_size / s
            print(f"full loss terms: {', '.join(terms)}")
            for n in notes:
                print(f"  {n}")
        if any(n.split(":")[1].strip().startswith("included") for n in notes):
            # The config's own loss (its identity / CLIP weights), for comparison.
            f, b, s, _, _ = time_steps(cfg, face_model, batch, device, args.runs, False, False)
            rows.append((device, "no id/CLIP", f, b, s))
    print(f"\n{'device':<7} {'loss':<11} {'batch':>5} {'forward ms':>11} {'backward+step ms':>17} {'step ms':>9} "
          f"{'images/s':>9}")
    for device, loss, f, b, s in rows:
        print(f"{device:<7} {loss:<11} {cfg.batch_size:>5} {f * 1e3:>11.0f} {b * 1e3:>17.0f} {s * 1e3:>9.0f} "
              f"{cfg.batch_size / s:>9.2f}")
    print(f"(median of {args.runs} steps after 2 warm-up steps; {torch.get_num_threads()} CPU threads)")
    print(f"train_images_per_s_cpu: {headline:.2f}")


if __name__ == "__main__":
    main()
