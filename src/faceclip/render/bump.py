"""Per-pixel normals of a mesh displaced by a UV displacement map (bump mapping), differentiable.

A displacement map ``D(u, v)`` (millimetres, along the surface normal) moves each surface point
``P`` to ``P + D n``. Its normal, to first order in the map's slope, is the normalised cross
product of the displaced tangents ``P_u + D_u n`` and ``P_v + D_v n`` (Blinn's bump mapping),
where ``P_u = dP/du``, ``P_v = dP/dv`` come from each triangle's positions and UVs, ``D_u``,
``D_v`` are the map's derivatives (central differences, mm per unit of u or v), and the smooth
(interpolated) normal stands in for ``P_u x P_v``. Everything here is a plain PyTorch
function of the map, so a photometric loss on the shaded pixels reaches ``D``.

Map layout: ``(1, 1, S, S)`` over the whole UV square, row 0 at ``v = 1`` (the texture
convention of :mod:`faceclip.fit.texture`); UVs are per triangle corner, ``(F, 3, 2)``.

Example::

    frag, _, _ = rasterize_mesh(verts, tris, cam)
    n = bumped_normals(frag, verts[0], tris, uv_corners, disp_map)      # (N, 3) model frame
    irradiance = irradiance_at_normals(cam.to_view(n[None])[0], sh[0])  # (N, 3)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bumped_normals", "fragment_uv", "irradiance_at_normals", "map_gradients", "sample_map", "triangle_tangents"]


def triangle_tangents(vertices: Tensor, triangles: Tensor, uv_corners: Tensor) -> tuple[Tensor, Tensor]:
    """``(P_u, P_v)``: (F, 3) each, the derivatives of position by u and by v per triangle.

    Args:
        vertices: (V, 3) positions (mm); triangles: (F, 3); uv_corners: (F, 3, 2).
    Triangles whose UVs are degenerate get zero tangents.
    """
    p = vertices[triangles]  # (F, 3, 3)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = uv_corners[:, 1] - uv_corners[:, 0], uv_corners[:, 2] - uv_corners[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    ok = det.abs() > 1e-12
    inv = torch.where(ok, 1.0 / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det)).unsqueeze(-1)
    pu = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * inv
    pv = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * inv
    return pu, pv


def fragment_uv(frag, uv_corners: Tensor) -> Tensor:
    """(N, 2) UV of each covered pixel (barycentric interpolation of its triangle's corners)."""
    return (frag.bary.unsqueeze(-1) * uv_corners[frag.face]).sum(1)


def map_gradients(disp: Tensor) -> Tensor:
    """(1, 2, S, S): ``dD/du`` and ``dD/dv`` of a (1, 1, S, S) map (mm per unit u, v), central
    differences (one-sided at the borders); rows run from v = 1 down to v = 0."""
    S_h, S_w = disp.shape[-2:]
    # Pad by linear extrapolation, so the central difference at a border is the one-sided one.
    padded = torch.cat([2 * disp[..., :, :1] - disp[..., :, 1:2], disp, 2 * disp[..., :, -1:] - disp[..., :, -2:-1]], -1)
    padded = torch.cat([2 * padded[..., :1, :] - padded[..., 1:2, :], padded,
                        2 * padded[..., -1:, :] - padded[..., -2:-1, :]], -2)
    du = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) * (S_w / 2.0)
    dv = (padded[..., :-2, 1:-1] - padded[..., 2:, 1:-1]) * (S_h / 2.0)  # row up = v up
    return torch.cat([du, dv], 1)


def sample_map(maps: Tensor, uv: Tensor) -> Tensor:
    """(N, C) bilinear samples of (1, C, S, S) maps at (N, 2) UVs."""
    grid = torch.stack([uv[:, 0] * 2.0 - 1.0, 1.0 - uv[:, 1] * 2.0], -1).view(1, 1, -1, 2).to(maps.dtype)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T


def bumped_normals(frag, vertices: Tensor, triangles: Tensor, uv_corners: Tensor, disp: Tensor | None,
                   vertex_normals_: Tensor | None = None) -> Tensor:
    """(N, 3) unit normals (model frame) at the covered pixels of one mesh, displaced by ``disp``.

    Args:
        frag: fragments of ``triangles`` (batch of 1).
        vertices: (V, 3) positions (mm).
        uv_corners: (F, 3, 2) UVs of ``triangles``' corners.
        disp: (1, 1, S, S) displacement map (mm), or None (the smooth surface).
        vertex_normals_: (V, 3) unit vertex normals (default: computed from the mesh).
    """
    from faceclip.render.interpolate import interpolate_vertex_attributes
    from faceclip.render.shading import vertex_normals

    if vertex_normals_ is None:
        vertex_normals_ = vertex_normals(vertices[None], triangles)[0]
    n = F.normalize(interpolate_vertex_attributes(vertex_normals_, frag, triangles), dim=-1)
    if disp is None:
        return n
    pu, pv = triangle_tangents(vertices, triangles, uv_corners)
    pu, pv = pu[frag.face], pv[frag.face]
    g = sample_map(map_gradients(disp), fragment_uv(frag, uv_corners))  # (N, 2)
    # (P_u + D_u n) x (P_v + D_v n) = P_u x P_v + D_u (n x P_v) + D_v (P_u x n); the first term is
    # replaced by the smooth normal of the same length, so a flat map leaves the shading smooth
    # (no facets) and only the map's slopes tilt it.
    flat = torch.cross(pu, pv, dim=-1)
    orient = torch.sign((flat * n).sum(-1, keepdim=True))
    orient = torch.where(orient == 0, torch.ones_like(orient), orient)
    m = flat.norm(dim=-1, keepdim=True) * orient * n + g[:, :1] * torch.cross(n, pv, dim=-1) \
        + g[:, 1:] * torch.cross(pu, n, dim=-1)
    m = m * orient
    ok = (m.norm(dim=-1, keepdim=True) > 1e-9) & (flat.norm(dim=-1, keepdim=True) > 0)
    return torch.where(ok, F.normalize(m, dim=-1), n)


def irradiance_at_normals(normals_view: Tensor, sh: Tensor) -> Tensor:
    """(N, C) SH irradiance of (N, 3) view-frame unit normals under (9, C) coefficients."""
    from faceclip.render.shading import sh_basis

    return sh_basis(normals_view.unsqueeze(0))[0] @ sh
