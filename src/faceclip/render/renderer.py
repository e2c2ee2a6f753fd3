"""High-level mesh renderer: projection, rasterization, SH shading, texture, antialiasing."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from faceclip.render import _numba_ops
from faceclip.render.antialiasing import EdgePairs, EdgeTopology, composite, edge_pairs, edge_topology
from faceclip.render.backend import use_numba
from faceclip.render.camera import OPENCV_TO_VIEW, PerspectiveCamera
from faceclip.render.interpolate import (
    interpolate_product,
    interpolate_uv,
    interpolate_vertex_attributes,
    sample_texture,
)
from faceclip.render.rasterize import DEFAULT_ZNEAR_MM, Fragments, rasterize
from faceclip.render.shading import sh_quadratic_coeffs, vertex_irradiance

__all__ = ["RenderOutput", "render_mesh", "MeshRenderer"]


class RenderOutput:
    """What :func:`render_mesh` returns. ``alpha``, ``mask`` and ``depth`` are computed on
    first access (each is a dense image; most losses need only some of them).

    Attributes:
        image: (B, H, W, C) colour, composited over the background (antialiased if asked).
        alpha: (B, H, W) coverage in [0, 1] (antialiased: fractional at silhouettes, with
            gradients wrt the geometry); use it for silhouette / mask losses.
        mask: (B, H, W) bool hard coverage.
        depth: (B, H, W) camera depth in mm (0 on the background).
        fragments: the sparse rasterization result.
        xy: (B, V, 2) projected vertices in pixels.
    """

    def __init__(self, image: Tensor, fragments: Fragments, xy: Tensor, pairs: EdgePairs | None = None) -> None:
        self.image = image
        self.fragments = fragments
        self.xy = xy
        self._pairs = pairs
        self._alpha: Tensor | None = None

    @property
    def alpha(self) -> Tensor:
        if self._alpha is None:
            frags = self.fragments
            ones = self.xy.new_ones(frags.pix.shape[0], 1)
            self._alpha = composite(ones, self.xy.new_zeros(()), frags, self.xy, self._pairs)[..., 0]
        return self._alpha

    @property
    def mask(self) -> Tensor:
        return self.fragments.mask

    @property
    def depth(self) -> Tensor:
        return self.fragments.depth_image

    def __repr__(self) -> str:
        return f"RenderOutput(image={tuple(self.image.shape)}, fragments={self.fragments.pix.shape[0]})"


def render_mesh(
    vertices_mm: Tensor,
    triangles: Tensor,
    camera: PerspectiveCamera,
    vertex_colors: Tensor | None = None,
    texture: Tensor | None = None,
    uv: Tensor | None = None,
    sh_coeffs: Tensor | None = None,
    background: float | Tensor = 0.0,
    cull_backfaces: bool = True,
    antialiased: bool = True,
    topology: EdgeTopology | None = None,
    znear: float = DEFAULT_ZNEAR_MM,
) -> RenderOutput:
    """Render a (batched) mesh.

    Albedo comes from ``texture`` (sampled per pixel at the interpolated ``uv``) or from
    ``vertex_colors`` (interpolated), or is white. With ``sh_coeffs`` the albedo is multiplied
    by the SH irradiance of the interpolated vertex normal in the view frame (see
    :mod:`faceclip.render.shading`); irradiance is evaluated per vertex and interpolated
    (Gouraud), as in Deep3DFaceRecon.

    Args:
        vertices_mm: (V, 3) or (B, V, 3) model-space vertices.
        triangles: (F, 3) long, counter-clockwise seen from the front.
        camera: B (or 1) cameras.
        vertex_colors: (V, C) or (B, V, C).
        texture: (Ht, Wt, C) or (B, Ht, Wt, C), row 0 = top (v = 1).
        uv: per-vertex (V, 2) / (B, V, 2) or per-corner (F, 3, 2) / (B, F, 3, 2) in [0, 1], v up.
        sh_coeffs: (B, 9, C) or (9, C) SH lighting; None renders the unlit albedo.
        background: scalar or (C,) colour of uncovered pixels.
        cull_backfaces: skip triangles facing away from the camera.
        antialiased: apply :func:`~faceclip.render.antialiasing.antialias` (silhouette gradients).
        topology: cached :func:`edge_topology` of ``triangles``.
        znear: near plane (mm).
    Returns:
        :class:`RenderOutput`.
    """
    triangles = triangles.to(vertices_mm.device, torch.long)
    B = max(camera.batch_size, vertices_mm.shape[0] if vertices_mm.ndim == 3 else 1)
    cam = camera.expand(B)
    verts = vertices_mm if vertices_mm.ndim == 3 else vertices_mm.unsqueeze(0)
    verts, verts_shade = _two_uses(verts)
    xy, z = cam.project_with_depth(verts)
    if xy.shape[0] != B:
        xy, z = xy.expand(B, -1, -1), z.expand(B, -1)
    xy_raster, xy_edges = _two_uses(xy)
    frags = rasterize(xy_raster, z, triangles, cam.image_size, cull_backfaces=cull_backfaces, znear=znear)

    if texture is not None:
        if uv is None:
            raise ValueError("texture rendering needs uv")
        albedo = sample_texture(texture, interpolate_uv(uv, frags, triangles), frags.batch_index)
    elif vertex_colors is not None:
        albedo = None if sh_coeffs is not None else interpolate_vertex_attributes(vertex_colors, frags, triangles)
    else:
        albedo = verts.new_ones(frags.pix.shape[0], 3)
    color = albedo
    if sh_coeffs is not None:
        # the light is rotated into model space instead of every normal into the view frame
        coeffs = sh_coeffs if sh_coeffs.ndim == 3 else sh_coeffs.unsqueeze(0)
        flip = torch.tensor(OPENCV_TO_VIEW, dtype=cam.R.dtype, device=cam.R.device)
        weights = sh_quadratic_coeffs(coeffs.expand(B, -1, -1), cam.R * flip[None, :, None])
        # only the corners of visible triangles are shaded (flags from the compiled rasterizer)
        used = frags._cache.get("used")
        irradiance = vertex_irradiance(verts_shade, triangles, weights.to(verts.dtype), used)  # (B, V, C)
        if albedo is None:  # vertex colours: one fused interpolation of colour and light
            color = interpolate_product(vertex_colors, irradiance, frags, triangles)
        else:
            color = albedo * interpolate_vertex_attributes(irradiance, frags, triangles)

    bg = torch.as_tensor(background, dtype=color.dtype, device=color.device)
    pairs = None
    if antialiased:
        neighbor = (topology or edge_topology(triangles)).neighbor.to(xy.device)
        pairs = edge_pairs(frags, xy, triangles, neighbor)
    return RenderOutput(composite(color, bg, frags, xy_edges, pairs), frags, xy, pairs)


def _two_uses(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x, x)`` for two differentiable consumers; on the compiled CPU backend their gradients
    are summed serially (:func:`._numba_ops.fanout`) rather than by a parallel PyTorch add."""
    return _numba_ops.fanout(x) if use_numba(x) else (x, x)


class MeshRenderer(nn.Module):
    """:func:`render_mesh` with a fixed topology (adjacency cached) and options.

    Example::

        renderer = MeshRenderer(triangles, uv=uv)
        out = renderer(vertices_mm, camera, texture=tex, sh_coeffs=sh)
        out.image  # (B, H, W, 3)
    """

    def __init__(
        self, triangles: Tensor, uv: Tensor | None = None, cull_backfaces: bool = True,
        antialiased: bool = True, background: float | Tensor = 0.0,
        znear: float = DEFAULT_ZNEAR_MM,
    ) -> None:
        super().__init__()
        triangles = torch.as_tensor(triangles, dtype=torch.long)
        self.register_buffer("triangles", triangles, persistent=False)
        self.register_buffer("neighbor", edge_topology(triangles).neighbor, persistent=False)
        self.uv: Tensor | None
        self.register_buffer("uv", None if uv is None else torch.as_tensor(uv), persistent=False)
        self.cull_backfaces = cull_backfaces
        self.antialiased = antialiased
        self.background = background
        self.znear = znear

    def forward(
        self, vertices_mm: Tensor, camera: PerspectiveCamera, vertex_colors: Tensor | None = None,
        texture: Tensor | None = None, sh_coeffs: Tensor | None = None,
    ) -> RenderOutput:
        """See :func:`render_mesh`."""
        return render_mesh(
            vertices_mm, self.triangles, camera, vertex_colors=vertex_colors, texture=texture,
            uv=self.uv, sh_coeffs=sh_coeffs, background=self.background,
            cull_backfaces=self.cull_backfaces, antialiased=self.antialiased,
            topology=EdgeTopology(self.neighbor), znear=self.znear,
        )
