"""Parameter Refinement Module (PRM): local and global refinement of the backbone features.

FaceCLIP's PRM runs two branches in parallel on the (reduced) backbone feature map ``c'``
and concatenates their pooled outputs, ``v = cat(T(c'), R(c'))``:

- ``R``: depthwise-separable residual blocks (3x3 depthwise, 1x1 pointwise), local detail;
- ``T``: transformer encoder layers over the ``h * w`` **spatial tokens** of the feature map,
  with a fixed 2-D sinusoidal positional encoding (so any input size works), global context.

The authors' public code fed a single pooled 1x1 token to the transformer, where attention
is the identity: here the transformer sees every spatial position.

:class:`PooledHead` is the ablation switch's stand-in: global average pooling of the
backbone features, no refinement.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sincos_position_encoding(h: int, w: int, dim: int, device=None, dtype=None) -> Tensor:
    """Fixed 2-D sinusoidal encoding: (h * w, dim), half the channels for y, half for x.

    ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"positional encoding needs dim % 4 == 0, got {dim}")
    quarter = dim // 4
    freq = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    ay = ys.reshape(-1, 1) * freq
    ax = xs.reshape(-1, 1) * freq
    pe = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)
    return pe.to(dtype) if dtype is not None else pe


class DepthwiseSeparableBlock(nn.Module):
    """Residual block: depthwise 3x3 -> BN -> ReLU6 -> pointwise 1x1 -> BN, plus the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False), nn.BatchNorm2d(dim), nn.ReLU6(inplace=True),
            nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim),
        )
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, h, w) -> (B, D, h, w)."""
        return self.act(x + self.body(x))


class ParameterRefinementModule(nn.Module):
    """Local (depthwise-separable) and global (transformer) branches, fused by concatenation.

    Args:
        in_channels: backbone channels ``C``.
        dim: width ``D`` of both branches (multiple of 4 and of ``heads``).
        local_blocks: depthwise-separable residual blocks in the local branch.
        transformer_layers: transformer encoder layers in the global branch.
        heads: attention heads.

    ``forward``: (B, C, h, w) -> (B, 2 D) features ``cat(T(c'), R(c'))``.
    """

    def __init__(self, in_channels: int, dim: int = 256, local_blocks: int = 2,
                 transformer_layers: int = 2, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.out_features = 2 * dim
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), nn.BatchNorm2d(dim),
                                    nn.ReLU6(inplace=True))
        self.local = nn.Sequential(*[DepthwiseSeparableBlock(dim) for _ in range(local_blocks)])
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, transformer_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def tokens(self, reduced: Tensor) -> Tensor:
        """(B, D, h, w) -> (B, h * w, D) spatial tokens with positional encoding added."""
        b, d, h, w = reduced.shape
        pe = sincos_position_encoding(h, w, d, device=reduced.device, dtype=reduced.dtype)
        return reduced.flatten(2).transpose(1, 2) + pe.unsqueeze(0)

    def forward(self, features: Tensor) -> Tensor:
        c = self.reduce(features)
        local = self.local(c).mean(dim=(2, 3))  # (B, D)
        glob = self.norm(self.transformer(self.tokens(c))).mean(dim=1)  # (B, D)
        return torch.cat([glob, local], dim=1)


class PooledHead(nn.Module):
    """No refinement: global average pooling, (B, C, h, w) -> (B, C)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.out_features = in_channels

    def forward(self, features: Tensor) -> Tensor:
        return features.mean(dim=(2, 3))
