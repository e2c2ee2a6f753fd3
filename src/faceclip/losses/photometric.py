"""Photometric loss on a pixel mask."""

from __future__ import annotations

import torch
from torch import Tensor


def photometric_loss(rendered: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Masked mean per-pixel colour distance (L2 norm over RGB, as in Deep3DFaceRecon).

    Args:
        rendered: (B, H, W, 3) rendered image in [0, 1].
        target: (B, H, W, 3) photo in [0, 1].
        mask: (B, H, W) weights in [0, 1] (skin mask x rendered coverage); may be float.

    Returns:
        Scalar: mean over the batch of ``sum(mask * |r - t|_2) / sum(mask)``. A batch element
        with an empty mask contributes 0.
    """
    dist = torch.sqrt(((rendered - target) ** 2).sum(-1) + eps)  # (B, H, W)
    m = mask.to(dist.dtype)
    num = (m * dist).flatten(1).sum(1)
    den = m.flatten(1).sum(1)
    return torch.where(den > 0, num / den.clamp_min(1.0), torch.zeros_like(num)).mean()
