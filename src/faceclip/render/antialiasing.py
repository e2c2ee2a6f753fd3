"""Analytic silhouette antialiasing (in the spirit of nvdiffrast's ``antialias`` op).

Plain z-buffer images are piecewise constant in the vertex positions at silhouettes, so a
mask or photometric loss cannot move an edge. This op looks at every pair of horizontally
or vertically adjacent pixels showing different triangles; when a *silhouette edge* of the
nearer triangle (a mesh boundary edge, or an edge whose neighbour faces the other way on
screen) crosses the segment between the two pixel centres at parameter ``t`` (0 at the
centre of the pixel inside the triangle; the edge is found by walking across the triangles
the segment passes through, since rim triangles of smooth meshes are often sub-pixel), the
pixels' colours are blended as if the pixel
were an area sampler: the outside pixel receives ``(t - 0.5) * (c_in - c_out)`` when
``t > 0.5``, else the inside pixel receives ``(0.5 - t) * (c_out - c_in)``. ``t`` is computed
from the projected edge vertices, so gradients flow to the geometry. Horizontal pairs handle
edges that are closer to vertical and vertical pairs the others, so each edge is counted
once. For a straight edge the blended coverage equals the exact area coverage of the pixel
and is continuous as the edge moves across pixel centres.

Work is sparse: candidate pairs are only those next to a pixel whose visible triangle has a
silhouette edge, or on the coverage boundary (a few per cent of the covered pixels), found
with boolean image ops; triangle orientations come from the rasterizer. The renderer finds
the pairs once (:func:`edge_pairs`, no gradients) and calls :func:`composite` with
per-fragment colours: background fill, fragment writes and blend in one pass (one fused
kernel on the compiled CPU backend), so no dense image enters the autograd graph besides the
result; :func:`antialias` is the same on a dense image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from faceclip.render import _numba_ops
from faceclip.render.backend import use_numba
from faceclip.render.rasterize import Fragments, scatter_image

__all__ = ["EdgeTopology", "EdgePairs", "edge_topology", "edge_pairs", "crossing_t", "antialias", "antialias_deltas",
           "composite"]


@dataclass(frozen=True)
class EdgeTopology:
    """Triangle adjacency: ``neighbor[f, k]`` is the triangle across edge (v_k, v_{k+1}) of f,
    or -1 on a mesh boundary. Shape (F, 3) long."""

    neighbor: Tensor


def edge_topology(triangles: Tensor) -> EdgeTopology:
    """Compute triangle adjacency (manifold edges; on a non-manifold edge one neighbour is kept).

    Args:
        triangles: (F, 3) long.
    """
    F = triangles.shape[0]
    a = triangles
    b = triangles.roll(-1, dims=1)
    lo, hi = torch.minimum(a, b).reshape(-1), torch.maximum(a, b).reshape(-1)
    key = lo * (int(triangles.max()) + 1) + hi
    skey, order = torch.sort(key, stable=True)
    same = skey[1:] == skey[:-1]
    left, right = order[:-1][same], order[1:][same]
    nb = torch.full((3 * F,), -1, dtype=torch.long, device=triangles.device)
    nb[left] = torch.div(right, 3, rounding_mode="floor")
    nb[right] = torch.div(left, 3, rounding_mode="floor")
    return EdgeTopology(neighbor=nb.view(F, 3))


def _orientation(fragments: Fragments, xy: Tensor, triangles: Tensor) -> Tensor:
    """(B*F,) sign of each triangle's doubled signed screen area (from the rasterizer if cached)."""
    orient = fragments._cache.get("orient") if hasattr(fragments, "_cache") else None
    B, F = xy.shape[0], triangles.shape[0]
    if orient is not None and orient.numel() == B * F:
        return orient
    with torch.no_grad():
        p = xy.detach()
        x0, y0 = p[:, triangles[:, 0], 0], p[:, triangles[:, 0], 1]
        x1, y1 = p[:, triangles[:, 1], 0], p[:, triangles[:, 1], 1]
        x2, y2 = p[:, triangles[:, 2], 0], p[:, triangles[:, 2], 1]
        return torch.sign((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)).reshape(-1)


def _is_silhouette(orient: Tensor, neighbor: Tensor, base_f: Tensor, f: Tensor, k: Tensor | None = None) -> Tensor:
    """Edge k (or all 3 edges) of face f in image b (``base_f = b * F``) is a silhouette edge:
    a mesh boundary, or the neighbour across it faces the other way on screen."""
    nb = neighbor.index_select(0, f)
    if k is not None:
        nb = nb.gather(1, k.unsqueeze(1)).squeeze(1)
        return (nb < 0) | (orient.index_select(0, base_f + nb.clamp(min=0)) != orient.index_select(0, base_f + f))
    o_nb = orient.index_select(0, (base_f.unsqueeze(1) + nb.clamp(min=0)).view(-1)).view(-1, 3)
    return (nb < 0) | (o_nb != orient.index_select(0, base_f + f).unsqueeze(1))


def _edge_values(v: Tensor, q_in: Tensor, q_out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Edge functions of the 3 edges (v_k -> v_{k+1}) of M triangles at two points.

    Args:
        v: (M, 3, 2) vertices; q_in, q_out: (M, 2).
    Returns:
        e_in, e_out: (M, 3) ``cross(v_{k+1} - v_k, q - v_k)``; ex, ey: (M, 3) edge vectors.
    """
    va, vb = v, v.roll(-1, dims=1)
    ex, ey = (vb - va).unbind(-1)
    e_in = ex * (q_in[:, 1:2] - va[..., 1]) - ey * (q_in[:, 0:1] - va[..., 0])
    e_out = ex * (q_out[:, 1:2] - va[..., 1]) - ey * (q_out[:, 0:1] - va[..., 0])
    return e_in, e_out, ex, ey


@torch.no_grad()
def _march_to_silhouette(
    xy_flat: Tensor, triangles: Tensor, neighbor: Tensor, orient: Tensor, face: Tensor,
    base_v: Tensor, base_f: Tensor, q_in: Tensor, q_out: Tensor, max_steps: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Follow the segment q_in -> q_out through the mesh until it leaves through a silhouette edge.

    Small triangles at the rim of a smooth surface often cover no pixel centre, so the
    silhouette edge is found by walking from the triangle seen at ``q_in`` across the edges
    the segment exits through (at most ``max_steps`` triangles).

    Returns:
        found: (M,) bool; face: (M,) final triangle; k: (M,) its silhouette edge index.
    """
    M = face.shape[0]
    found = torch.zeros(M, dtype=torch.bool, device=face.device)
    k_out = torch.zeros_like(face)
    cur = face.clone()
    idx = torch.arange(M, device=face.device)
    for _ in range(max_steps):
        if idx.numel() == 0:
            break
        f = cur[idx]
        v = xy_flat[(triangles[f] + base_v[idx].unsqueeze(1)).view(-1)].view(-1, 3, 2)
        e_in, e_out, ex, ey = _edge_values(v, q_in[idx], q_out[idx])
        area = ex[:, 0] * (-ey[:, 2]) - ey[:, 0] * (-ex[:, 2])  # cross(v1 - v0, v2 - v0)
        orient_f = torch.where(area >= 0, 1.0, -1.0).to(v.dtype).unsqueeze(1)
        s_in, s_out = e_in * orient_f, e_out * orient_f
        dec = s_out < s_in
        t = torch.where(dec, s_in / (s_in - s_out).clamp(min=1e-30), torch.full_like(s_in, 2.0))
        t_exit, k = t.min(1)
        leaves = t_exit <= 1.0
        is_sil = _is_silhouette(orient, neighbor, base_f[idx], f, k)
        hit = leaves & is_sil
        found[idx[hit]] = True
        k_out[idx[hit]] = k[hit]
        nxt = neighbor[f].gather(1, k[:, None]).squeeze(1)
        go_on = leaves & ~is_sil & (nxt >= 0)
        idx = idx[go_on]
        cur[idx] = nxt[go_on]
    return found, cur, k_out


@dataclass
class EdgePairs:
    """Pixel pairs straddling a silhouette edge (no gradients; the crossing itself is computed
    differentiably from the projected edge by :func:`crossing_t`). All (M,) long.

    Attributes:
        p_in, p_out: flat pixel ``b*H*W + i*W + j`` of the inside (nearer) and outside pixel.
        i_in, i_out: their fragment index (-1: background).
        ka, kb: flat vertex ids ``b*V + v`` of the silhouette edge's end points.
    """

    p_in: Tensor
    p_out: Tensor
    i_in: Tensor
    i_out: Tensor
    ka: Tensor
    kb: Tensor

    def astuple(self) -> tuple[Tensor, ...]:
        return self.p_in, self.p_out, self.i_in, self.i_out, self.ka, self.kb


def _pairs(fragments: Fragments, S: Tensor, M: Tensor, horizontal: bool) -> Tensor:
    """(P,) flat index of the first pixel of candidate pairs in one direction."""
    if horizontal:
        c = (S[:, :, :-1] | S[:, :, 1:]) | (M[:, :, :-1] ^ M[:, :, 1:])
    else:
        c = (S[:, :-1, :] | S[:, 1:, :]) | (M[:, :-1, :] ^ M[:, 1:, :])
    b, i, j = c.nonzero().unbind(1)
    H, W = fragments.image_size
    return (b * H + i) * W + j


def _segments(fragments: Fragments) -> Tensor | None:
    """(B+1,) fragment offsets per image (None when the fragments are not sorted by image)."""
    seg = fragments._cache.get("seg")
    if seg is None or seg.shape[0] != fragments.batch_size + 1:
        b = fragments.batch_index
        if not bool((b[1:] >= b[:-1]).all()):
            return None
        seg = torch.searchsorted(b, torch.arange(fragments.batch_size + 1, dtype=b.dtype, device=b.device))
        fragments._cache["seg"] = seg
    return seg


@torch.no_grad()
def edge_pairs(
    fragments: Fragments, xy: Tensor, triangles: Tensor, neighbor: Tensor, max_steps: int = 16,
) -> EdgePairs | None:
    """Adjacent pixel pairs whose nearer triangle's silhouette edge passes between them.

    Args:
        fragments: the rasterization; xy: (B, V, 2) projected vertices; triangles: (F, 3) long;
        neighbor: (F, 3) :class:`EdgeTopology` adjacency; max_steps: see :func:`antialias`.
    Returns:
        :class:`EdgePairs`, or None when there are none.
    """
    B, H, W = fragments.batch_size, *fragments.image_size
    F, V = triangles.shape[0], xy.shape[1]
    dev = xy.device
    if use_numba(xy) and fragments.pix.shape[0] > 0:
        seg = _segments(fragments)
        if seg is not None:  # fragments sorted by image, as rasterized
            orient = _orientation(fragments, xy, triangles)
            res = _numba_ops.edge_pairs(fragments.pix, fragments.face, fragments.depth, seg, B, (H, W),
                                        xy, triangles, neighbor, orient, max_steps)
            return None if res is None else EdgePairs(*res)
    orient = _orientation(fragments, xy, triangles).to(dev)
    face, depth = fragments.face, fragments.depth.detach()
    bF = fragments.batch_index * F
    sil_frag = _is_silhouette(orient, neighbor, bF, face).any(1)  # (N,)
    S = torch.zeros(B * H * W, dtype=torch.bool, device=dev)
    S[fragments.pix] = sil_frag
    S = S.view(B, H, W)
    Mk = fragments.mask
    p2f = fragments.pix_to_fragment()
    pas, pbs = [], []
    for horizontal in (True, False):
        pa = _pairs(fragments, S, Mk, horizontal)
        pas.append(pa)
        pbs.append(pa + (1 if horizontal else W))
    pa, pb = torch.cat(pas), torch.cat(pbs)
    if pa.numel() == 0:
        return None
    horiz = torch.zeros(pa.shape[0], dtype=torch.bool, device=dev)
    horiz[:pas[0].shape[0]] = True
    ia, ib = p2f[pa], p2f[pb]
    fa = torch.where(ia >= 0, face[ia.clamp(min=0)], -1)
    fb = torch.where(ib >= 0, face[ib.clamp(min=0)], -1)
    inf = torch.tensor(float("inf"), dtype=depth.dtype, device=dev)
    da = torch.where(ia >= 0, depth[ia.clamp(min=0)], inf)
    db = torch.where(ib >= 0, depth[ib.clamp(min=0)], inf)
    # the nearer triangle (background counts as infinitely far)
    a_front = (fb < 0) | ((fa >= 0) & (da <= db))
    i_in, i_out = torch.where(a_front, ia, ib), torch.where(a_front, ib, ia)
    p_in, p_out = torch.where(a_front, pa, pb), torch.where(a_front, pb, pa)
    cand = ((fa != fb) & (sil_frag[i_in.clamp(min=0)] | (i_out < 0))).nonzero().squeeze(1)
    if cand.numel() == 0:
        return None
    p_in, p_out, i_in, i_out, horiz = p_in[cand], p_out[cand], i_in[cand], i_out[cand], horiz[cand]
    f_in = face[i_in]
    bi = torch.div(p_in, H * W, rounding_mode="floor")
    q_in, q_out = _pixel_centres(p_in, H, W, xy.dtype), _pixel_centres(p_out, H, W, xy.dtype)
    xy_flat = xy.detach().reshape(B * V, 2)
    found, f_sil, k = _march_to_silhouette(xy_flat, triangles, neighbor, orient, f_in,
                                           bi * V, bi * F, q_in, q_out, max_steps)
    vid = triangles[f_sil] + (bi * V).unsqueeze(1)
    ka, kb = vid.gather(1, k[:, None]).squeeze(1), vid.gather(1, ((k + 1) % 3)[:, None]).squeeze(1)
    ed = (xy_flat[kb] - xy_flat[ka]).abs()
    # horizontal pairs handle steep edges, vertical pairs the others
    steep = torch.where(horiz, ed[:, 1] >= ed[:, 0], ed[:, 1] < ed[:, 0])
    keep = (found & steep).nonzero().squeeze(1)
    if keep.numel() == 0:
        return None
    return EdgePairs(p_in[keep], p_out[keep], i_in[keep], i_out[keep], ka[keep], kb[keep])


def _pixel_centres(p: Tensor, H: int, W: int, dtype: torch.dtype) -> Tensor:
    """(M, 2) centre (x, y) of flat pixels p."""
    rem = p % (H * W)
    return torch.stack([(rem % W).to(dtype) + 0.5, torch.div(rem, W, rounding_mode="floor").to(dtype) + 0.5], 1)


def crossing_t(xy: Tensor, pairs: EdgePairs, image_size: tuple[int, int]) -> Tensor:
    """(M,) where each pair's edge crosses the segment between the two pixel centres
    (0 at the inside centre, clamped to [0, 1]); differentiable wrt ``xy`` (B, V, 2)."""
    H, W = image_size
    q_in = _pixel_centres(pairs.p_in, H, W, xy.dtype)
    q_out = _pixel_centres(pairs.p_out, H, W, xy.dtype)
    xyf = xy.reshape(-1, 2)
    a, b = xyf[pairs.ka], xyf[pairs.kb]  # differentiable edge end points
    ex, ey = (b - a).unbind(-1)
    e_in = ex * (q_in[:, 1] - a[:, 1]) - ey * (q_in[:, 0] - a[:, 0])
    e_out = ex * (q_out[:, 1] - a[:, 1]) - ey * (q_out[:, 0] - a[:, 0])
    return (e_in / (e_in - e_out)).clamp(0.0, 1.0)


def _blend(pairs: EdgePairs, t: Tensor, c_in: Tensor, c_out: Tensor) -> tuple[Tensor, Tensor]:
    """(target pixel (M,), colour delta (M, C)) of the area-sampling blend."""
    outward = (t > 0.5).detach()
    target = torch.where(outward, pairs.p_out, pairs.p_in)
    weight = torch.where(outward, t - 0.5, 0.5 - t).unsqueeze(1)
    delta = torch.where(outward.unsqueeze(1), c_in - c_out, c_out - c_in) * weight
    return target, delta


def _deltas(values: Tensor, background: Tensor, pairs: EdgePairs, xy: Tensor,
            image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    c_in = values.index_select(0, pairs.i_in)
    c_out = torch.where((pairs.i_out >= 0).unsqueeze(1), values.index_select(0, pairs.i_out.clamp(min=0)), background)
    return _blend(pairs, crossing_t(xy, pairs, image_size), c_in, c_out)


def antialias_deltas(
    values: Tensor, background: Tensor, fragments: Fragments, xy: Tensor, triangles: Tensor,
    topology: EdgeTopology | None = None, max_steps: int = 16,
) -> tuple[Tensor, Tensor]:
    """Sparse form of :func:`antialias`: the blend as additive per-pixel deltas.

    Args:
        values: (N, C) per-fragment colours; background: (C,) colour of uncovered pixels.
        fragments, xy, triangles, topology, max_steps: as for :func:`antialias`.
    Returns:
        target: (M,) flat pixel indices (may repeat); delta: (M, C) to add there (differentiable
        wrt values, background and xy). The antialiased image is
        ``scatter_image(values, background, fragments.pix, P, delta, target)``.
    """
    if topology is None:
        topology = edge_topology(triangles)
    pairs = edge_pairs(fragments, xy, triangles, topology.neighbor.to(xy.device), max_steps)
    if pairs is None:
        return fragments.pix.new_zeros(0), values.new_zeros(0, values.shape[1])
    return _deltas(values, background, pairs, xy, fragments.image_size)


def composite(values: Tensor, background: Tensor, fragments: Fragments, xy: Tensor,
              pairs: EdgePairs | None) -> Tensor:
    """Dense image of per-fragment values over a background, antialiased along ``pairs``.

    Args:
        values: (N, C); background: (C,) or scalar; xy: (B, V, 2) projected vertices;
        pairs: from :func:`edge_pairs` (None: no antialiasing).
    Returns:
        (B, H, W, C) contiguous, differentiable wrt values, background and (via the pairs) xy.
        On CPU with the compiled backend one fused kernel; otherwise a scatter plus deltas.
    """
    B, (H, W) = fragments.batch_size, fragments.image_size
    C = values.shape[1]
    if use_numba(values, xy) and values.dtype == xy.dtype:
        seg = _segments(fragments)
        if seg is not None:
            raw = None if pairs is None else pairs.astuple()
            out = _numba_ops.Composite.apply(values, background, xy, fragments.pix, seg, raw, (H, W))
            return out.view(B, H, W, C)
    bg = background.expand(C) if background.ndim == 0 else background
    delta = target = None
    if pairs is not None:
        target, delta = _deltas(values, bg, pairs, xy, (H, W))
    return scatter_image(values, bg, fragments.pix, fragments.num_pixels, delta, target).view(B, H, W, C)


def antialias(
    image: Tensor, fragments: Fragments, xy: Tensor, triangles: Tensor,
    topology: EdgeTopology | None = None, max_steps: int = 16,
) -> Tensor:
    """Blend colours across silhouette edges so that edges receive gradients.

    Args:
        image: (B, H, W, C) rendered image (already composited over the background).
        fragments: the rasterization that produced it.
        xy: (B, V, 2) projected vertices used for rasterization (differentiable).
        triangles: (F, 3) long.
        topology: precomputed :func:`edge_topology` of ``triangles`` (computed if None).
        max_steps: how many triangles to walk through to find the silhouette edge between
            two pixel centres (tessellated smooth surfaces have sub-pixel rim triangles).
    Returns:
        (B, H, W, C) antialiased image.
    """
    if topology is None:
        topology = edge_topology(triangles)
    B, H, W, C = image.shape
    out = image.reshape(B * H * W, C)
    pairs = edge_pairs(fragments, xy, triangles.to(xy.device, torch.long), topology.neighbor.to(xy.device), max_steps)
    if pairs is None:
        return image
    t = crossing_t(xy, pairs, (H, W))
    target, delta = _blend(pairs, t, out.index_select(0, pairs.p_in), out.index_select(0, pairs.p_out))
    return out.index_add(0, target, delta).view(B, H, W, C)
