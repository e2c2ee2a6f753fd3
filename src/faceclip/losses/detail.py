"""Losses of a displacement map over the face's UV window: photometric on bump shading, priors.

The map ``D`` (B, 1, R, R), millimetres along the normal, covers a square window of the UV
atlas (row 0 at the window's top; see :class:`faceclip.fit.detail.UVWindow`). The photometric
term shades each covered skin pixel of the coarse mesh with the **bump-mapped normal** of ``D``
(:func:`faceclip.render.bump.bumped_normals`), the coarse albedo and SH light, and compares
the colour with the photo. The coarse mesh, albedo, light and camera are detached: only the
map learns from it (DECA's second stage).

UVs are given in the *window frame*, ``((u - u0) / side, (v - v0) / side)``: the window's map
then spans the unit square that :mod:`faceclip.render.bump` expects, and the normals are the
same as those of the map placed on the atlas (a bump-mapped normal does not depend on how the
surface is parametrised: the tangents and the map's slopes scale together).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DetailSurface", "detail_photometric_loss", "detail_priors", "laplacian_smoothness", "magnitude_prior",
           "mirror_map", "shade_pixels", "symmetry_prior"]


@dataclass(frozen=True)
class DetailSurface:
    """The part of a mesh that a window map shades.

    Attributes:
        triangles: (F, 3) long, the triangles rasterized (those hiding skin included).
        uv: (F, 3, 2) their corners' UVs in the window frame (the window is the unit square).
        compare: (F,) bool, the triangles whose pixels are compared (the skin).
        mirror_u: the face's symmetry axis, window-frame u.
    """

    triangles: Tensor
    uv: Tensor
    compare: Tensor
    mirror_u: float

    @staticmethod
    def from_window(triangles: Tensor, uv_atlas: Tensor, compare: Tensor, window: tuple[float, float, float],
                    mirror_u_atlas: float) -> "DetailSurface":
        """Express atlas UVs (F, 3, 2) and the atlas-u axis in the frame of ``window = (u0, v0, side)``."""
        u0, v0, side = (float(x) for x in window)
        origin = torch.tensor([u0, v0], dtype=uv_atlas.dtype, device=uv_atlas.device)
        return DetailSurface(triangles.long(), ((uv_atlas - origin) / side).float(), compare.bool(),
                             (float(mirror_u_atlas) - u0) / side)

    def to(self, device: torch.device | str) -> "DetailSurface":
        return replace(self, triangles=self.triangles.to(device), uv=self.uv.to(device), compare=self.compare.to(device))


def _camera_item(camera, b: int):
    """Camera ``b`` of a batch of cameras, as a batch of one."""
    sl = slice(b, b + 1)
    return replace(camera, R=camera.R[sl], t=camera.t[sl], fx=camera.fx[sl], fy=camera.fy[sl],
                   cx=camera.cx[sl], cy=camera.cy[sl])


def shade_pixels(surface: DetailSurface, disp: Tensor | None, vertices_mm: Tensor, albedo: Tensor, sh: Tensor,
                 camera) -> tuple[Tensor, Tensor]:
    """Per-pixel Lambertian shading of one face's visible compared pixels under its map.

    Args:
        disp: (1, 1, R, R) window map (mm), or None (the smooth surface: the same as a zero map).
        vertices_mm: (V, 3) posed in the model frame; albedo: (V, 3); sh: (9, 3).
        camera: one camera (batch of 1).

    Returns:
        ``(pix (N,) long flat pixel indices i * W + j, colour (N, 3))``; differentiable in
        ``disp`` (and in the other inputs, which the loss detaches).
    """
    from faceclip.render.bump import bumped_normals, irradiance_at_normals
    from faceclip.render.interpolate import interpolate_vertex_attributes
    from faceclip.render.rasterize import rasterize_mesh

    tri = surface.triangles
    frag, _, _ = rasterize_mesh(vertices_mm[None], tri, camera, cull_backfaces=True)
    keep = surface.compare[frag.face]
    n = bumped_normals(frag, vertices_mm, tri, surface.uv, disp)  # (N_all, 3) model frame
    irr = irradiance_at_normals(camera.to_view(n[keep][None])[0], sh)
    rho = interpolate_vertex_attributes(albedo, frag, tri)[keep]
    return frag.pix[keep], rho * irr


def detail_photometric_loss(surface: DetailSurface, disp: Tensor, vertices_mm: Tensor, albedo: Tensor, sh: Tensor,
                            camera, target: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Robust photometric error of bump-shaded skin pixels against the photo.

    Args:
        disp: (B, 1, R, R) window maps (mm), the only input that receives gradients.
        vertices_mm: (B, V, 3) coarse posed vertices (model frame); albedo: (B, V, 3);
            sh: (B, 9, 3); camera: B cameras imaging (H, W) (all detached here).
        target: (B, H, W, 3) photo in [0, 1]; mask: (B, H, W) bool, the photo's skin.

    Returns:
        Scalar: the batch mean of each face's mean ``sqrt(|rgb - photo|^2 + eps)`` over its
        shaded skin pixels inside ``mask`` (an L1 norm of the colour error, smooth at 0, as the
        coarse photometric term); a face without such pixels contributes 0.
    """
    B = disp.shape[0]
    H, W = target.shape[1:3]
    if tuple(camera.image_size) != (H, W):
        raise ValueError(f"the camera images {tuple(camera.image_size)}, the target is {(H, W)}")
    vertices_mm, albedo, sh = vertices_mm.detach(), albedo.detach(), sh.detach()
    camera = replace(camera, **{k: getattr(camera, k).detach() for k in ("R", "t", "fx", "fy", "cx", "cy")})
    losses = []
    for b in range(B):
        pix, colour = shade_pixels(surface, disp[b:b + 1], vertices_mm[b], albedo[b], sh[b], _camera_item(camera, b))
        inside = mask[b].reshape(-1)[pix].bool()
        if not bool(inside.any()):
            losses.append(disp.sum() * 0.0)  # keeps the graph (and DDP) happy
            continue
        r = colour[inside] - target[b].reshape(-1, 3)[pix[inside]].to(colour.dtype)
        losses.append(torch.sqrt((r * r).sum(-1) + eps).mean())
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------- priors


def laplacian_smoothness(disp: Tensor) -> Tensor:
    """Mean squared 5-point Laplacian (mm per texel^2) of (B, 1, R, R) maps, borders replicated."""
    p = F.pad(disp, (1, 1, 1, 1), mode="replicate")
    lap = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4 * disp
    return (lap * lap).mean()


def magnitude_prior(disp: Tensor) -> Tensor:
    """Mean squared displacement (mm^2) of (B, 1, R, R) maps: detail stays near zero unless shown."""
    return (disp * disp).mean()


def mirror_map(disp: Tensor, mirror_u: float) -> tuple[Tensor, Tensor]:
    """The (B, 1, R, R) maps mirrored across ``u = mirror_u`` (window frame; bilinear) and the
    (1, 1, 1, R) float mask of columns whose mirror image lies on the map."""
    R = disp.shape[-1]
    u = (torch.arange(R, device=disp.device, dtype=disp.dtype) + 0.5) / R
    um = 2.0 * mirror_u - u  # (R,) mirrored u of each column
    gx = (um * 2.0 - 1.0).view(1, 1, R, 1).expand(disp.shape[0], R, R, 1)
    gy = ((torch.arange(R, device=disp.device, dtype=disp.dtype) + 0.5) / R * 2.0 - 1.0).view(1, R, 1, 1)
    grid = torch.cat([gx, gy.expand(disp.shape[0], R, R, 1)], -1)
    mirrored = F.grid_sample(disp, grid, mode="bilinear", padding_mode="border", align_corners=False)
    valid = ((um > 0.5 / R) & (um < 1.0 - 0.5 / R)).to(disp.dtype).view(1, 1, 1, R)
    return mirrored, valid


def symmetry_prior(disp: Tensor, mirror_u: float) -> Tensor:
    """Mean squared difference (mm^2) between (B, 1, R, R) maps and their mirror images across
    ``u = mirror_u`` (window frame), over the columns whose mirror lies on the map."""
    mirrored, valid = mirror_map(disp, mirror_u)
    d = (disp - mirrored) ** 2 * valid
    n = valid.sum() * disp.shape[0] * disp.shape[-2]
    return d.sum() / n.clamp_min(1.0)


def detail_priors(disp: Tensor, mirror_u: float) -> dict[str, Tensor]:
    """``{"smooth", "magnitude", "symmetry"}`` of (B, 1, R, R) maps (scalars, unweighted)."""
    return {"smooth": laplacian_smoothness(disp), "magnitude": magnitude_prior(disp),
            "symmetry": symmetry_prior(disp, mirror_u)}
