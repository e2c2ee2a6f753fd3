"""Files for a face's mid-frequency detail: a 16-bit displacement PNG, a tangent-space normal
map, and a subdivided mesh displaced by the map.

The detail is a **displacement map** ``disp_mm``: a float (S, S) array of millimetres along the
surface's smooth normal, over the model's whole UV square, row 0 at v = 1 (texel (i, j) centred
at u = (j + 0.5) / S, v = 1 - (i + 0.5) / S, the layout of the UV texture), zero outside the
face (a ``(1, 1, S, S)`` array or tensor, the layout of :mod:`faceclip.render.bump`, is accepted
too). What this module makes of it:

- :func:`write_displacement_png`: the map itself as a 16-bit grayscale PNG with the scale and
  offset that turn its values back into millimetres (for Blender's Displace modifier, ZBrush...);
- :func:`tangent_normal_map`: an 8-bit tangent-space normal map (OpenGL / glTF convention) that
  shows the detail on the *coarse* mesh in any viewer;
- :func:`displaced_mesh`: the mesh subdivided where asked (the skin) and displaced, so the
  detail is real geometry;
- :func:`export_detail_mesh`: all of these as files (``mesh_detail.obj`` with the displaced
  geometry, ``mesh_detail.glb`` with the coarse geometry and the normal map,
  ``normal_map.png``, ``displacement.png``).

The surface model is the one the detail is fitted with (:mod:`faceclip.render.bump`): a point
``P`` of a triangle moves to ``P + D(u, v) n``, ``n`` the interpolated smooth vertex normal.
``faceclip.io`` sits below ``render``, so the few formulas shared with it (the map's central
differences, per-triangle tangents ``dP/du``, ``dP/dv``, bilinear sampling) are written again
here in numpy; ``tests/test_detail_outputs.py`` checks that they agree.

Example::

    files = export_detail_mesh(out_dir, vertices_mm, model_triangles, model_uv, disp_mm,
                               texture=texture, triangle_mask=skin_triangles, levels=2,
                               texture_file="mesh_texture.png")
    params["detail"] = displacement_params(disp_mm)  # scale and offset of displacement.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from faceclip.errors import FaceClipError
from faceclip.io.files import atomic_path
from faceclip.io.mesh import _unique_uv, memo_by_content, vertex_normals, write_glb, write_obj

__all__ = [
    "DETAIL_FORMATS", "DISPLACEMENT_FILE", "DISPLACEMENT_FORMULA", "MAP_LAYOUT", "NORMAL_MAP_FILE",
    "displaced_mesh", "displacement_params", "encode_displacement_png", "export_detail_mesh",
    "map_slopes", "read_displacement_png", "sample_map_bilinear", "subdivide_masked", "tangent_normal_map",
    "write_displacement_png", "write_normal_map_png",
]

DISPLACEMENT_FILE = "displacement.png"
NORMAL_MAP_FILE = "normal_map.png"
DISPLACEMENT_FORMULA = "mm = value / 65535 * scale_mm + offset_mm"
MAP_LAYOUT = ("16-bit grayscale over the model's UV square; row 0 at v = 1, texel (i, j) centred at "
              "u = (j + 0.5) / S, v = 1 - (i + 0.5) / S; millimetres along the smooth outward normal")
DETAIL_FORMATS = ("obj", "glb")
_FLAT_RGB = (128, 128, 255)
_U16 = 65535


# --------------------------------------------------------------------------------------------
# The map: checks, slopes, sampling


def _check_map(disp_mm) -> np.ndarray:
    """``disp_mm`` -> (S, S) float64, refusing what would make a broken file.

    Raises:
        FaceClipError: not a square 2-D map of side >= 2, or not finite everywhere.
    """
    if hasattr(disp_mm, "detach"):
        disp_mm = disp_mm.detach().cpu().numpy()
    d = np.asarray(disp_mm)
    if d.ndim == 4 and d.shape[:2] == (1, 1):  # the (1, 1, S, S) layout of faceclip.render.bump
        d = d[0, 0]
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] < 2:
        raise FaceClipError(f"displacement map must be a square (S, S) array with S >= 2, got shape {d.shape}",
                            hint="pass the fitted map in mm over the UV square (row 0 at v = 1)")
    if not np.issubdtype(d.dtype, np.number) or np.issubdtype(d.dtype, np.complexfloating):
        raise FaceClipError(f"displacement map must be real numbers (mm), got dtype {d.dtype}")
    d = d.astype(np.float64)
    bad = ~np.isfinite(d)
    if bad.any():
        raise FaceClipError(f"displacement map has {int(bad.sum())} of {d.size} texels NaN or infinite; "
                            "refusing to write a broken detail file",
                            hint="the detail fit diverged: rerun without detail, or set unknown texels to 0")
    return d


def map_slopes(disp_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(dD/du, dD/dv)``: (S, S) each, mm per unit of u and of v, of an (S, S) map.

    Central differences, one-sided at the borders (the same as
    :func:`faceclip.render.bump.map_gradients`); rows run from v = 1 down, so ``dD/dv`` is the
    row above minus the row below.
    """
    d = np.asarray(disp_mm, dtype=np.float64)
    h, w = d.shape
    p = np.pad(d, 1, mode="reflect", reflect_type="odd")  # linear extrapolation: 2 d[0] - d[1]
    du = (p[1:-1, 2:] - p[1:-1, :-2]) * (w / 2.0)
    dv = (p[:-2, 1:-1] - p[2:, 1:-1]) * (h / 2.0)
    return du, dv


def sample_map_bilinear(disp_mm: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(N,) bilinear samples of an (S, S) map at (N, 2) UVs (v up; clamped at the borders).

    The same as :func:`faceclip.render.bump.sample_map` (``align_corners=False``, border padding).
    """
    d = np.asarray(disp_mm, dtype=np.float64)
    h, w = d.shape
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    x = np.clip(uv[:, 0] * w - 0.5, 0.0, w - 1.0)  # column coordinate, texel centres at integers
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0.0, h - 1.0)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    top = d[y0, x0] * (1 - fx) + d[y0, x1] * fx
    bottom = d[y1, x0] * (1 - fx) + d[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


# --------------------------------------------------------------------------------------------
# 16-bit displacement PNG


def encode_displacement_png(disp_mm) -> tuple[np.ndarray, float, float]:
    """An (S, S) map in mm -> ``(values, scale_mm, offset_mm)``.

    ``values`` is (S, S) uint16 with ``mm = values / 65535 * scale_mm + offset_mm`` to within
    ``scale_mm / 131070`` (half a step); ``offset_mm`` is the map's minimum and ``scale_mm`` its
    range, so the 16 bits span exactly the values present. A constant map (a zero map included)
    gets ``scale_mm = 0`` and all values 0.

    Raises:
        FaceClipError: the map is not square or not finite.
    """
    d = _check_map(disp_mm)
    offset = float(d.min())
    scale = float(d.max()) - offset
    if not scale > 0.0:
        return np.zeros(d.shape, np.uint16), 0.0, offset
    values = np.rint((d - offset) * (_U16 / scale))
    return np.clip(values, 0, _U16).astype(np.uint16), scale, offset


def _record(file: str, scale_mm: float, offset_mm: float, size_px: int) -> dict:
    return {"file": file, "scale_mm": scale_mm, "offset_mm": offset_mm, "formula": DISPLACEMENT_FORMULA,
            "layout": MAP_LAYOUT, "size_px": size_px}


def displacement_params(disp_mm, file: str = DISPLACEMENT_FILE) -> dict:
    """The record of a displacement PNG for ``params.json``, without writing anything:
    ``{"file", "scale_mm", "offset_mm", "formula", "layout", "size_px"}`` (the same as
    :func:`write_displacement_png` returns for this map)."""
    d = _check_map(disp_mm)
    offset = float(d.min())
    scale = float(d.max()) - offset
    return _record(file, scale if scale > 0.0 else 0.0, offset, int(d.shape[0]))


def write_displacement_png(path: str | Path, disp_mm) -> dict:
    """Write the map as a 16-bit grayscale PNG (atomically).

    Returns:
        The record for ``params.json`` (:func:`displacement_params`, ``file`` the written
        file's name): the numbers that turn the PNG's values back into mm.

    Raises:
        FaceClipError: the map is not square or not finite (nothing is written).
    """
    path = Path(path)
    values, scale, offset = encode_displacement_png(disp_mm)
    with atomic_path(path) as tmp:
        Image.fromarray(values).save(tmp, format="PNG", compress_level=1)  # mode "I;16": 16-bit gray
    return _record(path.name, scale, offset, int(values.shape[0]))


def read_displacement_png(path: str | Path, scale_mm: float, offset_mm: float) -> np.ndarray:
    """(S, S) float64 mm of a PNG written by :func:`write_displacement_png`.

    Raises:
        FaceClipError: the file is not a 16-bit grayscale PNG.
    """
    with Image.open(path) as im:
        if im.mode not in ("I;16", "I;16B", "I"):
            raise FaceClipError(f"{path}: not a 16-bit grayscale displacement PNG (mode {im.mode})")
        values = np.asarray(im).astype(np.float64)
    return values / _U16 * float(scale_mm) + float(offset_mm)


# --------------------------------------------------------------------------------------------
# Tangent-space normal map


def _triangle_tangents(vertices: np.ndarray, triangles: np.ndarray, uv_corners: np.ndarray):
    """``(P_u, P_v)``, (F, 3) each: dP/du and dP/dv per triangle (mm per unit of u, v); zero
    for triangles with degenerate UVs. The formula of :func:`faceclip.render.bump.triangle_tangents`."""
    p = vertices[triangles]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = uv_corners[:, 1] - uv_corners[:, 0], uv_corners[:, 2] - uv_corners[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    inv = np.divide(1.0, det, out=np.zeros_like(det), where=np.abs(det) > 1e-12)[:, None]
    pu = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * inv
    pv = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * inv
    return pu, pv


def _raster_texels(uv_corners: np.ndarray, want: np.ndarray, pad_px: int = 2):
    """Which triangle covers each wanted texel of the UV square: ``(texels, faces, bary)``.

    Args:
        uv_corners: (F, 3, 2) per-corner UVs, v up.
        want: (S, S) bool, the texels to look up (the others are skipped: only the triangles
            whose UV bounding box comes within ``pad_px`` texels of one are rasterized).
        pad_px: texels whose centre lies in no triangle but within ``pad_px`` texels of a
            covered one take the nearest covered texel's triangle (barycentrics extrapolated,
            then clamped), so bilinear lookups at the edges of UV islands stay on the island.

    Returns:
        ``texels`` (K,) flat indices ``i * S + j`` among ``want``, ``faces`` (K,) triangle ids,
        ``bary`` (K, 3) barycentric coordinates of the texel centres in them.
    """
    S = want.shape[0]
    rows, cols = np.flatnonzero(want.any(1)), np.flatnonzero(want.any(0))
    if len(rows) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
    # The window of wanted texels grown by pad_px; only triangles reaching into it matter.
    r0, r1 = max(rows[0] - pad_px, 0), min(rows[-1] + pad_px, S - 1)
    c0, c1 = max(cols[0] - pad_px, 0), min(cols[-1] + pad_px, S - 1)
    uvc = np.asarray(uv_corners, dtype=np.float64)
    x = uvc[..., 0] * S - 0.5  # texel-index coordinates: texel (i, j) centred at x = j, y = i
    y = (1.0 - uvc[..., 1]) * S - 0.5
    lo_x, hi_x = np.minimum.reduce([x[:, 0], x[:, 1], x[:, 2]]), np.maximum.reduce([x[:, 0], x[:, 1], x[:, 2]])
    lo_y, hi_y = np.minimum.reduce([y[:, 0], y[:, 1], y[:, 2]]), np.maximum.reduce([y[:, 0], y[:, 1], y[:, 2]])
    j0, j1 = np.clip(np.ceil(lo_x), 0, S).astype(np.int64), np.clip(np.floor(hi_x), -1, S - 1).astype(np.int64)
    i0, i1 = np.clip(np.ceil(lo_y), 0, S).astype(np.int64), np.clip(np.floor(hi_y), -1, S - 1).astype(np.int64)
    cand = np.flatnonzero((j1 >= c0) & (j0 <= c1) & (i1 >= r0) & (i0 <= r1)
                          & (j1 >= j0) & (i1 >= i0))
    # Wanted texels in each bounding box grown by pad_px: a summed-area table over the window.
    sat = np.zeros((r1 - r0 + 2, c1 - c0 + 2), np.int32)
    sat[1:, 1:] = want[r0:r1 + 1, c0:c1 + 1].astype(np.int32).cumsum(0).cumsum(1)
    a0, a1 = np.clip(i0[cand] - pad_px - r0, 0, r1 - r0 + 1), np.clip(i1[cand] + pad_px + 1 - r0, 0, r1 - r0 + 1)
    b0, b1 = np.clip(j0[cand] - pad_px - c0, 0, c1 - c0 + 1), np.clip(j1[cand] + pad_px + 1 - c0, 0, c1 - c0 + 1)
    cand = cand[(sat[a1, b1] - sat[a0, b1] - sat[a1, b0] + sat[a0, b0]) > 0]
    x, y, j0, j1, i0, i1 = x[cand], y[cand], j0[cand], j1[cand], i0[cand], i1[cand]
    ex1, ey1, ex2, ey2 = x[:, 1] - x[:, 0], y[:, 1] - y[:, 0], x[:, 2] - x[:, 0], y[:, 2] - y[:, 0]
    det = ex1 * ey2 - ex2 * ey1
    w, h = j1 - j0 + 1, i1 - i0 + 1
    ids = np.flatnonzero(np.abs(det) > 1e-12)  # local indices into cand
    cnt = (w * h)[ids]
    t = np.repeat(ids, cnt)
    off = np.arange(len(t)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    jj, ii = j0[t] + off % w[t], i0[t] + off // w[t]

    def bary(tri: np.ndarray, col: np.ndarray, row: np.ndarray) -> np.ndarray:
        dx, dy = col - x[tri, 0], row - y[tri, 0]
        l1 = (dx * ey2[tri] - dy * ex2[tri]) / det[tri]
        l2 = (dy * ex1[tri] - dx * ey1[tri]) / det[tri]
        return np.stack([1.0 - l1 - l2, l1, l2], 1)

    b = bary(t, jj, ii)
    inside = (b[:, 0] >= -1e-9) & (b[:, 1] >= -1e-9) & (b[:, 2] >= -1e-9)
    flat = ii[inside] * S + jj[inside]
    # One triangle per covered texel (on a shared edge: the later triangle).
    tex_c, order = np.unique(flat[::-1], return_index=True)
    tri_c, bary_c = t[inside][::-1][order], b[inside][::-1][order]
    wanted = want.reshape(-1)
    hit = wanted[tex_c]
    owner = (tex_c[hit], cand[tri_c[hit]], bary_c[hit])
    missing = wanted.copy()
    missing[tex_c] = False
    if pad_px > 0 and missing.any() and len(tex_c):
        from scipy.spatial import cKDTree

        miss = np.flatnonzero(missing)
        dist, k = cKDTree(np.stack([tex_c // S, tex_c % S], 1)).query(
            np.stack([miss // S, miss % S], 1), distance_upper_bound=pad_px + 1e-9)
        ok = np.isfinite(dist)
        miss, src_tri = miss[ok], tri_c[k[ok]]
        bm = np.clip(bary(src_tri, miss % S, miss // S), 0.0, None)
        owner = (np.concatenate([owner[0], miss]), np.concatenate([owner[1], cand[src_tri]]),
                 np.concatenate([owner[2], bm / bm.sum(1, keepdims=True)]))
    return owner


def tangent_normal_map(vertices, triangles, uv_corners, disp_mm, normals=None) -> np.ndarray:
    """An (S, S, 3) uint8 tangent-space normal map of the detail on the coarse mesh.

    Convention (OpenGL, glTF 2.0, Blender): +X along +u, +Y along +v (up in the image), +Z out
    of the surface; ``RGB = round((n * 0.5 + 0.5) * 255)`` with halves rounded up, so a flat
    texel is exactly (128, 128, 255). Rows as in the map (row 0 at v = 1).

    Each texel's normal is the bump-mapped normal of :mod:`faceclip.render.bump`: the map's
    slopes ``D_u``, ``D_v`` (mm per unit u, v) tilt the interpolated smooth normal ``N`` through
    the covering triangle's tangents ``P_u``, ``P_v`` (mm per unit u, v), i.e. by the slopes in
    mm per mm, ``D_u / |P_u|`` and ``D_v / |P_v|`` for orthogonal tangents. The result is
    written in the frame a viewer rebuilds (``T`` = ``P_u`` made orthogonal to ``N``,
    ``B = w N x T`` with ``w = -1`` on mirrored UVs), so it decodes to the same normal. Texels
    where the map's slopes vanish are flat, and so are texels no triangle covers, but for a
    margin of two texels around each UV island that repeats its edge (for bilinear lookups).

    Args:
        vertices: (V, 3) coarse vertices, mm.
        triangles: (F, 3) vertex indices, counter-clockwise seen from outside.
        uv_corners: (F, 3, 2) per-corner UVs in [0, 1], v up.
        disp_mm: (S, S) displacement map, mm.
        normals: (V, 3) unit vertex normals, or None (:func:`faceclip.io.mesh.vertex_normals`).

    Raises:
        FaceClipError: the map is not square or not finite.
    """
    d = _check_map(disp_mm)
    v, f, uvc = _mesh_arrays(vertices, triangles, uv_corners)
    S = d.shape[0]
    out = np.full((S * S, 3), _FLAT_RGB[0], np.uint8)  # flat: (128, 128, 255)
    out[:, 2] = _FLAT_RGB[2]
    du, dv = map_slopes(d)
    du, dv = du.reshape(-1), dv.reshape(-1)
    active = (du != 0.0) | (dv != 0.0)
    if not active.any():  # a zero (or constant) map
        return out.reshape(S, S, 3)
    texels, faces, bary = _raster_texels(uvc, active.reshape(S, S))
    if len(texels) == 0:
        return out.reshape(S, S, 3)
    vn = vertex_normals(v, f) if normals is None else np.asarray(normals, dtype=np.float64)
    n = np.einsum("kc,kcd->kd", bary, vn[f[faces]])
    n /= np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)
    used, local_face = np.unique(faces, return_inverse=True)
    pu, pv = _triangle_tangents(v, f[used], uvc[used])
    local, good = _tangent_space_normals(n, pu[local_face], pv[local_face], du[texels], dv[texels])
    out[texels[good]] = np.clip(np.floor(local[good] * 127.5 + 128.0), 0, 255).astype(np.uint8)
    return out.reshape(S, S, 3)


def _tangent_space_normals(n: np.ndarray, pu: np.ndarray, pv: np.ndarray, d_u: np.ndarray, d_v: np.ndarray):
    """Bump-mapped normals in a viewer's tangent frame: ``(local (K, 3) unit, good (K,) bool)``.

    Args:
        n: (K, 3) unit smooth normals; pu, pv: (K, 3) dP/du, dP/dv (mm per unit u, v);
        d_u, d_v: (K,) the map's slopes (mm per unit u, v).

    ``good`` is False where the tangents are degenerate (the texel is left flat).
    """
    cross = np.cross(pu, pv)
    orient = np.where(np.einsum("kd,kd->k", cross, n) < 0, -1.0, 1.0)[:, None]
    # Blinn: (P_u + D_u N) x (P_v + D_v N), with P_u x P_v replaced by the smooth normal of the
    # same length and turned outward on mirrored UVs (as faceclip.render.bump.bumped_normals).
    m = (np.linalg.norm(cross, axis=1, keepdims=True) * n
         + orient * (d_u[:, None] * np.cross(n, pv) + d_v[:, None] * np.cross(pu, n)))
    # The frame a viewer rebuilds: T = P_u without its normal part, B = w N x T (w = -1 where
    # the UVs are mirrored, i.e. where N x T points against P_v).
    t = pu - np.einsum("kd,kd->k", pu, n)[:, None] * n
    t_len = np.linalg.norm(t, axis=1)
    m_len = np.linalg.norm(m, axis=1)
    good = (t_len > 1e-12) & (m_len > 1e-12) & (np.linalg.norm(cross, axis=1) > 0)
    t /= np.where(good, t_len, 1.0)[:, None]
    m /= np.where(good, m_len, 1.0)[:, None]
    b = np.cross(n, t)
    b *= np.where(np.einsum("kd,kd->k", b, pv) < 0, -1.0, 1.0)[:, None]
    local = np.stack([np.einsum("kd,kd->k", m, t), np.einsum("kd,kd->k", m, b), np.einsum("kd,kd->k", m, n)], 1)
    return local, good


def write_normal_map_png(path: str | Path, normal_map: np.ndarray) -> Path:
    """Write an (S, S, 3) uint8 normal map as an RGB PNG (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(normal_map, dtype=np.uint8), "RGB").save(tmp, format="PNG",
                                                                                      compress_level=1)
    return path


# --------------------------------------------------------------------------------------------
# Subdivision and displacement


def _mesh_arrays(vertices, triangles, uv_corners) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain float64 / int64 numpy copies, shapes checked (ValueError, as the mesh writers)."""
    def np_(x):
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    v = np_(vertices).astype(np.float64)
    f = np_(triangles).astype(np.int64)
    uvc = np_(uv_corners).astype(np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3) and triangles (F, 3), got {v.shape}, {f.shape}")
    if uvc.shape != (len(f), 3, 2):
        raise ValueError(f"uv_corners must be (F, 3, 2) = ({len(f)}, 3, 2), got {uvc.shape}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError("triangle indices out of range")
    return v, f, uvc


def _grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The regular split of one triangle into n * n: ``(ij, bary, tris)``.

    ``ij`` (P, 2) grid points ``(i, j)``, ``i + j <= n``; ``bary`` (P, 3) their barycentric
    weights ``((n - i - j) / n, i / n, j / n)`` on the corners (c0, c1, c2); ``tris`` (n * n, 3)
    sub-triangles as point indices, wound like (c0, c1, c2).
    """
    ij = np.array([(i, j) for j in range(n + 1) for i in range(n + 1 - j)], np.int64)
    index = {(int(i), int(j)): k for k, (i, j) in enumerate(ij)}
    tris = []
    for j in range(n):
        for i in range(n - j):
            tris.append((index[i, j], index[i + 1, j], index[i, j + 1]))
            if i + j + 2 <= n:
                tris.append((index[i + 1, j], index[i + 1, j + 1], index[i, j + 1]))
    bary = np.stack([n - ij[:, 0] - ij[:, 1], ij[:, 0], ij[:, 1]], 1) / n
    return ij, bary, np.array(tris, np.int64)


def subdivide_masked(triangles, uv_corners, triangle_mask=None, levels: int = 2, n_vertices: int | None = None):
    """The topology of :func:`displaced_mesh`'s subdivision (no positions): a dict of arrays.

    Every triangle in ``triangle_mask`` is split into ``4 ** levels`` (its edges cut into
    ``n = 2 ** levels`` equal parts: the same triangles as ``levels`` rounds of midpoint
    subdivision). A triangle outside the mask that shares an edge with it would otherwise meet
    points in the middle of its edge (T-junctions, cracks once displaced; this is what
    ``trimesh.remesh.subdivide(face_index=...)`` leaves), so it is split into a fan to those
    points: from its opposite corner when one edge is cut, else from a new vertex at its
    centroid. Other triangles are kept as they are. Each new vertex is shared by all triangles
    that touch it, so a closed mesh stays closed. Children keep their parent's winding and
    place in the triangle order.

    Args:
        triangles: (F, 3) vertex indices over V vertices.
        uv_corners: (F, 3, 2) per-corner UVs (seams allowed).
        triangle_mask: (F,) bool, or None for all triangles.
        levels: >= 0.
        n_vertices: V (default: the largest index + 1).

    Returns:
        ``{"src": (V', 3) int, "weights": (V', 3) float}``: new vertex k is
        ``sum_c weights[k, c] * vertices[src[k, c]]`` (the first V are the old vertices);
        ``"triangles"`` (F', 3), ``"uv_corners"`` (F', 3, 2), ``"parent"`` (F',) the original
        triangle of each new one; ``"sample_vertex"`` (N,), ``"sample_uv"`` (N, 2) the distinct
        (vertex, UV) pairs of the corners (where the map is sampled).
    """
    tri = np.asarray(triangles, dtype=np.int64)
    uvc = np.asarray(uv_corners, dtype=np.float64)
    mask = np.ones(len(tri), bool) if triangle_mask is None else np.asarray(triangle_mask, dtype=bool)
    if mask.shape != (len(tri),):
        raise ValueError(f"triangle_mask must be ({len(tri)},) bool, got {mask.shape}")
    if int(levels) != levels or levels < 0:
        raise ValueError(f"levels must be an integer >= 0, got {levels}")
    n_v = (int(tri.max()) + 1 if tri.size else 0) if n_vertices is None else int(n_vertices)

    def compute():
        plan = _subdivide(tri, uvc, mask, int(levels), n_v)
        plan["sample_vertex"], plan["sample_uv"] = _uv_samples(plan["triangles"], plan["uv_corners"])
        return plan

    return memo_by_content(f"subdivide_{int(levels)}_{n_v}", tri, uvc, mask, compute=compute)


class _CutEdges:
    """The edges of the subdivided triangles, each cut into ``n`` equal parts.

    Edge ``e`` (ends ``lo < hi``) owns the new vertices ``first + e * (n - 1) + (k - 1)``, the
    points ``k / n`` of the way from ``lo`` to ``hi`` (0 < k < n), so the triangles on both sides
    of an edge share its points.
    """

    def __init__(self, triangles: np.ndarray, n_vertices: int, n: int) -> None:
        self.n_v, self.n, self.first = n_vertices, n, n_vertices
        self.keys, inverse = np.unique(self._key(triangles), return_inverse=True)
        self.of_triangle = inverse.reshape(-1, 3)  # (Fm, 3): edge c -> c + 1 of each triangle

    def _key(self, triangles: np.ndarray) -> np.ndarray:
        ends = triangles[:, [[0, 1], [1, 2], [2, 0]]]  # (F, 3, 2) edges c -> c + 1
        return (ends.min(2) * self.n_v + ends.max(2)).reshape(-1)

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For other triangles' edges c -> c + 1: ``(is_cut (F, 3), edge index (F, 3))``."""
        keys = self._key(triangles).reshape(-1, 3)
        pos = np.clip(np.searchsorted(self.keys, keys), 0, max(len(self.keys) - 1, 0))
        return self.keys[pos] == keys, pos

    def vertex(self, edge: np.ndarray, start: np.ndarray, end: np.ndarray, k) -> np.ndarray:
        """Id of the point ``k / n`` of the way from vertex ``start`` to ``end`` (0 < k < n)."""
        k_lo = np.where(start < end, k, self.n - k)
        return self.first + edge * (self.n - 1) + (k_lo - 1)

    def new_vertices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(src (E * (n - 1), 3), weights)`` of the cut points (see :func:`subdivide_masked`)."""
        n, k = self.n, np.arange(1, self.n)
        lo, hi = np.repeat(self.keys // self.n_v, n - 1), np.repeat(self.keys % self.n_v, n - 1)
        w = np.stack([np.tile(1.0 - k / n, len(self)), np.tile(k / n, len(self)), np.zeros(len(self) * (n - 1))], 1)
        return np.stack([lo, hi, lo], 1), w


def _split_masked(tri: np.ndarray, uvc: np.ndarray, sub: np.ndarray, edges: _CutEdges, first: int) -> dict:
    """Each triangle ``tri[sub]`` as its ``n * n`` grid triangles; interior grid points become
    vertices ``first, first + 1, ...``. Returns a part of the plan (see :func:`_subdivide`)."""
    n = edges.n
    T = tri[sub]
    ij, gbary, gtris = _grid(n)
    interior = (ij[:, 0] > 0) & (ij[:, 1] > 0) & (ij.sum(1) < n)
    n_int = int(interior.sum())
    gid = np.empty((len(T), len(ij)), np.int64)
    e = edges.of_triangle
    for p, (i, j) in enumerate(ij):
        if interior[p]:
            gid[:, p] = first + np.arange(len(T)) * n_int + int(interior[:p].sum())
        elif i + j == 0 or i == n or j == n:  # a corner
            gid[:, p] = T[:, 0 if i + j == 0 else (1 if i == n else 2)]
        elif j == 0:  # edge c0 -> c1, i / n of the way
            gid[:, p] = edges.vertex(e[:, 0], T[:, 0], T[:, 1], i)
        elif i + j == n:  # edge c1 -> c2, j / n of the way
            gid[:, p] = edges.vertex(e[:, 1], T[:, 1], T[:, 2], j)
        else:  # i == 0: edge c2 -> c0, (n - j) / n of the way
            gid[:, p] = edges.vertex(e[:, 2], T[:, 2], T[:, 0], n - j)
    grid_uv = np.einsum("pc,fcd->fpd", gbary, uvc[sub])  # (Fm, P, 2)
    return {"src": np.repeat(T, n_int, axis=0), "weights": np.tile(gbary[interior], (len(T), 1)),
            "triangles": gid[:, gtris].reshape(-1, 3), "uv_corners": grid_uv[:, gtris].reshape(-1, 3, 2),
            "parent": np.repeat(sub, len(gtris))}


def _fan_neighbours(tri: np.ndarray, uvc: np.ndarray, rest: np.ndarray, edges: _CutEdges, first: int) -> dict:
    """Triangles ``tri[rest]`` (outside the mask): kept, or, where an edge of theirs is cut, split
    into a fan to the cut points (from the opposite corner when one edge is cut, else from a new
    vertex at the centroid, numbered from ``first``). Returns a part of the plan."""
    n = edges.n
    cut, pos = edges.find(tri[rest])
    touched = cut.any(1)
    keep, fan = rest[~touched], rest[touched]
    tris, uvs, parents = [tri[keep]], [uvc[keep]], [keep]
    cut, pos, ft, fuv = cut[touched], pos[touched], tri[fan], uvc[fan]
    one = cut.sum(1) == 1
    centre_id = np.full(len(fan), -1, np.int64)
    centre_id[~one] = first + np.arange(int((~one).sum()))
    rows, opposite = np.arange(len(fan)), (np.argmax(cut, 1) + 2) % 3  # edge c -> c + 1 faces c + 2
    apex = np.where(one, ft[rows, opposite], centre_id)
    apex_uv = np.where(one[:, None], fuv[rows, opposite], fuv.mean(1))
    for c in range(3):
        a, b, ua, ub = ft[:, c], ft[:, (c + 1) % 3], fuv[:, c], fuv[:, (c + 1) % 3]
        steps = np.where(cut[:, c], n, 1)  # the chain a = point 0, ..., point `steps` = b
        for s in range(n):
            ids = [np.where(q == 0, a, np.where(q >= steps, b, edges.vertex(pos[:, c], a, b, min(max(q, 1), n - 1))))
                   for q in (s, s + 1)]
            use = (s < steps) & (apex != ids[0]) & (apex != ids[1])  # triangles at the apex: none
            if use.any():
                frac = [np.minimum(q, steps)[:, None] / steps[:, None] for q in (s, s + 1)]
                tris.append(np.stack([apex, ids[0], ids[1]], 1)[use])
                uvs.append(np.stack([apex_uv, ua + (ub - ua) * frac[0], ua + (ub - ua) * frac[1]], 1)[use])
                parents.append(fan[use])
    return {"src": ft[~one], "weights": np.full((int((~one).sum()), 3), 1.0 / 3.0),
            "triangles": np.concatenate(tris), "uv_corners": np.concatenate(uvs), "parent": np.concatenate(parents)}


def _subdivide(tri: np.ndarray, uvc: np.ndarray, mask: np.ndarray, levels: int, n_v: int) -> dict:
    """:func:`subdivide_masked` without the memo and the map samples."""
    n = 2 ** levels
    ident_w = np.zeros((n_v, 3))
    ident_w[:, 0] = 1.0
    parts = [{"src": np.repeat(np.arange(n_v), 3).reshape(n_v, 3), "weights": ident_w}]
    if n == 1 or not mask.any():
        return {**parts[0], "triangles": tri.copy(), "uv_corners": uvc.copy(), "parent": np.arange(len(tri))}
    sub = np.flatnonzero(mask)
    edges = _CutEdges(tri[sub], n_v, n)
    src, w = edges.new_vertices()
    parts.append({"src": src, "weights": w})
    parts.append(_split_masked(tri, uvc, sub, edges, first=n_v + len(src)))
    parts.append(_fan_neighbours(tri, uvc, np.flatnonzero(~mask), edges,
                                 first=n_v + len(src) + len(parts[-1]["src"])))
    plan = {key: np.concatenate([p[key] for p in parts if key in p])
            for key in ("src", "weights", "triangles", "uv_corners", "parent")}
    order = np.argsort(plan["parent"], kind="stable")  # children in their parent's place
    for key in ("triangles", "uv_corners", "parent"):
        plan[key] = plan[key][order]
    return plan


def _uv_samples(triangles: np.ndarray, uv_corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (vertex, UV) pairs of a mesh's corners: ``(vertex (N,), uv (N, 2))``; a
    vertex on a UV seam appears once per UV. (Goes through :func:`_unique_uv`, whose memo the
    OBJ writer then finds.)"""
    uniq, tidx = _unique_uv(uv_corners)
    keys = np.unique(triangles.reshape(-1) * len(uniq) + tidx.reshape(-1))
    return keys // len(uniq), uniq[keys % len(uniq)]


def displaced_mesh(vertices, triangles, uv_corners, disp_mm, triangle_mask=None, levels: int = 2,
                   normals=None, smooth: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mesh subdivided (:func:`subdivide_masked`) and displaced by the map.

    Every vertex moves along its smooth normal (the coarse vertex normals interpolated like the
    positions, normalised) by the map sampled bilinearly at its UV. A vertex on a UV seam has
    several UVs: it moves by the mean of their samples, so the mesh does not tear at seams.

    Before that, new vertices lie on the coarse triangles: flat ones with ``smooth=False`` (a
    zero map then gives exactly the subdivided coarse surface), or with ``smooth=True``
    (default) on the curved patch through the corners' positions and normals (Phong
    tessellation, Boubekeur and Alexa 2008, shape factor 3/4): on flat triangles the
    subdivided mesh's own normals would show the coarse facets, which the coarse mesh's
    interpolated normals hide. The patch leaves flat regions flat; on a face it departs from
    the flat triangles by their sagitta (hundredths of a mm on ICT-FaceKit's face), and it
    depends only on an edge's two ends along that edge, so neighbours still share their points.

    Args:
        vertices: (V, 3) coarse vertices, mm.
        triangles: (F, 3) vertex indices, counter-clockwise seen from outside.
        uv_corners: (F, 3, 2) per-corner UVs in [0, 1], v up.
        disp_mm: (S, S) displacement map, mm (layout in :mod:`faceclip.io.detail`).
        triangle_mask: (F,) bool, the triangles to subdivide (e.g. the skin); None: all.
        levels: rounds of 1-to-4 subdivision.
        normals: (V, 3) unit vertex normals of the coarse mesh, or None (computed).
        smooth: place new vertices on the Phong patch (True) or the flat triangle (False).

    Returns:
        vertices (V', 3) mm, triangles (F', 3) (the original winding), uv_corners (F', 3, 2).

    Raises:
        FaceClipError: the map is not square or not finite.
    """
    d = _check_map(disp_mm)
    v, f, uvc = _mesh_arrays(vertices, triangles, uv_corners)
    if not np.isfinite(v).all():
        raise ValueError("vertices contain NaN or infinite values")
    plan = subdivide_masked(f, uvc, triangle_mask, levels, n_vertices=len(v))
    vn = vertex_normals(v, f) if normals is None else np.asarray(normals, dtype=np.float64)
    src, w = plan["src"], plan["weights"]
    corners, corner_n = v[src], vn[src]  # (V', 3, 3) each
    pos = np.einsum("kc,kcd->kd", w, corners)
    if smooth:
        pos = pos - _PHONG_SHAPE * _phong_offset(pos, corners, corner_n, w)
    nrm = np.einsum("kc,kcd->kd", w, corner_n)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True).clip(1e-12)
    f2, uv2 = plan["triangles"], plan["uv_corners"]
    if np.any(d != 0.0):
        ids, uv_at = plan["sample_vertex"], plan["sample_uv"]
        count = np.bincount(ids, minlength=len(pos))
        amount = np.bincount(ids, weights=sample_map_bilinear(d, uv_at), minlength=len(pos)) / np.maximum(count, 1)
        pos = pos + amount[:, None] * nrm
    return pos, f2, uv2


_PHONG_SHAPE = 0.75


def _phong_offset(flat: np.ndarray, corners: np.ndarray, corner_normals: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(K, 3): flat point minus its Phong-tessellated point (shape factor 1).

    ``flat`` (K, 3) = sum_c w_c p_c; each corner's tangent plane takes it to
    ``flat - ((flat - p_c) . n_c) n_c``, and the Phong point is the same weighted mean of those.
    """
    along = np.einsum("kcd,kcd->kc", flat[:, None, :] - corners, corner_normals)  # (K, 3)
    return np.einsum("kc,kcd->kd", w * along, corner_normals)


# --------------------------------------------------------------------------------------------
# Files


def export_detail_mesh(out_dir: str | Path, vertices, triangles, uv_corners, disp_mm, texture=None,
                       triangle_mask=None, levels: int = 2, formats: tuple[str, ...] = DETAIL_FORMATS,
                       stem: str = "mesh_detail", texture_file: str | None = None,
                       glb_texture_format: str = "jpeg") -> list[Path]:
    """Write a face's detail into ``out_dir``: ``normal_map.png``, ``displacement.png`` and
    ``<stem>.obj`` / ``<stem>.glb``.

    - ``<stem>.obj`` (+ ``<stem>.mtl``, and ``<stem>_texture.png`` when ``texture`` is given
      without ``texture_file``): the mesh subdivided on ``triangle_mask`` and displaced
      (:func:`displaced_mesh`). Its material does not reference the normal map: the detail is
      already in the geometry, and the normal map on top would show it twice.
    - ``<stem>.glb``: the coarse mesh with the base colour ``texture`` (if any) and
      ``normal_map.png`` as the material's ``normalTexture`` (no ``TANGENT`` attribute: viewers
      derive MikkTSpace tangents from the UVs, which the map's frame follows).
    - ``displacement.png``: 16-bit; :func:`displacement_params` gives the numbers for
      ``params.json`` (the same as :func:`write_displacement_png` returns).

    Args:
        vertices: (V, 3) coarse vertices, mm; triangles: (F, 3); uv_corners: (F, 3, 2), v up.
        disp_mm: (S, S) displacement map, mm.
        texture: (H, W, 3) uint8 or float [0, 1] RGB UV texture (row 0 = v 1), or None.
        triangle_mask: (F,) bool, where to subdivide (None: everywhere); levels: rounds of 1-to-4.
        formats: any of ``"obj"``, ``"glb"``.
        texture_file: the name of a texture image already in ``out_dir`` (e.g. the
            ``mesh_texture.png`` of :func:`faceclip.io.mesh.export_mesh`) for the OBJ's material,
            instead of writing the texture again.
        glb_texture_format: ``"jpeg"`` (default, as the photo pipeline's GLB) or ``"png"`` for
            the GLB's base colour (the normal map is always PNG).

    Returns:
        The written files.

    Raises:
        FaceClipError: an unknown format, or a map that is not square or not finite.
        ValueError: ``texture_file`` is not a file in ``out_dir``; malformed mesh arrays, mask
            or ``levels``. All checked before anything is written.
    """
    formats = tuple(formats)
    if not formats or any(fmt not in DETAIL_FORMATS for fmt in formats):
        raise FaceClipError(f"detail formats {', '.join(formats) or 'none'}: choose from {', '.join(DETAIL_FORMATS)}")
    d = _check_map(disp_mm)
    v, f, uvc = _mesh_arrays(vertices, triangles, uv_corners)
    if not np.isfinite(v).all():
        raise ValueError("vertices contain NaN or infinite values; refusing to write a broken mesh")
    out_dir = Path(out_dir)
    if texture_file is not None and not (out_dir / texture_file).is_file():
        raise ValueError(f"texture_file {texture_file!r} is not a file in {out_dir}")
    normals = vertex_normals(v, f)
    normal_map = tangent_normal_map(v, f, uvc, d, normals=normals)
    if "obj" in formats:  # before any file: a bad mask or level count writes nothing
        v2, f2, uv2 = displaced_mesh(v, f, uvc, d, triangle_mask, levels, normals=normals)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [write_normal_map_png(out_dir / NORMAL_MAP_FILE, normal_map)]
    write_displacement_png(out_dir / DISPLACEMENT_FILE, d)
    files.append(out_dir / DISPLACEMENT_FILE)
    if "obj" in formats:
        files += write_obj(out_dir / f"{stem}.obj", v2, f2, uv2, None if texture_file else texture,
                           texture_file=texture_file)
    if "glb" in formats:
        files.append(write_glb(out_dir / f"{stem}.glb", v, f, uvc, texture, normals=normals,
                               normal_texture=normal_map, texture_format=glb_texture_format))
    return files
