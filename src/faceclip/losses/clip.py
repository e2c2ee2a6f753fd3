"""CLIP feature-consistency loss: L_cl = L_geometric + L_semantic (FaceCLIP).

- Geometric: ``sum_l w_l * ||F_l(I) - F_l(I_r)||`` over layers 2 and 3 of CLIP RN50x4,
  weights (1, 1/2); see :func:`clip_geometric_loss` for the normalisation.
- Semantic: ``1 - cos(E(I), E(I_r))`` on the final ViT-B/32 image embeddings.

``I`` is the input photo and ``I_r`` the rendering, both multiplied by the same face mask
(:class:`faceclip.nets.clip.ClipEncoders` documents the preprocessing). The functions take
features; :class:`ClipConsistencyLoss` runs the frozen encoders (input features without
gradient) and returns a :class:`ClipLossOutput`. User-facing code builds it with
:func:`make_clip_loss`, which returns None, with a warning, when the weights are missing:
the term is then left out, never computed with random weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceclip.errors import ModelNotInstalledError
from faceclip.nets.clip import ClipEncoders, ClipFeatures
from faceclip.nets.clip_weights import ClipWeights, find_clip_weights, load_clip_encoders

#: Weights of RN50x4 layers 2 and 3 in the geometric term (FaceCLIP).
DEFAULT_LAYER_WEIGHTS = (1.0, 0.5)


class ClipWeightsMissingWarning(UserWarning):
    """CLIP weights were not found, so the CLIP consistency loss is disabled."""


def clip_geometric_loss(feats_input: Sequence[Tensor], feats_render: Sequence[Tensor],
                        weights: Sequence[float] = DEFAULT_LAYER_WEIGHTS) -> Tensor:
    """Weighted sum over layers of the root-mean-square feature difference.

    Args:
        feats_input: per layer (B, C_l, H_l, W_l) features of the input images (RN50x4
            ``layer2`` (B, 640, 36, 36) and ``layer3`` (B, 1280, 18, 18)).
        feats_render: the same layers of the renderings.
        weights: one weight per layer (default (1, 1/2)).

    Returns:
        Scalar: mean over the batch of ``sum_l w_l * ||d_l||_2 / sqrt(N_l)``, with ``d_l`` the
        flattened difference of layer ``l`` and ``N_l = C_l * H_l * W_l`` its size.

    The paper's term is the plain L2 norm ``||F_l(I) - F_l(I_r)||_2``. Unnormalised, it grows
    with ``sqrt(N_l)`` (about 910 for layer 2 and 640 for layer 3 at RN50x4's 288 px input), so
    its scale would depend on the layer size and dwarf the other terms of the total loss;
    dividing by ``sqrt(N_l)`` turns it into the RMS difference per feature, O(1) for any layer,
    keeping the per-layer weights (1, 1/2) and the loss weight (2) meaningful. The norm is not
    squared, as in the paper: its gradient has unit size whatever the residual, so a sample far
    from its target does not dominate the batch. The subgradient at a zero difference is 0.
    """
    if len(feats_input) != len(feats_render) or len(feats_input) != len(weights):
        raise ValueError(f"need as many layers as weights: {len(feats_input)} input, {len(feats_render)} "
                         f"rendered, {len(weights)} weights")
    total = feats_render[0].new_zeros(())
    for f_in, f_r, w in zip(feats_input, feats_render, weights):
        if f_in.shape != f_r.shape:
            raise ValueError(f"feature shapes differ: {tuple(f_in.shape)} vs {tuple(f_r.shape)}")
        d = (f_r - f_in).flatten(1)  # (B, N)
        rms = torch.linalg.vector_norm(d, dim=1) / d.shape[1] ** 0.5  # (B,)
        total = total + w * rms.mean()
    return total


def clip_semantic_loss(emb_input: Tensor, emb_render: Tensor, eps: float = 1e-8) -> Tensor:
    """``1 - cos`` between image embeddings.

    Args:
        emb_input: (B, D) embeddings of the input images (ViT-B/32: D = 512).
        emb_render: (B, D) embeddings of the renderings.

    Returns:
        Scalar in [0, 2]: mean over the batch of ``1 - cos(emb_input, emb_render)``.
    """
    return (1.0 - F.cosine_similarity(emb_render, emb_input, dim=-1, eps=eps)).mean()


class ClipLossOutput(NamedTuple):
    """Terms of the CLIP consistency loss (scalars).

    Attributes:
        total: ``geometric_weight * geometric + semantic_weight * semantic``.
        geometric: :func:`clip_geometric_loss` on RN50x4 layers 2 and 3.
        semantic: :func:`clip_semantic_loss` on ViT-B/32 embeddings.
    """

    total: Tensor
    geometric: Tensor
    semantic: Tensor


def _to_nchw(images: Tensor) -> Tensor:
    """(B, 3, H, W) as is; (B, H, W, 3) (the renderer's layout) permuted to (B, 3, H, W)."""
    if images.ndim == 4 and images.shape[1] != 3 and images.shape[-1] == 3:
        return images.permute(0, 3, 1, 2)
    return images


class ClipConsistencyLoss(nn.Module):
    """L_cl = L_geometric + L_semantic with frozen CLIP encoders.

    Gradients flow to the rendered images (and through them to whatever produced them); the
    input images' features are computed without gradient. The encoders stay in evaluation
    mode when this module is put in training mode. It holds ~175 M frozen parameters: keep it
    out of the modules whose ``state_dict`` a training checkpoint saves.

    Args:
        encoders: from :func:`faceclip.nets.clip_weights.load_clip_encoders` (or ``ClipEncoders.random``
            in tests).
        layer_weights: weights of RN50x4 layers 2 and 3 (default (1, 1/2)).
        geometric_weight, semantic_weight: weights of the two terms in ``total`` (default 1, 1:
            the paper's sum; the overall weight of L_cl, 2 in the paper, belongs to the caller).
    """

    def __init__(self, encoders: ClipEncoders, layer_weights: Sequence[float] = DEFAULT_LAYER_WEIGHTS,
                 geometric_weight: float = 1.0, semantic_weight: float = 1.0) -> None:
        super().__init__()
        if len(layer_weights) != 2:
            raise ValueError(f"layer_weights: one weight per RN50x4 layer (2 and 3), got {layer_weights}")
        self.encoders = encoders
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.geometric_weight = float(geometric_weight)
        self.semantic_weight = float(semantic_weight)

    @torch.no_grad()
    def encode_target(self, images: Tensor, mask: Tensor | None = None) -> ClipFeatures:
        """Features of the input images (no gradient), to reuse across iterations of a fit.

        Args:
            images: (B, 3, H, W) or (B, H, W, 3) RGB in [0, 1].
            mask: (B, H, W) or (B, 1, H, W) face mask in [0, 1]; reuse the result only while
                the mask stays the same.
        """
        return self.encoders(_to_nchw(images), mask)

    def forward(self, input_images: Tensor, rendered_images: Tensor, mask: Tensor | None = None,
                target: ClipFeatures | None = None) -> ClipLossOutput:
        """CLIP consistency between photos and renderings under the same face mask.

        Args:
            input_images: (B, 3, H, W) or (B, H, W, 3) photos in [0, 1] (ignored when ``target``
                is given).
            rendered_images: (B, 3, H, W) or (B, H, W, 3) renderings in [0, 1], same size.
            mask: (B, H, W) or (B, 1, H, W) face mask in [0, 1] applied to both (None: whole image).
            target: precomputed :meth:`encode_target` features of the input images.

        Returns:
            :class:`ClipLossOutput` of scalars.
        """
        if target is None:
            target = self.encode_target(input_images, mask)
        rendered = self.encoders(_to_nchw(rendered_images), mask)
        geometric = clip_geometric_loss(target.geometric, rendered.geometric, self.layer_weights)
        semantic = clip_semantic_loss(target.semantic, rendered.semantic)
        total = self.geometric_weight * geometric + self.semantic_weight * semantic
        return ClipLossOutput(total, geometric, semantic)


def make_clip_loss(weights: ClipWeights | None = None, device: str | torch.device | None = None,
                   required: bool = False, rn50x4: str | Path | None = None, vitb32: str | Path | None = None,
                   **loss_kwargs) -> ClipConsistencyLoss | None:
    """The CLIP consistency loss with real weights, or None (and a warning) without them.

    Args:
        weights: weight files; None: ``find_clip_weights(rn50x4, vitb32)`` (explicit files, then
            environment variables, ``$FACECLIP_HOME/models``, the open_clip caches).
        device: device of the encoders.
        required: raise instead of warning when weights are missing.
        loss_kwargs: passed to :class:`ClipConsistencyLoss`.

    Returns:
        The loss module, or None when a tower's weights are not found: a
        :class:`ClipWeightsMissingWarning` "CLIP weights not found; CLIP consistency loss
        disabled (...)" is emitted (``warnings.warn``, shown once per call site). Random weights are never used here.

    Raises:
        ModelNotInstalledError: a weight file exists but is unusable (naming it), an explicit
            path is missing, or ``required`` and the weights are missing.
    """
    if weights is None:
        weights = find_clip_weights(rn50x4, vitb32)
    try:
        encoders = load_clip_encoders(weights, device=device)
    except ModelNotInstalledError as exc:
        if required or not weights.missing():
            raise
        missing = ", ".join(a.model_name for a in weights.missing())
        hint = f"; {exc.hint}" if exc.hint else ""
        msg = f"CLIP weights not found; CLIP consistency loss disabled (missing: {missing}{hint})"
        warnings.warn(msg, ClipWeightsMissingWarning, stacklevel=2)
        return None
    return ClipConsistencyLoss(encoders, **loss_kwargs)


__all__ = [
    "DEFAULT_LAYER_WEIGHTS",
    "ClipConsistencyLoss",
    "ClipLossOutput",
    "ClipWeightsMissingWarning",
    "clip_geometric_loss",
    "clip_semantic_loss",
    "make_clip_loss",
]
