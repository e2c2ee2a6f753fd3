"""Mesh export round trips: write OBJ/MTL/PNG, PLY and GLB, read back with trimesh, compare."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from faceclip.io.mesh import bake_vertex_colors, split_by_uv, write_glb, write_obj, write_ply


@pytest.fixture()
def quad_mesh():
    """Two triangles forming a unit square (mm) with a UV seam on the shared edge."""
    v = np.array([[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 5]], dtype=np.float64)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array(
        [[[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]], [[0.6, 0.0], [1.0, 0.5], [0.6, 0.5]]], dtype=np.float64
    )
    tex = np.zeros((8, 8, 3), np.uint8)
    tex[:4] = (255, 0, 0)  # top half red: v > 0.5
    tex[4:] = (0, 0, 255)
    return v, f, uv, tex


def _corner_positions(mesh: trimesh.Trimesh) -> np.ndarray:
    return np.asarray(mesh.vertices)[np.asarray(mesh.faces)]


def test_obj_round_trip_with_texture(tmp_path, quad_mesh):
    v, f, uv, tex = quad_mesh
    files = write_obj(tmp_path / "mesh.obj", v, f, uv, tex)
    assert [p.name for p in files] == ["mesh.obj", "mesh_texture.png", "mesh.mtl"]
    assert "map_Kd mesh_texture.png" in (tmp_path / "mesh.mtl").read_text()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mesh_texture.png")), tex)
    back = trimesh.load(tmp_path / "mesh.obj", process=False)
    assert np.allclose(_corner_positions(back), v[f], atol=1e-6)
    # Per-corner UVs survive (trimesh splits vertices at the seam).
    assert len(back.vertices) == 6
    uv_back = np.asarray(back.visual.uv)[np.asarray(back.faces)]
    assert np.allclose(uv_back, uv, atol=1e-6)
    assert np.asarray(back.visual.material.image).shape[:2] == (8, 8)


def test_obj_without_uv(tmp_path, quad_mesh):
    v, f, _, _ = quad_mesh
    files = write_obj(tmp_path / "plain.obj", v, f)
    assert files == [tmp_path / "plain.obj"]
    back = trimesh.load(tmp_path / "plain.obj", process=False, maintain_order=True)
    assert np.allclose(back.vertices, v) and np.array_equal(back.faces, f)


def test_ply_round_trip_with_colours(tmp_path, quad_mesh):
    v, f, _, _ = quad_mesh
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]])
    write_ply(tmp_path / "mesh.ply", v, f, colours)
    back = trimesh.load(tmp_path / "mesh.ply", process=False)
    assert np.allclose(back.vertices, v) and np.array_equal(back.faces, f)
    assert np.array_equal(back.visual.vertex_colors[:, :3], np.round(colours * 255).astype(np.uint8))


def test_glb_round_trip_textured(tmp_path, quad_mesh):
    v, f, uv, tex = quad_mesh
    write_glb(tmp_path / "mesh.glb", v, f, uv, tex)
    scene = trimesh.load(tmp_path / "mesh.glb")
    (mesh,) = scene.geometry.values()
    assert np.allclose(np.sort(_corner_positions(mesh).reshape(-1, 3), axis=0),
                       np.sort(v[f].reshape(-1, 3), axis=0), atol=1e-5)
    uv_back = np.asarray(mesh.visual.uv)[np.asarray(mesh.faces)]
    assert np.allclose(np.sort(uv_back.reshape(-1, 2), axis=0), np.sort(uv.reshape(-1, 2), axis=0), atol=1e-6)
    img = mesh.visual.material.baseColorTexture
    assert np.array_equal(np.asarray(img.convert("RGB")), tex)


def test_glb_jpeg_texture(tmp_path):
    v = np.array([[0, 0, 0], [10, 0, 0], [10, 10, 0]], dtype=np.float64)
    f = np.array([[0, 1, 2]])
    uv = np.array([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]])
    yy, xx = np.mgrid[0:64, 0:64]
    tex = np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], -1).astype(np.uint8)  # smooth ramp
    write_glb(tmp_path / "j.glb", v, f, uv, tex, texture_format="jpeg")
    (mesh,) = trimesh.load(tmp_path / "j.glb").geometry.values()
    back = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB")).astype(float)
    assert back.shape == tex.shape and np.abs(back - tex).mean() < 2.0
    assert b"image/jpeg" in (tmp_path / "j.glb").read_bytes()


def test_split_by_uv_duplicates_only_seam_vertices(quad_mesh):
    v, f, uv, _ = quad_mesh
    v2, f2, uv2, src = split_by_uv(v, f, uv)
    assert len(v2) == 6  # vertices 0 and 2 lie on the seam -> duplicated
    assert np.allclose(v2[f2], v[f]) and np.allclose(uv2[f2], uv)
    assert np.array_equal(v2, v[src])


def test_nan_vertices_refused_and_nothing_written(tmp_path, quad_mesh):
    v, f, uv, tex = quad_mesh
    v = v.copy()
    v[1, 0] = np.nan
    for writer, name in ((lambda p: write_obj(p, v, f, uv, tex), "a.obj"), (lambda p: write_ply(p, v, f), "a.ply"),
                         (lambda p: write_glb(p, v, f), "a.glb")):
        with pytest.raises(ValueError, match="NaN"):
            writer(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_bake_vertex_colors_fills_triangles(quad_mesh):
    v, f, uv, _ = quad_mesh
    colours = np.array([[1.0, 0, 0]] * 3 + [[0, 0, 1.0]])
    tex = bake_vertex_colors(uv, f, colours, size_px=64)
    assert tex.shape == (64, 64, 3) and tex.dtype == np.uint8
    # Inside the first triangle (u 0-0.5, v 0-0.5 -> bottom-left quadrant): pure red.
    assert tuple(tex[60, 25]) == (255, 0, 0)
    # Inside the second triangle: mean of (red, red, blue) corner colours.
    r, g, b = tex[45, 50]
    assert abs(int(r) - 170) <= 2 and g == 0 and abs(int(b) - 85) <= 2


def test_export_ict_head_opens_in_trimesh(tmp_path, ict_head):
    from faceclip.api import export_mesh

    files = export_mesh(ict_head, ict_head.mean_mm, tmp_path)
    names = sorted(p.name for p in files)
    assert names == ["mesh.glb", "mesh.mtl", "mesh.obj", "mesh.ply", "mesh_texture.png"]
    obj = trimesh.load(tmp_path / "mesh.obj", process=False, maintain_order=True)
    assert np.allclose(_corner_positions(obj), ict_head.mean_mm.numpy()[ict_head.triangles.numpy()], atol=1e-5)
    ply = trimesh.load(tmp_path / "mesh.ply", process=False)
    assert len(ply.vertices) == ict_head.n_vertices
    glb = trimesh.load(tmp_path / "mesh.glb")
    (mesh,) = glb.geometry.values()
    assert len(mesh.faces) == ict_head.n_triangles
    # mm units: head width 100-250 mm in every file.
    for m in (obj, ply, mesh):
        assert 100 < float(np.ptp(np.asarray(m.vertices)[:, 0])) < 250
