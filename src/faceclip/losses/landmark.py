"""68-landmark reprojection loss."""

from __future__ import annotations

import torch
from torch import Tensor


def _default_weights() -> Tensor:
    w = torch.ones(68)
    w[0:17] = 0.5  # jaw contour: ambiguous along the silhouette
    w[27:36] = 2.0  # nose
    w[36:48] = 2.0  # eyes
    w[48:68] = 2.0  # mouth
    return w


#: Per-landmark weights (68,): jaw 0.5, brows 1, nose / eyes / mouth 2 (Deep3DFaceRecon-like
#: emphasis on the stable inner-face points).
DEFAULT_LANDMARK_WEIGHTS = _default_weights()


def landmark_loss(pred_px: Tensor, target_px: Tensor, weights: Tensor | None = None,
                  scale_px: Tensor | float = 1.0) -> Tensor:
    """Weighted mean squared landmark distance.

    Args:
        pred_px: (B, 68, 2) projected model landmarks in pixels.
        target_px: (B, 68, 2) detected landmarks in pixels.
        weights: (68,) or (B, 68) per-landmark weights (default :data:`DEFAULT_LANDMARK_WEIGHTS`).
        scale_px: (B,) or scalar normaliser (e.g. the crop size), so the loss is resolution-free.

    Returns:
        Scalar: mean over the batch of ``sum_k w_k |p_k - t_k|^2 / sum_k w_k / scale^2``.
    """
    if weights is None:
        weights = DEFAULT_LANDMARK_WEIGHTS
    weights = weights.to(pred_px.device, pred_px.dtype)
    if weights.ndim == 1:
        weights = weights.expand(pred_px.shape[0], -1)
    d2 = ((pred_px - target_px) ** 2).sum(-1)  # (B, 68)
    scale = torch.as_tensor(scale_px, dtype=pred_px.dtype, device=pred_px.device).reshape(-1)
    per = (weights * d2).sum(-1) / weights.sum(-1) / scale**2
    return per.mean()
