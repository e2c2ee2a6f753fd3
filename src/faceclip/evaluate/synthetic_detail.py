"""Synthetic faces with ground-truth mid-frequency detail: procedural wrinkles and folds.

:func:`procedural_detail` draws a displacement map (mm along the normal, over the model's UV
square, row 0 at v = 1) of known amplitude, placed by the model's landmark vertices:

- **forehead lines**: horizontal furrows above the brows (a sinusoid across v under a window
  wide in u), amplitude ``A_forehead``;
- **crow's feet**: short furrows fanning out from the outer eye corners;
- **nasolabial folds**: one groove from each nose wing to the mouth corner.

With ``expression`` (blendshape weights by name) the detail is *dynamic* as in FaceScape: the
forehead lines deepen with raised brows (``browInnerUp``, ``browOuterUp``), the nasolabial
folds with a smile (``mouthSmile``, ``cheekSquint``); the static part is what the face shows at
rest. :func:`render_with_detail` shades a mesh per pixel with its bump-mapped normals
(:mod:`faceclip.render.bump`), so the picture shows the wrinkles the map describes, and
:func:`detail_normals_image` gives the ground-truth normal of every pixel.

Wavelengths and widths are in millimetres on the face (the map's scale is measured from the
model's UVs, :func:`uv_mm_per_unit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from faceclip.fit.detail import vertex_uv

__all__ = ["DetailSpec", "angular_error_deg", "detail_normals_image", "procedural_detail", "render_with_detail", "uv_mm_per_unit",
           "vertex_uv"]


@dataclass(frozen=True)
class DetailSpec:
    """Amplitudes (mm, peak) and wavelengths (mm) of the procedural detail."""

    forehead_mm: float = 0.5
    crows_feet_mm: float = 0.35
    nasolabial_mm: float = 0.6
    wavelength_mm: float = 7.0
    #: Dynamic part: extra amplitude per unit of the driving blendshapes.
    forehead_dynamic_mm: float = 0.5
    nasolabial_dynamic_mm: float = 0.6


def uv_mm_per_unit(model) -> float:
    """Median length (mm, on the mean face) of one unit of u or v on the face's triangles."""
    from faceclip.render.bump import triangle_tangents

    face = model.region_mask("face")[model.triangles].all(1)
    pu, pv = triangle_tangents(model.mean_mm.double(), model.triangles[face], model.uv[face].double())
    return float(torch.cat([pu.norm(dim=1), pv.norm(dim=1)]).median())


def _weight(names: list[str], expression: dict[str, float] | None, prefix: tuple[str, ...]) -> float:
    if not expression:
        return 0.0
    unknown = sorted(set(expression) - set(names))
    if unknown:
        raise ValueError(f"unknown blendshapes: {', '.join(unknown)}")
    vals = [w for n, w in expression.items() if n.startswith(prefix)]
    return float(np.clip(max(vals, default=0.0), 0.0, 1.0))


def procedural_detail(model, rng: np.random.Generator, size_px: int = 512, spec: DetailSpec = DetailSpec(),
                      expression: dict[str, float] | None = None, scale: float | None = None) -> Tensor:
    """A (1, 1, S, S) float32 displacement map (mm) of wrinkles and folds (module docstring).

    Args:
        rng: draws the amplitudes (x 0.6-1.4 each), phases and small placement jitter.
        expression: blendshape weights by name for the dynamic part (None: at rest).
        scale: multiply the whole map, dynamic part included (0: a face without detail).
    """
    S = size_px
    vuv = vertex_uv(model)
    lm = vuv[model.landmarks68.cpu().numpy()]
    mm = uv_mm_per_unit(model)
    u = (np.arange(S) + 0.5) / S
    uu, vv = np.meshgrid(u, 1.0 - u)  # row 0 = v 1
    D = np.zeros((S, S))
    lam = spec.wavelength_mm / mm  # wavelength in UV units
    amp = rng.uniform(0.6, 1.4, 3)
    names = list(model.expression_names)
    brows = _weight(names, expression, ("browInnerUp", "browOuterUp"))
    smile = _weight(names, expression, ("mouthSmile", "cheekSquint"))

    def gauss(cu, cv, su, sv):
        return np.exp(-0.5 * (((uu - cu) / su) ** 2 + ((vv - cv) / sv) ** 2))

    # Forehead: above the brows by about 0.9 brow-to-eye distances.
    brow = lm[[19, 24]].mean(0)
    eye = lm[[37, 44]].mean(0)
    up = brow - eye
    centre = brow + 0.9 * up + rng.normal(0, 0.002, 2)
    width = abs(lm[26, 0] - lm[17, 0]) * 0.45
    a = (spec.forehead_mm * amp[0] + spec.forehead_dynamic_mm * brows)
    D += a * np.sin(2 * np.pi * (vv - centre[1]) / lam + rng.uniform(0, 2 * np.pi)) * gauss(
        centre[0], centre[1], width, 1.3 * lam)
    # Crow's feet: furrows fanning from the outer eye corners (36: subject's right, 45: left).
    for k, (corner, inner) in enumerate(((lm[36], lm[39]), (lm[45], lm[42]))):
        sign = 1.0 if corner[0] > inner[0] else -1.0  # outward, away from the nose
        c = corner + np.array([sign * 0.6 * lam, 0.0])
        ang = np.arctan2(vv - c[1], (uu - c[0]) * sign)
        a = spec.crows_feet_mm * amp[1]
        outward = 1.0 / (1.0 + np.exp(-(uu - c[0]) * sign / (0.3 * lam)))  # the outer side only
        D += a * np.sin(ang * 9.0 + k) * gauss(c[0], c[1], 1.0 * lam, 1.0 * lam) * outward
    # Nasolabial folds: a groove from the nose wing (31 / 35) to beyond the mouth corner (48 / 54).
    for wing, mouth in ((lm[31], lm[48]), (lm[35], lm[54])):
        p0, p1 = wing + (wing - lm[33]) * 0.4, mouth + (mouth - lm[51]) * 0.3
        d = p1 - p0
        t = np.clip(((uu - p0[0]) * d[0] + (vv - p0[1]) * d[1]) / (d @ d), 0.0, 1.0)
        dist = np.hypot(uu - (p0[0] + t * d[0]), vv - (p0[1] + t * d[1]))
        a = spec.nasolabial_mm * amp[2] + spec.nasolabial_dynamic_mm * smile
        D -= a * np.exp(-0.5 * (dist / (0.35 * lam)) ** 2) * np.sin(np.pi * t) ** 0.5
    D *= _face_texels(model, S)  # the face's own UV island only (others stay smooth)
    D *= 1.0 if scale is None else float(scale)
    return torch.from_numpy(D).float()[None, None]


def _face_texels(model, size_px: int) -> np.ndarray:
    """(S, S) float mask of the texels of the face region's triangles, softened by 2 texels."""
    from scipy.ndimage import binary_dilation, gaussian_filter

    from faceclip.fit.texture import uv_raster

    raster = uv_raster(model.to("cpu"), size_px)
    mask = np.zeros(size_px * size_px, bool)
    face = raster.face_texel if isinstance(raster.face_texel, np.ndarray) else raster.face_texel.cpu().numpy()
    mask[raster.frag.pix.cpu().numpy()[face]] = True
    mask = binary_dilation(mask.reshape(size_px, size_px), iterations=2)
    return np.clip(gaussian_filter(mask.astype(np.float64), 1.0), 0.0, 1.0)


def render_with_detail(model, vertices_mm: Tensor, albedo: Tensor, sh: Tensor, camera, disp: Tensor | None,
                       background: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shade the mesh per pixel with its bump-mapped normals (Lambertian, SH light).

    Args:
        vertices_mm: (V, 3); albedo: (V, 3) in [0, 1]; sh: (9, 3); camera: one camera;
        disp: (1, 1, S, S) displacement map or None.
        background: (H, W, 3) float in [0, 1] behind the face (default black).

    Returns:
        ``(image (H, W, 3) float in [0, 1], coverage (H, W) bool)``.
    """
    from faceclip.render.bump import bumped_normals, irradiance_at_normals
    from faceclip.render.interpolate import interpolate_vertex_attributes
    from faceclip.render.rasterize import rasterize_mesh

    tri = model.triangles
    with torch.no_grad():
        frag, _, _ = rasterize_mesh(vertices_mm[None], tri, camera, cull_backfaces=True)
        n = bumped_normals(frag, vertices_mm, tri, model.uv, disp)
        irr = irradiance_at_normals(camera.to_view(n[None])[0], sh)
        col = (interpolate_vertex_attributes(albedo, frag, tri) * irr).clamp(0, 1)
        H, W = camera.image_size
        out = np.zeros((H * W, 3)) if background is None else background.reshape(-1, 3).astype(np.float64).copy()
        out[frag.pix.cpu().numpy()] = col.cpu().numpy()
        cover = np.zeros(H * W, bool)
        cover[frag.pix.cpu().numpy()] = True
    return out.reshape(H, W, 3), cover.reshape(H, W)


def detail_normals_image(model, vertices_mm: Tensor, camera, disp: Tensor | None,
                         triangle_mask: Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """View-frame unit normals of every covered pixel: ``(normals (H, W, 3), covered (H, W))``;
    ``triangle_mask`` (F,) bool: pixels of other triangles count as not covered."""
    from faceclip.render.bump import bumped_normals
    from faceclip.render.rasterize import rasterize_mesh

    tri = model.triangles
    with torch.no_grad():
        frag, _, _ = rasterize_mesh(vertices_mm[None], tri, camera, cull_backfaces=True)
        n = camera.to_view(bumped_normals(frag, vertices_mm, tri, model.uv, disp)[None])[0]
        H, W = camera.image_size
        out = np.zeros((H * W, 3))
        cover = np.zeros(H * W, bool)
        keep = np.ones(len(frag.pix), bool) if triangle_mask is None else triangle_mask[frag.face].cpu().numpy()
        out[frag.pix.cpu().numpy()[keep]] = n.cpu().numpy()[keep]
        cover[frag.pix.cpu().numpy()[keep]] = True
    return out.reshape(H, W, 3), cover.reshape(H, W)


def angular_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles (degrees) between unit vectors ``a`` and ``b`` (..., 3)."""
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))
