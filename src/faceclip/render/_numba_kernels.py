"""Numba kernels of the compiled CPU backend (imported only through :mod:`.backend`).

Every kernel works on flat NumPy views of contiguous CPU tensors (no copies), is compiled
with ``cache=True`` (machine code is stored on disk on first use, see :mod:`.backend` for the
cache folder), ``nogil=True``, ``error_model="numpy"`` (division by zero gives inf/nan as in
PyTorch) and ``fastmath=False``: the visibility kernel reproduces the float32 arithmetic of
the PyTorch path operation by operation, so both backends select the same triangle at every
pixel.

Each kernel processes the work items ``[lo, hi)`` of its outer loop (images, bands of rows,
fragments or fragment segments); :func:`.backend.launch` runs chunks on several threads.
Chunks never write to shared memory: visibility works per image (or per band of rows), and
the scatters of the backward passes per fragment segment; fragments are sorted by flat pixel
index, so the fragments of image ``b`` form one segment that touches only image ``b``'s
vertices.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_F32 = np.float32


# ----------------------------------------------------------------------------- visibility


@njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
def visibility_zbuffer(xy, zs, tri, B, V, H, W, cull, znear, eps, nbands, zbuf, orient, covered,
                       lo, hi):  # pragma: no cover
    """Nearest triangle per pixel centre.

    xy: (B*V, 2) float32 pixel coordinates, zs: (B*V,) float32 depths; tri: (F, 3) int64.
    zbuf: (B*H*W,) int64, zero on entry; receives ``float_bits(1/depth) << 32 | face`` of the
    nearest covering triangle (0 = empty), exactly like the PyTorch path's ``amax`` keys.
    orient: (B*F,) float32, receives the sign of each triangle's doubled signed screen area.
    Work item ``t`` in ``[0, B * nbands)`` is image ``t // nbands``, rows of band ``t % nbands``;
    covered (B * nbands,) receives the number of pixels it covered.
    """
    F = tri.shape[0]
    half = _F32(0.5)
    one = _F32(1.0)
    zero = _F32(0.0)
    neps = -eps
    rows_per_band = (H + nbands - 1) // nbands
    for task in range(lo, hi):
        n_cov = 0
        b = task // nbands
        band = task - b * nbands
        r_lo = band * rows_per_band
        r_hi = min(H, r_lo + rows_per_band) - 1
        vb = b * V
        pb = b * H * W
        for f in range(F):
            k0 = vb + tri[f, 0]
            k1 = vb + tri[f, 1]
            k2 = vb + tri[f, 2]
            x0, x1, x2 = xy[k0, 0], xy[k1, 0], xy[k2, 0]
            y0, y1, y2 = xy[k0, 1], xy[k1, 1], xy[k2, 1]
            e1x = x1 - x0
            e1y = y1 - y0
            e2x = x2 - x0
            e2y = y2 - y0
            area2 = e1x * e2y - e1y * e2x
            if band == 0:
                orient[b * F + f] = _F32(1.0) if area2 > zero else (_F32(-1.0) if area2 < zero else zero)
            if cull:
                if not area2 < zero:
                    continue
            elif not area2 != zero:
                continue
            j0 = max(np.ceil(min(min(x0, x1), x2) - half), zero)
            j1 = min(np.floor(max(max(x0, x1), x2) - half), _F32(W - 1))
            i0 = max(np.ceil(min(min(y0, y1), y2) - half), zero)
            i1 = min(np.floor(max(max(y0, y1), y2) - half), _F32(H - 1))
            if not (j1 >= j0 and i1 >= i0):
                continue
            ii0 = int(i0)
            ii1 = int(i1)
            if ii1 < r_lo or ii0 > r_hi:
                continue
            z0, z1, z2 = zs[k0], zs[k1], zs[k2]
            if not (min(min(z0, z1), z2) > znear and np.isfinite(z0 + z1 + z2)):
                continue
            inv_a = one / area2
            a1 = e2y * inv_a
            b1 = -e2x * inv_a
            a2 = -e1y * inv_a
            b2 = e1x * inv_a
            dx0 = (j0 + half) - x0
            dy0 = (i0 + half) - y0
            l1 = a1 * dx0 + b1 * dy0
            l2 = a2 * dx0 + b2 * dy0
            iz0 = one / z0
            d1 = one / z1 - iz0
            d2 = one / z2 - iz0
            c3 = (iz0 + l1 * d1) + l2 * d2
            c0 = (one - l1) - l2
            s0 = -(a1 + a2)
            s3 = a1 * d1 + a2 * d2
            r0 = -(b1 + b2)
            r3 = b1 * d1 + b2 * d2
            jj0 = int(j0)
            w = int(j1) - jj0 + 1
            for ii in range(max(ii0, r_lo), min(ii1, r_hi) + 1):
                fi = _F32(ii - ii0)
                q0 = r0 * fi
                q1 = b1 * fi
                q2 = b2 * fi
                q3 = r3 * fi
                row_base = pb + ii * W + jj0
                for t in range(w):
                    fj = _F32(t)
                    v0 = q0 + (s0 * fj + c0)
                    v1 = q1 + (a1 * fj + l1)
                    v2 = q2 + (a2 * fj + l2)
                    if min(min(v0, v1), v2) < neps:
                        continue
                    v3 = q3 + (s3 * fj + c3)
                    key = (np.int64(np.float32(v3).view(np.int32)) << 32) | f
                    p = row_base + t
                    if key > zbuf[p]:
                        if zbuf[p] == 0:
                            n_cov += 1
                        zbuf[p] = key
        covered[task] = n_cov


@njit(cache=True, nogil=True, error_model="numpy")
def compact_zbuffer(zbuf, tri, V, P, offsets, pix, face, vid, used, lo, hi):  # pragma: no cover
    """Covered pixels of images lo..hi-1 (P = H * W pixels each), written from offsets[b] on:
    flat pixel (ascending), face and the flat corner vertex ids ``b*V + tri[face]`` into
    vid (3, N) (all int64); used (B*V,) uint8 (zero on entry) flags the vertices seen."""
    for b in range(lo, hi):
        n = offsets[b]
        vb = b * V
        for p in range(b * P, (b + 1) * P):
            k = zbuf[p]
            if k > 0:
                f = k & 0xFFFFFFFF
                pix[n] = p
                face[n] = f
                for c in range(3):
                    v = vb + tri[f, c]
                    vid[c, n] = v
                    used[v] = 1
                n += 1


# ----------------------------------------------------------------------------- barycentrics


@njit(cache=True, nogil=True, error_model="numpy")
def bary_forward(xy, zs, vid, pix, W, P, bary, depth, s_out, lo, hi):  # pragma: no cover
    """Perspective-correct barycentrics (N, 3), depth (N,) and screen barycentrics s (3, N)
    (evaluated in float64, stored in the outputs' dtype) at the centres of the flat pixels
    pix (N,) (images of P = H * W pixels, rows of W); xy (B*V, 2), zs (B*V,)."""
    H = P // W
    row_start = row_end = -1  # flat pixel range of the current row (pixels ascend)
    i = 0
    for n in range(lo, hi):
        p = pix[n]
        if p >= row_end or p < row_start:  # a new row: one division per row, not per pixel
            row = p // W
            row_start = row * W
            row_end = row_start + W
            i = row % H
        j = p - row_start
        k0, k1, k2 = vid[0, n], vid[1, n], vid[2, n]
        x0 = np.float64(xy[k0, 0])
        y0 = np.float64(xy[k0, 1])
        e1x = xy[k1, 0] - x0
        e1y = xy[k1, 1] - y0
        e2x = xy[k2, 0] - x0
        e2y = xy[k2, 1] - y0
        dx = (j + 0.5) - x0
        dy = (i + 0.5) - y0
        inv_a = 1.0 / (e1x * e2y - e1y * e2x)
        s1 = (dx * e2y - dy * e2x) * inv_a
        s2 = (e1x * dy - e1y * dx) * inv_a
        s0 = (1.0 - s1) - s2
        w0 = s0 / zs[k0]
        w1 = s1 / zs[k1]
        w2 = s2 / zs[k2]
        d = 1.0 / (w0 + w1 + w2)
        bary[n, 0] = w0 * d
        bary[n, 1] = w1 * d
        bary[n, 2] = w2 * d
        depth[n] = d
        s_out[0, n] = s0
        s_out[1, n] = s1
        s_out[2, n] = s2


@njit(cache=True, nogil=True, error_model="numpy")
def bary_backward(xy, zs, vid, s, bary, depth, g_bary, g_depth, has_gb, has_gd, seg,
                  g_xy, g_z, lo, hi):  # pragma: no cover
    """Closed-form backward of :func:`bary_forward` (see ``_PerspectiveBarycentrics``).

    Accumulates into g_xy (B*V, 2), g_z (B*V,) (zero on entry); ``seg`` (S+1,) fragment
    offsets of segments that touch disjoint vertex ranges (one per image). Consecutive
    fragments of one triangle (neighbouring pixels) share its setup and are summed in
    registers before one scatter to its corners.
    """
    for sgi in range(lo, hi):
        end = seg[sgi + 1]
        n0 = seg[sgi]
        for n in range(n0, end):
            k0, k1, k2 = vid[0, n], vid[1, n], vid[2, n]
            if n == n0 or k0 != vid[0, n - 1] or k1 != vid[1, n - 1] or k2 != vid[2, n - 1]:
                iz0 = 1.0 / zs[k0]  # a new triangle: its setup, empty accumulators
                iz1 = 1.0 / zs[k1]
                iz2 = 1.0 / zs[k2]
                x0 = np.float64(xy[k0, 0])
                y0 = np.float64(xy[k0, 1])
                e1x = xy[k1, 0] - x0
                e1y = xy[k1, 1] - y0
                e2x = xy[k2, 0] - x0
                e2y = xy[k2, 1] - y0
                inv_a = 1.0 / (e1x * e2y - e1y * e2x)
                gx0 = gx1 = gx2 = gy0 = gy1 = gy2 = gz0 = gz1 = gz2 = 0.0
            d = np.float64(depth[n])
            b0, b1, b2 = np.float64(bary[n, 0]), np.float64(bary[n, 1]), np.float64(bary[n, 2])
            gw0 = gw1 = gw2 = 0.0
            if has_gb:
                gb0, gb1, gb2 = np.float64(g_bary[n, 0]), np.float64(g_bary[n, 1]), np.float64(g_bary[n, 2])
                dot = gb0 * b0 + gb1 * b1 + gb2 * b2
                gw0 = (gb0 - dot) * d
                gw1 = (gb1 - dot) * d
                gw2 = (gb2 - dot) * d
            if has_gd:
                gdd = d * d * g_depth[n]
                gw0 -= gdd
                gw1 -= gdd
                gw2 -= gdd
            h1 = gw1 * iz1 - gw0 * iz0
            h2 = gw2 * iz2 - gw0 * iz0
            ux = (e1y * h2 - e2y * h1) * inv_a
            uy = (e2x * h1 - e1x * h2) * inv_a
            s0, s1, s2 = np.float64(s[0, n]), np.float64(s[1, n]), np.float64(s[2, n])
            gx0 += s0 * ux
            gx1 += s1 * ux
            gx2 += s2 * ux
            gy0 += s0 * uy
            gy1 += s1 * uy
            gy2 += s2 * uy
            rd = 1.0 / d  # -g_w w / z with w = bary / depth
            gz0 -= gw0 * b0 * iz0 * rd
            gz1 -= gw1 * b1 * iz1 * rd
            gz2 -= gw2 * b2 * iz2 * rd
            if n + 1 == end or k0 != vid[0, n + 1] or k1 != vid[1, n + 1] or k2 != vid[2, n + 1]:
                g_xy[k0, 0] += gx0  # the triangle's run ends: scatter its sums
                g_xy[k1, 0] += gx1
                g_xy[k2, 0] += gx2
                g_xy[k0, 1] += gy0
                g_xy[k1, 1] += gy1
                g_xy[k2, 1] += gy2
                g_z[k0] += gz0
                g_z[k1] += gz1
                g_z[k2] += gz2


# ----------------------------------------------------------------------------- interpolation


@njit(cache=True, nogil=True, error_model="numpy")
def interp_forward(attr, vid, bary, out, lo, hi):  # pragma: no cover
    """out[n] = sum_k bary[n, k] attr[vid[k, n]]; attr (M, C), vid (3, N), bary (N, 3)."""
    C = out.shape[1]
    for n in range(lo, hi):
        k0, k1, k2 = vid[0, n], vid[1, n], vid[2, n]
        b0, b1, b2 = bary[n, 0], bary[n, 1], bary[n, 2]
        for c in range(C):
            out[n, c] = attr[k0, c] * b0 + attr[k1, c] * b1 + attr[k2, c] * b2


@njit(cache=True, nogil=True, error_model="numpy")
def interp_backward(attr, vid, bary, grad, seg, want_attr, want_bary, g_attr, g_bary, lo, hi):  # pragma: no cover
    """Backward of :func:`interp_forward`.

    g_attr (S, M, C) zero on entry, one slice per segment (callers pass S = 1 when the
    segments touch disjoint rows of ``attr``, and sum the slices otherwise); g_bary (N, 3).
    """
    C = grad.shape[1]
    for sgi in range(lo, hi):
        slot = min(np.int64(sgi), g_attr.shape[0] - 1)
        for n in range(seg[sgi], seg[sgi + 1]):
            k0, k1, k2 = vid[0, n], vid[1, n], vid[2, n]
            b0, b1, b2 = bary[n, 0], bary[n, 1], bary[n, 2]
            if want_attr:
                for c in range(C):
                    g = grad[n, c]
                    g_attr[slot, k0, c] += g * b0
                    g_attr[slot, k1, c] += g * b1
                    g_attr[slot, k2, c] += g * b2
            if want_bary:
                a0 = a1 = a2 = 0.0 * b0
                for c in range(C):
                    g = grad[n, c]
                    a0 += g * attr[k0, c]
                    a1 += g * attr[k1, c]
                    a2 += g * attr[k2, c]
                g_bary[n, 0] = a0
                g_bary[n, 1] = a1
                g_bary[n, 2] = a2


# ----------------------------------------------------------------------------- normals + SH


@njit(cache=True, nogil=True, error_model="numpy")
def normals_forward(verts, tri, eps, out, norm, lo, hi):  # pragma: no cover
    """Area-weighted unit vertex normals. verts (B, V, 3); out (B, V, 3), norm (B, V) (the
    length before normalisation, kept for the backward)."""
    V = verts.shape[1]
    F = tri.shape[0]
    for b in range(lo, hi):
        acc = np.zeros((V, 3), verts.dtype)
        for f in range(F):
            i0, i1, i2 = tri[f, 0], tri[f, 1], tri[f, 2]
            ax = verts[b, i1, 0] - verts[b, i0, 0]
            ay = verts[b, i1, 1] - verts[b, i0, 1]
            az = verts[b, i1, 2] - verts[b, i0, 2]
            bx = verts[b, i2, 0] - verts[b, i0, 0]
            by = verts[b, i2, 1] - verts[b, i0, 1]
            bz = verts[b, i2, 2] - verts[b, i0, 2]
            nx = ay * bz - az * by
            ny = az * bx - ax * bz
            nz = ax * by - ay * bx
            for i in (i0, i1, i2):
                acc[i, 0] += nx
                acc[i, 1] += ny
                acc[i, 2] += nz
        for v in range(V):
            nrm = math.sqrt(acc[v, 0] * acc[v, 0] + acc[v, 1] * acc[v, 1] + acc[v, 2] * acc[v, 2])
            norm[b, v] = nrm
            r = 1.0 / max(nrm, eps)
            out[b, v, 0] = acc[v, 0] * r
            out[b, v, 1] = acc[v, 1] * r
            out[b, v, 2] = acc[v, 2] * r


@njit(cache=True, nogil=True, error_model="numpy")
def normals_backward(verts, tri, eps, out, norm, grad, g_verts, lo, hi):  # pragma: no cover
    """Backward of :func:`normals_forward` into g_verts (B, V, 3) (zero on entry)."""
    V = verts.shape[1]
    F = tri.shape[0]
    for b in range(lo, hi):
        gn = np.empty((V, 3), verts.dtype)
        for v in range(V):
            g0, g1, g2 = grad[b, v, 0], grad[b, v, 1], grad[b, v, 2]
            nrm = norm[b, v]
            if nrm > eps:
                dot = out[b, v, 0] * g0 + out[b, v, 1] * g1 + out[b, v, 2] * g2
                r = 1.0 / nrm
                gn[v, 0] = (g0 - out[b, v, 0] * dot) * r
                gn[v, 1] = (g1 - out[b, v, 1] * dot) * r
                gn[v, 2] = (g2 - out[b, v, 2] * dot) * r
            else:
                r = 1.0 / eps
                gn[v, 0] = g0 * r
                gn[v, 1] = g1 * r
                gn[v, 2] = g2 * r
        for f in range(F):
            i0, i1, i2 = tri[f, 0], tri[f, 1], tri[f, 2]
            hx = gn[i0, 0] + gn[i1, 0] + gn[i2, 0]
            hy = gn[i0, 1] + gn[i1, 1] + gn[i2, 1]
            hz = gn[i0, 2] + gn[i1, 2] + gn[i2, 2]
            ax = verts[b, i1, 0] - verts[b, i0, 0]
            ay = verts[b, i1, 1] - verts[b, i0, 1]
            az = verts[b, i1, 2] - verts[b, i0, 2]
            bx = verts[b, i2, 0] - verts[b, i0, 0]
            by = verts[b, i2, 1] - verts[b, i0, 1]
            bz = verts[b, i2, 2] - verts[b, i0, 2]
            # n = a x b: dL/da = b x h, dL/db = h x a
            gax = by * hz - bz * hy
            gay = bz * hx - bx * hz
            gaz = bx * hy - by * hx
            gbx = hy * az - hz * ay
            gby = hz * ax - hx * az
            gbz = hx * ay - hy * ax
            g_verts[b, i1, 0] += gax
            g_verts[b, i1, 1] += gay
            g_verts[b, i1, 2] += gaz
            g_verts[b, i2, 0] += gbx
            g_verts[b, i2, 1] += gby
            g_verts[b, i2, 2] += gbz
            g_verts[b, i0, 0] -= gax + gbx
            g_verts[b, i0, 1] -= gay + gby
            g_verts[b, i0, 2] -= gaz + gbz


@njit(cache=True, nogil=True, error_model="numpy")
def shq_forward(normals, weights, out, lo, hi):  # pragma: no cover
    """out[b, v] = w0 + sum_k feat_k(n) w_k, feats [x, y, z, xx, yy, zz, xy, yz, xz] (images lo..hi-1)."""
    V = normals.shape[1]
    C = weights.shape[2]
    for b in range(lo, hi):
        w = weights[b].copy()
        for v in range(V):
            x, y, z = normals[b, v, 0], normals[b, v, 1], normals[b, v, 2]
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            for c in range(C):
                out[b, v, c] = (w[0, c] + x * w[1, c] + y * w[2, c] + z * w[3, c] + xx * w[4, c]
                                + yy * w[5, c] + zz * w[6, c] + xy * w[7, c] + yz * w[8, c] + xz * w[9, c])


@njit(cache=True, nogil=True, error_model="numpy")
def shq_backward(normals, weights, grad, g_normals, g_weights, lo, hi):  # pragma: no cover
    """Backward of :func:`shq_forward`: g_normals (B, V, 3), g_weights (B, 10, C)."""
    V = normals.shape[1]
    C = weights.shape[2]
    for b in range(lo, hi):
        gw = np.zeros((10, C), g_weights.dtype)
        for v in range(V):
            x, y, z = normals[b, v, 0], normals[b, v, 1], normals[b, v, 2]
            gx = gy = gz = 0.0 * x
            for c in range(C):
                g = grad[b, v, c]
                gw[0, c] += g
                gw[1, c] += g * x
                gw[2, c] += g * y
                gw[3, c] += g * z
                gw[4, c] += g * x * x
                gw[5, c] += g * y * y
                gw[6, c] += g * z * z
                gw[7, c] += g * x * y
                gw[8, c] += g * y * z
                gw[9, c] += g * x * z
                gx += g * (weights[b, 1, c] + 2.0 * x * weights[b, 4, c] + y * weights[b, 7, c] + z * weights[b, 9, c])
                gy += g * (weights[b, 2, c] + 2.0 * y * weights[b, 5, c] + x * weights[b, 7, c] + z * weights[b, 8, c])
                gz += g * (weights[b, 3, c] + 2.0 * z * weights[b, 6, c] + y * weights[b, 8, c] + x * weights[b, 9, c])
            g_normals[b, v, 0] = gx
            g_normals[b, v, 1] = gy
            g_normals[b, v, 2] = gz
        for k in range(10):
            for c in range(C):
                g_weights[b, k, c] = gw[k, c]


@njit(cache=True, nogil=True, error_model="numpy")
def irradiance_forward(verts, tri, weights, eps, used, normals, norm, out, lo, hi):  # pragma: no cover
    """Fused :func:`normals_forward` + :func:`shq_forward` for images lo..hi-1.

    verts (Bv, V, 3) with Bv = 1 (shared) or B; weights (B, 10, C); used (B*V,) uint8 vertices
    to shade, or an empty array for all (the others get zeros, and triangles touching none of
    them are skipped); receives the unit normals (B, V, 3), their length before normalisation
    norm (B, V) and the irradiance out (B, V, C).
    """
    V = verts.shape[1]
    F = tri.shape[0]
    C = weights.shape[2]
    acc = np.empty((V, 3), verts.dtype)
    masked = used.shape[0] > 0
    for b in range(lo, hi):
        vb = 0 if verts.shape[0] == 1 else b
        ub = b * V
        acc[:] = 0.0
        for f in range(F):
            i0, i1, i2 = tri[f, 0], tri[f, 1], tri[f, 2]
            if masked and not (used[ub + i0] or used[ub + i1] or used[ub + i2]):
                continue
            ax = verts[vb, i1, 0] - verts[vb, i0, 0]
            ay = verts[vb, i1, 1] - verts[vb, i0, 1]
            az = verts[vb, i1, 2] - verts[vb, i0, 2]
            bx = verts[vb, i2, 0] - verts[vb, i0, 0]
            by = verts[vb, i2, 1] - verts[vb, i0, 1]
            bz = verts[vb, i2, 2] - verts[vb, i0, 2]
            nx = ay * bz - az * by
            ny = az * bx - ax * bz
            nz = ax * by - ay * bx
            acc[i0, 0] += nx
            acc[i0, 1] += ny
            acc[i0, 2] += nz
            acc[i1, 0] += nx
            acc[i1, 1] += ny
            acc[i1, 2] += nz
            acc[i2, 0] += nx
            acc[i2, 1] += ny
            acc[i2, 2] += nz
        w = weights[b]
        for v in range(V):
            if masked and not used[ub + v]:
                norm[b, v] = 0.0
                for k in range(3):
                    normals[b, v, k] = 0.0
                for c in range(C):
                    out[b, v, c] = 0.0
                continue
            nrm = math.sqrt(acc[v, 0] * acc[v, 0] + acc[v, 1] * acc[v, 1] + acc[v, 2] * acc[v, 2])
            norm[b, v] = nrm
            r = 1.0 / max(nrm, eps)
            x, y, z = acc[v, 0] * r, acc[v, 1] * r, acc[v, 2] * r
            normals[b, v, 0] = x
            normals[b, v, 1] = y
            normals[b, v, 2] = z
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            for c in range(C):
                out[b, v, c] = (w[0, c] + x * w[1, c] + y * w[2, c] + z * w[3, c] + xx * w[4, c]
                                + yy * w[5, c] + zz * w[6, c] + xy * w[7, c] + yz * w[8, c] + xz * w[9, c])


@njit(cache=True, nogil=True, error_model="numpy")
def irradiance_backward(verts, tri, weights, eps, used, normals, norm, grad, want_w, g_verts, g_weights,
                        lo, hi):  # pragma: no cover
    """Backward of :func:`irradiance_forward` for images lo..hi-1: g_verts (B, V, 3) (zero on
    entry; per image, summed by the caller when the vertices are shared) and, if ``want_w``,
    g_weights (B, 10, C). Unused vertices (constant zero output) and triangles whose three
    vertices get no gradient are skipped."""
    V = verts.shape[1]
    F = tri.shape[0]
    C = weights.shape[2]
    gacc = np.empty((V, 3), verts.dtype)
    gw = np.empty((10, C), g_weights.dtype)
    masked = used.shape[0] > 0
    for b in range(lo, hi):
        vb = 0 if verts.shape[0] == 1 else b
        ub = b * V
        w = weights[b]
        gw[:] = 0.0
        for v in range(V):
            if masked and not used[ub + v]:
                for k in range(3):
                    gacc[v, k] = 0.0
                continue
            x, y, z = normals[b, v, 0], normals[b, v, 1], normals[b, v, 2]
            gx = gy = gz = 0.0 * x
            for c in range(C):
                g = grad[b, v, c]
                gx += g * (w[1, c] + 2.0 * x * w[4, c] + y * w[7, c] + z * w[9, c])
                gy += g * (w[2, c] + 2.0 * y * w[5, c] + x * w[7, c] + z * w[8, c])
                gz += g * (w[3, c] + 2.0 * z * w[6, c] + y * w[8, c] + x * w[9, c])
                if want_w:
                    gw[0, c] += g
                    gw[1, c] += g * x
                    gw[2, c] += g * y
                    gw[3, c] += g * z
                    gw[4, c] += g * x * x
                    gw[5, c] += g * y * y
                    gw[6, c] += g * z * z
                    gw[7, c] += g * x * y
                    gw[8, c] += g * y * z
                    gw[9, c] += g * x * z
            nrm = norm[b, v]
            if nrm > eps:  # backward of n = acc / max(|acc|, eps)
                dot = x * gx + y * gy + z * gz
                r = 1.0 / nrm
                gacc[v, 0] = (gx - x * dot) * r
                gacc[v, 1] = (gy - y * dot) * r
                gacc[v, 2] = (gz - z * dot) * r
            else:
                r = 1.0 / eps
                gacc[v, 0] = gx * r
                gacc[v, 1] = gy * r
                gacc[v, 2] = gz * r
        for f in range(F):
            i0, i1, i2 = tri[f, 0], tri[f, 1], tri[f, 2]
            hx = gacc[i0, 0] + gacc[i1, 0] + gacc[i2, 0]
            hy = gacc[i0, 1] + gacc[i1, 1] + gacc[i2, 1]
            hz = gacc[i0, 2] + gacc[i1, 2] + gacc[i2, 2]
            if hx == 0.0 and hy == 0.0 and hz == 0.0:
                continue
            ax = verts[vb, i1, 0] - verts[vb, i0, 0]
            ay = verts[vb, i1, 1] - verts[vb, i0, 1]
            az = verts[vb, i1, 2] - verts[vb, i0, 2]
            bx = verts[vb, i2, 0] - verts[vb, i0, 0]
            by = verts[vb, i2, 1] - verts[vb, i0, 1]
            bz = verts[vb, i2, 2] - verts[vb, i0, 2]
            # n = a x b: dL/da = b x h, dL/db = h x a
            gax = by * hz - bz * hy
            gay = bz * hx - bx * hz
            gaz = bx * hy - by * hx
            gbx = hy * az - hz * ay
            gby = hz * ax - hx * az
            gbz = hx * ay - hy * ax
            g_verts[b, i1, 0] += gax
            g_verts[b, i1, 1] += gay
            g_verts[b, i1, 2] += gaz
            g_verts[b, i2, 0] += gbx
            g_verts[b, i2, 1] += gby
            g_verts[b, i2, 2] += gbz
            g_verts[b, i0, 0] -= gax + gbx
            g_verts[b, i0, 1] -= gay + gby
            g_verts[b, i0, 2] -= gaz + gbz
        if want_w:
            g_weights[b] = gw


# ----------------------------------------------------------------------------- antialiasing


@njit(cache=True, nogil=True, error_model="numpy")
def aa_count(pix, face, seg, orient, neighbor, B, H, W, p2f, state, cand, counts, lo, hi):  # pragma: no cover
    """Dense fragment index map, pixel states and candidate pixel pairs of images lo..hi-1.

    p2f (B*H*W,) int32 receives the fragment index of each pixel (-1 = background); state
    (B*H*W,) uint8: 0 background, 1 covered, 2 covered by a triangle with a silhouette edge.
    A horizontal or vertical pair of pixels is a candidate when either is 2 or exactly one is
    covered (as in ``antialiasing.edge_pairs``); image b's candidates are written to
    ``cand[2*P*b:]`` (P = H*W) as ``2 * (first pixel within the image) + (1 if horizontal)``
    and their number to counts[b].
    """
    F = neighbor.shape[0]
    P = H * W
    for b in range(lo, hi):
        base = b * P
        for p in range(base, base + P):
            p2f[p] = -1
            state[p] = 0
        bF = b * F
        f_prev = -1
        st = 1
        for n in range(seg[b], seg[b + 1]):
            p2f[pix[n]] = n
            f = face[n]
            if f != f_prev:  # neighbouring pixels often show the same triangle
                f_prev = f
                st = 1
                of = orient[bF + f]
                for k in range(3):
                    nb = neighbor[f, k]
                    if nb < 0 or orient[bF + nb] != of:  # silhouette edge (inlined: a call is ~5x slower)
                        st = 2
            state[pix[n]] = st
        # with states in {0, 1, 2} the test "either is 2 or exactly one is covered" is
        # "the states differ or the first is 2"
        c = 2 * P * b
        for i in range(H):
            row = base + i * W
            for j in range(W):
                sa = state[row + j]
                if j + 1 < W:
                    sb = state[row + j + 1]
                    if sa != sb or sa == 2:
                        cand[c] = 2 * (i * W + j) + 1
                        c += 1
                if i + 1 < H:
                    sb = state[row + j + W]
                    if sa != sb or sa == 2:
                        cand[c] = 2 * (i * W + j)
                        c += 1
        counts[b] = c - 2 * P * b


@njit(cache=True, nogil=True, error_model="numpy")
def aa_crossings(xy, tri, neighbor, orient, face, depth, p2f, state, cand, B, H, W, V, max_steps, consts, centre,
                 offsets, p_in, p_out, i_in, i_out, ka, kb, keep, lo, hi):  # pragma: no cover
    """Pixel pairs straddling a silhouette edge (the numba twin of ``antialiasing.edge_pairs``).

    For every candidate pair of :func:`aa_count` (written from ``offsets[b]`` on): the inside
    (nearer) and outside pixel and fragment, the silhouette edge's flat vertex ids (ka, kb)
    found by walking the mesh from the inside pixel's triangle, and ``keep`` (edge found and
    handled by this pair's direction). xy: (B*V, 2) vertex pixel coordinates; ``consts``
    = (1, -1, 2, 1e-30) and ``centre`` (max(H, W) + 1,) pixel centre coordinates ``k + 0.5``, in
    the coordinates' dtype, so that the arithmetic follows the PyTorch path's dtype.
    """
    F = neighbor.shape[0]
    P = H * W
    one, mone, two, tiny = consts[0], consts[1], consts[2], consts[3]
    for b in range(lo, hi):
        base = b * P
        bF = b * F
        bV = b * V
        m = offsets[b]
        for c in range(2 * P * b, 2 * P * b + offsets[b + 1] - offsets[b]):
            pa = base + cand[c] // 2
            horiz = (cand[c] & 1) == 1
            pb = pa + 1 if horiz else pa + W
            ia = p2f[pa]
            ib = p2f[pb]
            fa = face[ia] if ia >= 0 else -1
            fb = face[ib] if ib >= 0 else -1
            a_front = fb < 0 or (fa >= 0 and depth[ia] <= depth[ib])
            if a_front:
                pin, pout, iin, iout = pa, pb, ia, ib
            else:
                pin, pout, iin, iout = pb, pa, ib, ia
            p_in[m] = pin
            p_out[m] = pout
            i_in[m] = iin
            i_out[m] = iout
            ka[m] = 0
            kb[m] = 0
            keep[m] = 0
            if fa == fb or not (iout < 0 or state[pin] == 2):
                m += 1
                continue
            rem = pin - base
            ri = rem // W
            rj = rem - ri * W
            dsign = 1 if pout > pin else -1
            qy = centre[ri]
            qx = centre[rj]
            ox = centre[rj + dsign] if horiz else qx
            oy = qy if horiz else centre[ri + dsign]
            cur = face[iin]
            found = False
            kf = 0
            for _step in range(max_steps):
                v0 = bV + tri[cur, 0]
                v1 = bV + tri[cur, 1]
                v2 = bV + tri[cur, 2]
                vx = (xy[v0, 0], xy[v1, 0], xy[v2, 0])
                vy = (xy[v0, 1], xy[v1, 1], xy[v2, 1])
                ex0 = vx[1] - vx[0]
                ey0 = vy[1] - vy[0]
                ex2 = vx[0] - vx[2]
                ey2 = vy[0] - vy[2]
                area = ex0 * (-ey2) - ey0 * (-ex2)
                o = one if area >= 0 else mone
                t_exit = two
                kmin = 0
                for k in range(3):
                    k1 = (k + 1) % 3
                    ex = vx[k1] - vx[k]
                    ey = vy[k1] - vy[k]
                    s_in = (ex * (qy - vy[k]) - ey * (qx - vx[k])) * o
                    s_out = (ex * (oy - vy[k]) - ey * (ox - vx[k])) * o
                    t = two
                    if s_out < s_in:
                        t = s_in / max(s_in - s_out, tiny)
                    if t < t_exit:
                        t_exit = t
                        kmin = k
                if not t_exit <= 1.0:
                    break
                nxt = neighbor[cur, kmin]
                if nxt < 0 or orient[bF + nxt] != orient[bF + cur]:  # silhouette edge
                    found = True
                    kf = kmin
                    break
                cur = nxt
            if found:
                va = bV + tri[cur, kf]
                vb = bV + tri[cur, (kf + 1) % 3]
                edx = abs(xy[vb, 0] - xy[va, 0])
                edy = abs(xy[vb, 1] - xy[va, 1])
                steep = edy >= edx if horiz else edy < edx
                if steep:
                    ka[m] = va
                    kb[m] = vb
                    keep[m] = 1
            m += 1


# ----------------------------------------------------------------------------- projection


@njit(cache=True, nogil=True, error_model="numpy")
def project_forward(pts, R, t, f, c, xy, z, lo, hi):  # pragma: no cover
    """Pinhole projection of images lo..hi-1: ``X = R p + t``, ``xy = f X[:2] / X[2] + c``.

    pts (Bp, V, 3) with Bp = 1 (shared) or B; R (B, 3, 3); t, (B, 3); f, c (B, 2);
    xy (B, V, 2), z (B, V) outputs.
    """
    V = pts.shape[1]
    for b in range(lo, hi):
        pb = 0 if pts.shape[0] == 1 else b
        r = R[b]
        for v in range(V):
            px, py, pz = pts[pb, v, 0], pts[pb, v, 1], pts[pb, v, 2]
            X = r[0, 0] * px + r[0, 1] * py + r[0, 2] * pz + t[b, 0]
            Y = r[1, 0] * px + r[1, 1] * py + r[1, 2] * pz + t[b, 1]
            Z = r[2, 0] * px + r[2, 1] * py + r[2, 2] * pz + t[b, 2]
            xy[b, v, 0] = f[b, 0] * X / Z + c[b, 0]
            xy[b, v, 1] = f[b, 1] * Y / Z + c[b, 1]
            z[b, v] = Z


@njit(cache=True, nogil=True, error_model="numpy")
def project_backward(pts, R, t, f, gxy, gz, want_cam, g_pts, g_R, g_t, g_f, g_c, lo, hi):  # pragma: no cover
    """Backward of :func:`project_forward` for images lo..hi-1 (float64 accumulation).

    g_pts (B, V, 3) per image (summed by the caller when the points are shared); g_R (B, 3, 3),
    g_t (B, 3), g_f, g_c (B, 2), all overwritten (left zero unless ``want_cam``). Vertices
    without incoming gradient (not seen) are skipped.
    """
    V = pts.shape[1]
    for b in range(lo, hi):
        pb = 0 if pts.shape[0] == 1 else b
        r = R[b]
        fx, fy = f[b, 0], f[b, 1]
        r00, r01, r02 = np.float64(r[0, 0]), np.float64(r[0, 1]), np.float64(r[0, 2])
        r10, r11, r12 = np.float64(r[1, 0]), np.float64(r[1, 1]), np.float64(r[1, 2])
        r20, r21, r22 = np.float64(r[2, 0]), np.float64(r[2, 1]), np.float64(r[2, 2])
        gr = np.zeros((3, 3))
        gt = np.zeros(3)
        gfx = gfy = gcx = gcy = 0.0
        for v in range(V):
            gx, gy, gzv = np.float64(gxy[b, v, 0]), np.float64(gxy[b, v, 1]), np.float64(gz[b, v])
            if gx == 0.0 and gy == 0.0 and gzv == 0.0:
                g_pts[b, v, 0] = 0.0
                g_pts[b, v, 1] = 0.0
                g_pts[b, v, 2] = 0.0
                continue
            px, py, pz = np.float64(pts[pb, v, 0]), np.float64(pts[pb, v, 1]), np.float64(pts[pb, v, 2])
            X = r00 * px + r01 * py + r02 * pz + t[b, 0]
            Y = r10 * px + r11 * py + r12 * pz + t[b, 1]
            Z = r20 * px + r21 * py + r22 * pz + t[b, 2]
            iz = 1.0 / Z
            u, w = X * iz, Y * iz
            gX = gx * fx * iz
            gY = gy * fy * iz
            gZ = gzv - (gx * fx * u + gy * fy * w) * iz
            g_pts[b, v, 0] = r00 * gX + r10 * gY + r20 * gZ
            g_pts[b, v, 1] = r01 * gX + r11 * gY + r21 * gZ
            g_pts[b, v, 2] = r02 * gX + r12 * gY + r22 * gZ
            if want_cam:
                gr[0, 0] += gX * px
                gr[0, 1] += gX * py
                gr[0, 2] += gX * pz
                gr[1, 0] += gY * px
                gr[1, 1] += gY * py
                gr[1, 2] += gY * pz
                gr[2, 0] += gZ * px
                gr[2, 1] += gZ * py
                gr[2, 2] += gZ * pz
                gt[0] += gX
                gt[1] += gY
                gt[2] += gZ
                gfx += gx * u
                gfy += gy * w
                gcx += gx
                gcy += gy
        for i in range(3):
            g_t[b, i] = gt[i]
            for j in range(3):
                g_R[b, i, j] = gr[i, j]
        g_f[b, 0] = gfx
        g_f[b, 1] = gfy
        g_c[b, 0] = gcx
        g_c[b, 1] = gcy


# ----------------------------------------------------------------------------- shading product


@njit(cache=True, nogil=True, error_model="numpy")
def interp_mul_forward(a, b, vid_a, vid_b, bary, out, lo, hi):  # pragma: no cover
    """out[n] = interp(a)[n] * interp(b)[n] (two vertex attributes, same barycentrics)."""
    C = out.shape[1]
    for n in range(lo, hi):
        a0, a1, a2 = vid_a[0, n], vid_a[1, n], vid_a[2, n]
        k0, k1, k2 = vid_b[0, n], vid_b[1, n], vid_b[2, n]
        w0, w1, w2 = bary[n, 0], bary[n, 1], bary[n, 2]
        for c in range(C):
            out[n, c] = ((a[a0, c] * w0 + a[a1, c] * w1 + a[a2, c] * w2)
                         * (b[k0, c] * w0 + b[k1, c] * w1 + b[k2, c] * w2))


@njit(cache=True, nogil=True, error_model="numpy")
def interp_mul_backward(a, b, vid_a, vid_b, bary, grad, seg, want_bary, g_a, g_b, g_bary, lo, hi):  # pragma: no cover
    """Backward of :func:`interp_mul_forward` over fragment segments lo..hi-1.

    g_a (Sa, Ma, C), g_b (Sb, Mb, C) zero on entry (one slice per segment when the attribute
    is shared by the batch, else one slice; always written, even when not wanted);
    g_bary (N, 3).
    """
    C = grad.shape[1]
    for sgi in range(lo, hi):
        ga_s = g_a[min(np.int64(sgi), g_a.shape[0] - 1)]  # this segment's slice
        gb_s = g_b[min(np.int64(sgi), g_b.shape[0] - 1)]
        for n in range(seg[sgi], seg[sgi + 1]):
            a0, a1, a2 = vid_a[0, n], vid_a[1, n], vid_a[2, n]
            k0, k1, k2 = vid_b[0, n], vid_b[1, n], vid_b[2, n]
            w0, w1, w2 = bary[n, 0], bary[n, 1], bary[n, 2]
            h0 = h1 = h2 = 0.0
            for c in range(C):
                A0, A1, A2 = a[a0, c], a[a1, c], a[a2, c]
                B0, B1, B2 = b[k0, c], b[k1, c], b[k2, c]
                ga = grad[n, c] * (B0 * w0 + B1 * w1 + B2 * w2)
                gb = grad[n, c] * (A0 * w0 + A1 * w1 + A2 * w2)
                ga_s[a0, c] += ga * w0  # (unconditional: a branch here costs ~10%)
                ga_s[a1, c] += ga * w1
                ga_s[a2, c] += ga * w2
                gb_s[k0, c] += gb * w0
                gb_s[k1, c] += gb * w1
                gb_s[k2, c] += gb * w2
                h0 += ga * A0 + gb * B0
                h1 += ga * A1 + gb * B1
                h2 += ga * A2 + gb * B2
            if want_bary:
                g_bary[n, 0] = h0
                g_bary[n, 1] = h1
                g_bary[n, 2] = h2


# ----------------------------------------------------------------------------- composite


@njit(cache=True, nogil=True, error_model="numpy")
def composite_forward(values, bg, pix, seg, P, out, lo, hi):  # pragma: no cover
    """Dense image of images lo..hi-1: ``values[n]`` at pixel ``pix[n]``, ``bg`` elsewhere
    (one sweep over the pixels, each written once).

    values (N, C); bg (C,); pix (N,) ascending flat pixels; seg (B+1,) fragment offsets per
    image; P = H * W; out (B*P, C).
    """
    C = out.shape[1]
    for b in range(lo, hi):
        n, end = seg[b], seg[b + 1]
        nxt = pix[n] if n < end else -1
        for p in range(b * P, (b + 1) * P):
            if p == nxt:
                for c in range(C):
                    out[p, c] = values[n, c]
                n += 1
                nxt = pix[n] if n < end else -1
            else:
                for c in range(C):
                    out[p, c] = bg[c]


@njit(cache=True, nogil=True, error_model="numpy")
def _pair_t(xy, W, P, p_in, p_out, ka, kb):  # pragma: no cover
    """Unclamped crossing parameter of the segment between the centres of pixels p_in and
    p_out with the screen edge (ka, kb), and the two edge functions (e_in, e_out)."""
    r = p_in % P
    i = r // W
    qx, qy = (r - i * W) + 0.5, i + 0.5
    r = p_out % P
    i = r // W
    ox, oy = (r - i * W) + 0.5, i + 0.5
    ax, ay = np.float64(xy[ka, 0]), np.float64(xy[ka, 1])
    ex, ey = xy[kb, 0] - ax, xy[kb, 1] - ay
    e_in = ex * (qy - ay) - ey * (qx - ax)
    e_out = ex * (oy - ay) - ey * (ox - ax)
    return e_in / (e_in - e_out), e_in, e_out


@njit(cache=True, nogil=True, error_model="numpy")
def composite_aa_forward(values, bg, xy, W, P, p_in, p_out, i_in, i_out, ka, kb, t_raw, out):  # pragma: no cover
    """Add the antialiasing blend of every edge pair m to ``out`` (B*P, C) (serial: pairs may
    share pixels): ``(c_in - c_out) (t - 1/2)`` at p_out when ``t > 1/2``, else at p_in, with
    ``t = clamp(t_raw, 0, 1)`` (stored in t_raw (M,)); c_out is ``bg`` when i_out < 0."""
    C = out.shape[1]
    for m in range(p_in.shape[0]):
        tr, _, _ = _pair_t(xy, W, P, p_in[m], p_out[m], ka[m], kb[m])
        t_raw[m] = tr
        t = min(max(tr, 0.0), 1.0)
        target = p_out[m] if t > 0.5 else p_in[m]
        w = t - 0.5
        a, o = i_in[m], i_out[m]
        for c in range(C):
            c_out = values[o, c] if o >= 0 else bg[c]
            out[target, c] += (values[a, c] - c_out) * w


@njit(cache=True, nogil=True, error_model="numpy")
def composite_backward(g_out, pix, g_values, lo, hi):  # pragma: no cover
    """g_values[n] = g_out[pix[n]] for fragments lo..hi-1."""
    C = g_values.shape[1]
    for n in range(lo, hi):
        p = pix[n]
        for c in range(C):
            g_values[n, c] = g_out[p, c]


@njit(cache=True, nogil=True, error_model="numpy")
def composite_aa_backward(g_out, values, bg, xy, W, P, p_in, p_out, i_in, i_out, ka, kb, t_raw,
                          g_values, g_bg, g_xy):  # pragma: no cover
    """Backward of :func:`composite_aa_forward` (serial), accumulated into g_values (N, C),
    g_bg (C,) and g_xy (B*V, 2). The clamp passes gradients for ``0 <= t_raw <= 1``."""
    C = values.shape[1]
    for m in range(p_in.shape[0]):
        tr = t_raw[m]
        t = min(max(tr, 0.0), 1.0)
        target = p_out[m] if t > 0.5 else p_in[m]
        w = t - 0.5
        a, o = i_in[m], i_out[m]
        g_t = 0.0
        for c in range(C):
            g = g_out[target, c]
            c_out = values[o, c] if o >= 0 else bg[c]
            g_t += g * (values[a, c] - c_out)
            g_values[a, c] += g * w
            if o >= 0:
                g_values[o, c] -= g * w
            else:
                g_bg[c] -= g * w
        if not (tr >= 0.0 and tr <= 1.0) or g_t == 0.0:
            continue
        _, e_in, e_out = _pair_t(xy, W, P, p_in[m], p_out[m], ka[m], kb[m])
        d = e_in - e_out
        gi = -g_t * e_out / (d * d)  # dL/de_in
        go = g_t * e_in / (d * d)  # dL/de_out
        r = p_in[m] % P
        i = r // W
        qx, qy = (r - i * W) + 0.5, i + 0.5
        r = p_out[m] % P
        i = r // W
        ox, oy = (r - i * W) + 0.5, i + 0.5
        bx, by = xy[kb[m], 0], xy[kb[m], 1]
        ax, ay = xy[ka[m], 0], xy[ka[m], 1]
        # e(q) = (b - a) x (q - a): de/da = (b_y - q_y, q_x - b_x), de/db = (q_y - a_y, a_x - q_x)
        g_xy[ka[m], 0] += gi * (by - qy) + go * (by - oy)
        g_xy[ka[m], 1] += gi * (qx - bx) + go * (ox - bx)
        g_xy[kb[m], 0] += gi * (qy - ay) + go * (oy - ay)
        g_xy[kb[m], 1] += gi * (ax - qx) + go * (ax - ox)


# ----------------------------------------------------------------------------- texture unwrap


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _texel_view(px, py, pz, nx, ny, nz, R, t, cam, pooled, tol):  # pragma: no cover
    """Visibility weight and window pixel (x, y) of one model-space point with unit normal n
    (see :func:`faceclip.fit.texture._visibility`)."""
    cx_ = R[0, 0] * px + R[0, 1] * py + R[0, 2] * pz + t[0]
    cy_ = R[1, 0] * px + R[1, 1] * py + R[1, 2] * pz + t[1]
    cz_ = R[2, 0] * px + R[2, 1] * py + R[2, 2] * pz + t[2]
    x = cam[0] * cx_ / cz_ + cam[2]
    y = cam[1] * cy_ / cz_ + cam[3]
    h, w = pooled.shape
    fc = math.floor(x)
    fr = math.floor(y)
    if not (fc >= 0.0 and fc < w and fr >= 0.0 and fr < h):
        return 0.0, x, y
    if cz_ > pooled[int(fr), int(fc)] + tol:
        return 0.0, x, y
    nnx = R[0, 0] * nx + R[0, 1] * ny + R[0, 2] * nz
    nny = R[1, 0] * nx + R[1, 1] * ny + R[1, 2] * nz
    nnz = R[2, 0] * nx + R[2, 1] * ny + R[2, 2] * nz
    d = max(math.sqrt(cx_ * cx_ + cy_ * cy_ + cz_ * cz_), 1e-9)
    cos = -(nnx * cx_ + nny * cy_ + nnz * cz_) / d
    return min(max((cos - 0.1) / 0.4, 0.0), 1.0), x, y


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _photo_bilinear(photo, x, y, c):  # pragma: no cover
    """Channel ``c`` of the (h, w, 3) uint8 ``photo`` at pixel (x, y) (centres at +0.5,
    clamped), in [0, 1]."""
    h, w = photo.shape[0], photo.shape[1]
    xs = min(max(x - 0.5, 0.0), w - 1.0)
    ys = min(max(y - 0.5, 0.0), h - 1.0)
    x0 = int(math.floor(xs))
    y0 = int(math.floor(ys))
    x1 = min(x0 + 1, w - 1)
    y1 = min(y0 + 1, h - 1)
    fx = xs - x0
    fy = ys - y0
    top = photo[y0, x0, c] + (photo[y0, x1, c] - np.float64(photo[y0, x0, c])) * fx
    bot = photo[y1, x0, c] + (photo[y1, x1, c] - np.float64(photo[y1, x0, c])) * fx
    return (top + (bot - top) * fy) / 255.0


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _blend_photo(col, photo, x, y, w, delight, a):  # pragma: no cover
    """col (3,) <- w * photo(x, y) + (1 - w) * col where w > 0 (divided by the irradiance
    a[9:12] with ``delight``)."""
    if w > 0.0:
        for c in range(3):
            s = _photo_bilinear(photo, x, y, c)
            if delight:
                s = s / a[9 + c]
            col[c] = w * s + (1.0 - w) * col[c]


@njit(cache=True, nogil=True, error_model="numpy")
def texture_texels(attrs, tri, face, bary, pix, R, t, cam, inv_scale, pooled, photo, delight, tol, out, w_direct,
                   lo, hi):  # pragma: no cover
    """The colour of texels lo..hi-1 of a UV texture unwrapped from a photo.

    attrs: (V, 12) float32 per-vertex position (mm), normal, albedo, irradiance; tri (F, 3);
    face (P,), bary (P, 3) and pix (P,): each texel's triangle, barycentrics and flat index in
    the texture (the UV raster). R (3, 3),
    t (3,), cam (4,) = fx, fy, cx, cy: the window camera; ``inv_scale``: photo window pixels per
    window-render pixel; pooled (h, w): the window render's depth, 3x3 max-pooled (-1e9 where
    empty); photo (ph, pw, 3) uint8: the photo's window. Writes out (S * S, 3) uint8 at ``pix`` and
    w_direct (P,) float32: the direct view's weight. Mirrors the PyTorch path of
    :func:`faceclip.fit.texture._texels_torch` (fallback colour, then the mirror view, then
    the direct view, each blended by its visibility weight).
    """
    a = np.empty(12, np.float64)
    col = np.empty(3, np.float64)
    for p in range(lo, hi):
        f = face[p]
        v0, v1, v2 = tri[f, 0], tri[f, 1], tri[f, 2]
        b0, b1, b2 = bary[p, 0], bary[p, 1], bary[p, 2]
        for k in range(12):
            a[k] = b0 * attrs[v0, k] + b1 * attrs[v1, k] + b2 * attrs[v2, k]
        nn = max(math.sqrt(a[3] * a[3] + a[4] * a[4] + a[5] * a[5]), 1e-12)
        nx, ny, nz = a[3] / nn, a[4] / nn, a[5] / nn
        for c in range(3):
            col[c] = a[6 + c] if delight else a[6 + c] * a[9 + c]
        w1, x1, y1 = _texel_view(a[0], a[1], a[2], nx, ny, nz, R, t, cam, pooled, tol)
        if w1 < 1.0:  # the mirror view (x -> -x) where the direct view is not complete
            w2, x2, y2 = _texel_view(-a[0], a[1], a[2], -nx, ny, nz, R, t, cam, pooled, tol)
            _blend_photo(col, photo, x2 * inv_scale, y2 * inv_scale, w2, delight, a)
        _blend_photo(col, photo, x1 * inv_scale, y1 * inv_scale, w1, delight, a)
        for c in range(3):
            out[pix[p], c] = np.uint8(min(max(col[c], 0.0), 1.0) * 255.0 + 0.5)
        w_direct[p] = w1
