"""Mid-frequency detail at test time: a displacement map per face, from the photo's shading.

After the coarse fit, :func:`fit_detail` finds a displacement map ``D`` (millimetres along the
surface normal) over the face's UV window such that the face, shaded **per pixel** with the
bump-mapped normals of ``D`` (:mod:`faceclip.render.bump`), the fitted albedo and the fitted
SH light, matches the photo's brightness on the visible skin (shape from shading).

The problem is solved by Gauss-Newton: the shading of each pixel is linearised in the map's
slopes at that pixel (its Jacobian comes from the differentiable shading by autograd), the
slopes are a sparse linear function of the map (bilinear sampling of central differences), so
each iteration is one sparse, symmetric positive-definite system, solved by conjugate gradients.
The energy (grey levels, i.e. the mean of the three channels):

- **photometric**: ``mean_p w_p ((1 + G(uv_p)) s_p(D) - I_p)^2`` over the kept skin pixels, with
  Huber weights ``w_p``; ``G`` is a smooth multiplicative *gain* on a coarse grid over the
  window (``gain_cells`` across) that absorbs what the smooth fitted albedo and light got
  slightly wrong, so that a broad shading error never turns into a broad bump;
- **smoothness**: the squared discrete Laplacian of ``D`` (no pixel noise);
- **magnitude**: ``D^2`` (detail stays near zero where the photo shows none);
- **symmetry**: texels the photo does not show follow their mirror image across the face.

Pixels are left out where the colour is not the skin's (brows, lips, moles, hair: an albedo the
smooth fitted albedo lacks would read as shading), at grazing angles, and outside the face's
skin triangles. Defaults were chosen on the tuning seed 7 of ``faceclip benchmark synthetic
--detail`` (see ``docs/detail.md``); figures are reported on seed 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from faceclip.errors import FaceClipError

__all__ = ["DetailConfig", "DetailResult", "UVWindow", "displace_vertices", "face_uv_window", "fit_detail", "skin_triangle_mask",
           "vertex_displacement", "vertex_uv", "write_face_detail"]


@dataclass(frozen=True)
class UVWindow:
    """A square of the UV atlas: u in ``[u0, u0 + side]``, v in ``[v0, v0 + side]``.

    A map of ``R x R`` texels over it has texel ``(i, j)``'s centre at
    ``u = u0 + (j + 0.5) side / R``, ``v = v0 + side - (i + 0.5) side / R`` (row 0 at the top,
    the texture convention).
    """

    u0: float
    v0: float
    side: float

    def grid_xy(self, uv: np.ndarray, size: int) -> np.ndarray:
        """(N, 2) continuous texel coordinates (x = column, y = row; centres at integers)."""
        h = self.side / size
        return np.stack([(uv[:, 0] - self.u0) / h - 0.5, (self.v0 + self.side - uv[:, 1]) / h - 0.5], 1)

    def to_atlas(self, values: np.ndarray, atlas_px: int) -> np.ndarray:
        """(S, S) the ``(R, R)`` map placed on the whole atlas (zero elsewhere), resampled."""
        import cv2

        out = np.zeros((atlas_px, atlas_px), np.float32)
        x0, x1 = self.u0 * atlas_px, (self.u0 + self.side) * atlas_px
        y0, y1 = (1 - self.v0 - self.side) * atlas_px, (1 - self.v0) * atlas_px
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(atlas_px, int(np.ceil(x1))), min(atlas_px, int(np.ceil(y1)))
        if c1 <= c0 or r1 <= r0:
            return out
        values = values.astype(np.float32)
        target = int(round(self.side * atlas_px))
        if target < values.shape[0]:  # shrinking: area-average first, so detail is not aliased
            values = cv2.resize(values, (max(1, target), max(1, target)), interpolation=cv2.INTER_AREA)
        # Atlas texel centres in the map's continuous coordinates.
        R = values.shape[0]
        xs = ((np.arange(c0, c1) + 0.5) / atlas_px - self.u0) / self.side * R - 0.5
        ys = ((1 - (np.arange(r0, r1) + 0.5) / atlas_px) - self.v0)
        ys = (self.side - ys) / self.side * R - 0.5
        mx, my = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
        out[r0:r1, c0:c1] = cv2.remap(values.astype(np.float32), mx, my, cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        return out


def skin_triangle_mask(model) -> Tensor:
    """(F,) bool: the triangles of the face's skin (forehead to chin, no eyes, lips or inner mouth)."""
    tri = model.triangles
    return model.region_mask("skin")[tri].all(1) & model.region_mask("face")[tri].all(1)


def face_uv_window(model, margin: float = 0.04) -> tuple[UVWindow, float]:
    """The square UV window around the face's skin and the u of its symmetry axis.

    Returns:
        ``(window, mirror_u)``: the bounding square of the skin triangles' UVs, grown by
        ``margin`` of its side on each border; the axis is the median u of the nose-ridge
        landmarks (68-point indices 27-30).
    """
    uv = model.uv[skin_triangle_mask(model)].reshape(-1, 2).double().cpu().numpy()
    if len(uv) == 0:
        raise FaceClipError(f"face model {model.name}: no skin triangles to carry a displacement map")
    lo, hi = uv.min(0), uv.max(0)
    side = float((hi - lo).max()) * (1 + 2 * margin)
    centre = (lo + hi) / 2
    window = UVWindow(float(centre[0] - side / 2), float(centre[1] - side / 2), side)
    mirror_u = float(np.median(vertex_uv(model)[model.landmarks68[27:31].cpu().numpy(), 0]))
    return window, mirror_u


@dataclass
class DetailConfig:
    """Settings of :func:`fit_detail` (defaults: tuning seed 7 of ``faceclip benchmark synthetic --detail``)."""

    #: Texels across the face's UV window (the ICT head: about 1 mm per texel at 256).
    map_px: int = 256
    #: The face's window of the photo is compared at most this many pixels across.
    window_px: int = 320
    #: Gauss-Newton iterations (each: one linearisation and one sparse solve).
    iterations: int = 2
    w_smooth: float = 1e-2
    w_magnitude: float = 1e-3
    w_symmetry: float = 1e-2
    #: Broad bumps are not detail: the squared block means of ``D`` over ``lowpass_px`` texels
    #: (about 8 mm) are penalised with this weight.
    w_lowpass: float = 1.0
    lowpass_px: int = 8
    #: Pixels within this many pixels (of the compared window) of a left-out one are left out too.
    exclude_grow_px: int = 2
    #: Cells across the UV window of the gain field (0: no gain field).
    gain_cells: int = 8
    w_gain: float = 1e-3
    w_gain_smooth: float = 1e-2
    #: |D| is kept below this (mm).
    max_mm: float = 2.0
    #: Residuals (grey level, 0-1) beyond this count linearly (Huber).
    robust_scale: float = 0.03
    #: Pixels whose brightness ratio to the coarse render is this far from the median are
    #: left out (another albedo: brows, lips, moles) ...
    albedo_tolerance: float = 0.25
    #: ... and pixels whose chromaticity is this far from the skin's median.
    chroma_tolerance: float = 0.05
    #: Pixels whose normal makes less than this cosine with the view direction are left out.
    min_view_cos: float = 0.25
    #: Conjugate-gradient iterations per solve (at most) and tolerance.
    cg_iterations: int = 300
    cg_tolerance: float = 1e-4

    def __post_init__(self) -> None:
        checks = [(self.map_px >= 8, "map_px must be at least 8"), (self.window_px >= 32, "window_px must be at least 32"),
                  (self.iterations >= 1, "iterations must be at least 1"),
                  (self.gain_cells == 0 or self.gain_cells >= 2, "gain_cells must be 0 (no gain field) or at least 2"),
                  (self.lowpass_px >= 1, "lowpass_px must be at least 1"), (self.max_mm > 0, "max_mm must be positive"),
                  (self.robust_scale > 0, "robust_scale must be positive"), (self.cg_iterations >= 1, "cg_iterations must be at least 1")]
        for ok, message in checks:
            if not ok:
                raise FaceClipError(f"detail settings: {message}")


@dataclass
class DetailResult:
    """What :func:`fit_detail` returns.

    Attributes:
        map_mm: (R, R) float32 displacement (mm along the normal) over ``window``.
        window: the UV window the map covers; mirror_u: the symmetry axis used.
        seen: (R, R) bool texels the photo showed.
        stats: pixel and texel counts, the photometric RMS (grey level) before and after, the
            largest |D|.
        seconds: wall time.
    """

    map_mm: np.ndarray
    window: UVWindow
    mirror_u: float
    seen: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def atlas(self, atlas_px: int) -> np.ndarray:
        """(S, S) float32 the map on the whole UV atlas (row 0 at v = 1; zero off the face)."""
        return self.window.to_atlas(self.map_mm, atlas_px)


@dataclass
class _Pixels:
    """The kept skin pixels of the face's window and what shading them needs (all (N, ...))."""

    uv: np.ndarray         # (N, 2)
    normal: Tensor         # (N, 3) smooth unit normal, model frame
    a: Tensor              # (N, 3) change of the (unnormalised) normal per unit of dD/du
    b: Tensor              # (N, 3) ... per unit of dD/dv
    base: Tensor           # (N, 3) the unnormalised normal of the smooth surface
    rho: Tensor            # (N, 3) albedo
    target: Tensor         # (N,) grey level of the photo
    n_face_pixels: int


def _gather_pixels(model, vertices_mm: Tensor, albedo: Tensor, sh: Tensor, camera, photo: np.ndarray,
                   c: DetailConfig) -> tuple[_Pixels, Tensor]:
    """Rasterize the coarse face over its window of the photo; keep the skin pixels to compare.

    Returns the pixels and the (3, 3) model-to-view rotation (``n @ to_view``).
    """
    import cv2

    from faceclip.fit.texture import face_window, window_camera
    from faceclip.render.bump import irradiance_at_normals, triangle_tangents
    from faceclip.render.interpolate import interpolate_vertex_attributes
    from faceclip.render.rasterize import rasterize_mesh
    from faceclip.render.shading import vertex_normals

    tri = model.triangles
    skin = skin_triangle_mask(model)
    win = face_window(camera, vertices_mm[None][:, torch.unique(tri[skin])], tuple(photo.shape[:2]),
                      max_side_px=c.window_px)
    cam = window_camera(camera, win)
    region = photo[win.y0:win.y0 + win.height, win.x0:win.x0 + win.width]
    hh, ww = cam.image_size
    if (hh, ww) != region.shape[:2]:
        region = cv2.resize(region, (ww, hh), interpolation=cv2.INTER_AREA)
    crop = torch.from_numpy(np.ascontiguousarray(region).astype(np.float32) / 255.0).reshape(-1, 3)
    to_view = cam.to_view(torch.eye(3)[None])[0]
    frag, _, _ = rasterize_mesh(vertices_mm[None], tri, cam, cull_backfaces=True)
    on_skin = skin[frag.face]
    vn = vertex_normals(vertices_mm[None], tri)[0]
    n = F.normalize(interpolate_vertex_attributes(vn, frag, tri), dim=-1)
    rho = interpolate_vertex_attributes(albedo, frag, tri)
    target = crop[frag.pix]
    shade0 = rho * irradiance_at_normals(n @ to_view, sh)
    # Other albedos (brows, lips, moles, hair) read as shading: leave them out.
    ratio = target.sum(-1) / shade0.sum(-1).clamp_min(1e-3)
    chroma = target / target.sum(-1, keepdim=True).clamp_min(1e-3)
    facing = (n @ to_view)[:, 2] > c.min_view_cos
    keep = on_skin & facing & (target.amax(-1) < 0.995) & (target.amin(-1) > 0.005)
    if int(keep.sum()) < 100:
        raise FaceClipError("too little visible skin to recover detail from (under 100 pixels)")
    ref, med = chroma[keep].median(0).values, ratio[keep].median()
    odd = on_skin & ~(((ratio - med).abs() < c.albedo_tolerance * med) & ((chroma - ref).norm(dim=-1) < c.chroma_tolerance))
    keep &= ~_grow(odd, frag.pix, (hh, ww), c.exclude_grow_px)
    if int(keep.sum()) < 100:
        raise FaceClipError("too little skin-coloured pixels to recover detail from (under 100 pixels)")
    face_ids = frag.face[keep]
    uv_corners = model.uv.float()
    pu, pv = triangle_tangents(vertices_mm, tri[face_ids], uv_corners[face_ids])
    n = n[keep]
    flat = torch.cross(pu, pv, dim=-1)
    orient = torch.sign((flat * n).sum(-1, keepdim=True))
    orient = torch.where(orient == 0, torch.ones_like(orient), orient)
    uv = (frag.bary[keep].unsqueeze(-1) * uv_corners[face_ids]).sum(1)  # (N, 2)
    px = _Pixels(uv=uv.double().numpy(), normal=n, a=orient * torch.cross(n, pv, dim=-1),
                 b=orient * torch.cross(pu, n, dim=-1), base=flat.norm(dim=-1, keepdim=True) * n,
                 rho=rho[keep], target=target[keep].mean(-1), n_face_pixels=int(on_skin.sum()))
    return px, to_view


def _grow(flags: Tensor, pix: Tensor, hw: tuple[int, int], radius: int) -> Tensor:
    """(N,) ``flags`` of covered pixels grown by ``radius`` pixels in the image."""
    if radius <= 0 or not bool(flags.any()):
        return flags
    from scipy.ndimage import binary_dilation

    img = np.zeros(hw[0] * hw[1], bool)
    img[pix[flags].numpy()] = True
    grown = binary_dilation(img.reshape(hw), iterations=radius).ravel()
    return torch.from_numpy(grown[pix.numpy()])


def _block_mean(R: int, block: int, cols: np.ndarray) -> sp.csr_matrix:
    """(cells, len(cols)) the mean of the map over ``block x block`` texel cells (active texels)."""
    i, j = cols // R, cols % R
    nb = -(-R // block)
    cell = (i // block) * nb + (j // block)
    return sp.csr_matrix((np.full(len(cols), 1.0 / block ** 2), (cell, np.arange(len(cols)))), shape=(nb * nb, len(cols)))


def _shading_and_jacobian(px: _Pixels, g: Tensor, sh: Tensor, to_view: Tensor) -> tuple[Tensor, Tensor]:
    """Grey shading ``s`` (N,) of the pixels at map slopes ``g`` (N, 2) and ``ds/dg`` (N, 2)."""
    from faceclip.render.bump import irradiance_at_normals

    g = g.detach().clone().requires_grad_(True)
    m = px.base + g[:, :1] * px.a + g[:, 1:] * px.b
    s = (px.rho * irradiance_at_normals(F.normalize(m, dim=-1) @ to_view, sh)).mean(-1)
    (jac,) = torch.autograd.grad(s.sum(), g)
    return s.detach(), jac


def _bilinear_matrix(xy: np.ndarray, R: int) -> sp.csr_matrix:
    """(N, R*R) bilinear interpolation of an R x R grid at (N, 2) texel coordinates (clamped)."""
    x = np.clip(xy[:, 0], 0, R - 1 - 1e-9)
    y = np.clip(xy[:, 1], 0, R - 1 - 1e-9)
    j0, i0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - j0, y - i0
    rows = np.repeat(np.arange(len(xy)), 4)
    cols = np.stack([i0 * R + j0, i0 * R + j0 + 1, (i0 + 1) * R + j0, (i0 + 1) * R + j0 + 1], 1).ravel()
    vals = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1).ravel()
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(xy), R * R))


def _difference_1d(R: int) -> sp.csr_matrix:
    """(R, R) central differences per texel (one-sided at the ends)."""
    d = sp.diags([-0.5 * np.ones(R - 1), 0.5 * np.ones(R - 1)], [-1, 1], format="lil")
    d[0, 0], d[0, 1] = -1.0, 1.0
    d[R - 1, R - 2], d[R - 1, R - 1] = -1.0, 1.0
    return d.tocsr()


def _gradient_operators(R: int, side_uv: float) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``(Gu, Gv)``: (R*R, R*R) maps from the flattened map to dD/du and dD/dv (mm per unit)."""
    h = side_uv / R
    d, eye = _difference_1d(R), sp.identity(R, format="csr")
    gu = sp.kron(eye, d) / h            # along a row (columns = +u)
    gv = -sp.kron(d, eye) / h           # down the rows is -v
    return gu.tocsr(), gv.tocsr()


def _laplacian(R: int) -> sp.csr_matrix:
    """(R*R, R*R) 5-point Laplacian with Neumann borders."""
    d = sp.diags([np.ones(R - 1), -2 * np.ones(R), np.ones(R - 1)], [-1, 0, 1], format="lil")
    d[0, 0] = d[R - 1, R - 1] = -1.0
    eye = sp.identity(R, format="csr")
    return (sp.kron(eye, d.tocsr()) + sp.kron(d.tocsr(), eye)).tocsr()


def _mirror_index(R: int, window: UVWindow, mirror_u: float) -> np.ndarray:
    """(R*R,) flat index of each texel's mirror image across ``u = mirror_u`` (-1: off the map)."""
    h = window.side / R
    j = np.arange(R)
    u = window.u0 + (j + 0.5) * h
    jm = np.round((2 * mirror_u - u - window.u0) / h - 0.5).astype(np.int64)
    ok = (jm >= 0) & (jm < R)
    idx = np.arange(R * R).reshape(R, R)
    out = np.full((R, R), -1, np.int64)
    out[:, ok] = idx[:, jm[ok]]
    return out.ravel()


def _active_texels(model, window: UVWindow, R: int) -> np.ndarray:
    """(R*R,) bool: texels the skin triangles cover (grown by two texels)."""
    from scipy.ndimage import binary_dilation

    uv = model.uv[skin_triangle_mask(model)].double().cpu().numpy()  # (F', 3, 2)
    # Sample every skin triangle densely enough (texel spacing) and mark the texels.
    extent = float((uv.max(1) - uv.min(1)).max()) / (window.side / R)  # largest triangle, texels
    n = int(np.ceil(extent)) + 2
    a, b = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    keep = (a + b) <= 1
    w = np.stack([1 - a[keep] - b[keep], a[keep], b[keep]], 1)  # (K, 3)
    pts = np.einsum("kc,fcd->fkd", w, uv).reshape(-1, 2)
    xy = np.rint(window.grid_xy(pts, R)).astype(np.int64)
    ok = (xy >= 0).all(1) & (xy < R).all(1)
    mask = np.zeros((R, R), bool)
    mask[xy[ok, 1], xy[ok, 0]] = True
    return binary_dilation(mask, iterations=2).ravel()


def _layout(model, R: int) -> tuple:
    """What depends on the model and the map size only (memoised per layout): the UV window, its
    mirror axis, the active texels (flat indices), the slope operators and the Laplacian
    restricted to them ((R*R, n_active) and (n_active, n_active)), and each texel's mirror index."""
    from faceclip.io.mesh import memo_by_content

    def compute() -> tuple:
        window, mirror_u = face_uv_window(model)
        act = np.flatnonzero(_active_texels(model, window, R))
        gu, gv = _gradient_operators(R, window.side)
        L = _laplacian(R)[act][:, act].tocsr()
        return window, mirror_u, act, gu[:, act].tocsr(), gv[:, act].tocsr(), L, _mirror_index(R, window, mirror_u)

    return memo_by_content(f"detail_layout_{R}", model.uv, model.triangles, skin_triangle_mask(model),
                           model.landmarks68, compute=compute)


def fit_detail(model, vertices_mm: Tensor, albedo: Tensor, sh: Tensor, camera, photo: np.ndarray,
               config: DetailConfig | None = None) -> DetailResult:
    """Fit the displacement map of one face (see the module docstring).

    Args:
        model: the face model (triangles, UVs, regions).
        vertices_mm: (V, 3) the coarse fit's vertices (model frame).
        albedo: (V, 3) the fitted albedo in [0, 1]; sh: (9, 3) the fitted SH light.
        camera: the photo's camera (the coarse fit's pose), one camera.
        photo: (H, W, 3) uint8, the photo at the camera's resolution.
        config: settings (default :class:`DetailConfig`).

    Raises:
        FaceClipError: too little visible skin, or a non-finite input.
    """
    from scipy.sparse.linalg import LinearOperator, cg

    c = config or DetailConfig()
    t0 = time.perf_counter()
    for name, x in (("vertices", vertices_mm), ("albedo", albedo), ("light", sh)):
        if not torch.isfinite(x).all():
            raise FaceClipError(f"detail: the coarse fit's {name} are not finite")
    vertices_mm, albedo, sh = vertices_mm.detach().float().cpu(), albedo.detach().float().cpu(), sh.detach().float().cpu()
    camera = camera.to("cpu", torch.float32)
    R = int(c.map_px)
    window, mirror_u, act, gu, gv, L, mirror = _layout(model, R)
    with torch.no_grad():
        px, to_view = _gather_pixels(model, vertices_mm, albedo, sh, camera, photo, c)
    N = len(px.target)
    xy = window.grid_xy(px.uv, R)
    P = _bilinear_matrix(xy, R)
    PGu, PGv = (P @ gu).tocsr(), (P @ gv).tocsr()
    seen_flat = np.asarray(P.sum(0)).ravel() > 1e-6
    na = len(act)
    pos = np.full(R * R, -1, np.int64)
    pos[act] = np.arange(na)
    unseen = act[~seen_flat[act]]
    partner = pos[mirror[unseen]] if len(unseen) else np.zeros(0, np.int64)
    ok = (mirror[unseen] >= 0) & (partner >= 0) if len(unseen) else np.zeros(0, bool)
    rows = np.arange(int(ok.sum()))
    S = sp.csr_matrix((np.r_[np.ones(len(rows)), -np.ones(len(rows))],
                       (np.r_[rows, rows], np.r_[pos[unseen[ok]], partner[ok]])), shape=(len(rows), na))
    prior_D = (c.w_smooth * (L.T @ L) + c.w_magnitude * sp.identity(na) + c.w_symmetry * (S.T @ S)) / na
    # Gain field on a coarse grid over the same window.
    K = int(c.gain_cells)
    if K > 0:
        Q = _bilinear_matrix(window.grid_xy(px.uv, K), K)
        Lg = _laplacian(K)
        prior_G = (c.w_gain * sp.identity(K * K) + c.w_gain_smooth * (Lg.T @ Lg)) / (K * K)
    else:
        Q, prior_G = sp.csr_matrix((N, 0)), sp.csr_matrix((0, 0))
    ng = Q.shape[1]
    B = _block_mean(R, c.lowpass_px, act) * np.sqrt(c.w_lowpass * c.lowpass_px ** 2 / na)
    lowpass_diag = np.r_[np.asarray(B.multiply(B).sum(0)).ravel(), np.zeros(ng)]

    def lowpass_term(v: np.ndarray) -> np.ndarray:
        out = np.zeros_like(v)
        out[:na] = B.T @ (B @ v[:na])
        return out

    D = np.zeros(na)
    G = np.zeros(ng)
    target = px.target.double().numpy()
    stats: dict[str, float] = {"pixels": N, "texels": na}
    for it in range(max(1, c.iterations)):
        g = np.stack([PGu @ D, PGv @ D], 1)
        s_t, jac_t = _shading_and_jacobian(px, torch.from_numpy(g).float(), sh, to_view)
        s, jac = s_t.double().numpy(), jac_t.double().numpy()
        gain = 1.0 + (Q @ G if ng else 0.0)
        r = target - gain * s
        w = 1.0 / np.maximum(1.0, np.abs(r) / c.robust_scale) / N  # Huber weights, per-pixel mean
        A_D = sp.diags(gain * jac[:, 0]) @ PGu + sp.diags(gain * jac[:, 1]) @ PGv
        A = sp.hstack([A_D, sp.diags(s) @ Q]).tocsr() if ng else A_D.tocsr()
        W = sp.diags(w)
        H = (A.T @ W @ A + sp.block_diag([prior_D, prior_G]) if ng else A.T @ W @ A + prior_D).tocsr()
        Hop = LinearOperator(H.shape, matvec=lambda v: H @ v + lowpass_term(v), dtype=np.float64)
        x0 = np.r_[D, G]
        prior_grad = (np.r_[prior_D @ D, prior_G @ G] if ng else prior_D @ D) + lowpass_term(x0)
        rhs = A.T @ (w * r) - prior_grad
        diag = H.diagonal() + lowpass_diag
        M = sp.diags(1.0 / np.where(diag > 0, diag, 1.0))
        step, _ = cg(Hop, rhs, M=M, maxiter=c.cg_iterations, rtol=c.cg_tolerance)
        x = x0 + step
        D = np.clip(x[:na], -c.max_mm, c.max_mm)
        G = x[na:]
        if it == 0:
            stats["photometric_rms_before"] = float(np.sqrt(np.mean(r * r)))
    g = np.stack([PGu @ D, PGv @ D], 1)
    s_t, _ = _shading_and_jacobian(px, torch.from_numpy(g).float(), sh, to_view)
    r = target - (1.0 + (Q @ G if ng else 0.0)) * s_t.double().numpy()
    stats["photometric_rms_after"] = float(np.sqrt(np.mean(r * r)))
    full = np.zeros(R * R)
    full[act] = D
    stats["max_abs_mm"] = float(np.abs(D).max()) if na else 0.0
    return DetailResult(full.reshape(R, R).astype(np.float32), window, mirror_u, seen_flat.reshape(R, R), stats,
                        time.perf_counter() - t0)


def vertex_uv(model) -> np.ndarray:
    """(V, 2) one UV per vertex: that of the first triangle corner using it (zero if none)."""
    tri = model.triangles.cpu().numpy().reshape(-1)
    corners = model.uv.reshape(-1, 2).double().cpu().numpy()
    vids, first = np.unique(tri, return_index=True)
    uv = np.zeros((model.n_vertices, 2))
    uv[vids] = corners[first]
    return uv


def vertex_displacement(model, atlas_mm: np.ndarray) -> np.ndarray:
    """(V,) the displacement (mm) of a (S, S) atlas map at each vertex's UV (its first corner's)."""
    S = atlas_mm.shape[0]
    uv = vertex_uv(model)
    P = _bilinear_matrix(np.stack([uv[:, 0] * S - 0.5, (1 - uv[:, 1]) * S - 0.5], 1), S)
    return P @ atlas_mm.astype(np.float64).ravel()


def displace_vertices(model, vertices_mm: Tensor, atlas_mm: np.ndarray) -> Tensor:
    """(V, 3) the vertices moved along their normals by the map (mm) sampled at their UVs."""
    from faceclip.render.shading import vertex_normals

    n = vertex_normals(vertices_mm[None].float(), model.triangles)[0]
    d = torch.from_numpy(vertex_displacement(model, atlas_mm)).to(vertices_mm.dtype)
    return vertices_mm + d[:, None] * n.to(vertices_mm.dtype)


def write_face_detail(out_dir, model, vertices_mm: Tensor, atlas_mm: np.ndarray, texture: np.ndarray | None,
                      formats: tuple[str, ...]) -> None:
    """A face's detail files in a result folder (``faceclip reconstruct --detail``, ``faceclip
    edit``): ``mesh_detail.obj`` / ``.glb`` in the chosen ``formats`` among obj and glb (the skin
    subdivided once; the OBJ uses the folder's ``mesh_texture.png`` when there is one), plus
    ``displacement.png`` and ``normal_map.png``; with neither obj nor glb, the two maps alone.

    Args:
        vertices_mm: (V, 3) the face's vertices; atlas_mm: (S, S) the map over the UV atlas.
    """
    from pathlib import Path

    from faceclip.io.detail import (
        DETAIL_FORMATS,
        DISPLACEMENT_FILE,
        NORMAL_MAP_FILE,
        export_detail_mesh,
        tangent_normal_map,
        write_displacement_png,
        write_normal_map_png,
    )

    out_dir = Path(out_dir)
    v, f, uv = vertices_mm.detach().cpu().numpy(), model.triangles.cpu().numpy(), model.uv.cpu().numpy()
    detail_formats = tuple(x for x in formats if x in DETAIL_FORMATS)
    if detail_formats:
        has_texture = (out_dir / "mesh_texture.png").is_file()
        export_detail_mesh(out_dir, v, f, uv, atlas_mm, texture=texture,
                           triangle_mask=skin_triangle_mask(model).cpu().numpy(), formats=detail_formats,
                           texture_file="mesh_texture.png" if has_texture else None, levels=1)
    else:  # --formats ply: the maps alone
        write_displacement_png(out_dir / DISPLACEMENT_FILE, atlas_mm)
        write_normal_map_png(out_dir / NORMAL_MAP_FILE, tangent_normal_map(v, f, uv, atlas_mm))
