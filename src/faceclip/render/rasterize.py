"""Z-buffer triangle rasterization in pure PyTorch (CPU and CUDA, same code).

Two passes:

1. **Visibility** (no autograd): every triangle is binned by the pixel centres inside its
   bounding box; each (triangle, pixel) candidate pair is tested with edge functions in a
   triangle-local frame, its perspective depth is packed with its id into one int64 key and
   ``scatter_reduce(amin)`` keeps the nearest triangle per pixel. Candidates are processed in
   chunks, so memory is proportional to the covered pixels, never pixels x triangles.
2. **Barycentrics** (differentiable): for the winning (pixel, triangle) pairs only, the
   perspective-correct barycentrics and depth are recomputed from the vertex positions, so
   gradients flow to the projected vertices (and through them to the mesh and camera).

Most face triangles cover about one pixel, so the candidate count is close to the number
of covered pixels and both passes are a few dozen vectorised ops over that many elements.

Pixel convention: pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``; a pixel is
covered when its centre lies inside a triangle (edges inclusive).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from faceclip.render.camera import PerspectiveCamera

__all__ = ["Fragments", "rasterize", "rasterize_mesh", "DEFAULT_ZNEAR_MM"]

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
        out = bg.expand(self.num_pixels, vals.shape[-1]).clone()
        out = out.index_copy(0, self.pix, vals)
        out = out.view(self.batch_size, h, w, vals.shape[-1])
        return out.squeeze(-1) if squeeze else out

    @property
    def pix_to_face(self) -> Tensor:
        """(B, H, W) long triangle index, -1 where nothing is rendered."""
        if "p2f" not in self._cache:
            out = torch.full((self.num_pixels,), -1, dtype=torch.long, device=self.pix.device)
            out[self.pix] = self.face
            self._cache["p2f"] = out.view(self.batch_size, *self.image_size)
        return self._cache["p2f"]

    @property
    def mask(self) -> Tensor:
        """(B, H, W) bool coverage."""
        return self.pix_to_face >= 0

    @property
    def bary_image(self) -> Tensor:
        """(B, H, W, 3) barycentrics, zero on the background (differentiable)."""
        return self.to_image(self.bary, 0.0)

    @property
    def depth_image(self) -> Tensor:
        """(B, H, W) depth in mm, 0 on the background (differentiable)."""
        return self.to_image(self.depth, 0.0)


# ----------------------------------------------------------------------------- visibility

# Bounding-box sizes (in pixel centres) are rounded up to one of these; each size class is
# evaluated as a dense (triangles, kh, kw) block with broadcasting, no per-pair gathers.
_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
            1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)


@dataclass
class _Bins:
    """Triangles that may cover a pixel centre, sorted by bbox size class.

    All tensors (T,): ``gid`` flat id ``b * F + f``; ``row0`` = ``b * H + i0`` and ``j0`` the
    bbox's first pixel row/column; ``h``, ``w`` its size; ``dx0``, ``dy0`` the first pixel
    centre minus vertex 0; ``a1, b1, a2, b2`` barycentric gradients; ``iz0, d1, d2`` the
    inverse-depth plane. ``classes`` lists (kh, kw, indices) of each bbox size class.
    """

    gid: Tensor
    row0: Tensor
    j0: Tensor
    h: Tensor
    w: Tensor
    plane: Tensor  # (9, T): dx0, dy0, a1, b1, a2, b2, iz0, d1, d2
    classes: list[tuple[int, int, Tensor]]


def _bin_triangles(
    xy: Tensor, z: Tensor, triangles: Tensor, height: int, width: int,
    cull_backfaces: bool, znear: float,
) -> _Bins:
    """Cull triangles and compute their bounding boxes and plane equations.

    Args:
        xy: (B, V, 2) pixel coordinates; z: (B, V) depths (detached, float32).
        triangles: (F, 3) long.
    """
    B, F = xy.shape[0], triangles.shape[0]
    xs, ys = xy[..., 0].contiguous(), xy[..., 1].contiguous()
    t0, t1, t2 = triangles[:, 0].contiguous(), triangles[:, 1].contiguous(), triangles[:, 2].contiguous()
    x0, x1, x2 = xs.index_select(1, t0), xs.index_select(1, t1), xs.index_select(1, t2)
    y0, y1, y2 = ys.index_select(1, t0), ys.index_select(1, t1), ys.index_select(1, t2)
    e1x, e1y, e2x, e2y = x1 - x0, y1 - y0, x2 - x0, y2 - y0
    area2 = e1x * e2y - e1y * e2x  # < 0 for front faces (counter-clockwise in model space)
    j0 = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2) - 0.5).clamp_(min=0)
    j1 = torch.floor(torch.maximum(torch.maximum(x0, x1), x2) - 0.5).clamp_(max=width - 1)
    i0 = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2) - 0.5).clamp_(min=0)
    i1 = torch.floor(torch.maximum(torch.maximum(y0, y1), y2) - 0.5).clamp_(max=height - 1)
    keep = (area2 < 0) if cull_backfaces else (area2 != 0)
    keep &= (j1 >= j0) & (i1 >= i0)
    sel = keep.view(-1).nonzero().squeeze(1)
    b = torch.div(sel, F, rounding_mode="floor")
    vid = triangles.index_select(0, sel - b * F) + (b * z.shape[1]).unsqueeze(1)
    zsel = z.reshape(-1)[vid]  # (T, 3)
    ok = (zsel.amin(1) > znear) & torch.isfinite(zsel).all(1)
    if not bool(ok.all()):
        sel, zsel, b = sel[ok], zsel[ok], b[ok]

    def take(v: Tensor) -> Tensor:
        return v.view(-1).index_select(0, sel)

    h = (take(i1) - take(i0)).long() + 1
    w = (take(j1) - take(j0)).long() + 1
    buckets = torch.tensor(_BUCKETS, device=xy.device)
    nb = len(_BUCKETS)
    cls = torch.searchsorted(buckets, h) * nb + torch.searchsorted(buckets, w)
    inv_a = 1.0 / take(area2)
    ea, eb, ec, ed = take(e1x), take(e1y), take(e2x), take(e2y)
    fj0, fi0 = take(j0), take(i0)
    iz = 1.0 / zsel
    plane = torch.stack([
        fj0 + 0.5 - take(x0), fi0 + 0.5 - take(y0),
        ed * inv_a, -ec * inv_a, -eb * inv_a, ea * inv_a,
        iz[:, 0], iz[:, 1] - iz[:, 0], iz[:, 2] - iz[:, 0],
    ])
    row0 = b * height + fi0.long()
    classes = []
    for c in torch.bincount(cls, minlength=nb * nb).nonzero().squeeze(1).tolist():
        classes.append((_BUCKETS[c // nb], _BUCKETS[c % nb], (cls == c).nonzero().squeeze(1)))
    return _Bins(gid=sel, row0=row0, j0=fj0.long(), h=h, w=w, plane=plane, classes=classes)


def _depth_test_block(
    bins: _Bins, kh: int, kw: int, idx: Tensor, num_faces: int, width: int, zbuf: Tensor,
) -> None:
    """Depth-test triangles ``idx`` (bbox at most kh x kw) against every pixel of their bbox.

    Writes ``max(key)`` into ``zbuf`` (B*H*W,) with ``key = float_bits(1/depth) << 32 | face``
    (larger = nearer), so 0 means empty.
    """
    dev = zbuf.device
    P = bins.plane.index_select(1, idx)
    dx0, dy0, a1, b1, a2, b2, iz0, d1, d2 = (P[k].view(-1, 1, 1) for k in range(9))
    fj = torch.arange(kw, device=dev, dtype=P.dtype).view(1, 1, kw)
    fi = torch.arange(kh, device=dev, dtype=P.dtype).view(1, kh, 1)
    dx, dy = dx0 + fj, dy0 + fi
    l1 = a1 * dx + b1 * dy
    l2 = a2 * dx + b2 * dy
    inside = (l1 >= -_INSIDE_EPS) & (l2 >= -_INSIDE_EPS) & (l1 + l2 <= 1.0 + _INSIDE_EPS)
    exact = kh <= 4 and kw <= 4  # buckets 1..4 are exact sizes
    if not exact:  # the bbox may be smaller than the block
        ii = torch.arange(kh, device=dev).view(1, kh, 1)
        jj = torch.arange(kw, device=dev).view(1, 1, kw)
        inside &= (ii < bins.h[idx].view(-1, 1, 1)) & (jj < bins.w[idx].view(-1, 1, 1))
    inv_z = (iz0 + l1 * d1).add_(l2 * d2)
    gid = bins.gid[idx].view(-1, 1, 1)
    face = gid - torch.div(gid, num_faces, rounding_mode="floor") * num_faces
    key = (inv_z.view(torch.int32).long() << 32) | face
    key = torch.where(inside, key, 0)
    rows = (bins.row0[idx].view(-1, 1, 1) + torch.arange(kh, device=dev).view(1, kh, 1))
    cols = (bins.j0[idx].view(-1, 1, 1) + torch.arange(kw, device=dev).view(1, 1, kw))
    pix = rows * width + cols
    if not exact:  # positions past the bbox carry key 0 (no effect) but need a valid index
        pix = pix.clamp(max=zbuf.numel() - 1)
    zbuf.scatter_reduce_(0, pix.view(-1), key.view(-1), reduce="amax")


@torch.no_grad()
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
    H, W = image_size
    B, F = xy.shape[0], triangles.shape[0]
    bins = _bin_triangles(xy.detach().float(), z.detach().float(), triangles, H, W, cull_backfaces, znear)
    zbuf = torch.zeros(B * H * W, dtype=torch.long, device=xy.device)
    for kh, kw, idx in bins.classes:
        step = max(1, chunk_size // (kh * kw))
        for s in range(0, idx.numel(), step):
            _depth_test_block(bins, kh, kw, idx[s:s + step], F, W, zbuf)
    pix = zbuf.nonzero().squeeze(1)
    face = zbuf.index_select(0, pix) & 0xFFFFFFFF
    return pix, face


# ----------------------------------------------------------------------------- barycentrics


def fragment_barycentrics(
    xy: Tensor, z: Tensor, triangles: Tensor, pix: Tensor, face: Tensor, image_size: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Perspective-correct barycentrics and depth of given (pixel, triangle) pairs.

    Differentiable wrt ``xy`` and ``z``.

    Args:
        xy: (B, V, 2); z: (B, V); triangles: (F, 3); pix, face: (N,) from :func:`visible_triangles`.
    Returns:
        bary: (N, 3) perspective-correct barycentrics; depth: (N,) camera depth.
    """
    H, W = image_size
    B, V = z.shape
    b = torch.div(pix, H * W, rounding_mode="floor")
    rem = pix - b * (H * W)
    i = torch.div(rem, W, rounding_mode="floor")
    j = rem - i * W
    vid = triangles.index_select(0, face) + (b * V).unsqueeze(1)  # (N, 3)
    p = xy.reshape(B * V, 2).index_select(0, vid.view(-1)).view(-1, 3, 2)
    zz = z.reshape(B * V).index_select(0, vid.view(-1)).view(-1, 3)
    e1 = p[:, 1] - p[:, 0]
    e2 = p[:, 2] - p[:, 0]
    dx = (j.to(p.dtype) + 0.5) - p[:, 0, 0]
    dy = (i.to(p.dtype) + 0.5) - p[:, 0, 1]
    inv_area = 1.0 / (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    l1 = (dx * e2[:, 1] - dy * e2[:, 0]) * inv_area
    l2 = (e1[:, 0] * dy - e1[:, 1] * dx) * inv_area
    screen = torch.stack([1.0 - l1 - l2, l1, l2], dim=1)
    wgt = screen / zz
    inv_depth = wgt.sum(1)
    return wgt / inv_depth.unsqueeze(1), 1.0 / inv_depth


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
    triangles = triangles.to(device=xy.device, dtype=torch.long)
    pix, face = visible_triangles(xy, z, triangles, image_size, cull_backfaces, znear, chunk_size)
    bary, depth = fragment_barycentrics(xy, z, triangles, pix, face, image_size)
    return Fragments(pix=pix, face=face, bary=bary, depth=depth,
                     batch_size=xy.shape[0], image_size=(int(image_size[0]), int(image_size[1])))


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

