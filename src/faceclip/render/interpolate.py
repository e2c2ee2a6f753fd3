"""Perspective-correct attribute interpolation and bilinear texture sampling.

All functions work on the sparse fragments of :class:`~faceclip.render.rasterize.Fragments`
(one row per covered pixel); use :meth:`Fragments.to_image` to get dense images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from faceclip.render import _numba_ops
from faceclip.render.backend import use_numba
from faceclip.render.rasterize import Fragments

__all__ = ["interpolate_vertex_attributes", "interpolate_face_attributes", "sample_texture",
           "interpolate_uv"]


def interpolate_vertex_attributes(attributes: Tensor, fragments: Fragments, triangles: Tensor) -> Tensor:
    """Interpolate per-vertex attributes at the covered pixels.

    Args:
        attributes: (V, C) shared by the batch, or (B, V, C).
        fragments: rasterization result (N fragments).
        triangles: (F, 3) long, the ones used for rasterization.
    Returns:
        (N, C) perspective-correct interpolation, differentiable wrt ``attributes`` and the
        fragments' barycentrics (hence vertex positions).
    """
    if use_numba(attributes, fragments.bary):
        return _interpolate_numba(attributes, fragments, triangles)
    vid = triangles.to(attributes.device).index_select(0, fragments.face)  # (N, 3)
    if attributes.ndim == 3:
        B, V, C = attributes.shape
        if B == 1 and fragments.batch_size > 1:
            flat = attributes[0]
        else:
            vid = vid + (fragments.batch_index * V).unsqueeze(1)
            flat = attributes.reshape(B * V, C)
    else:
        flat, C = attributes, attributes.shape[-1]
    bary = fragments.bary.to(flat.dtype)
    out = flat.index_select(0, vid[:, 0]) * bary[:, 0:1]
    out = out + flat.index_select(0, vid[:, 1]) * bary[:, 1:2]
    return out + flat.index_select(0, vid[:, 2]) * bary[:, 2:3]


def _numba_operands(attributes: Tensor, fragments: Fragments, triangles: Tensor):
    """(flat (M, C) attribute, (3, N) corner rows, shared-by-the-batch flag, fragment segments)."""
    B = fragments.batch_size
    per_image = attributes.shape[0] == B if attributes.ndim == 3 else B == 1
    if per_image:  # rows b*V + v: the rasterizer's cached corner ids
        V = attributes.shape[-2]
        flat = attributes.reshape(-1, attributes.shape[-1])
        vid = fragments.corner_vertices(triangles, V)
        shared = False
    else:
        flat = attributes[0] if attributes.ndim == 3 else attributes
        vid = triangles.to(device=flat.device, dtype=torch.long).t().index_select(1, fragments.face)
        shared = True
    seg = fragments._cache.get("seg")
    if seg is None:
        seg = fragments._cache["seg"] = _numba_ops.segments(fragments.batch_index, B)
    return flat, vid, shared, seg


def _interpolate_numba(attributes: Tensor, fragments: Fragments, triangles: Tensor) -> Tensor:
    """Compiled gather + blend (and scatter-add backward), see :mod:`._numba_ops`."""
    flat, vid, shared, seg = _numba_operands(attributes, fragments, triangles)
    return _numba_ops.interpolate(flat, fragments.bary, vid, seg, shared)


def interpolate_product(a: Tensor, b: Tensor, fragments: Fragments, triangles: Tensor) -> Tensor:
    """``interpolate_vertex_attributes(a) * interpolate_vertex_attributes(b)`` (e.g. albedo times
    irradiance); one fused pass on the compiled CPU backend. a, b: (V, C) or (B, V, C). Returns (N, C)."""
    if use_numba(a, b, fragments.bary) and a.shape[-1] == b.shape[-1]:
        fa, va, sa, seg = _numba_operands(a, fragments, triangles)
        fb, vb, sb, _ = _numba_operands(b, fragments, triangles)
        return _numba_ops.InterpolateProduct.apply(fa, fb, fragments.bary, va, vb, seg, sa, sb)
    return interpolate_vertex_attributes(a, fragments, triangles) * interpolate_vertex_attributes(b, fragments, triangles)


def interpolate_face_attributes(face_attributes: Tensor, fragments: Fragments) -> Tensor:
    """Interpolate per-corner attributes (e.g. OBJ-style UVs).

    Args:
        face_attributes: (F, 3, C) shared by the batch, or (B, F, 3, C).
        fragments: rasterization result (N fragments).
    Returns:
        (N, C).
    """
    if face_attributes.ndim == 4:
        B, F, _, C = face_attributes.shape
        if B == 1:
            corner = face_attributes[0].index_select(0, fragments.face)
        else:
            flat = face_attributes.reshape(B * F, 3, C)
            corner = flat.index_select(0, fragments.batch_index * F + fragments.face)
    else:
        corner = face_attributes.index_select(0, fragments.face)
    return (fragments.bary.to(corner.dtype).unsqueeze(-1) * corner).sum(1)


def interpolate_uv(uv: Tensor, fragments: Fragments, triangles: Tensor) -> Tensor:
    """Interpolate UVs given per vertex (V, 2) / (B, V, 2) or per corner (F, 3, 2) / (B, F, 3, 2).

    Per-corner UVs are recognised by their trailing shape (F, 3, 2) with F = len(triangles).
    Returns (N, 2).
    """
    per_corner = uv.ndim == 4 or (uv.ndim == 3 and uv.shape[0] == triangles.shape[0] and uv.shape[1] == 3)
    if per_corner:
        return interpolate_face_attributes(uv, fragments)
    return interpolate_vertex_attributes(uv, fragments, triangles)


def sample_texture(texture: Tensor, uv: Tensor, batch_index: Tensor | None = None) -> Tensor:
    """Bilinear texture lookup with clamp-to-edge addressing.

    UVs are in [0, 1] with v up (OBJ convention): ``(u, v) = (0, 1)`` is the top-left corner
    of the texture image (row 0), texel ``(r, c)`` has its centre at
    ``((c + 0.5) / Wt, 1 - (r + 0.5) / Ht)``.

    Args:
        texture: (Ht, Wt, C) shared, or (B, Ht, Wt, C).
        uv: (N, 2).
        batch_index: (N,) long batch of each sample (needed when the texture is batched).
    Returns:
        (N, C), differentiable wrt ``texture`` and ``uv``.
    """
    if texture.ndim == 3:
        texture = texture.unsqueeze(0)
    Bt, Ht, Wt, C = texture.shape
    x = uv[:, 0] * Wt - 0.5
    y = (1.0 - uv[:, 1]) * Ht - 0.5
    x0f, y0f = torch.floor(x.detach()), torch.floor(y.detach())
    fx, fy = (x - x0f).unsqueeze(1), (y - y0f).unsqueeze(1)
    x0 = x0f.long().clamp(0, Wt - 1)
    x1 = (x0f.long() + 1).clamp(0, Wt - 1)
    y0 = y0f.long().clamp(0, Ht - 1)
    y1 = (y0f.long() + 1).clamp(0, Ht - 1)
    base = 0
    if Bt > 1:
        if batch_index is None:
            raise ValueError("a batched texture needs batch_index")
        base = batch_index * (Ht * Wt)
    flat = texture.reshape(Bt * Ht * Wt, C)

    def tex(yy: Tensor, xx: Tensor) -> Tensor:
        return flat.index_select(0, base + yy * Wt + xx)

    top = tex(y0, x0) * (1 - fx) + tex(y0, x1) * fx
    bottom = tex(y1, x0) * (1 - fx) + tex(y1, x1) * fx
    return top * (1 - fy) + bottom * fy
