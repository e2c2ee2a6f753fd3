"""Z-buffer triangle rasterization in pure PyTorch (CPU and CUDA, same code).

Two passes:

1. **Visibility** (no autograd): every triangle is binned by the pixel centres inside its
   bounding box. Over its bounding box the three screen barycentrics and the inverse depth
   of a triangle are affine functions of the pixel (row, column), so each is evaluated as a
   per-triangle constant plus a row term plus a column term (one broadcast add per value);
   inside candidates pack their inverse depth with the triangle id into one int64 key and
   ``scatter_reduce(amax)`` keeps the nearest triangle per pixel. Triangles are grouped by
   bounding-box size class and processed in chunks, so memory is proportional to the
   covered pixels, never pixels x triangles.
2. **Barycentrics** (differentiable): for the winning (pixel, triangle) pairs only, the
   perspective-correct barycentrics and depth are recomputed from the vertex positions by a
   :class:`torch.autograd.Function` with a closed-form backward (see
   :class:`_PerspectiveBarycentrics`), so gradients flow to the projected vertices (and
   through them to the mesh and camera) without a per-op autograd graph.

Most face triangles cover about one pixel, so the candidate count is close to the number
of covered pixels and both passes are a few dozen vectorised ops over that many elements.
Vertex data are gathered as 1-D arrays (structure of arrays): 1-D ``index_select`` and
``index_add`` are several times faster on CPU than their row-wise 2-D counterparts.

Pixel convention: pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``; a pixel is
covered when its centre lies inside a triangle (edges inclusive).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from faceclip.render import _numba_ops
from faceclip.render.backend import use_numba

if TYPE_CHECKING:
    from faceclip.render.camera import PerspectiveCamera

__all__ = ["Fragments", "rasterize", "rasterize_mesh", "visible_triangles", "fragment_barycentrics",
           "DEFAULT_ZNEAR_MM"]

DEFAULT_ZNEAR_MM = 1.0
_INSIDE_EPS = 1e-6  # tolerance on barycentrics: shared edges never leave holes
_CHUNK = 1 << 18  # candidate pairs evaluated at once (bounds temporary memory, fits caches)


@dataclass
class Fragments:
    """Result of rasterization, stored sparsely over covered pixels.

    Attributes:
        pix: (N,) long flat index ``b * H * W + i * W + j`` of each covered pixel (ascending).
        face: (N,) long triangle index in ``[0, F)`` visible at that pixel.
        bary: (N, 3) perspective-correct barycentrics (differentiable, rows sum to 1).
        depth: (N,) camera depth in mm at the pixel centre (differentiable).
        batch_size, image_size: B and (H, W).
    The dense views (``pix_to_face``, ``mask``, ``bary_image``, ``depth_image``) are built on
    demand.
    """

    pix: Tensor
    face: Tensor
    bary: Tensor
    depth: Tensor
    batch_size: int
    image_size: tuple[int, int]
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_pixels(self) -> int:
        return self.batch_size * self.image_size[0] * self.image_size[1]

    @property
    def batch_index(self) -> Tensor:
        """(N,) batch index of each covered pixel."""
        if "batch" not in self._cache:
            self._cache["batch"] = torch.div(self.pix, self.image_size[0] * self.image_size[1],
                                             rounding_mode="floor")
        return self._cache["batch"]

    def pixel_rows_cols(self) -> tuple[Tensor, Tensor]:
        """(N,) row ``i`` and column ``j`` of each covered pixel."""
        if "ij" not in self._cache:
            H, W = self.image_size
            rem = self.pix - self.batch_index * (H * W)
            i = torch.div(rem, W, rounding_mode="floor")
            self._cache["ij"] = (i, rem - i * W)
        return self._cache["ij"]

    def corner_vertices(self, triangles: Tensor, num_vertices: int) -> Tensor:
        """(3, N) long flat vertex index ``b * V + v`` of each fragment's triangle corners.

        Cached per ``triangles`` object (the rasterized mesh's triangles).
        """
        hit = self._cache.get("vid")
        if hit is not None and hit[0] is triangles and hit[1] == num_vertices:
            return hit[2]
        tri = triangles.to(device=self.face.device, dtype=torch.long)
        vid = tri.t().index_select(1, self.face)  # (3, N)
        if self.batch_size > 1:
            vid = vid + (self.batch_index * num_vertices).unsqueeze(0)
        vid = vid.contiguous()
        self._cache["vid"] = (triangles, num_vertices, vid)
        return vid

    def pix_to_fragment(self) -> Tensor:
        """(B*H*W,) long index into the fragments of each pixel, -1 where nothing is rendered."""
        if "p2frag" not in self._cache:
            out = torch.full((self.num_pixels,), -1, dtype=torch.long, device=self.pix.device)
            out.index_copy_(0, self.pix, torch.arange(self.pix.shape[0], device=self.pix.device))
            self._cache["p2frag"] = out
        return self._cache["p2frag"]

    def to_image(self, values: Tensor, background: float | Tensor = 0.0) -> Tensor:
        """Scatter per-fragment values into a dense image (differentiable wrt ``values``).

        Args:
            values: (N, C) or (N,) per covered pixel.
            background: scalar or (C,) value of uncovered pixels.
        Returns:
            (B, H, W, C) or (B, H, W).
        """
        h, w = self.image_size
        squeeze = values.ndim == 1
        vals = values.unsqueeze(-1) if squeeze else values
        bg = torch.as_tensor(background, dtype=vals.dtype, device=vals.device)
        out = scatter_image(vals, bg, self.pix, self.num_pixels)
        out = out.view(self.batch_size, h, w, vals.shape[-1])
        return out.squeeze(-1) if squeeze else out

    @property
    def pix_to_face(self) -> Tensor:
        """(B, H, W) long triangle index, -1 where nothing is rendered."""
        if "p2f" not in self._cache:
            out = torch.full((self.num_pixels,), -1, dtype=torch.long, device=self.pix.device)
            out.index_copy_(0, self.pix, self.face)
            self._cache["p2f"] = out.view(self.batch_size, *self.image_size)
        return self._cache["p2f"]

    @property
    def mask(self) -> Tensor:
        """(B, H, W) bool coverage."""
        if "mask" not in self._cache:
            out = torch.zeros(self.num_pixels, dtype=torch.bool, device=self.pix.device)
            out[self.pix] = True
            self._cache["mask"] = out.view(self.batch_size, *self.image_size)
        return self._cache["mask"]

    @property
    def bary_image(self) -> Tensor:
        """(B, H, W, 3) barycentrics, zero on the background (differentiable)."""
        return self.to_image(self.bary, 0.0)

    @property
    def depth_image(self) -> Tensor:
        """(B, H, W) depth in mm, 0 on the background (differentiable)."""
        return self.to_image(self.depth, 0.0)


class _ScatterImage(torch.autograd.Function):
    """Dense (P, C) image: ``background`` everywhere, ``values`` at rows ``pix``, plus optional
    ``delta`` rows added at ``delta_pix``. Backward gathers (no dense temporaries besides the
    incoming gradient)."""

    @staticmethod
    def forward(ctx, values: Tensor, background: Tensor, pix: Tensor, num_pixels: int,
                delta: Tensor | None, delta_pix: Tensor | None) -> Tensor:
        C = values.shape[-1]
        out = torch.empty(num_pixels, C, dtype=values.dtype, device=values.device)
        out.copy_(background.expand(num_pixels, C))
        out.index_copy_(0, pix, values)
        if delta is not None:
            out.index_add_(0, delta_pix, delta)
        ctx.save_for_backward(pix, delta_pix)
        ctx.bg_shape = background.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        pix, delta_pix = ctx.saved_tensors
        g_values = grad.index_select(0, pix) if ctx.needs_input_grad[0] else None
        g_bg = None
        if ctx.needs_input_grad[1]:
            g_bg = grad.sum(0) - (g_values if g_values is not None else grad.index_select(0, pix)).sum(0)
            g_bg = g_bg.sum() if len(ctx.bg_shape) == 0 else g_bg.reshape(ctx.bg_shape)
        g_delta = grad.index_select(0, delta_pix) if ctx.needs_input_grad[4] else None
        return g_values, g_bg, None, None, g_delta, None


def scatter_image(values: Tensor, background: Tensor, pix: Tensor, num_pixels: int,
                  delta: Tensor | None = None, delta_pix: Tensor | None = None) -> Tensor:
    """(P, C) dense image from (N, C) ``values`` at flat pixels ``pix`` over ``background``
    (scalar or (C,)), plus ``delta`` (M, C) added at ``delta_pix`` (M,). Differentiable wrt
    values, background and delta."""
    if delta is not None and delta.shape[0] == 0:
        delta = delta_pix = None
    return _ScatterImage.apply(values, background, pix, num_pixels, delta, delta_pix)


# ----------------------------------------------------------------------------- visibility

# Bounding-box sizes (in pixel centres) are rounded up to one of these; each size class is
# evaluated as a dense (triangles, kh, kw) block with broadcasting, no per-pair gathers.
_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
            1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)
_BUCKET_LUT: dict[tuple[int, str], Tensor] = {}


def _bucket_of(n: Tensor, limit: int) -> Tensor:
    """Bucket index of sizes ``n`` (1..limit) through a cached lookup table."""
    key = (limit, str(n.device))
    lut = _BUCKET_LUT.get(key)
    if lut is None:
        sizes = torch.arange(limit + 1)
        lut = torch.searchsorted(torch.tensor(_BUCKETS), sizes).to(n.device)
        _BUCKET_LUT[key] = lut
    return lut.index_select(0, n)


@dataclass
class _Bins:
    """Triangles that may cover a pixel centre, sorted by bounding-box size class.

    ``coef`` (T, 12) per triangle, the affine functions of the pixel offset (fi, fj) from the
    bbox's first pixel centre: constants, column steps and row steps of (l0, l1, l2, 1/z)
    (screen barycentrics and inverse depth). ``base`` (T,) flat pixel index of the bbox's
    first pixel, ``face`` (T,) triangle id, ``h``, ``w`` (T,) bbox size. ``classes`` lists
    (kh, kw, start, stop) slices of one size class. ``orient`` (B*F,) sign of every triangle's
    doubled signed area on screen (0 for degenerate ones), for silhouette detection.
    """

    coef: Tensor
    base: Tensor
    face: Tensor
    h: Tensor
    w: Tensor
    classes: list[tuple[int, int, int, int]]
    orient: Tensor


def _bin_triangles(
    xy: Tensor, z: Tensor, triangles: Tensor, height: int, width: int,
    cull_backfaces: bool, znear: float,
) -> _Bins:
    """Cull triangles and compute their bounding boxes and affine plane equations.

    Args:
        xy: (B, V, 2) pixel coordinates; z: (B, V) depths (detached, float32).
        triangles: (F, 3) long.
    """
    B, V = z.shape
    F = triangles.shape[0]
    dev = xy.device
    xs, ys = xy[..., 0].reshape(-1), xy[..., 1].reshape(-1)
    corner = triangles.t().contiguous()
    if B > 1:
        corner = (corner.unsqueeze(1) + (torch.arange(B, device=dev) * V).view(1, B, 1)).view(3, B * F)
    corner = corner.contiguous()
    x0, x1, x2 = (xs.index_select(0, corner[k]) for k in range(3))
    y0, y1, y2 = (ys.index_select(0, corner[k]) for k in range(3))
    e1x, e1y, e2x, e2y = x1 - x0, y1 - y0, x2 - x0, y2 - y0
    area2 = e1x * e2y - e1y * e2x  # < 0 for front faces (counter-clockwise in model space)
    orient = torch.sign(area2)
    j0 = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2) - 0.5).clamp_(min=0)
    j1 = torch.floor(torch.maximum(torch.maximum(x0, x1), x2) - 0.5).clamp_(max=width - 1)
    i0 = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2) - 0.5).clamp_(min=0)
    i1 = torch.floor(torch.maximum(torch.maximum(y0, y1), y2) - 0.5).clamp_(max=height - 1)
    keep = (orient < 0) if cull_backfaces else (orient != 0)
    keep &= (j1 >= j0) & (i1 >= i0)
    sel = keep.nonzero().squeeze(1)
    if sel.numel() == 0:
        empty = torch.zeros(0, device=dev, dtype=torch.long)
        return _Bins(coef=xy.new_zeros(0, 12), base=empty, face=empty, h=empty, w=empty, classes=[],
                     orient=orient)

    def take(v: Tensor) -> Tensor:
        return v.index_select(0, sel)

    fi0, fj0 = take(i0), take(j0)
    h = (take(i1) - fi0).long() + 1
    w = (take(j1) - fj0).long() + 1
    nb = len(_BUCKETS)
    cls = _bucket_of(h, max(height, width)) * nb + _bucket_of(w, max(height, width))
    counts = torch.bincount(cls, minlength=nb * nb)
    present = counts.nonzero().squeeze(1)
    if present.numel() > 1:  # group the triangles by size class
        order = torch.sort(cls.to(torch.int32), stable=True)[1]
        sel, fi0, fj0, h, w = sel[order], fi0[order], fj0[order], h[order], w[order]
    zf = z.reshape(-1)
    z0, z1, z2 = (zf.index_select(0, corner[k].index_select(0, sel)) for k in range(3))
    ok = (torch.minimum(torch.minimum(z0, z1), z2) > znear) & torch.isfinite(z0 + z1 + z2)
    x0, y0 = take(x0), take(y0)
    ea, eb, ec, ed = take(e1x), take(e1y), take(e2x), take(e2y)
    inv_a = 1.0 / take(area2)
    # l1 = a1 dx + b1 dy, l2 = a2 dx + b2 dy with (dx, dy) = pixel centre - vertex 0
    a1, b1, a2, b2 = ed * inv_a, -ec * inv_a, -eb * inv_a, ea * inv_a
    dx0, dy0 = fj0 + 0.5 - x0, fi0 + 0.5 - y0
    l1 = a1 * dx0 + b1 * dy0
    l2 = a2 * dx0 + b2 * dy0
    iz0 = 1.0 / z0
    d1, d2 = 1.0 / z1 - iz0, 1.0 / z2 - iz0
    iz = iz0 + l1 * d1 + l2 * d2
    if not bool(ok.all()):  # a vertex behind the near plane: never inside
        l1 = l1.masked_fill(~ok, -1e30)
        iz = iz.masked_fill(~ok, 0.0)
    coef = torch.stack([
        1.0 - l1 - l2, l1, l2, iz,  # values at the first pixel centre
        -(a1 + a2), a1, a2, a1 * d1 + a2 * d2,  # column steps
        -(b1 + b2), b1, b2, b1 * d1 + b2 * d2,  # row steps
    ], 1)
    b = torch.div(sel, F, rounding_mode="floor") if B > 1 else torch.zeros_like(sel)
    face = sel - b * F
    base = (b * height + fi0.long()) * width + fj0.long()
    classes = []
    start = 0
    for c, n in zip(present.tolist(), counts.index_select(0, present).tolist()):
        classes.append((_BUCKETS[c // nb], _BUCKETS[c % nb], start, start + n))
        start += n
    return _Bins(coef=coef, base=base, face=face, h=h, w=w, classes=classes, orient=orient)


def _depth_test_block(bins: _Bins, kh: int, kw: int, s: int, e: int, width: int, zbuf: Tensor) -> None:
    """Depth-test triangles ``s:e`` (bbox at most kh x kw) against every pixel of their bbox.

    Writes ``max(key)`` into ``zbuf`` (B*H*W,) with
    ``key = float_bits(1/depth) << 32 | face`` (larger = nearer), so 0 means empty; outside
    candidates get a negative key.
    """
    dev = zbuf.device
    c = bins.coef[s:e]
    T = c.shape[0]
    fj = torch.arange(kw, device=dev, dtype=c.dtype)
    fi = torch.arange(kh, device=dev, dtype=c.dtype)
    col = c[:, 4:8].unsqueeze(2) * fj  # (T, 4, kw)
    row = c[:, 8:12].unsqueeze(2) * fi  # (T, 4, kh)
    col += c[:, 0:4].unsqueeze(2)
    if not (kh <= 4 and kw <= 4):  # buckets 1..4 are exact sizes: mask the block past the bbox
        col[:, 0].masked_fill_(fj >= bins.w[s:e].unsqueeze(1).to(c.dtype), -1e30)
        row[:, 0].masked_fill_(fi >= bins.h[s:e].unsqueeze(1).to(c.dtype), -1e30)
    # value at (fi, fj) = col[:, k, fj] + row[:, k, fi]
    vals = row.view(T, 4, kh, 1) + col.view(T, 4, 1, kw)  # (T, 4, kh, kw)
    lmin = torch.minimum(torch.minimum(vals[:, 0], vals[:, 1]), vals[:, 2])
    inv_z = vals[:, 3].masked_fill(lmin < -_INSIDE_EPS, -1.0)
    key = (inv_z.view(torch.int32).to(torch.int64) << 32) | bins.face[s:e].view(T, 1, 1)
    offs = (torch.arange(kh, device=dev) * width).view(kh, 1) + torch.arange(kw, device=dev)
    pix = bins.base[s:e].view(T, 1, 1) + offs
    if not (kh <= 4 and kw <= 4):  # positions past the bbox carry negative keys but need a valid index
        pix = pix.clamp_(max=zbuf.numel() - 1)
    zbuf.scatter_reduce_(0, pix.view(-1), key.view(-1), reduce="amax")


@torch.no_grad()
def _visibility(
    xy: Tensor, z: Tensor, triangles: Tensor, image_size: tuple[int, int],
    cull_backfaces: bool, znear: float, chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns pix, face of covered pixels (ascending flat index), their (b, i, j) (None from the
    compiled path), the (B*F,) triangle orientations, and a dict of extras the compiled path
    computes on the way (``vid`` (3, N) flat corner vertex ids, ``seg`` (B+1,) fragment offsets
    per image, ``used`` (B*V,) flags of the vertices of visible triangles)."""
    H, W = image_size
    B = xy.shape[0]
    if use_numba(xy, z):
        return _numba_ops.visibility(xy, z, triangles, (H, W), cull_backfaces, znear, _INSIDE_EPS)
    bins = _bin_triangles(xy.detach().float(), z.detach().float(), triangles, H, W, cull_backfaces, znear)
    zbuf = torch.zeros(B * H * W, dtype=torch.long, device=xy.device)
    for kh, kw, s, e in bins.classes:
        step = max(1, chunk_size // (kh * kw))
        for c in range(s, e, step):
            _depth_test_block(bins, kh, kw, c, min(c + step, e), W, zbuf)
    bij = zbuf.view(B, H, W).nonzero()
    b, i, j = bij.unbind(1)
    pix = (b * H + i) * W + j
    face = zbuf.index_select(0, pix) & 0xFFFFFFFF
    return pix, face, (b, i, j), bins.orient, {}


def visible_triangles(
    xy: Tensor, z: Tensor, triangles: Tensor, image_size: tuple[int, int],
    cull_backfaces: bool = False, znear: float = DEFAULT_ZNEAR_MM, chunk_size: int = _CHUNK,
) -> tuple[Tensor, Tensor]:
    """Z-buffer visibility: which triangle is nearest at each covered pixel centre.

    Args:
        xy: (B, V, 2) vertex pixel coordinates; z: (B, V) vertex depths (camera z).
        triangles: (F, 3) long.
        image_size: (H, W).
        cull_backfaces: drop back faces (clockwise on screen in the y-up sense).
        znear: triangles with a vertex at depth <= znear are dropped (no clipping).
        chunk_size: maximum number of (triangle, pixel) pairs tested at once.
    Returns:
        pix: (N,) ascending flat pixel indices ``b*H*W + i*W + j``; face: (N,) triangle ids.
    """
    triangles = triangles.to(device=xy.device, dtype=torch.long)
    pix, face, _, _, _ = _visibility(xy, z, triangles, image_size, cull_backfaces, znear, chunk_size)
    return pix, face


# ----------------------------------------------------------------------------- barycentrics


class _PerspectiveBarycentrics(torch.autograd.Function):
    """Perspective-correct barycentrics and depth of (pixel centre, triangle) pairs.

    Forward, per pair with screen vertices ``p_k``, depths ``z_k`` and pixel centre ``q``:
    screen barycentrics ``s`` (``q = sum s_k p_k``, ``sum s_k = 1``), ``w_k = s_k / z_k``,
    ``I = sum w_k``, ``bary_k = w_k / I``, ``depth = 1 / I``.

    Backward in closed form: with ``g_b``, ``g_d`` the incoming gradients,
    ``g_w_k = depth (g_b_k - <g_b, bary>) - g_d depth^2``; ``g_s_k = g_w_k / z_k``,
    ``g_z_k = -g_w_k w_k / z_k``. Differentiating ``q = sum s_k p_k`` gives
    ``[e1 e2] (ds_1, ds_2) = -sum_k s_k dp_k``, hence ``dL/dp_k = s_k u`` with
    ``u = -[e1 e2]^-T (g_s_1 - g_s_0, g_s_2 - g_s_0)``. Gradients are accumulated into flat
    (B*V,) arrays with 1-D ``index_add``.

    Inputs: xy (B, V, 2), z (B, V), vid (3, N) flat corner vertex ids, px, py (N,) pixel
    centres (xy's dtype). Outputs: bary (N, 3), depth (N,).
    """

    @staticmethod
    def forward(ctx, xy: Tensor, z: Tensor, vid: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, Tensor]:
        xs, ys, zs = xy[..., 0].reshape(-1), xy[..., 1].reshape(-1), z.reshape(-1)
        v0, v1, v2 = vid[0], vid[1], vid[2]
        x0, y0 = xs.index_select(0, v0), ys.index_select(0, v0)
        e1x, e1y = xs.index_select(0, v1) - x0, ys.index_select(0, v1) - y0
        e2x, e2y = xs.index_select(0, v2) - x0, ys.index_select(0, v2) - y0
        dx, dy = px - x0, py - y0
        inv_a = 1.0 / (e1x * e2y - e1y * e2x)
        s = torch.empty(3, px.shape[0], dtype=xy.dtype, device=xy.device)
        torch.mul(dx * e2y - dy * e2x, inv_a, out=s[1])
        torch.mul(e1x * dy - e1y * dx, inv_a, out=s[2])
        torch.sub(1.0 - s[1], s[2], out=s[0])
        iz = torch.stack([zs.index_select(0, v0), zs.index_select(0, v1), zs.index_select(0, v2)]).reciprocal_()
        wgt = s * iz  # (3, N)
        depth = wgt.sum(0).reciprocal_()
        bary = wgt.mul_(depth)  # (3, N)
        ctx.save_for_backward(vid, s, iz, bary, depth, e1x, e1y, e2x, e2y, inv_a)
        ctx.shapes = (xy.shape, z.shape)
        return bary.t(), depth

    @staticmethod
    def backward(ctx, g_bary: Tensor | None, g_depth: Tensor | None):
        vid, s, iz, bary, depth, e1x, e1y, e2x, e2y, inv_a = ctx.saved_tensors
        xy_shape, z_shape = ctx.shapes
        if g_bary is None:
            g_w = (-(depth * depth) * g_depth).expand(3, -1)
        else:
            gb = g_bary.t()
            g_w = (gb - (gb * bary).sum(0)) * depth
            if g_depth is not None:
                g_w = g_w - depth * depth * g_depth
        g_s = g_w * iz  # (3, N)
        vflat = vid.view(-1)
        g_xy = g_z = None
        if ctx.needs_input_grad[0]:
            h1, h2 = g_s[1] - g_s[0], g_s[2] - g_s[0]
            ux = (e1y * h2 - e2y * h1) * inv_a
            uy = (e2x * h1 - e1x * h2) * inv_a
            n = xy_shape[0] * xy_shape[1]
            gx = torch.zeros(n, dtype=s.dtype, device=s.device).index_add_(0, vflat, (s * ux).reshape(-1))
            gy = torch.zeros(n, dtype=s.dtype, device=s.device).index_add_(0, vflat, (s * uy).reshape(-1))
            g_xy = torch.stack([gx, gy], 1).view(xy_shape)
        if ctx.needs_input_grad[1]:
            gz = (g_w * bary).mul_(iz).mul_(depth.reciprocal()).neg_()  # -g_w * w / z, w = bary / depth
            g_z = torch.zeros(z_shape.numel(), dtype=s.dtype, device=s.device)
            g_z = g_z.index_add_(0, vflat, gz.reshape(-1)).view(z_shape)
        return g_xy, g_z, None, None, None


def _barycentrics(xy: Tensor, z: Tensor, vid: Tensor, pix: Tensor, image_size: tuple[int, int],
                  seg: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Barycentrics and depth of the fragments (pix, vid), see :func:`fragment_barycentrics`."""
    H, W = image_size
    if use_numba(xy, z):
        if seg is None:
            seg = _numba_ops.segments(torch.div(pix, H * W, rounding_mode="floor"), z.shape[0])
        return _numba_ops.PerspectiveBarycentrics.apply(xy, z, vid, pix, seg, (H, W))
    rem = pix % (H * W)
    i = torch.div(rem, W, rounding_mode="floor")
    j = rem - i * W
    px = j.to(xy.dtype) + 0.5
    py = i.to(xy.dtype) + 0.5
    return _PerspectiveBarycentrics.apply(xy, z, vid, px, py)


def fragment_barycentrics(
    xy: Tensor, z: Tensor, triangles: Tensor, pix: Tensor, face: Tensor, image_size: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Perspective-correct barycentrics and depth of given (pixel, triangle) pairs.

    Differentiable wrt ``xy`` and ``z`` (closed-form backward).

    Args:
        xy: (B, V, 2); z: (B, V); triangles: (F, 3); pix, face: (N,) from :func:`visible_triangles`.
    Returns:
        bary: (N, 3) perspective-correct barycentrics; depth: (N,) camera depth.
    """
    H, W = image_size
    V = z.shape[1]
    b = torch.div(pix, H * W, rounding_mode="floor")
    vid = triangles.to(device=xy.device, dtype=torch.long).t().index_select(1, face) + (b * V).unsqueeze(0)
    return _barycentrics(xy, z, vid.contiguous(), pix, (H, W))


def rasterize(
    xy: Tensor, z: Tensor, triangles: Tensor, image_size: tuple[int, int],
    cull_backfaces: bool = False, znear: float = DEFAULT_ZNEAR_MM, chunk_size: int = _CHUNK,
) -> Fragments:
    """Rasterize screen-space triangles.

    Args:
        xy: (B, V, 2) vertex pixel coordinates (x right, y down, pixel centres at +0.5).
        z: (B, V) vertex camera depths (positive in front of the camera).
        triangles: (F, 3) long vertex indices, shared by the batch.
        image_size: (H, W).
        cull_backfaces: drop back faces (triangles whose vertices appear clockwise in the
            image's y-up sense, i.e. counter-clockwise model triangles seen from behind).
        znear: near plane in the units of ``z``; triangles crossing it are dropped.
        chunk_size: maximum (triangle, pixel) candidate pairs tested at once.
    Returns:
        :class:`Fragments` with differentiable barycentrics and depth.
    """
    tri = triangles.to(device=xy.device, dtype=torch.long)
    H, W = int(image_size[0]), int(image_size[1])
    pix, face, bij, orient, extra = _visibility(xy, z, tri, (H, W), cull_backfaces, znear, chunk_size)
    B, V = z.shape
    vid = extra.get("vid")
    if vid is None:
        vid = tri.t().index_select(1, face)
        if B > 1:
            vid += (bij[0] * V).unsqueeze(0)
    bary, depth = _barycentrics(xy, z, vid, pix, (H, W), extra.get("seg"))
    frags = Fragments(pix=pix, face=face, bary=bary, depth=depth, batch_size=B, image_size=(H, W))
    frags._cache.update(vid=(triangles, V, vid), orient=orient)
    if bij is not None:
        frags._cache.update(batch=bij[0], ij=bij[1:])
    frags._cache.update({k: extra[k] for k in ("seg", "used") if k in extra})
    return frags


def rasterize_mesh(
    vertices_mm: Tensor, triangles: Tensor, camera: "PerspectiveCamera",
    cull_backfaces: bool = False, znear: float = DEFAULT_ZNEAR_MM,
) -> tuple[Fragments, Tensor, Tensor]:
    """Project a mesh with ``camera`` and rasterize it.

    Args:
        vertices_mm: (V, 3) or (B, V, 3) model-space vertices.
        triangles: (F, 3) long.
        camera: a :class:`~faceclip.render.camera.PerspectiveCamera` with B (or 1) cameras.
    Returns:
        fragments, xy (B, V, 2) projected vertices, z (B, V) their depths.
    """
    B = max(camera.batch_size, vertices_mm.shape[0] if vertices_mm.ndim == 3 else 1)
    cam = camera.expand(B)
    xy, z = cam.project_with_depth(vertices_mm)
    if xy.shape[0] != B:
        xy, z = xy.expand(B, -1, -1), z.expand(B, -1)
    return rasterize(xy, z, triangles, cam.image_size, cull_backfaces, znear), xy, z
