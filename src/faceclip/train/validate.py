"""Validation on held-out synthetic faces, and the render grids saved during training."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def _similarity_error_mm(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean vertex distance (mm) after the best similarity transform of ``pred`` onto ``gt``."""
    from faceclip.evaluate.geometry import fit_similarity

    return float(np.linalg.norm(fit_similarity(pred, gt).apply(pred) - gt, axis=1).mean())


@torch.no_grad()
def validate(net, objective, dataset, device, batch_size: int = 8, n_realy: int = 4) -> dict[str, float]:
    """Metrics of ``net`` on a synthetic dataset with ground truth.

    ``net`` is a regressor, or a :class:`~faceclip.nets.detail.RegressorWithDetail` whose maps
    then enter the loss (the objective's detail terms).

    Returns:
        ``loss`` (the training objective), ``vertex_mm`` (mean distance over the face region
        after similarity alignment, all faces), ``nme`` (68-landmark NME by inter-ocular
        distance against the ground-truth landmarks), and ``realy_all_mm`` (REALY-style
        "all" of :mod:`faceclip.evaluate`, on the first ``n_realy`` faces; NaN when 0).
    """
    from faceclip.evaluate.keypoints import realy_regions_for_model
    from faceclip.evaluate.mesh import Mesh
    from faceclip.evaluate.nme import nme
    from faceclip.evaluate.realy import realy_evaluate, realy_ground_truth_from_mesh
    from faceclip.train.data import collate

    net.eval()
    model = objective.fitter.model
    face = model.region_mask("face").cpu().numpy()
    tri = model.triangles.cpu().numpy()
    lm_idx = model.landmarks68.cpu().numpy()
    regions = realy_regions_for_model(model.to("cpu")) if n_realy > 0 else None
    losses, vert_err, nmes, realy = [], [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))]).to(device)
        out = net(batch.image, clamp=True)
        params, detail_map = out if isinstance(out, tuple) else (out, None)
        total, _, vis = objective(params, batch.image, batch.landmarks_px, batch.skin_mask, batch.params,
                                  detail_map=detail_map)
        losses.append(total.item() * batch.image.shape[0])
        pred_v = model.vertices(params.identity, params.expression).cpu().numpy().astype(np.float64)
        gt_v = model.vertices(batch.params.identity, batch.params.expression).cpu().numpy().astype(np.float64)
        for b in range(len(pred_v)):
            vert_err.append(_similarity_error_mm(pred_v[b][face], gt_v[b][face]))
            nmes.append(nme(vis["landmarks_px"][b].cpu().numpy(), batch.landmarks_px[b].cpu().numpy(), "inter_ocular"))
            if len(realy) < n_realy:
                gt = realy_ground_truth_from_mesh(Mesh(gt_v[b], tri), regions, gt_v[b][lm_idx])
                realy.append(realy_evaluate(Mesh(pred_v[b], tri), pred_v[b][lm_idx], gt).all_mm)
    n = len(vert_err)
    return {"loss": sum(losses) / n, "vertex_mm": float(np.mean(vert_err)), "nme": float(np.mean(nmes)),
            "realy_all_mm": float(np.mean(realy)) if realy else math.nan}


@torch.no_grad()
def render_grid(objective, images: Tensor, params, vis: dict, max_rows: int = 4) -> np.ndarray:
    """(H, W, 3) uint8 grid, one row per sample: input | render over input | shaded mesh."""
    from dataclasses import replace

    from faceclip.render.shading import sh_directional

    n = min(max_rows, images.shape[0])
    fit = objective.fitter
    S = vis["rendered"].shape[1]
    inp = torch.nn.functional.interpolate(images[:n].float(), size=(S, S), mode="area").permute(0, 2, 3, 1)
    cover = vis["coverage"][:n].unsqueeze(-1).float()
    overlay = vis["rendered"][:n].clamp(0, 1) * cover + inp * (1 - cover)
    p = replace(params, **{k: v[:n].detach() for k, v in params.tensors().items()})
    p = p.at_crop_size(fit.config.crop_px)  # the fitter's crop camera (as in the objective)
    light = sh_directional((0.3, 0.4, 1.0), ambient=0.5, diffuse=0.6, batch_size=n, device=p.sh.device)
    p = replace(p, sh=light)
    verts = fit.subset_vertices(p)
    grey = torch.full_like(verts, 0.7)
    shaded, cov2, _ = fit.render_subset(p, verts, grey)
    shaded = shaded.clamp(0, 1) * cov2.unsqueeze(-1) + (1 - cov2.unsqueeze(-1).float()) * 0.15
    rows = torch.cat([inp, overlay, shaded], dim=2)  # (n, S, 3S, 3)
    grid = rows.reshape(n * S, 3 * S, 3)
    return (grid.cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
