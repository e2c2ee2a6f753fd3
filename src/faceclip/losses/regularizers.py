"""Coefficient and albedo priors."""

from __future__ import annotations

import torch
from torch import Tensor


def coefficient_l2(coeffs: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean over the batch of ``sum_k w_k c_k^2``: the negative log of a Gaussian prior.

    Args:
        coeffs: (B, K) or (B, K, C).
        weights: (K,) per-component weights, or None for 1.
    """
    sq = coeffs**2
    if sq.ndim == 3:
        sq = sq.sum(-1)
    if weights is not None:
        sq = sq * weights.to(sq.dtype)
    return sq.sum(-1).mean()


def albedo_smoothness(albedo_coeffs: Tensor, eigenvalues: Tensor) -> Tensor:
    """Roughness of a harmonic albedo: ``sum_k lambda_k |C_k|^2`` (B, K, 3) -> scalar."""
    return coefficient_l2(albedo_coeffs, eigenvalues)


def albedo_symmetry(albedo: Tensor, mirror: Tensor, vertex_ids: Tensor | None = None) -> Tensor:
    """Mean squared difference between each vertex's albedo and its mirror vertex's.

    Args:
        albedo: (B, V, 3); mirror: (V,) mirror vertex index; vertex_ids: optional subset.
    """
    a, b = albedo, albedo[:, mirror]
    if vertex_ids is not None:
        a, b = a[:, vertex_ids], b[:, vertex_ids]
    return ((a - b) ** 2).sum(-1).mean()


def albedo_skin_prior(albedo: Tensor, skin_ids: Tensor | None) -> Tensor:
    """Keep the mean skin albedo a plausible skin colour, from very dark to very light.

    Penalises (squared) a mean skin albedo outside [0.03, 0.95] per channel and any violation
    of the ordering R >= G >= B that holds for human skin reflectance, which removes the
    light-colour / albedo-colour ambiguity of the photometric loss.

    Args:
        albedo: (B, V, 3); skin_ids: (N,) vertex indices of the skin region, or None when
            ``albedo`` holds skin vertices only.
    """
    mean = (albedo if skin_ids is None else albedo[:, skin_ids]).mean(1)  # (B, 3)
    out = torch.relu(0.03 - mean) + torch.relu(mean - 0.95)
    order = torch.relu(mean[:, 1] - mean[:, 0]) + torch.relu(mean[:, 2] - mean[:, 1])
    return ((out**2).sum(-1) + order**2).mean()


def light_chroma(sh: Tensor) -> Tensor:
    """Penalise coloured light: squared deviation of each SH band from its mean over RGB.

    Args:
        sh: (B, 9, 3).
    """
    return ((sh - sh.mean(-1, keepdim=True)) ** 2).sum((-1, -2)).mean()
