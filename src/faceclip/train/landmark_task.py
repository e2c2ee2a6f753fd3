"""Training the dense landmark network (``task: landmarks`` in a training config).

The training loop (:func:`faceclip.train.loop.train`) is shared with the regressor; this module
holds what differs: building the network (:func:`build_landmark_net`), the objective
(:class:`LandmarkObjective`: Gaussian negative log-likelihood of the K points), the grids saved
during training (:func:`landmark_grid`) and validation (:func:`validate_landmarks`).

Targets: the 68 landmarks of each sample (``batch.landmarks_px``, 2D-detector convention) and,
for samples with ground-truth parameters (synthetic faces), the dense vertices projected through
the ground-truth camera, which reproduces the rendering exactly. Photos (68 landmarks only)
train the first 68 outputs; their dense outputs get no loss.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from faceclip.errors import InputError
from faceclip.nets.landmarks import DenseLandmarkNet, LandmarkNetConfig, gaussian_nll

__all__ = ["LandmarkObjective", "build_landmark_net", "landmark_grid", "validate_landmarks", "targets_px"]


def targets_px(face_model, vertex_ids: Tensor, batch_landmarks_px: Tensor, params, params_valid: Tensor
               ) -> tuple[Tensor, Tensor]:
    """Targets (B, K, 2) and weights (B, K) of a batch.

    Args:
        vertex_ids: (N,) dense vertex ids; batch_landmarks_px: (B, 68, 2).
        params: batched ground-truth FaceParams or None; params_valid: (B,) bool.
    """
    B = batch_landmarks_px.shape[0]
    N = int(vertex_ids.numel())
    dev = batch_landmarks_px.device
    dense = torch.zeros(B, N, 2, device=dev)
    w = torch.ones(B, 68 + N, device=dev)
    if params is not None and bool(params_valid.any()):
        m = face_model
        ids = vertex_ids.to(m.mean_mm.device)
        mean = m.mean_mm[ids]  # (N, 3)
        v = mean + torch.einsum("bk,knc->bnc", params.identity.to(mean), m.identity_basis_mm[:, ids]) \
            + torch.einsum("bk,knc->bnc", params.expression.to(mean), m.expression_basis_mm[:, ids])
        dense = params.camera().project(v.to(dev)).float()
    w[:, 68:] = params_valid.float().unsqueeze(1).to(dev) if params is not None else 0.0
    return torch.cat([batch_landmarks_px.float(), dense], 1), w


class LandmarkObjective(nn.Module):
    """``total, terms, vis = objective(output, images, landmarks_px, skin_mask, target, valid)``.

    ``terms``: ``nll`` (the loss), ``err68_px`` and ``err_dense_px`` (mean point errors, for
    the logs); ``vis``: ``mu_px`` (B, K, 2), ``target_px`` (B, K, 2).
    """

    def __init__(self, face_model, vertex_ids: Tensor, crop_px: int) -> None:
        super().__init__()
        self.face_model = face_model
        self.register_buffer("vertex_ids", torch.as_tensor(vertex_ids, dtype=torch.long), persistent=False)
        self.crop_px = int(crop_px)

    def forward(self, output: tuple[Tensor, Tensor], images: Tensor, landmarks_px: Tensor, skin_mask: Tensor,
                target, valid: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        mu, log_sigma = output
        B = mu.shape[0]
        valid = torch.ones(B, dtype=torch.bool, device=mu.device) if valid is None else valid
        tgt, w = targets_px(self.face_model, self.vertex_ids, landmarks_px, target, valid if target is not None
                            else torch.zeros(B, dtype=torch.bool, device=mu.device))
        total = gaussian_nll(mu.float(), log_sigma.float(), tgt, self.crop_px, w)
        err = (mu.detach().float() - tgt).norm(dim=-1)
        terms = {"nll": total.detach(), "err68_px": err[:, :68].mean()}
        if bool((w[:, 68:] > 0).any()):
            terms["err_dense_px"] = (err[:, 68:] * w[:, 68:]).sum() / w[:, 68:].sum()
        return total, terms, {"mu_px": mu.detach(), "target_px": tgt, "log_sigma": log_sigma.detach(), "weight": w}


def build_landmark_net(cfg, face_model, train_set) -> DenseLandmarkNet:
    """A new network for ``cfg``, or the network of ``cfg.model.init_checkpoint``.

    The ``fc`` head's template is the mean target over up to 256 training faces (the
    ``integral`` head has none)."""
    from faceclip.facemodel.surface_points import dense_vertex_ids
    from faceclip.nets.landmarks import load_landmark_net
    from faceclip.train.data import collate, resize_sample

    m = cfg.model
    if m.init_checkpoint:
        net = load_landmark_net(m.init_checkpoint, face_model=face_model)
        if net.config.crop_px != cfg.data.image_px:
            raise InputError(f"{m.init_checkpoint} takes {net.config.crop_px} px crops, the config feeds "
                             f"{cfg.data.image_px} px", hint=f"set data.image_px: {net.config.crop_px}")
        return net.train()
    ids = dense_vertex_ids(face_model, cfg.model.dense_points)
    S = cfg.data.image_px
    lcfg = LandmarkNetConfig(vertex_ids=[int(i) for i in ids], crop_px=S, face_model=face_model.name,
                             geometry=getattr(face_model, "geometry", "") or "", n_vertices=face_model.n_vertices,
                             backbone=m.backbone, head=m.landmark_head,
                             hidden=128 if m.landmark_head == "integral" else 768)
    if m.landmark_head != "fc":
        return DenseLandmarkNet(lcfg, pretrained=m.pretrained, backbone_weights=m.backbone_weights)
    n = min(256, len(train_set))
    samples = [resize_sample(train_set.load(i) if hasattr(train_set, "load") else train_set[i], S) for i in range(n)]
    batch = collate(samples)
    tgt, w = targets_px(face_model, torch.as_tensor(ids), batch.landmarks_px, batch.params, batch.params_valid)
    template = (tgt * w.unsqueeze(-1)).sum(0) / w.sum(0).clamp_min(1).unsqueeze(-1)
    template[w.sum(0) == 0] = S / 2.0
    return DenseLandmarkNet(lcfg, pretrained=m.pretrained, template_px=template, backbone_weights=m.backbone_weights)


@torch.no_grad()
def landmark_grid(images: Tensor, vis: dict, max_rows: int = 8) -> np.ndarray:
    """(H, W, 3) uint8: per sample, the input with targets (green) and predictions (red, the
    dense points' circles scaled by their sigma)."""
    import cv2

    n = min(max_rows, images.shape[0])
    tiles = []
    for b in range(n):
        im = (images[b].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
        im = cv2.resize(im, (256, 256), interpolation=cv2.INTER_LINEAR)
        s = 256 / images.shape[-1]
        for x, y in vis["target_px"][b].cpu().numpy() * s:
            cv2.circle(im, (int(x), int(y)), 1, (0, 255, 0), -1)
        sig = vis["log_sigma"][b].exp().cpu().numpy() * 256
        for (x, y), r in zip(vis["mu_px"][b].cpu().numpy() * s, sig):
            cv2.circle(im, (int(x), int(y)), max(1, int(round(r))), (255, 0, 0), 1)
        tiles.append(im)
    cols = 4
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i:i + cols], 1) for i in range(0, len(tiles), cols)]
    return np.concatenate(rows, 0)


@torch.no_grad()
def validate_landmarks(net: DenseLandmarkNet, objective: LandmarkObjective, dataset, device,
                       batch_size: int = 16) -> dict[str, float]:
    """Metrics on a synthetic dataset: ``loss``, ``nme68`` and ``nme_dense`` (mean point error
    over the target's outer-eye-corner distance, landmarks 36 and 45, the 300-W convention of
    :mod:`faceclip.evaluate.nme`), and ``z2`` (mean squared error in units of the predicted
    sigma, per coordinate, over the points with ground truth; 1 when the sigmas are calibrated)."""
    from faceclip.evaluate.nme import normaliser
    from faceclip.train.data import collate

    net.eval()
    losses, n68, nd, z2 = [], [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))]).to(device)
        out = net(batch.image)
        total, _, vis = objective(out, batch.image, batch.landmarks_px, batch.skin_mask, batch.params,
                                  batch.params_valid)
        losses.append(total.item() * batch.image.shape[0])
        tgt = vis["target_px"]
        iod = torch.as_tensor(normaliser(tgt[:, :68].cpu().numpy(), "inter_ocular"), dtype=tgt.dtype,
                              device=tgt.device).clamp_min(1e-6).unsqueeze(1)
        err = (vis["mu_px"] - tgt).norm(dim=-1)
        w = vis["weight"]
        n68 += (err[:, :68] / iod).mean(1).tolist()
        if err.shape[1] > 68 and bool((w[:, 68:] > 0).any()):
            nd += ((err[:, 68:] / iod * w[:, 68:]).sum(1) / w[:, 68:].sum(1).clamp_min(1)).tolist()
        sig = net.sigma_px(vis["log_sigma"])
        z2 += (((err / sig).square() / 2 * w).sum(1) / w.sum(1).clamp_min(1)).tolist()
    n = len(n68)
    return {"loss": sum(losses) / max(n, 1), "nme68": float(np.mean(n68)),
            "nme_dense": float(np.mean(nd)) if nd else math.nan, "z2": float(np.mean(z2))}
