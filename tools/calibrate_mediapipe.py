"""Calibrate MediaPipe's 478-point face mesh to the ICT face model's surface.

Writes ``src/faceclip/data/mediapipe_ict_calibration.npz`` (see
:mod:`faceclip.detect.calibration`): for every MediaPipe point a fixed point on the ICT surface
(triangle + barycentric coordinates, least squares over synthetic renders with known geometry),
a learnt affine map predicting each such surface point's image position from its 8 nearest
MediaPipe points (weights summing to 1; it removes part of MediaPipe's systematic error), the
remaining spread (sigma per head-pose bin, in millimetres at the face) and a linear map from the
478 points to the 68 iBUG-style landmarks (2D-detector convention, sliding jaw contour).

Data: synthetic faces of ``--seed`` (default 101; never the benchmark's seed 0, nor the tuning
seed 7), indices ``0..n-1``, rendered at 224 and 512 px; the MediaPipe front-end
(:func:`faceclip.detect.mediapipe.detect_boxes_mediapipe` + :func:`predict_mesh478`, exactly as
the reconstruction runs it) on each image. Odd sample indices are held out: the residuals
printed at the end are measured on them.

Usage::

    python tools/calibrate_mediapipe.py --n 400              # ~10 min on 2 cores
    python tools/calibrate_mediapipe.py --n 400 --cache /tmp/mpcal.npz   # reuse collected data

Prints the residual table and, last, ``calibration_residual_mm: <median over held-out>``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "faceclip" / "data" / "mediapipe_ict_calibration.npz"
SIZES = (224, 512)
POSE_BINS = ((0.0, 20.0), (20.0, 40.0), (40.0, 90.0))
#: Candidate MediaPipe neighbours per 68-landmark in the linear 478 -> 68 map.
MAP68_NEIGHBOURS = 12
#: Head yaws (degrees) with their own 478 -> 68 map, each trained on renders within the window.
MAP68_YAW_CENTRES = (-50.0, -30.0, -10.0, 10.0, 30.0, 50.0)
MAP68_YAW_WINDOW = 20.0
#: MediaPipe neighbours per dense surface point in its learnt map.
DENSE_NEIGHBOURS = 8
#: Correlated error components kept in the noise model of the dense points.
NOISE_RANK = 24


def collect(n: int, seed: int) -> dict[str, np.ndarray]:
    """Render ``n`` synthetic faces and run the MediaPipe front-end on them."""
    from tqdm import tqdm

    from faceclip.detect.frontend import find_faces, landmark_face
    from faceclip.evaluate.synthetic import SyntheticConfig, SyntheticFaceGenerator
    from faceclip.render import PerspectiveCamera
    from faceclip.render.rasterize import rasterize_mesh

    gen = SyntheticFaceGenerator(seed=seed, config=SyntheticConfig(sizes_px=SIZES))
    m = gen.model
    tris = m.triangles
    rows: dict[str, list] = {k: [] for k in ("index", "size", "yaw", "mesh", "verts2d", "depth_ok", "px_per_mm",
                                             "lm68", "identity_scale")}
    for i in tqdm(range(n), desc="collect", file=sys.stderr):
        s = gen.sample(i)
        v = torch.from_numpy(s.vertices_mm)[None]
        for size in SIZES:
            cam_d = s.cameras[size]
            cam = PerspectiveCamera.create(torch.tensor(cam_d["R"], dtype=torch.float32),
                                           torch.tensor(cam_d["t_mm"], dtype=torch.float32), cam_d["focal_px"],
                                           (size, size), principal_point_px=tuple(cam_d["principal_point_px"]))
            frag, xy, z = rasterize_mesh(v, tris, cam, cull_backfaces=True)
            # A vertex is visible when the depth buffer at its pixel is not in front of it.
            zbuf = torch.full((size * size,), float("inf"))
            zbuf[frag.pix] = frag.depth.detach()
            px = xy[0].detach().floor().long()
            inside = (px[:, 0] >= 0) & (px[:, 0] < size) & (px[:, 1] >= 0) & (px[:, 1] < size)
            flat = (px[:, 1].clamp(0, size - 1) * size + px[:, 0].clamp(0, size - 1))
            ok = inside & (z[0].detach() <= zbuf[flat] + 1.5)
            faces = find_faces(s.images[size], detector="mediapipe")
            if faces and landmark_face(s.images[size], faces[0], with_68=False):
                mesh = faces[0].extra["mesh478"]
            else:
                mesh = np.full((478, 3), np.nan)
            rows["index"].append(i)
            rows["size"].append(size)
            rows["yaw"].append(s.yaw_deg)
            rows["mesh"].append(mesh.astype(np.float32))
            rows["verts2d"].append(xy[0].detach().numpy().astype(np.float32))
            rows["depth_ok"].append(ok.numpy())
            rows["px_per_mm"].append(cam_d["focal_px"] / s.params.distance_mm)
            rows["lm68"].append(s.landmarks68_px[size].astype(np.float32))
    return {k: np.asarray(v) for k, v in rows.items()}


def solve(data: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Fit the correspondence, sigmas and the 68-point map; returns arrays and report lines."""
    from faceclip.detect.calibration import FACE_OVAL, IRIS
    from faceclip.facemodel import load_face_model
    from faceclip.reconstruction import RECONSTRUCTION_GEOMETRY

    model = load_face_model("ict", geometry=RECONSTRUCTION_GEOMETRY)
    tris = model.triangles.numpy()
    face_v = model.region_mask("face").numpy()
    found = np.isfinite(data["mesh"][:, 0, 0])
    train = found & (data["index"] % 2 == 0)
    test = found & (data["index"] % 2 == 1)
    mesh, verts, ok = data["mesh"][..., :2].astype(np.float64), data["verts2d"].astype(np.float64), data["depth_ok"]
    scale = data["px_per_mm"][:, None]  # (N, 1)
    yaw = np.abs(data["yaw"])
    K = mesh.shape[1]
    skip = np.zeros(K, bool)
    skip[list(FACE_OVAL) + list(IRIS)] = True
    # 1. nearest vertex over near-frontal training renders (distances in mm at the face)
    sel = train & (yaw < 25)
    cand = np.flatnonzero(face_v)
    nearest = np.full(K, -1)
    for k in range(K):
        if skip[k]:
            continue
        d = np.linalg.norm(verts[sel][:, cand] - mesh[sel][:, k:k + 1], axis=-1) / scale[sel]
        nearest[k] = cand[np.argmin(d.mean(0))]
    # 2. best triangle around it: least-squares barycentrics over visible training renders
    v2t: dict[int, list[int]] = {}
    for t, tri in enumerate(tris):
        for v in tri:
            v2t.setdefault(int(v), []).append(t)
    tri_id = np.full(K, -1)
    bary = np.zeros((K, 3))
    for k in range(K):
        if skip[k]:
            continue
        ring = {nearest[k]} | {int(v) for t in v2t[nearest[k]] for v in tris[t]}
        cands = sorted({t for v in ring for t in v2t.get(v, [])})
        best = (np.inf, -1, None)
        for t in cands:
            a, b, c = tris[t]
            use = train & ok[:, a] & ok[:, b] & ok[:, c] & (yaw < 40)
            if use.sum() < 10:
                continue
            w = 1.0 / scale[use]  # residuals in mm
            A = np.stack([verts[use, b] - verts[use, a], verts[use, c] - verts[use, a]], -1) * w[:, :, None]
            y = (mesh[use, k] - verts[use, a]) * w
            uv, *_ = np.linalg.lstsq(A.reshape(-1, 2), y.reshape(-1), rcond=None)
            uv = np.clip(uv, 0.0, 1.0)
            if uv.sum() > 1.0:
                uv = uv / uv.sum()
            res = float(np.mean(np.linalg.norm(A @ uv - y, axis=-1)))
            if res < best[0]:
                best = (res, t, np.array([1.0 - uv.sum(), uv[0], uv[1]]))
        if best[1] >= 0:
            tri_id[k], bary[k] = best[1], best[2]
    used = tri_id >= 0
    ids = np.flatnonzero(used)
    pts = np.einsum("kj,nkjc->nkc", bary[used], verts[:, tris[tri_id[used]]])  # (N, Ku, 2) true positions
    vis = ok[:, tris[tri_id[used]]].all(-1)  # (N, Ku)
    # 3. each surface point predicted from its nearest MediaPipe points by a learnt affine map
    #    (weights sum to 1), which removes part of MediaPipe's systematic error; trained on the
    #    renders where the point is visible
    norm_mesh = (mesh - mesh.mean(1, keepdims=True)) / scale[:, :, None]
    mean_layout = np.nanmean(norm_mesh[train], 0)
    allowed = np.flatnonzero(~np.isin(np.arange(K), list(IRIS)))
    dense_idx = np.zeros((K, DENSE_NEIGHBOURS), np.int64)
    dense_w = np.zeros((K, DENSE_NEIGHBOURS))
    for j, k in enumerate(ids):
        d = np.linalg.norm(mean_layout[allowed] - mean_layout[k], axis=1)
        idx = allowed[np.argsort(d)[:DENSE_NEIGHBOURS]]
        use = train & vis[:, j]
        dense_idx[k], dense_w[k] = idx, _affine_fit(mesh[use][:, idx] / scale[use, :, None],
                                                   pts[use, j] / scale[use])
    mapped = np.einsum("kj,nkjc->nkc", dense_w[used], mesh[:, dense_idx[used]])
    err_tied = np.linalg.norm(pts - mesh[:, used], axis=-1) / scale  # (N, Ku) mm
    err = np.linalg.norm(pts - mapped, axis=-1) / scale
    sigma = np.full((K, len(POSE_BINS)), np.nan)
    lines = ["residual of the surface points, mm at the face (median; sigma from training renders)",
             "pose bin   renders   tied point, held-out   mapped, held-out   sigma median"]
    for j, (lo, hi) in enumerate(POSE_BINS):
        inb = (yaw >= lo) & (yaw < hi)
        tr = train & inb
        e = np.where(vis[tr], err[tr], np.nan)
        # per-point RMS per axis (2D isotropic Gaussian: sigma^2 = E|e|^2 / 2)
        sig = np.sqrt(np.nanmean(e ** 2, axis=0) / 2.0)
        sigma[used, j] = sig
        te = np.where(vis[test & inb], err[test & inb], np.nan)
        te_tied = np.where(vis[test & inb], err_tied[test & inb], np.nan)
        lines.append(f"{lo:>3.0f}-{hi:<3.0f}   {int(tr.sum()):>7d}   {np.nanmedian(te_tied):>20.3f}   "
                     f"{np.nanmedian(te):>16.3f}   {np.nanmedian(sig):>12.3f}")
    # fill missing (never visible in a bin) with the point's largest sigma
    for k in ids:
        row = sigma[k]
        if np.isnan(row).any():
            sigma[k] = np.where(np.isnan(row), np.nanmax(row) if np.isfinite(row).any() else 5.0, row)
    # 3b. the errors of neighbouring points are strongly correlated (MediaPipe misplaces whole
    #     regions together): a low-rank + isotropic model of their correlation, in units of each
    #     point's sigma, pooled over all training renders: C ~ U diag(lam) U^T + nu I
    bins = np.digitize(yaw, [b[1] for b in POSE_BINS[:-1]])
    sig_n = sigma[ids][:, bins].T  # (N, Ku): each render's per-point sigma (its pose bin)
    z = (mapped - pts) / scale[:, :, None] / sig_n[:, :, None]  # (N, Ku, 2)
    Z = z[train].reshape(int(train.sum()), -1)
    Z = Z - Z.mean(0)
    evals, evecs = np.linalg.eigh(Z.T @ Z / max(len(Z) - 1, 1))
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    r = NOISE_RANK
    nu = float((evals.sum() - evals[:r].sum()) / (len(evals) - r))
    lam = np.maximum(evals[:r] - nu, 0.0)
    shrink = 1.0 - np.sqrt(nu / (lam + nu))  # L = (I - U diag(shrink) U^T) / sqrt(nu), L^T L = C^-1
    lines.append(f"error correlation: the top {r} of {Z.shape[1]} components hold "
                 f"{evals[:r].sum() / evals.sum():.0%} of the variance; isotropic rest {nu:.3f} (sigma units)")
    # 4. the 478 -> 68 map, the same way (targets: the 68 landmarks of the 2D-detector convention),
    #    one map per head yaw (centres MAP68_YAW_CENTRES, blended linearly); the yaw is estimated
    #    from MediaPipe's own 3D points (rotation onto a frontal template), as at run time
    from faceclip.detect.calibration import interpolation_weights, normalised_points, raw_yaw

    m3 = data["mesh"][:, :468].astype(np.float64)
    frontal = train & (yaw < 10)
    template = normalised_points(np.mean([normalised_points(x) for x in m3[frontal]], axis=0))
    raw = np.array([raw_yaw(x, template) if f else np.nan for x, f in zip(m3, found)])
    slope, offset = np.polyfit(raw[train], data["yaw"][train], 1)
    yaw_hat = slope * raw + offset
    yaw_err = np.abs(yaw_hat - data["yaw"])[test]
    lines.append(f"yaw from the mesh: held-out median error {np.median(yaw_err):.1f} deg, 90th percentile "
                 f"{np.percentile(yaw_err, 90):.1f} deg")
    lm = data["lm68"].astype(np.float64)
    lm_layout = np.nanmean((lm[train] - mesh[train].mean(1, keepdims=True)) / scale[train, :, None], 0)
    centres = np.array(MAP68_YAW_CENTRES, np.float64)
    map_idx = np.zeros((68, MAP68_NEIGHBOURS), np.int64)
    map_w = np.zeros((len(centres), 68, MAP68_NEIGHBOURS))
    map_w_one = np.zeros((68, MAP68_NEIGHBOURS))
    for k in range(68):
        d = np.linalg.norm(mean_layout[allowed] - lm_layout[k], axis=1)
        idx = allowed[np.argsort(d)[:MAP68_NEIGHBOURS]]
        map_idx[k] = idx
        map_w_one[k] = _affine_fit(mesh[train][:, idx] / scale[train, :, None], lm[train, k] / scale[train])
        for c, centre in enumerate(centres):
            sel = train & (np.abs(yaw_hat - centre) < MAP68_YAW_WINDOW)
            map_w[c, k] = (_affine_fit(mesh[sel][:, idx] / scale[sel, :, None], lm[sel, k] / scale[sel])
                           if sel.sum() >= 20 else map_w_one[k])  # too few renders there: the one map
    blend = np.array([interpolation_weights(y, centres) if np.isfinite(y) else np.zeros(len(centres))
                      for y in yaw_hat])  # (N, C)
    pred = np.einsum("nc,ckj,nkjz->nkz", blend, map_w, mesh[:, map_idx])
    pred_one = np.einsum("kj,nkjc->nkc", map_w_one, mesh[:, map_idx])
    iod = np.linalg.norm(lm[:, 36] - lm[:, 45], axis=-1)
    nme = np.linalg.norm(pred - lm, axis=-1).mean(1) / iod
    nme_one = np.linalg.norm(pred_one - lm, axis=-1).mean(1) / iod
    nearest68 = np.array([np.argmin(np.linalg.norm(mean_layout[allowed] - lm_layout[k], axis=1)) for k in range(68)])
    nme_nn = np.linalg.norm(mesh[:, allowed[nearest68]] - lm, axis=-1).mean(1) / iod
    lines.append("478 -> 68 map, inter-ocular NME on held-out renders (2D-detector convention), median:")
    for j, (lo, hi) in enumerate(POSE_BINS):
        inb = test & (yaw >= lo) & (yaw < hi)
        lines.append(f"  |yaw| {lo:.0f}-{hi:.0f}: pose-dependent map {np.median(nme[inb]):.4f}, one map "
                     f"{np.median(nme_one[inb]):.4f}, nearest point {np.median(nme_nn[inb]):.4f} (n={int(inb.sum())})")
    # 4b. the spread of each mapped landmark per yaw bin (RMS per axis over the training renders, in
    #     units of the inter-ocular distance): the fit weights each landmark by 1 / sigma^2
    rel = (pred - lm) / iod[:, None, None]
    sigma68 = np.stack([np.sqrt(np.nanmean(rel[train & (yaw >= lo) & (yaw < hi)] ** 2, axis=(0, 2)))
                        for lo, hi in POSE_BINS])  # (bins, 68)
    lines.append("478 -> 68 map, spread per landmark (RMS per axis / inter-ocular distance, training renders):")
    for j, (lo, hi) in enumerate(POSE_BINS):
        s = sigma68[j]
        lines.append(f"  |yaw| {lo:.0f}-{hi:.0f}: jaw {s[:17].mean():.4f}, brows {s[17:27].mean():.4f}, "
                     f"nose {s[27:36].mean():.4f}, eyes {s[36:48].mean():.4f}, mouth {s[48:].mean():.4f}")
    held = np.where(vis[test], err[test], np.nan)
    arrays = {"triangle": tri_id, "bary": bary.astype(np.float32), "sigma_mm": sigma.astype(np.float32),
              "dense_index": dense_idx, "dense_weight": dense_w.astype(np.float32),
              "noise_basis": evecs[:, :r].astype(np.float32), "noise_shrink": shrink.astype(np.float32),
              "noise_nu": np.float32(nu),
              "pose_bins_deg": np.array(POSE_BINS, np.float32), "map68_index": map_idx,
              "map68_weight": map_w.astype(np.float32), "map68_yaw_centres_deg": centres.astype(np.float32),
              "map68_sigma": sigma68.astype(np.float32),
              "yaw_template": template.astype(np.float32), "yaw_slope_offset": np.array([slope, offset], np.float64),
              "n_vertices": np.int64(model.n_vertices),
              "n_triangles": np.int64(len(tris)), "found_fraction": np.float32(found.mean()),
              "heldout_median_residual_mm": np.float32(np.nanmedian(held)),
              "heldout_map68_nme": np.float32(np.median(nme[test]))}
    lines.append(f"faces found by the front-end: {found.sum()} / {len(found)}; points tied to the surface: "
                 f"{used.sum()} (face oval {len(FACE_OVAL)} and iris {len(IRIS)} excluded)")
    lines.append(f"calibration_residual_mm: {np.nanmedian(held):.3f}")
    return arrays, lines


def _affine_fit(X: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Weights ``w`` (J,) with ``sum w = 1`` minimising ``|sum_j w_j X[:, j] - y|^2 + ridge * n * |w - 1/J|^2``.

    Args:
        X: (N, J, 2) candidate points; y: (N, 2) targets (same units).
    """
    J = X.shape[1]
    A = np.transpose(X, (0, 2, 1)).reshape(-1, J)
    b = y.reshape(-1)
    lam = ridge * len(b)
    kkt = np.block([[A.T @ A + lam * np.eye(J), np.ones((J, 1))], [np.ones((1, J)), np.zeros((1, 1))]])
    rhs = np.concatenate([A.T @ b + lam / J, [1.0]])
    return np.linalg.solve(kkt, rhs)[:J]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="synthetic faces (default 400)")
    ap.add_argument("--seed", type=int, default=101, help="synthetic seed (default 101; not 0 or 7)")
    ap.add_argument("--cache", type=Path, default=None, help="npz of collected data to reuse or write")
    ap.add_argument("--out", type=Path, default=OUT, help=f"calibration file (default {OUT.relative_to(ROOT)})")
    args = ap.parse_args()
    if args.seed in (0, 7):
        ap.error("seeds 0 (benchmark) and 7 (tuning) are reserved")
    t0 = time.time()
    if args.cache is not None and args.cache.is_file():
        data = dict(np.load(args.cache))
    else:
        data = collect(args.n, args.seed)
        if args.cache is not None:
            np.savez_compressed(args.cache, **data)
    arrays, lines = solve(data)
    arrays["seed"] = np.int64(args.seed)
    arrays["script_sha256"] = np.array(hashlib.sha256(Path(__file__).read_bytes()).hexdigest())
    arrays["n_samples"] = np.int64(len(np.unique(data["index"])))
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {time.time() - t0:.0f} s")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
