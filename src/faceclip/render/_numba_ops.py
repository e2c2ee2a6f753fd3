"""PyTorch wrappers (autograd Functions) around the Numba kernels of :mod:`._numba_kernels`.

Called by the public functions of :mod:`.rasterize`, :mod:`.interpolate` and :mod:`.shading`
when :func:`.backend.use_numba` says so; each mirrors the PyTorch computation it replaces
(same inputs, same outputs, same closed-form gradients).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from faceclip.render.backend import kernel_threads, kernels, launch

_NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default


def _np(t: Tensor) -> np.ndarray:
    """Contiguous NumPy view of a CPU tensor (detached)."""
    return t.detach().contiguous().numpy()


def _shape(shape) -> tuple[int, ...]:
    return tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else tuple(shape)


_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.int64: np.int64,
              torch.int32: np.int32, torch.uint8: np.uint8}


def _empty(*shape, dtype: torch.dtype) -> Tensor:
    """``torch.empty`` through NumPy's allocator: glibc reuses freed blocks for ``malloc``,
    while PyTorch's aligned allocations of large blocks are fresh mappings every time (a page
    fault per 4 KiB on first touch); and no OpenMP region for a fill."""
    return torch.from_numpy(np.empty(_shape(shape), _NP_DTYPES[dtype]))


def _zeros(*shape, dtype: torch.dtype) -> Tensor:
    """``torch.zeros`` through NumPy's allocator (see :func:`_empty`)."""
    return torch.from_numpy(np.zeros(_shape(shape), _NP_DTYPES[dtype]))


def segments(batch_index: Tensor, batch_size: int) -> Tensor:
    """(S+1,) offsets of runs of fragments that touch disjoint per-image vertex ranges.

    One run per image when ``batch_index`` is sorted (fragments of the rasterizer always are),
    else a single run (the backward kernels then accumulate serially).
    """
    n = batch_index.shape[0]
    if batch_size > 1 and n > 1 and bool((batch_index[1:] >= batch_index[:-1]).all()):
        return torch.searchsorted(batch_index, torch.arange(batch_size + 1, dtype=batch_index.dtype))
    return torch.tensor([0, n], dtype=torch.long)


class _Fanout(torch.autograd.Function):
    """Two aliases of one tensor whose gradients are summed in NumPy (single-threaded) instead
    of by autograd's accumulation, which is a parallel PyTorch op: on a busy machine every
    OpenMP region can wait milliseconds for a descheduled worker thread."""

    @staticmethod
    def forward(ctx, x: Tensor):
        ctx.set_materialize_grads(False)
        return x.view_as(x), x.view_as(x)

    @staticmethod
    def backward(ctx, g1: Tensor | None, g2: Tensor | None):
        if g1 is None or g2 is None:
            return g2 if g1 is None else g1
        out = _empty(g1.shape, dtype=torch.promote_types(g1.dtype, g2.dtype))
        np.add(_np(g1), _np(g2), out=out.numpy())
        return out


def fanout(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x, x)`` for two consumers, with a serial gradient sum (see :class:`_Fanout`)."""
    if not x.requires_grad or not torch.is_grad_enabled():
        return x, x
    return _Fanout.apply(x)


# ----------------------------------------------------------------------------- visibility


@torch.no_grad()
def visibility(xy: Tensor, z: Tensor, triangles: Tensor, image_size: tuple[int, int],
               cull_backfaces: bool, znear: float, inside_eps: float):
    """Numba twin of ``rasterize._visibility``: (pix, face, None, orient, extras) (image, row and
    column of the fragments are left to :class:`~faceclip.render.rasterize.Fragments`), with
    extras ``vid`` (3, N) flat corner vertex ids, ``seg`` (B+1,) fragment offsets per image and
    ``used`` (B*V,) uint8 flags of the vertices of visible triangles."""
    K = kernels()
    H, W = image_size
    B, V = z.shape
    F = triangles.shape[0]
    xyf = _np(xy.detach().float().reshape(-1, 2))
    zs = _np(z.detach().float().reshape(-1))
    tri = _np(triangles.long())
    threads = kernel_threads()
    nbands = 1 if (threads == 1 or B >= 2 * threads) else -(-2 * threads // B)
    nbands = min(nbands, H)
    zbuf = np.zeros(B * H * W, np.int64)
    orient = np.empty(B * F, np.float32)  # written for every triangle by band 0
    covered = np.zeros(B * nbands, np.int64)
    launch(K.visibility_zbuffer, B * nbands, xyf, zs, tri, B, V, H, W, bool(cull_backfaces), np.float32(znear),
           np.float32(inside_eps), nbands, zbuf, orient, covered)
    offsets = np.zeros(B + 1, np.int64)
    np.cumsum(covered.reshape(B, nbands).sum(1), out=offsets[1:])
    N = int(offsets[-1])
    pix, face = _empty(N, dtype=torch.long), _empty(N, dtype=torch.long)
    vid = _empty(3, N, dtype=torch.long)
    used = _zeros(B * V, dtype=torch.uint8)
    launch(K.compact_zbuffer, B, zbuf, tri, V, H * W, offsets, pix.numpy(), face.numpy(), vid.numpy(), used.numpy())
    return pix, face, None, torch.from_numpy(orient), {"vid": vid, "seg": torch.from_numpy(offsets), "used": used}


# ----------------------------------------------------------------------------- barycentrics


class PerspectiveBarycentrics(torch.autograd.Function):
    """Numba twin of ``rasterize._PerspectiveBarycentrics`` (same formulas).

    Inputs: xy (B, V, 2), z (B, V), vid (3, N) flat corner ids, pix (N,) flat pixels
    ``b*H*W + i*W + j``, seg (S+1,) fragment segments (see :func:`segments`), image_size (H, W).
    Outputs: bary (N, 3), depth (N,).
    """

    @staticmethod
    def forward(ctx, xy: Tensor, z: Tensor, vid: Tensor, pix: Tensor, seg: Tensor, image_size: tuple[int, int]):
        ctx.set_materialize_grads(False)  # an unused output (often depth) gets no zero gradient
        K = kernels()
        dt = xy.dtype
        xyf = xy.detach().reshape(-1, 2).contiguous()
        zs = z.detach().reshape(-1).to(dt).contiguous()
        vid = vid.contiguous()
        N = vid.shape[1]
        bary = _empty(N, 3, dtype=dt)
        depth = _empty(N, dtype=dt)
        s = _empty(3, N, dtype=dt)
        H, W = image_size
        launch(K.bary_forward, N, xyf.numpy(), zs.numpy(), vid.numpy(), _np(pix), W, H * W, bary.numpy(),
               depth.numpy(), s.numpy())
        ctx.save_for_backward(xyf, zs, vid, s, bary, depth, seg)
        ctx.shapes = (xy.shape, z.shape, z.dtype)
        return bary, depth

    @staticmethod
    def backward(ctx, g_bary: Tensor | None, g_depth: Tensor | None):
        xyf, zs, vid, s, bary, depth, seg = ctx.saved_tensors
        xy_shape, z_shape, z_dtype = ctx.shapes
        K = kernels()
        g_xy = _zeros(xyf.shape, dtype=xyf.dtype)
        g_z = _zeros(zs.shape, dtype=zs.dtype)
        has_gb, has_gd = g_bary is not None, g_depth is not None
        dt = xyf.numpy().dtype
        gb = _np(g_bary.to(xyf.dtype)) if has_gb else np.zeros((1, 3), dt)
        gd = _np(g_depth.to(xyf.dtype)) if has_gd else np.zeros(1, dt)
        launch(K.bary_backward, seg.shape[0] - 1, xyf.numpy(), zs.numpy(), vid.numpy(), s.numpy(), bary.numpy(),
               depth.numpy(), gb, gd, has_gb, has_gd, seg.numpy(), g_xy.numpy(), g_z.numpy())
        g_xy = g_xy.view(xy_shape) if ctx.needs_input_grad[0] else None
        g_z = g_z.view(z_shape).to(z_dtype) if ctx.needs_input_grad[1] else None
        return g_xy, g_z, None, None, None, None


# ----------------------------------------------------------------------------- interpolation


class Interpolate(torch.autograd.Function):
    """``out[n] = sum_k bary[n, k] attr[vid[k, n]]`` with a scatter-add backward.

    attr (M, C); bary (N, 3); vid (3, N) rows of ``attr``; seg fragment segments; ``shared``:
    segments may touch the same rows (a batch-shared attribute), so the backward accumulates
    per segment and sums.
    """

    @staticmethod
    def forward(ctx, attr: Tensor, bary: Tensor, vid: Tensor, seg: Tensor, shared: bool):
        K = kernels()
        attr_c = attr.detach().contiguous()
        bary_c = bary.detach().to(attr.dtype).contiguous()
        vid = vid.contiguous()
        out = _empty(vid.shape[1], attr.shape[1], dtype=attr.dtype)
        launch(K.interp_forward, vid.shape[1], attr_c.numpy(), vid.numpy(), bary_c.numpy(), out.numpy())
        ctx.save_for_backward(attr_c, bary_c, vid, seg)
        ctx.shared = shared
        ctx.bary_dtype = bary.dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        attr, bary, vid, seg = ctx.saved_tensors
        K = kernels()
        want_attr, want_bary = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        S = seg.shape[0] - 1
        slots = S if (ctx.shared and S > 1 and want_attr) else 1
        g_attr = _zeros(slots if want_attr else 1, *(attr.shape if want_attr else (1, 1)), dtype=attr.dtype)
        g_bary = _empty(bary.shape if want_bary else (1, 3), dtype=attr.dtype)
        launch(K.interp_backward, S, attr.numpy(), vid.numpy(), bary.numpy(), _np(grad.to(attr.dtype)), seg.numpy(),
                          want_attr, want_bary, g_attr.numpy(), g_bary.numpy())
        ga = (g_attr[0] if slots == 1 else g_attr.sum(0)) if want_attr else None
        gb = g_bary.to(ctx.bary_dtype) if want_bary else None
        return ga, gb, None, None, None


def interpolate(attr: Tensor, bary: Tensor, vid: Tensor, seg: Tensor, shared: bool) -> Tensor:
    return Interpolate.apply(attr, bary, vid, seg, shared)


# ----------------------------------------------------------------------------- normals + SH


class VertexNormals(torch.autograd.Function):
    """Area-weighted unit vertex normals of (B, V, 3) vertices (normalize's eps = 1e-12)."""

    @staticmethod
    def forward(ctx, vertices: Tensor, triangles: Tensor):
        K = kernels()
        v = vertices.detach().contiguous()
        tri = triangles.long().contiguous()
        out = _empty(v.shape, dtype=v.dtype)
        norm = _empty(v.shape[:2], dtype=v.dtype)
        launch(K.normals_forward, v.shape[0], v.numpy(), tri.numpy(), _NORMALIZE_EPS, out.numpy(), norm.numpy())
        ctx.save_for_backward(v, tri, out, norm)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        v, tri, out, norm = ctx.saved_tensors
        K = kernels()
        g = _zeros(v.shape, dtype=v.dtype)
        launch(K.normals_backward, v.shape[0], v.numpy(), tri.numpy(), _NORMALIZE_EPS, out.numpy(), norm.numpy(),
                           _np(grad.to(v.dtype)), g.numpy())
        return g, None


class QuadraticSH(torch.autograd.Function):
    """Numba twin of :func:`~faceclip.render.shading.sh_irradiance_quadratic`."""

    @staticmethod
    def forward(ctx, normals: Tensor, weights: Tensor):
        K = kernels()
        n = normals.detach().contiguous()
        w = weights.detach().to(n.dtype).contiguous()
        out = _empty(n.shape[0], n.shape[1], w.shape[2], dtype=n.dtype)
        launch(K.shq_forward, n.shape[0], n.numpy(), w.numpy(), out.numpy())
        ctx.save_for_backward(n, w)
        ctx.w_dtype = weights.dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        n, w = ctx.saved_tensors
        K = kernels()
        gn = _empty(n.shape, dtype=n.dtype)
        gw = _empty(w.shape, dtype=w.dtype)
        launch(K.shq_backward, n.shape[0], n.numpy(), w.numpy(), _np(grad.to(n.dtype)), gn.numpy(), gw.numpy())
        return gn, gw.to(ctx.w_dtype)


class VertexIrradiance(torch.autograd.Function):
    """Fused :class:`VertexNormals` + :class:`QuadraticSH`: SH irradiance (B, V, C) at the
    area-weighted unit vertex normals of vertices (Bv, V, 3) (Bv = 1 or B), weights (B, 10, C).
    ``used``: None, or (B*V,) uint8 flags of the vertices to shade (zero output elsewhere)."""

    @staticmethod
    def forward(ctx, vertices: Tensor, triangles: Tensor, weights: Tensor, used: Tensor | None):
        K = kernels()
        v = vertices.detach().contiguous()
        w = weights.detach().to(v.dtype).contiguous()
        tri = triangles.long().contiguous()
        B, V = w.shape[0], v.shape[1]
        used = _zeros(0, dtype=torch.uint8) if used is None else used.to(torch.uint8).contiguous()
        normals = _empty(B, V, 3, dtype=v.dtype)
        norm = _empty(B, V, dtype=v.dtype)
        out = _empty(B, V, w.shape[2], dtype=v.dtype)
        launch(K.irradiance_forward, B, v.numpy(), tri.numpy(), w.numpy(), _NORMALIZE_EPS, used.numpy(),
               normals.numpy(), norm.numpy(), out.numpy())
        ctx.save_for_backward(v, tri, w, used, normals, norm)
        ctx.w_dtype = weights.dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        v, tri, w, used, normals, norm = ctx.saved_tensors
        K = kernels()
        want_w = ctx.needs_input_grad[2]
        B = w.shape[0]
        g_v = _zeros(B, *v.shape[1:], dtype=v.dtype)
        g_w = _empty(w.shape, dtype=w.dtype) if want_w else _empty(1, 1, 1, dtype=w.dtype)
        launch(K.irradiance_backward, B, v.numpy(), tri.numpy(), w.numpy(), _NORMALIZE_EPS, used.numpy(),
               normals.numpy(), norm.numpy(), _np(grad.to(v.dtype)), want_w, g_v.numpy(), g_w.numpy())
        if v.shape[0] == 1 and B > 1:
            g_v = g_v.sum(0, keepdim=True)
        return g_v, None, g_w.to(ctx.w_dtype) if want_w else None, None


# ----------------------------------------------------------------------------- antialiasing


@torch.no_grad()
def edge_pairs(pix: Tensor, face: Tensor, depth: Tensor, seg: Tensor, batch_size: int,
               image_size: tuple[int, int], xy: Tensor, triangles: Tensor, neighbor: Tensor,
               orient: Tensor, max_steps: int) -> tuple[Tensor, ...] | None:
    """No-grad part of ``antialiasing._edge_pairs`` (same pairs, same walk, same tests).

    Returns None when no pair straddles a silhouette edge, else (M,) long tensors p_in, p_out,
    i_in, i_out, ka, kb as in :class:`~faceclip.render.antialiasing.EdgePairs`. Fragments
    must be sorted by pixel (as rasterized); ``seg`` (B+1,) their offsets per image.
    """
    K = kernels()
    B = batch_size
    H, W = image_size
    V = xy.shape[1]
    xyf = _np(xy.detach().reshape(-1, 2))
    tri, nbr = _np(triangles.long()), _np(neighbor.long())
    orient_np = _np(orient.to(torch.float32))
    face_np, pix_np = _np(face), _np(pix)
    depth_np = _np(depth.detach())
    p2f = np.empty(B * H * W, np.int32)
    state = np.empty(B * H * W, np.uint8)
    counts = np.empty(B, np.int64)
    cand = np.empty(2 * B * H * W, np.int32)  # only the first counts[b] of image b's slice are touched
    launch(K.aa_count, B, pix_np, face_np, _np(seg), orient_np, nbr, B, H, W, p2f, state, cand, counts)
    offsets = np.zeros(B + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    M = int(offsets[-1])
    if M == 0:
        return None
    out = [np.empty(M, np.int64) for _ in range(6)]
    keep = np.empty(M, np.uint8)
    consts = np.array([1.0, -1.0, 2.0, 1e-30], dtype=xyf.dtype)
    centre = np.arange(max(H, W) + 1, dtype=xyf.dtype) + xyf.dtype.type(0.5)
    launch(K.aa_crossings, B, xyf, tri, nbr, orient_np, face_np, depth_np, p2f, state, cand, B, H, W, V, int(max_steps),
           consts, centre, offsets, *out, keep)
    sel = np.flatnonzero(keep)
    if sel.shape[0] == 0:
        return None
    return tuple(torch.from_numpy(a[sel]) for a in out)  # p_in, p_out, i_in, i_out, ka, kb


class Composite(torch.autograd.Function):
    """Antialiased dense image from per-fragment values (the fused form of
    ``scatter_image(values, background, pix, P, *antialias_deltas(...))``).

    Inputs: values (N, C); background (C,); xy (B, V, 2) projected vertices; pix (N,) ascending
    flat pixels; seg (B+1,) fragment offsets per image; pairs: None or the (M,) long tensors
    (p_in, p_out, i_in, i_out, ka, kb) of :func:`edge_pairs`; image_size (H, W).
    Output: (B*H*W, C). Differentiable wrt values, background and xy (through the pairs'
    edge crossings).
    """

    @staticmethod
    def forward(ctx, values: Tensor, background: Tensor, xy: Tensor, pix: Tensor, seg: Tensor,
                pairs: tuple[Tensor, ...] | None, image_size: tuple[int, int]):
        K = kernels()
        H, W = image_size
        B = seg.shape[0] - 1
        vals = values.detach().contiguous()
        bg = background.detach().to(vals.dtype).expand(vals.shape[1]).contiguous()
        out = _empty(B * H * W, vals.shape[1], dtype=vals.dtype)
        launch(K.composite_forward, B, vals.numpy(), bg.numpy(), _np(pix), _np(seg), H * W, out.numpy())
        xyf = xy.detach().reshape(-1, 2).contiguous()
        t_raw = None
        if pairs is not None:
            t_raw = _empty(pairs[0].shape[0], dtype=torch.float64)
            K.composite_aa_forward(vals.numpy(), bg.numpy(), xyf.numpy(), W, H * W, *(_np(a) for a in pairs),
                                   t_raw.numpy(), out.numpy())
            ctx.pairs = pairs
        ctx.save_for_backward(vals, bg, xyf, pix, t_raw)
        ctx.meta = (image_size, background.shape, xy.shape)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        K = kernels()
        vals, bg, xyf, pix, t_raw = ctx.saved_tensors
        (H, W), bg_shape, xy_shape = ctx.meta
        g = grad.to(vals.dtype).contiguous()
        g_vals = _empty(vals.shape, dtype=vals.dtype)
        launch(K.composite_backward, pix.shape[0], g.numpy(), _np(pix), g_vals.numpy())
        want_bg = ctx.needs_input_grad[1]
        g_bg = (g.sum(0) - g_vals.sum(0)) if want_bg else _zeros(bg.shape, dtype=bg.dtype)  # uncovered pixels
        g_xy = _zeros(xyf.shape, dtype=xyf.dtype)
        if t_raw is not None:
            K.composite_aa_backward(g.numpy(), vals.numpy(), bg.numpy(), xyf.numpy(), W, H * W,
                                    *(_np(a) for a in ctx.pairs), t_raw.numpy(), g_vals.numpy(), g_bg.numpy(),
                                    g_xy.numpy())
        g_bg = (g_bg.sum() if len(bg_shape) == 0 else g_bg.reshape(bg_shape)) if want_bg else None
        g_xy = g_xy.view(xy_shape) if ctx.needs_input_grad[2] else None
        return g_vals, g_bg, g_xy, None, None, None, None


# ----------------------------------------------------------------------------- projection


class Project(torch.autograd.Function):
    """Numba twin of :meth:`PerspectiveCamera.project_with_depth` with one fused backward.

    Inputs: points (Bp, V, 3) with Bp = 1 or B; R (B, 3, 3); t (B, 3); f, c (B, 2) focal
    lengths and principal points. Outputs: xy (B, V, 2), z (B, V). Gradients to every input.
    """

    @staticmethod
    def forward(ctx, points: Tensor, R: Tensor, t: Tensor, f: Tensor, c: Tensor):
        ctx.set_materialize_grads(False)
        K = kernels()
        dt = points.dtype
        p = points.detach().contiguous()
        Rc, tc, fc, cc = (x.detach().to(dt).contiguous() for x in (R, t, f, c))
        B, V = R.shape[0], p.shape[1]
        xy = _empty(B, V, 2, dtype=dt)
        z = _empty(B, V, dtype=dt)
        launch(K.project_forward, B, p.numpy(), Rc.numpy(), tc.numpy(), fc.numpy(), cc.numpy(), xy.numpy(), z.numpy())
        ctx.save_for_backward(p, Rc, tc, fc)
        ctx.dtypes = (R.dtype, t.dtype, f.dtype, c.dtype)
        return xy, z

    @staticmethod
    def backward(ctx, g_xy: Tensor | None, g_z: Tensor | None):
        p, R, t, f = ctx.saved_tensors
        K = kernels()
        B, V = R.shape[0], p.shape[1]
        dt = p.dtype
        gxy = _np(g_xy.to(dt)) if g_xy is not None else np.zeros((B, V, 2), p.numpy().dtype)
        gz = _np(g_z.to(dt)) if g_z is not None else np.zeros((B, V), p.numpy().dtype)
        g_p = _empty(B, V, 3, dtype=dt)
        g_R = _empty(B, 3, 3, dtype=torch.float64)
        g_t = _empty(B, 3, dtype=torch.float64)
        g_f = _empty(B, 2, dtype=torch.float64)
        g_c = _empty(B, 2, dtype=torch.float64)
        want_cam = any(ctx.needs_input_grad[1:])
        launch(K.project_backward, B, p.numpy(), R.numpy(), t.numpy(), f.numpy(), gxy, gz, want_cam, g_p.numpy(),
               g_R.numpy(), g_t.numpy(), g_f.numpy(), g_c.numpy())
        if p.shape[0] == 1 and B > 1:
            g_p = g_p.sum(0, keepdim=True)
        if not want_cam:
            return g_p, None, None, None, None
        dR, dtt, df, dc = ctx.dtypes
        return g_p, g_R.to(dR), g_t.to(dtt), g_f.to(df), g_c.to(dc)


class InterpolateProduct(torch.autograd.Function):
    """``interp(a) * interp(b)`` per fragment (albedo times irradiance) in one pass.

    a (Ma, C), b (Mb, C); bary (N, 3); vid_a, vid_b (3, N) rows of a and b; seg fragment
    segments; shared_a, shared_b: the attribute is shared by the batch (see :class:`Interpolate`).
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, bary: Tensor, vid_a: Tensor, vid_b: Tensor, seg: Tensor,
                shared_a: bool, shared_b: bool):
        K = kernels()
        dt = a.dtype
        a_c, b_c = a.detach().contiguous(), b.detach().to(dt).contiguous()
        bary_c = bary.detach().to(dt).contiguous()
        vid_a, vid_b = vid_a.contiguous(), vid_b.contiguous()
        out = _empty(vid_a.shape[1], a.shape[1], dtype=dt)
        launch(K.interp_mul_forward, vid_a.shape[1], a_c.numpy(), b_c.numpy(), vid_a.numpy(), vid_b.numpy(),
               bary_c.numpy(), out.numpy())
        ctx.save_for_backward(a_c, b_c, bary_c, vid_a, vid_b, seg)
        ctx.shared = (shared_a, shared_b)
        ctx.dtypes = (b.dtype, bary.dtype)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, bary, vid_a, vid_b, seg = ctx.saved_tensors
        K = kernels()
        want_a, want_b, want_bary = ctx.needs_input_grad[:3]
        S = seg.shape[0] - 1

        def buf(x: Tensor, shared: bool) -> Tensor:  # written even when not wanted (no branch in the kernel)
            return _zeros(S if (shared and S > 1) else 1, *x.shape, dtype=x.dtype)

        g_a, g_b = buf(a, ctx.shared[0]), buf(b, ctx.shared[1])
        g_bary = _empty(bary.shape if want_bary else (1, 3), dtype=a.dtype)
        launch(K.interp_mul_backward, S, a.numpy(), b.numpy(), vid_a.numpy(), vid_b.numpy(), bary.numpy(),
               _np(grad.to(a.dtype)), seg.numpy(), want_bary, g_a.numpy(), g_b.numpy(), g_bary.numpy())
        ga = (g_a[0] if g_a.shape[0] == 1 else g_a.sum(0)) if want_a else None
        gb = (g_b[0] if g_b.shape[0] == 1 else g_b.sum(0)).to(ctx.dtypes[0]) if want_b else None
        gbary = g_bary.to(ctx.dtypes[1]) if want_bary else None
        return ga, gb, gbary, None, None, None, None, None
