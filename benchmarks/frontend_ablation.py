"""Benchmark: what each part of the front-end contributes on the synthetic benchmark.

Usage (from the repository root)::

    python benchmarks/frontend_ablation.py --n 100 --seed 0          # report (benchmark seed)
    python benchmarks/frontend_ablation.py --n 40 --seed 7 --variants default,dense_w0.05   # tuning seed

Runs ``faceclip benchmark synthetic``'s protocol (synthetic ICT faces with known shape; the
method sees only the image) for front-end variants of the default reconstruction, changing one
thing at a time:

- ``mean``: the posed mean face (the floor to beat);
- ``dlib``: dlib HOG + 68-point predictor (the front-end before MediaPipe);
- ``default``: what ships: MediaPipe + HOG detection, the mesh, the 68 points from the
  calibrated map;
- ``mp68``: the same (kept as a name for older logs);
- ``dense``: ``default`` + the calibrated dense points (``--dense``: per-point sigma and the
  correlated-error model), replacing the inner 51 of the 68 points;
- ``nosigma``: ``dense`` with one sigma for all points (the median) and no correlation model;
- ``inner68``: ``dense`` with the inner 51 of the 68 points kept too;
- ``nophoto``: ``default`` without the photometric stage (landmarks only);
- ``flatweights``: ``default`` without the calibrated landmark weights (the fixed weights and one
  landmark weight for every head pose, as before they were added);
- ``fixedcontour``: ``default`` with the jaw landmarks on fixed model vertices instead of the
  sliding silhouette contour;
- ``identity`` / ``identity<W>``: ``default`` with the FaceNet identity term (``--identity``,
  weight 2 or W);
- ``reg`` / ``noreg``: ``default`` started from the regressor's prediction / the mean face;
- ``fast`` / ``fastreg``: ``--fast`` from the mean face / the regressor's prediction;
- ``dense_w<X>``: ``dense`` with ``w_dense = X``;
- ``net``: the dense landmark network's 68 + N points with their sigmas (``--landmarks net``;
  the file from ``$FACECLIP_LANDMARK_NET`` or the shipped one); ``netnophoto``: without the
  photometric stage; ``netdense``: MediaPipe's 68 points with the network's dense points;
- ``<variant>:<field>=<value>[:...]``: a variant with fitting settings changed
  (flat names of :meth:`faceclip.fit.fitter.FitConfig.with_overrides`), e.g. ``mp68:w_identity_landmarks=1.0``.

Prints one row per variant (REALY-style "all" in mm per yaw bin, NME, failures, seconds) and
ends with ``frontend_default_all_mm: X``. Choose defaults on seed 7; report seed 0.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; before torch starts OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402

VARIANTS = ("mean", "dlib", "default", "dense", "nosigma", "nophoto", "reg", "noreg")


def _method(variant: str):
    """A benchmark method function for one variant."""
    from faceclip.evaluate.benchmark import MethodOutput
    from faceclip.reconstruction import ReconstructOptions, Reconstructor

    opts: dict = {}  # ReconstructOptions fields of this variant
    overrides: dict = {}
    variant, *settings = variant.split(":")
    for item in settings:
        key, value = item.split("=")
        overrides[key] = int(value) if value.lstrip("-").isdigit() else float(value)
    if variant == "dlib":
        opts.update(detector="hog", landmarks="dlib68")
    elif variant in ("dense", "nosigma", "inner68") or variant.startswith("dense_w"):
        opts.update(dense=True)
    elif variant == "noreg":
        opts.update(init="mean")
    elif variant == "reg":
        opts.update(init="regressor")
    elif variant == "fast":
        opts.update(fast=True)
    elif variant == "fastreg":
        opts.update(fast=True, init="regressor")
    elif variant in ("net", "netdense"):
        opts.update(landmarks="net")
    elif variant == "netnophoto":
        opts.update(landmarks="net")
        overrides["photo_steps"] = 0
    elif variant == "nophoto":
        overrides["photo_steps"] = 0
    elif variant == "flatweights":
        overrides["calibrated_landmark_weights"] = 0
    elif variant == "fixedcontour":
        pass
    elif variant.startswith("identity"):
        from faceclip.fit.identity import DEFAULT_IDENTITY_WEIGHT

        opts.update(identity_weight=float(variant[len("identity"):] or DEFAULT_IDENTITY_WEIGHT))
    elif variant not in ("default", "mp68"):
        raise SystemExit(f"unknown variant {variant!r}")
    if variant == "inner68":
        overrides["inner68_with_dense"] = 1.0
    if variant.startswith("dense_w"):
        overrides["w_dense"] = float(variant[len("dense_w"):])
    if variant == "nosigma":
        overrides["dense_correlated"] = 0.0
    rec = Reconstructor(ReconstructOptions(**opts))
    if overrides:
        rec.fitter.config = rec.fitter.config.with_overrides(**overrides)
    if variant == "fixedcontour":  # each sliding landmark's only candidate: its own model vertex
        from dataclasses import replace

        from faceclip.fit.contour import ContourBands

        fwd = rec.fitter.forward
        own = fwd.model.landmarks68[fwd.bands.landmark_ids].unsqueeze(1)
        rec.fitter.forward = replace(fwd, bands=ContourBands(fwd.bands.landmark_ids, own, fwd.bands.side))
    if rec.dense_points is not None:
        rec.fitter.set_dense_points(rec.dense_points)  # picks up dense.correlated
    if variant == "nosigma":
        from dataclasses import replace

        dp = rec.dense_points
        flat = np.full_like(dp.sigma_mm, float(np.median(dp.sigma_mm)))
        rec.dense_points = replace(dp, sigma_mm=flat)
        rec.fitter.set_dense_points(rec.dense_points)

    def run(image: np.ndarray, model) -> MethodOutput:
        face = rec.detect(np.ascontiguousarray(image), "image")[0]
        if variant == "netdense":  # MediaPipe's 68 points, the network's dense points
            from dataclasses import replace

            pts = rec.landmarker.predict(image, face.landmarks)
            sig = pts.sigma_px.copy()
            sig[:68] = 1.0  # equal sigmas: no reweighting of MediaPipe's 68
            pts = replace(pts, sigma_px=sig)
            result, aligned = rec.fit_face(image, face.landmarks, face.extra.get("mesh478"), pts)
        else:
            result, aligned, _, _ = rec.fit_detected(image, face)
        lm = aligned.transform.crop_to_image(result.landmarks_crop_px.cpu().numpy().astype(np.float64))
        verts = result.vertices_mm.cpu().numpy().astype(np.float64)
        return MethodOutput(verts, model.triangles.numpy(), verts[model.landmarks68.numpy()], lm)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from " + ",".join(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from faceclip.evaluate.benchmark import METHODS, run_synthetic_benchmark

    rows = {}
    for variant in args.variants.split(","):
        name = variant if variant == "mean" else f"ablation_{variant}"
        if variant != "mean":
            METHODS[name] = _method(variant)
        t0 = time.perf_counter()
        report = run_synthetic_benchmark(args.n, seed=args.seed, method=name)
        rows[variant] = report.summary()
        s = rows[variant]["all"]
        print(f"done {variant}: all {s['nmse_all_mm']:.3f} mm, failed {s['method_failed']}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\nsynthetic benchmark n={args.n} seed={args.seed}: REALY-style 'all' NMSE (mm) per |yaw| bin, "
          f"NME (inter-ocular), failed faces, median s/face")
    print(f"{'variant':<14} {'all':>6} {'0-20':>6} {'20-40':>6} {'40-60':>6} {'NME':>7} {'fail':>5} {'s/face':>7}")
    for variant, summ in rows.items():
        s = summ["all"]
        bins = [summ.get(b, {}).get("nmse_all_mm", float("nan")) for b in ("0-20", "20-40", "40-60")]
        print(f"{variant:<14} {s['nmse_all_mm']:>6.3f} {bins[0]:>6.3f} {bins[1]:>6.3f} {bins[2]:>6.3f} "
              f"{s['nme_inter_ocular']:>7.4f} {s['method_failed']:>5d} {s['seconds_method_median']:>7.3f}")
    if "default" in rows:
        print(f"frontend_default_all_mm: {rows['default']['all']['nmse_all_mm']:.4f}")


if __name__ == "__main__":
    main()
