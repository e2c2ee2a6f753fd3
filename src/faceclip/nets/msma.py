"""MSMA refinement: multi-scale feature fusion, large-kernel attention, one branch per attribute.

After Cao, *MSMA: Multi-Scale Feature Fusion for Multi-Attribute 3D Face Reconstruction from
Unconstrained Images* (arXiv 2509.11763, 2025), as an alternative to FaceCLIP's PRM
(:mod:`faceclip.nets.prm`) between the backbone and the parameter heads:

1. **Multi-scale fusion** (:class:`MultiScaleFusion`): the backbone's features at strides 8,
   16 and 32 (:meth:`faceclip.nets.backbones.Backbone.multiscale`; ResNet-50: ``layer2`` to
   ``layer4``, the paper's backbone; MobileNetV2: the last blocks of 32, 96 and 1280
   channels) are each projected to ``D`` channels (1x1 conv, BN, ReLU), brought to the
   stride-16 grid (2x2 average pooling of the finest, bilinear upsampling of the coarsest),
   concatenated and mixed back to ``D`` channels by a 1x1 conv.
2. **Large-kernel attention** (:class:`LargeKernelAttention`): a large depthwise convolution
   decomposed, as in the Visual Attention Network (Guo et al., 2022), into a
   ``(2d-1) x (2d-1)`` depthwise conv, a ``ceil(K/d) x ceil(K/d)`` depthwise conv with dilation
   ``d`` and a 1x1 conv; its output multiplies (gates) the features. With ``K = 21``,
   ``d = 3`` each output sees a 23 x 23 window centred on it (11 positions each way).
   :class:`LKABlock` wraps it as VAN does (BN, 1x1, GELU, attention, 1x1, residual; then a
   1x1 feed-forward, residual).
3. **Multi-attribute branches** (:class:`MSMARefinement`): identity, expression, texture
   (albedo), pose (rotation and camera translation) and light each get their own large-kernel
   attention gate on the shared fused map, global average pooling and a linear layer, so each
   attribute attends to its own regions; the regressor's head of a parameter group reads only
   its attribute's features.

   Each branch's pooled features are layer-normalised before its linear layer: the product of
   the features and a freshly initialised gate is about 20 times smaller than the PRM's
   output, and the zero-initialised heads would learn slowly. The five gates run as one
   grouped attention on the fused map average-pooled to the stride-32 grid (7 x 7 for a 224
   crop, which their 23 x 23 window covers whole): four times cheaper than at stride 16.

What the paper does not state, chosen here: the widths (``D = 128``, 128 per attribute), one
shared :class:`LKABlock`, the stride-16 fusion grid, the stride-32 grid of the attribute gates,
concatenation (not summation) of the scales, and which attribute drives the camera translation
(pose).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Attribute branches and the regressor's parameter groups each one drives.
ATTRIBUTE_GROUPS = {
    "identity": ("identity",),
    "expression": ("expression",),
    "texture": ("albedo",),
    "pose": ("pose", "camera"),
    "light": ("light",),
}


class LargeKernelAttention(nn.Module):
    """``x * conv1x1(dwconv_dilated(dwconv(x)))``: (B, D, h, w) -> (B, D, h, w).

    Args:
        dim: channels ``D``.
        kernel: the large kernel ``K`` being decomposed.
        dilation: ``d``.
        groups: independent attentions side by side (the 1x1 conv mixes channels only within
            each of ``groups`` equal channel groups; the depthwise convs are per channel anyway).
    """

    def __init__(self, dim: int, kernel: int = 21, dilation: int = 3, groups: int = 1) -> None:
        super().__init__()
        k_local = 2 * dilation - 1
        k_dilated = math.ceil(kernel / dilation)
        k_dilated += 1 - k_dilated % 2  # odd, so the window is centred
        self.local = nn.Conv2d(dim, dim, k_local, padding=k_local // 2, groups=dim)
        self.dilated = nn.Conv2d(dim, dim, k_dilated, padding=(k_dilated // 2) * dilation, dilation=dilation,
                                 groups=dim)
        self.mix = nn.Conv2d(dim, dim, 1, groups=groups)
        #: Side of the window each output sees.
        self.receptive_field = k_local + (k_dilated - 1) * dilation

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mix(self.dilated(self.local(x)))


class LKABlock(nn.Module):
    """VAN-style block: ``x + proj(LKA(GELU(proj(BN(x)))))``, then ``x + FFN(BN(x))``."""

    def __init__(self, dim: int, kernel: int = 21, dilation: int = 3, expansion: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.attention = LargeKernelAttention(dim, kernel, dilation)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.ffn = nn.Sequential(nn.Conv2d(dim, expansion * dim, 1), nn.GELU(), nn.Conv2d(expansion * dim, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, h, w) -> (B, D, h, w)."""
        x = x + self.proj_out(self.attention(F.gelu(self.proj_in(self.norm1(x)))))
        return x + self.ffn(self.norm2(x))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MultiScaleFusion(nn.Module):
    """Features at strides 8, 16, 32 -> one (B, D, H/16, W/16) map (see the module docstring)."""

    def __init__(self, in_channels: tuple[int, int, int], dim: int) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"multi-scale fusion needs three scales, got {in_channels}")
        self.project = nn.ModuleList([_conv_bn_relu(c, dim) for c in in_channels])
        self.mix = _conv_bn_relu(3 * dim, dim)

    def forward(self, features: list[Tensor]) -> Tensor:
        fine, mid, coarse = (p(f) for p, f in zip(self.project, features))
        size = mid.shape[-2:]
        fine = F.adaptive_avg_pool2d(fine, size)
        coarse = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
        return self.mix(torch.cat([fine, mid, coarse], dim=1))


class MSMARefinement(nn.Module):
    """Multi-scale fusion, a shared large-kernel-attention block, one branch per attribute.

    Args:
        in_channels: channels of the backbone's stride-8, -16 and -32 features.
        dim: width ``D`` of the fused map.
        attribute_dim: features per attribute.
        blocks: shared :class:`LKABlock` s.
        kernel, dilation: of every large-kernel attention.

    ``forward``: list of three (B, C_i, h_i, w_i) -> (B, 5 * attribute_dim), the attributes'
    features concatenated in the order of :data:`ATTRIBUTE_GROUPS` (:attr:`slices` says where
    each one is).
    """

    def __init__(self, in_channels: tuple[int, int, int], dim: int = 128, attribute_dim: int = 128,
                 blocks: int = 1, kernel: int = 21, dilation: int = 3) -> None:
        super().__init__()
        self.fusion = MultiScaleFusion(in_channels, dim)
        self.blocks = nn.Sequential(*[LKABlock(dim, kernel, dilation) for _ in range(blocks)])
        n = len(ATTRIBUTE_GROUPS)
        # every attribute's own gate, run as one grouped attention (channel group i: attribute i)
        self.gates = LargeKernelAttention(n * dim, kernel, dilation, groups=n)
        # LayerNorm first: gated features start ~20x smaller than the PRM's (the gate is a product
        # of two small random maps), which would starve the zero-initialised heads of gradient
        self.embed = nn.ModuleDict({a: nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, attribute_dim), nn.GELU())
                                    for a in ATTRIBUTE_GROUPS})
        self.out_features = attribute_dim * len(ATTRIBUTE_GROUPS)
        self.slices = {a: slice(i * attribute_dim, (i + 1) * attribute_dim) for i, a in enumerate(ATTRIBUTE_GROUPS)}

    def group_slices(self) -> dict[str, slice]:
        """Parameter group -> the slice of the features its head reads."""
        return {g: self.slices[a] for a, groups in ATTRIBUTE_GROUPS.items() for g in groups}

    def forward(self, features: list[Tensor]) -> Tensor:
        shared = self.blocks(self.fusion(features))  # (B, D, h, w)
        coarse = F.avg_pool2d(shared, 2, ceil_mode=True)  # (B, D, h/2, w/2): the gates' grid
        n = len(ATTRIBUTE_GROUPS)
        gated = self.gates(coarse.repeat(1, n, 1, 1)).mean(dim=(2, 3))  # (B, n D): attribute i in block i
        per = gated.view(gated.shape[0], n, -1)
        return torch.cat([self.embed[a](per[:, i]) for i, a in enumerate(ATTRIBUTE_GROUPS)], dim=1)
