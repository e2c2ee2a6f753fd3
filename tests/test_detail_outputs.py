"""Files for a face's mid-frequency detail (faceclip.io.detail): the 16-bit displacement PNG, the
tangent-space normal map, the subdivided displaced mesh and the OBJ/GLB exports."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from faceclip.errors import FaceClipError
from faceclip.io import detail as D
from faceclip.io.gltf import read_glb_json
from faceclip.io.mesh import vertex_normals

FLAT = (128, 128, 255)


def _plane(n: int = 9, width_mm: float = 40.0, height_mm: float = 40.0, mirror_u: bool = False):
    from conftest import plane_mesh

    return plane_mesh(n, width_mm, height_mm, mirror_u)


def _texel_uv(S: int) -> tuple[np.ndarray, np.ndarray]:
    """u of each column and v of each row of an (S, S) map (row 0 at v = 1)."""
    c = (np.arange(S) + 0.5) / S
    return c, 1.0 - c


def _decode(rgb: np.ndarray) -> np.ndarray:
    """8-bit normal map texels -> unit vectors, as viewers read them (c / 255 * 2 - 1)."""
    n = rgb.astype(np.float64) / 255.0 * 2.0 - 1.0
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _smooth_map(S: int, seed: int = 0, amp_mm: float = 0.5) -> np.ndarray:
    """A smooth random map: a few low-frequency sinusoids over the UV square (mm)."""
    rng = np.random.default_rng(seed)
    u, v = _texel_uv(S)
    uu, vv = np.meshgrid(u, v)
    d = np.zeros((S, S))
    for _ in range(4):
        ku, kv, ph = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
        d += np.sin(2 * np.pi * (ku * uu + kv * vv) + ph)
    return amp_mm * d / 4


# ---------------------------------------------------------------------------------------------
# 16-bit displacement PNG


def test_displacement_png_round_trip_keeps_16_bits(tmp_path):
    d = _smooth_map(128) + 0.3  # range about [-0.2, 0.8] mm
    info = D.write_displacement_png(tmp_path / "displacement.png", d)
    assert info["file"] == "displacement.png" and info["formula"] == "mm = value / 65535 * scale_mm + offset_mm"
    assert info["offset_mm"] == pytest.approx(d.min()) and info["scale_mm"] == pytest.approx(np.ptp(d))
    assert info == {**D.displacement_params(d), "file": "displacement.png"}
    with Image.open(tmp_path / "displacement.png") as im:
        assert im.mode.startswith("I;16") and im.size == (128, 128)
        values = np.asarray(im)
    assert values.min() == 0 and values.max() == 65535
    assert len(np.unique(values)) > 5000  # far more than 8 bits could hold
    back = D.read_displacement_png(tmp_path / "displacement.png", info["scale_mm"], info["offset_mm"])
    assert np.abs(back - d).max() <= info["scale_mm"] / 65535 / 2 + 1e-12
    # The formula in the record is the one that decodes the file.
    decoded = values.astype(np.float64) / 65535 * info["scale_mm"] + info["offset_mm"]
    assert np.allclose(decoded, back)


def test_a_constant_or_zero_map_encodes_without_dividing_by_zero(tmp_path):
    values, scale, offset = D.encode_displacement_png(np.zeros((16, 16)))
    assert values.dtype == np.uint16 and not values.any() and scale == 0.0 and offset == 0.0
    info = D.write_displacement_png(tmp_path / "zero.png", np.full((16, 16), -0.25))
    back = D.read_displacement_png(tmp_path / "zero.png", info["scale_mm"], info["offset_mm"])
    assert np.array_equal(back, np.full((16, 16), -0.25))


@pytest.mark.parametrize("bad, match", [
    (np.full((32, 32), np.nan), "NaN or infinite"),
    (np.where(np.eye(32) > 0, np.inf, 0.0), "NaN or infinite"),
    (np.zeros((32, 16)), "square"),
    (np.zeros((32, 32, 3)), "square"),
    (np.zeros(32), "square"),
])
def test_broken_maps_are_refused_before_anything_is_written(tmp_path, bad, match):
    v, f, uv = _plane()
    for call in (lambda: D.write_displacement_png(tmp_path / "d.png", bad),
                 lambda: D.tangent_normal_map(v, f, uv, bad),
                 lambda: D.displaced_mesh(v, f, uv, bad),
                 lambda: D.export_detail_mesh(tmp_path / "out", v, f, uv, bad)):
        with pytest.raises(FaceClipError, match=match):
            call()
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# The numpy formulas agree with faceclip.render.bump (the model the detail is fitted with)


def test_slopes_sampling_and_tangents_agree_with_render_bump():
    from faceclip.render.bump import map_gradients, sample_map, triangle_tangents

    d = _smooth_map(48, seed=2)
    g = map_gradients(torch.tensor(d)[None, None])[0].numpy()
    du, dv = D.map_slopes(d)
    assert np.allclose(du, g[0]) and np.allclose(dv, g[1])
    uv = np.random.default_rng(0).random((500, 2)) * 1.2 - 0.1  # outside the square too (clamped)
    assert np.allclose(D.sample_map_bilinear(d, uv), sample_map(torch.tensor(d)[None, None], torch.tensor(uv))[:, 0])
    ico = trimesh.creation.icosphere(2)
    uvc = np.random.default_rng(1).random((len(ico.faces), 3, 2))
    pu, pv = D._triangle_tangents(np.asarray(ico.vertices), np.asarray(ico.faces), uvc)
    tu, tv = triangle_tangents(torch.tensor(ico.vertices), torch.tensor(ico.faces), torch.tensor(uvc))
    assert np.allclose(pu, tu.numpy()) and np.allclose(pv, tv.numpy())


# ---------------------------------------------------------------------------------------------
# Tangent-space normal map


def test_a_zero_map_gives_a_flat_normal_map():
    v, f, uv = _plane()
    nm = D.tangent_normal_map(v, f, uv, np.zeros((32, 32)))
    assert nm.shape == (32, 32, 3) and nm.dtype == np.uint8
    assert (nm == FLAT).all()
    # A constant offset has no slope either.
    assert (D.tangent_normal_map(v, f, uv, np.full((32, 32), 0.7)) == FLAT).all()


@pytest.mark.parametrize("width_mm, height_mm", [(40.0, 40.0), (40.0, 20.0)])
def test_ramps_tilt_the_normal_map_by_their_slope_in_mm_per_mm(width_mm, height_mm):
    """D = a u rises a / width mm per mm along +x: the normal tilts toward -u (red < 128) by
    atan(a / width); D = b v tilts toward -v (green < 128) by atan(b / height)."""
    v, f, uv = _plane(width_mm=width_mm, height_mm=height_mm)
    S = 64
    u_col, v_row = _texel_uv(S)
    a, b = 4.0, 3.0
    inner = (slice(2, -2), slice(2, -2))
    n_u = _decode(D.tangent_normal_map(v, f, uv, np.tile(a * u_col, (S, 1)))[inner])
    s = a / width_mm
    expected = np.array([-s, 0.0, 1.0]) / math.hypot(s, 1.0)
    assert np.abs(n_u - expected).max() < 2.5 / 255  # 8-bit quantisation
    n_v = _decode(D.tangent_normal_map(v, f, uv, np.tile((b * v_row)[:, None], (1, S)))[inner])
    s = b / height_mm
    expected = np.array([0.0, -s, 1.0]) / math.hypot(s, 1.0)
    assert np.abs(n_v - expected).max() < 2.5 / 255


def test_mirrored_uvs_decode_to_the_true_normal_in_the_viewers_frame():
    """With u = 1 - x / width the map's +u runs along -x. A viewer builds T from dP/du (-x) and
    B = w N x T with w = -1 (mirrored), i.e. B = +y; decoding in that frame must give the world
    normal of the displaced surface z = D(1 - x / width, y / height)."""
    v, f, uv = _plane(mirror_u=True)
    S = 64
    u_col, v_row = _texel_uv(S)
    a, b = 4.0, 2.0
    d = a * u_col[None, :] + b * v_row[:, None]
    n = _decode(D.tangent_normal_map(v, f, uv, d)[2:-2, 2:-2]).reshape(-1, 3)
    T, N = np.array([-1.0, 0, 0]), np.array([0, 0, 1.0])
    B = -np.cross(N, T)
    world = n[:, :1] * T + n[:, 1:2] * B + n[:, 2:] * N
    # Height z = a (1 - x / 40) + b y / 40: gradient (-a / 40, b / 40), normal (a / 40, -b / 40, 1).
    expected = np.array([a / 40, -b / 40, 1.0])
    assert np.abs(world - expected / np.linalg.norm(expected)).max() < 2.5 / 255


def test_texels_outside_the_uv_layout_stay_flat():
    v, f, uv = _plane()
    uv = uv * 0.5  # the mesh covers the lower-left quarter of the UV square
    S = 64
    u_col, _ = _texel_uv(S)
    nm = D.tangent_normal_map(v, f, uv, np.tile(4.0 * u_col, (S, 1)))
    s = 4.0 / 80.0  # 4 mm per unit of u, and a unit of u is 80 mm here
    red = np.floor(-s / math.hypot(s, 1) * 127.5 + 128)
    # The island's edges fall between texel centres 31 and 32 (u = 0.5 and v = 0.5); texels
    # within two texels of it take the island's value (so bilinear lookups at the edge stay on
    # it), the rest stay flat.
    assert (nm[32:, :32, 0] == red).all() and (nm[32:, :32, 1:] == FLAT[1:]).all()
    assert (nm[30:32, :30, 0] == red).all() and (nm[34:, 32:34, 0] == red).all()  # the margins
    assert (nm[:30] == FLAT).all() and (nm[:, 34:] == FLAT).all()


def test_normal_map_of_a_sphere_matches_bumped_normals():
    """On a curved mesh with arbitrary UVs, decoding each texel in the frame a viewer builds
    (T = dP/du projected on the smooth normal, B = N x T signed by dP/dv) gives the normal of
    faceclip.render.bump's model for that texel (the render's own formula, not this module's)."""
    import torch.nn.functional as F

    from faceclip.render.bump import map_gradients, triangle_tangents

    ico = trimesh.creation.icosphere(3, radius=60.0)
    v, f = np.asarray(ico.vertices), np.asarray(ico.faces)
    # UVs: a latitude-longitude chart squeezed into [0.1, 0.9]^2, for the front hemisphere only.
    front = (v[f][:, :, 2] > 10).all(1)
    f = f[front]
    p = v[f]
    uvc = np.stack([0.5 + 0.4 * np.arctan2(p[..., 0], p[..., 2]) / (np.pi / 2),
                    0.5 + 0.4 * np.arcsin(p[..., 1] / 60.0) / (np.pi / 2)], -1)
    S = 128
    d = _smooth_map(S, seed=4, amp_mm=0.6)
    nm = D.tangent_normal_map(v, f, uvc, d)
    texels, faces, bary = D._raster_texels(uvc, np.ones((S, S), bool), pad_px=0)
    assert len(texels) > 3000
    vn = torch.tensor(vertex_normals(v, f))
    n = F.normalize((torch.tensor(bary)[..., None] * vn[f[faces]]).sum(1), dim=-1)
    pu, pv = triangle_tangents(torch.tensor(v), torch.tensor(f), torch.tensor(uvc))
    pu, pv = pu[faces], pv[faces]
    g = map_gradients(torch.tensor(d)[None, None])[0].reshape(2, -1)[:, texels].T
    # bumped_normals' formula (unmirrored chart): |P_u x P_v| N + D_u N x P_v + D_v P_u x N.
    truth = F.normalize(torch.linalg.cross(pu, pv).norm(dim=-1, keepdim=True) * n
                        + g[:, :1] * torch.linalg.cross(n, pv) + g[:, 1:] * torch.linalg.cross(pu, n), dim=-1)
    T = F.normalize(pu - (pu * n).sum(-1, keepdim=True) * n, dim=-1)
    B = torch.linalg.cross(n, T) * torch.sign((torch.linalg.cross(n, T) * pv).sum(-1, keepdim=True))
    local = torch.tensor(_decode(nm.reshape(-1, 3)[texels]))
    decoded = local[:, :1] * T + local[:, 1:2] * B + local[:, 2:] * n
    cos = (decoded * truth).sum(-1).numpy()
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 0.9  # 8-bit steps: ~0.45 deg
    tilt = np.degrees(np.arccos(np.clip((truth * n).sum(-1).numpy(), -1, 1)))
    assert np.percentile(tilt, 90) > 3.0  # the map does tilt the normals (the check is not vacuous)


# ---------------------------------------------------------------------------------------------
# Subdivision and displacement


def _edge_use(f: np.ndarray) -> dict[tuple[int, int], int]:
    e = np.sort(f[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    keys, counts = np.unique(e, axis=0, return_counts=True)
    return {tuple(k): int(c) for k, c in zip(keys, counts)}


@pytest.mark.parametrize("levels, scattered", [(1, False), (2, False), (3, False), (2, True)])
def test_subdivision_multiplies_masked_triangles_and_keeps_far_ones(levels, scattered):
    v, f, uv = _plane()
    mask = np.zeros(len(f), bool)
    if scattered:
        mask[np.random.default_rng(3).choice(len(f), 40, replace=False)] = True
    else:
        mask[30:60] = True
    plan = D.subdivide_masked(f, uv, mask, levels, n_vertices=len(v))
    parent = plan["parent"]
    assert np.all(np.diff(parent) >= 0)  # children in their parent's place
    counts = np.bincount(parent, minlength=len(f))
    assert (counts[mask] == 4 ** levels).all()
    # Triangles outside the mask: unchanged unless they share an edge with it (then a fan).
    mask_edges = set(_edge_use(f[mask]))
    touching = np.array([any(tuple(sorted(e)) in mask_edges for e in ((a, b), (b, c), (c, a))) for a, b, c in f])
    far = ~mask & ~touching
    assert (counts[far] == 1).all() and touching[~mask].any()
    of_far = np.isin(parent, np.flatnonzero(far))
    assert np.array_equal(plan["triangles"][of_far], f[far]) and np.array_equal(plan["uv_corners"][of_far], uv[far])
    assert (counts[~mask & touching] >= 2).all()
    # Children cover their parent: same total area, same orientation (+z) everywhere.
    v2, f2, _ = D.displaced_mesh(v, f, uv, np.zeros((16, 16)), mask, levels)
    cross = np.cross(v2[f2[:, 1]] - v2[f2[:, 0]], v2[f2[:, 2]] - v2[f2[:, 0]])
    assert (cross[:, 2] > 0).all()
    assert np.allclose(v2[f2][..., :2], plan["uv_corners"] * 40.0)  # every corner's UV is where it is
    area = np.bincount(parent, weights=cross[:, 2] / 2, minlength=len(f))
    coarse = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])[:, 2] / 2
    assert np.allclose(area, coarse)
    # No T-junctions: every interior edge is shared by exactly two triangles, as in the plane.
    uses = _edge_use(f2)
    boundary = [e for e, c in uses.items() if c == 1]
    assert set(uses.values()) <= {1, 2}
    length = sum(np.linalg.norm(v2[a] - v2[b]) for a, b in boundary)
    assert length == pytest.approx(4 * 40.0)  # only the plane's own border is open


@pytest.mark.parametrize("pattern", ["half", "random"])
def test_trimesh_partial_subdivision_would_crack_but_ours_is_watertight(pattern):
    ico = trimesh.creation.icosphere(2, radius=50.0)
    v, f = np.asarray(ico.vertices), np.asarray(ico.faces)
    uv = np.random.default_rng(0).random((len(f), 3, 2))  # seams everywhere
    if pattern == "half":
        mask = v[f][:, :, 0].mean(1) > 0
    else:  # scattered: neighbours with one, two and three cut edges (fans from the centroid)
        mask = np.random.default_rng(1).random(len(f)) < 0.4
        cut, _ = D._CutEdges(f[mask], len(v), 4).find(f[~mask])
        assert set(np.unique(cut.sum(1))) == {0, 1, 2, 3}
    v_t, f_t = trimesh.remesh.subdivide(v, f, face_index=np.flatnonzero(mask))
    assert not trimesh.Trimesh(v_t, f_t, process=False).is_watertight  # T-junctions
    d = _smooth_map(64, amp_mm=1.0)
    v2, f2, uv2 = D.displaced_mesh(v, f, uv, d, mask, levels=2)
    mesh = trimesh.Trimesh(v2, f2, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert len(f2) > 16 * mask.sum() and uv2.shape == (len(f2), 3, 2)


def test_a_zero_map_leaves_the_subdivided_surface():
    v, f, uv = _plane()
    mask = np.ones(len(f), bool)
    v2, f2, uv2 = D.displaced_mesh(v, f, uv, np.zeros((32, 32)), mask, levels=2)
    assert np.array_equal(v2[:len(v)], v) and np.allclose(v2[:, 2], 0.0)  # a plane stays flat
    # Every new vertex is where its UV says on the plane (u = x / 40, v = y / 40), at the
    # barycentric point of its parent triangle.
    corners = v2[f2]
    assert np.allclose(corners[..., :2], uv2 * 40.0)
    # On a curved mesh: flat subdivision gives exactly the points on the coarse triangles...
    ico = trimesh.creation.icosphere(1, radius=50.0)
    vs, fs = np.asarray(ico.vertices), np.asarray(ico.faces)
    uvs = np.random.default_rng(0).random((len(fs), 3, 2))
    plan = D.subdivide_masked(fs, uvs, None, 2, n_vertices=len(vs))
    flat, _, _ = D.displaced_mesh(vs, fs, uvs, np.zeros((8, 8)), None, 2, smooth=False)
    assert np.allclose(flat, np.einsum("kc,kcd->kd", plan["weights"], vs[plan["src"]]))
    # ...and the smooth (Phong) placement brings them closer to the sphere the mesh samples.
    smooth, _, _ = D.displaced_mesh(vs, fs, uvs, np.zeros((8, 8)), None, 2, smooth=True)
    err_flat = np.abs(np.linalg.norm(flat, axis=1) - 50.0)
    err_smooth = np.abs(np.linalg.norm(smooth, axis=1) - 50.0)
    assert err_smooth.max() < 0.5 * err_flat.max() and np.allclose(smooth[:len(vs)], vs)


def test_a_sinusoid_moves_vertices_by_the_map_along_the_normal():
    v, f, uv = _plane(n=11)
    S = 256
    u_col, v_row = _texel_uv(S)
    amp, k = 0.8, 2  # two periods across the plane (20 mm wavelength)
    d = amp * np.sin(2 * np.pi * k * u_col)[None, :] * np.cos(np.pi * v_row)[:, None]
    v2, f2, uv2 = D.displaced_mesh(v, f, uv, d, None, levels=2)
    assert len(f2) == 16 * len(f)
    # Along +z (the plane's normal) by D(u, v); x and y unchanged.
    vert_uv = np.zeros((len(v2), 2))
    vert_uv[f2.reshape(-1)] = uv2.reshape(-1, 2)
    assert np.allclose(v2[:, :2], vert_uv * 40.0)
    expected = amp * np.sin(2 * np.pi * k * vert_uv[:, 0]) * np.cos(np.pi * vert_uv[:, 1])
    inside = ((vert_uv > 0.5 / S) & (vert_uv < 1 - 0.5 / S)).all(1)  # the map is clamped beyond texel centres
    assert inside.mean() > 0.8
    bilinear = amp * ((2 * np.pi * k) ** 2 + np.pi ** 2) / 8 / S ** 2  # h^2 / 8 |D''| per axis
    assert np.abs(v2[inside, 2] - expected[inside]).max() < 1.1 * bilinear
    assert np.abs(v2[:, 2] - expected).max() < amp * 2 * np.pi * k * 0.5 / S  # at the border: half a texel off
    assert np.abs(v2[:, 2]).max() > 0.75
    # The winding is kept: the displaced surface still faces +z.
    cross = np.cross(v2[f2[:, 1]] - v2[f2[:, 0]], v2[f2[:, 2]] - v2[f2[:, 0]])
    assert (cross[:, 2] > 0).all()


def test_a_vertex_on_a_uv_seam_moves_once_by_the_mean_of_its_samples():
    # Two triangles sharing the edge 0-2, each on its own UV island where the map differs.
    v = np.array([[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0.0]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[[0.05, 0.05], [0.45, 0.05], [0.45, 0.45]], [[0.55, 0.55], [0.95, 0.95], [0.55, 0.95]]])
    d = np.zeros((32, 32))
    d[16:, :16] = 0.2  # lower-left island (v < 0.5): 0.2 mm
    d[:16, 16:] = 0.6  # upper-right island: 0.6 mm
    v2, f2, _ = D.displaced_mesh(v, f, uv, d, None, levels=1)
    assert len(v2) == 4 + 5  # one midpoint per edge, shared across the seam
    assert v2[1, 2] == pytest.approx(0.2) and v2[3, 2] == pytest.approx(0.6)
    assert v2[0, 2] == pytest.approx(0.4) and v2[2, 2] == pytest.approx(0.4)  # on the seam
    assert set(_edge_use(f2).values()) == {1, 2}  # still one connected sheet


# ---------------------------------------------------------------------------------------------
# Files


def test_export_writes_a_valid_glb_with_a_normal_texture_and_an_obj(tmp_path):
    v, f, uv = _plane()
    S = 64
    u_col, _ = _texel_uv(S)
    d = np.tile(0.5 * np.sin(2 * np.pi * 3 * u_col), (S, 1))
    tex = np.zeros((32, 32, 3), np.uint8)
    tex[..., 0] = 200
    mask = np.zeros(len(f), bool)
    mask[:64] = True
    files = D.export_detail_mesh(tmp_path, v, f, uv, d, texture=tex, triangle_mask=mask, levels=2)
    names = {p.name for p in files}
    assert names == {"normal_map.png", "displacement.png", "mesh_detail.obj", "mesh_detail.mtl",
                     "mesh_detail_texture.png", "mesh_detail.glb"}
    nm = np.asarray(Image.open(tmp_path / "normal_map.png"))
    assert np.array_equal(nm, D.tangent_normal_map(v, f, uv, d))
    # GLB: parse the JSON chunk; the material's normalTexture is the normal map, as a PNG.
    gltf, binary = read_glb_json(tmp_path / "mesh_detail.glb")
    (mat,) = gltf["materials"]
    assert "baseColorTexture" in mat["pbrMetallicRoughness"]
    image = gltf["images"][gltf["textures"][mat["normalTexture"]["index"]]["source"]]
    assert image["mimeType"] == "image/png"
    view = gltf["bufferViews"][image["bufferView"]]
    import io

    embedded = np.asarray(Image.open(io.BytesIO(binary[view.get("byteOffset", 0):][:view["byteLength"]])))
    assert np.array_equal(embedded, nm)
    prim = gltf["meshes"][0]["primitives"][0]
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(prim["attributes"])
    scene = trimesh.load(tmp_path / "mesh_detail.glb")
    (glb,) = scene.geometry.values()
    assert glb.visual.material.normalTexture is not None
    assert np.allclose(glb.vertices[:, 2], 0.0)  # the GLB keeps the coarse geometry
    # OBJ: the displaced, subdivided mesh.
    v2, f2, _ = D.displaced_mesh(v, f, uv, d, mask, 2)
    text = (tmp_path / "mesh_detail.obj").read_text()
    assert sum(line.startswith("v ") for line in text.splitlines()) == len(v2)
    assert "mtllib mesh_detail.mtl" in text
    obj = trimesh.load(tmp_path / "mesh_detail.obj", process=False)
    assert obj.vertices.shape == v2.shape and len(obj.faces) == len(f2)
    assert np.allclose(obj.vertices, v2, atol=1e-5) and np.abs(obj.vertices[:, 2]).max() > 0.4
    assert "map_Kd mesh_detail_texture.png" in (tmp_path / "mesh_detail.mtl").read_text()


def test_export_can_reuse_an_existing_texture_and_write_only_some_formats(tmp_path):
    v, f, uv = _plane()
    d = _smooth_map(32)
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "mesh_texture.png")
    files = D.export_detail_mesh(tmp_path, v, f, uv, d, texture=np.full((8, 8, 3), 90, np.uint8),
                                 formats=("obj",), texture_file="mesh_texture.png")
    assert {p.name for p in files} == {"normal_map.png", "displacement.png", "mesh_detail.obj", "mesh_detail.mtl"}
    assert "map_Kd mesh_texture.png" in (tmp_path / "mesh_detail.mtl").read_text()
    assert not (tmp_path / "mesh_detail_texture.png").exists()
    with pytest.raises(ValueError, match="texture_file"):
        D.export_detail_mesh(tmp_path, v, f, uv, d, texture_file="missing.png")
    with pytest.raises(FaceClipError, match="choose from"):
        D.export_detail_mesh(tmp_path / "x", v, f, uv, d, formats=("ply",))
    with pytest.raises(ValueError, match="triangle_mask"):
        D.export_detail_mesh(tmp_path / "x", v, f, uv, d, triangle_mask=np.ones(3, bool))
    assert not (tmp_path / "x").exists()  # refused before writing anything
    # Without a texture the GLB still carries the normal map (no base colour texture).
    (glb,) = [p for p in D.export_detail_mesh(tmp_path / "plain", v, f, uv, d, formats=("glb",)) if p.suffix == ".glb"]
    gltf, _ = read_glb_json(glb)
    assert "normalTexture" in gltf["materials"][0] and "baseColorTexture" not in gltf["materials"][0].get(
        "pbrMetallicRoughness", {})


def test_ict_face_all_outputs(tmp_path, ict_model):
    m = ict_model
    v = m.mean_mm.numpy().astype(np.float64)
    f = m.triangles.numpy()
    uv = m.uv.numpy()
    skin = m.region_mask("skin").numpy()[f].all(1)
    assert skin.sum() > 10000
    S = 1024
    d = _smooth_map(S, seed=5, amp_mm=0.4)
    tex = np.full((256, 256, 3), 180, np.uint8)
    t0 = time.perf_counter()
    files = D.export_detail_mesh(tmp_path, v, f, uv, d, texture=tex, triangle_mask=skin, levels=2)
    elapsed = time.perf_counter() - t0
    assert elapsed < 20.0  # generous (first call, slow CI); typically ~1 s cold, ~0.5 s warm on 2 cores
    assert {p.name for p in files} >= {"normal_map.png", "displacement.png", "mesh_detail.obj", "mesh_detail.glb"}
    nm = np.asarray(Image.open(tmp_path / "normal_map.png"))
    assert nm.shape == (S, S, 3) and (nm != FLAT).any(2).mean() > 0.2
    with Image.open(tmp_path / "displacement.png") as im:
        assert im.mode.startswith("I;16") and im.size == (S, S)
    lines = (tmp_path / "mesh_detail.obj").read_text().splitlines()
    obj_v = np.array([[float(x) for x in line.split()[1:4]] for line in lines if line.startswith("v ")])
    n_faces = sum(line.startswith("f ") for line in lines)
    counts = np.bincount(D.subdivide_masked(f, uv, skin, 2, n_vertices=len(v))["parent"], minlength=len(f))
    assert (counts[skin] == 16).all() and n_faces == counts.sum() > 16 * skin.sum()
    assert len(trimesh.load(tmp_path / "mesh_detail.obj", process=False).faces) == n_faces
    # No cracks: with a zero map the open border of the subdivided mesh is the coarse one's.
    v0, f0, _ = D.displaced_mesh(v, f, uv, np.zeros((S, S)), skin, 2)

    def border_length(verts, tris):
        e = np.sort(tris[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
        keys, c = np.unique(e, axis=0, return_counts=True)
        once = keys[c == 1]
        return np.linalg.norm(verts[once[:, 0]] - verts[once[:, 1]], axis=1).sum()

    assert border_length(v0, f0) == pytest.approx(border_length(v, f), rel=1e-6)
    # The displacement really moved the skin (by at most the map's amplitude).
    moved = np.linalg.norm(obj_v[:len(v)] - v, axis=1)
    assert moved.max() <= np.abs(d).max() + 1e-3 and moved[np.unique(f[skin])].max() > 0.1


def test_fast_uv_deduplication_matches_the_row_wise_unique():
    """faceclip.io.mesh._unique_uv keys UVs as integers (for the subdivided meshes' speed); it
    must give what the row-wise np.unique of the rounded UVs gives, negative UVs included."""
    from faceclip.io.mesh import _TOPOLOGY_CACHE, _unique_uv

    rng = np.random.default_rng(0)
    # Repeats once rounded to 7 decimals, negatives, values beyond 1.
    uv = np.round(rng.random((3000, 3, 2)) * 3 - 1, 1) + rng.random((3000, 3, 1)) * 1e-8
    uv[0, 0] = (-0.0, 1e-9)
    _TOPOLOGY_CACHE.clear()
    uniq, idx = _unique_uv(uv)
    ref_uniq, ref_idx = np.unique(np.round(uv.reshape(-1, 2), 7), axis=0, return_inverse=True)
    assert np.array_equal(uniq, ref_uniq) and np.array_equal(idx.reshape(-1), ref_idx.reshape(-1))
    assert len(uniq) < len(uv) * 3


def test_write_glb_normal_texture_needs_uvs(tmp_path):
    from faceclip.io.mesh import write_glb

    v, f, uv = _plane()
    with pytest.raises(ValueError, match="needs uv"):
        write_glb(tmp_path / "x.glb", v, f, normal_texture=np.full((4, 4, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_glb(tmp_path / "x.glb", v, f, uv, normal_texture=np.zeros((4, 4, 3)))
