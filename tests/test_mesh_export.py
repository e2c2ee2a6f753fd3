"""Mesh export round trips: write OBJ/MTL/PNG, PLY and GLB, read back with trimesh, compare."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from faceclip.io.mesh import bake_vertex_colors, split_by_uv, vertex_normals, write_glb, write_obj, write_ply


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


def _glb_primitive(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse a one-primitive GLB by hand (no importer heuristics): its accessors' JSON by
    attribute name (plus "indices") and the data they point to."""
    blob = Path(path).read_bytes()
    magic, version, _ = struct.unpack_from("<4sII", blob, 0)
    assert magic == b"glTF" and version == 2
    json_len, json_type = struct.unpack_from("<I4s", blob, 12)
    assert json_type == b"JSON"
    gltf = json.loads(blob[20:20 + json_len])
    bin_len, bin_type = struct.unpack_from("<I4s", blob, 20 + json_len)
    assert bin_type == b"BIN\0"
    binary = blob[28 + json_len: 28 + json_len + bin_len]
    (mesh,) = gltf["meshes"]
    (prim,) = mesh["primitives"]
    refs = dict(prim["attributes"], indices=prim["indices"])
    dtypes = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
    widths = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
    accessors, data = {}, {}
    for name, i in refs.items():
        acc = gltf["accessors"][i]
        view = gltf["bufferViews"][acc["bufferView"]]
        n = widths[acc["type"]]
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        arr = np.frombuffer(binary, dtypes[acc["componentType"]], acc["count"] * n, start)
        accessors[name], data[name] = acc, arr.reshape(acc["count"], n)
    data["indices"] = data["indices"].reshape(-1, 3).astype(np.int64)
    return accessors, data


@pytest.fixture()
def sphere():
    """An icosphere (radius 50 mm, off the origin) with counter-clockwise-from-outside
    triangles, and random per-corner UVs, so that the writers split every vertex."""
    ico = trimesh.creation.icosphere(subdivisions=2)
    v = ico.vertices * 50.0 + np.array([10.0, -20.0, 30.0])
    f = np.asarray(ico.faces, dtype=np.int64)
    uv = np.random.default_rng(0).random((len(f), 3, 2))
    return v, f, uv, np.full((4, 4, 3), 200, np.uint8)


def _face_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def test_vertex_normals_are_area_weighted_unit_and_follow_winding():
    # Vertex 0 is shared by a large triangle in the z=0 plane and a small one in the x=0 plane.
    v = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, -1], [0, 1, 0], [5, 5, 5.0]])
    f = np.array([[0, 1, 2], [0, 4, 3]])
    n = vertex_normals(v, f)
    assert n.shape == (6, 3) and np.allclose(np.linalg.norm(n, axis=1), 1.0)
    # Cross products: (0, 0, 100) and (-1, 0, 0); area weighting -> (-1, 0, 100) normalised.
    assert np.allclose(n[0], np.array([-1.0, 0, 100]) / np.hypot(1, 100))
    assert np.allclose(n[1], [0, 0, 1]) and np.allclose(n[3], [-1, 0, 0])
    assert np.allclose(vertex_normals(v, f[:, ::-1])[:5], -n[:5])  # reversed winding: reversed normals
    assert np.allclose(n[5], [0, 0, 1])  # unreferenced vertex: still unit length (glTF)


def test_glb_normals_unit_outward_and_shared_across_seams(tmp_path, sphere):
    v, f, uv, tex = sphere
    write_glb(tmp_path / "s.glb", v, f, uv, tex)
    acc, data = _glb_primitive(tmp_path / "s.glb")
    assert "NORMAL" in acc
    assert acc["NORMAL"]["componentType"] == 5126 and acc["NORMAL"]["type"] == "VEC3"
    pos, nrm, tri = data["POSITION"].astype(np.float64), data["NORMAL"].astype(np.float64), data["indices"]
    assert acc["NORMAL"]["count"] == acc["POSITION"]["count"] == len(pos) > len(v)  # split at seams
    assert np.abs(np.linalg.norm(nrm, axis=1) - 1.0).max() < 1e-6  # glTF: unit length
    # Outward: along the radius of this convex mesh, and close to the adjacent face normals.
    radial = pos - v.mean(axis=0)
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    assert (nrm * radial).sum(1).min() > 0.999
    assert (nrm[tri] * _face_normals(pos, tri)[:, None]).sum(-1).min() > 0.95
    # Every split copy of a vertex carries the normal of the unsplit mesh.
    _, _, _, src = split_by_uv(v, f, uv)
    assert np.allclose(pos, v[src], atol=1e-4)
    assert np.allclose(nrm, vertex_normals(v, f)[src], atol=1e-6)


def test_glb_normals_of_a_flipped_winding_point_inward(tmp_path, sphere):
    """The outward check above is not vacuous: triangles wound the other way (clockwise from
    outside) give inward normals, so a winding or sign error in the writer would be caught."""
    v, f, uv, tex = sphere
    write_glb(tmp_path / "flip.glb", v, f[:, ::-1], uv[:, ::-1], tex)
    _, data = _glb_primitive(tmp_path / "flip.glb")
    radial = data["POSITION"] - v.mean(axis=0)
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    assert (data["NORMAL"] * radial).sum(1).max() < -0.999


def test_glb_normals_smooth_across_a_uv_seam(tmp_path, quad_mesh):
    v, f, uv, tex = quad_mesh  # non-planar quad, UV seam along the shared edge 0-2
    write_glb(tmp_path / "q.glb", v, f, uv, tex)
    _, data = _glb_primitive(tmp_path / "q.glb")
    pos, nrm = data["POSITION"].astype(np.float64), data["NORMAL"].astype(np.float64)
    expected = vertex_normals(v, f)
    for k in (0, 2):  # the seam vertices: two copies each, both with the smooth normal
        copies = np.flatnonzero(np.all(np.abs(pos - v[k]) < 1e-4, axis=1))
        assert len(copies) == 2
        assert np.allclose(nrm[copies], expected[k], atol=1e-6)
    # ...which is not either triangle's own normal (each copy sees both triangles).
    fn = _face_normals(v, f)
    assert min(np.abs(expected[0] - fn[0]).max(), np.abs(expected[0] - fn[1]).max()) > 0.05


def test_glb_vertex_colours_has_normals_and_normals_can_be_left_out(tmp_path, sphere):
    v, f, _, _ = sphere
    write_glb(tmp_path / "c.glb", v, f, vertex_colors=np.full((len(v), 3), 0.5))
    acc, data = _glb_primitive(tmp_path / "c.glb")
    assert acc["NORMAL"]["count"] == len(v) and np.allclose(data["NORMAL"], vertex_normals(v, f), atol=1e-6)
    write_glb(tmp_path / "n.glb", v, f, normals=False)
    assert "NORMAL" not in _glb_primitive(tmp_path / "n.glb")[0]


def test_obj_normals_round_trip(tmp_path, sphere):
    v, f, uv, tex = sphere
    write_obj(tmp_path / "s.obj", v, f, uv, tex)
    lines = (tmp_path / "s.obj").read_text().splitlines()
    assert sum(line.startswith("vn ") for line in lines) == len(v)
    face_lines = [line for line in lines if line.startswith("f ")]
    assert len(face_lines) == len(f)
    a, b, c = face_lines[0].split()[1].split("/")
    assert a == c  # f v/vt/vn: one normal per vertex, same index
    back = trimesh.load(tmp_path / "s.obj", process=False)
    assert np.allclose(_corner_positions(back), v[f], atol=1e-5)
    ours = vertex_normals(v, f)
    assert np.allclose(np.asarray(back.vertex_normals)[np.asarray(back.faces)], ours[f], atol=1e-6)
    radial = v - v.mean(axis=0)
    assert ((ours * radial).sum(1) > 0).all()
    # Without UVs: "f v//vn".
    write_obj(tmp_path / "p.obj", v, f)
    assert "//" in (tmp_path / "p.obj").read_text().splitlines()[-1]
    back = trimesh.load(tmp_path / "p.obj", process=False, maintain_order=True)
    assert np.array_equal(back.faces, f) and np.allclose(back.vertex_normals, ours, atol=1e-6)
    write_obj(tmp_path / "none.obj", v, f, uv, tex, normals=False)
    assert "\nvn " not in (tmp_path / "none.obj").read_text()


def test_ply_normals_round_trip(tmp_path, sphere):
    v, f, _, _ = sphere
    write_ply(tmp_path / "s.ply", v, f, np.full((len(v), 3), 0.5))
    header = (tmp_path / "s.ply").read_bytes().split(b"end_header")[0].decode()
    assert "property float nx" in header
    back = trimesh.load(tmp_path / "s.ply", process=False)
    assert np.allclose(back.vertex_normals, vertex_normals(v, f), atol=1e-6)


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
    # Smooth normals in all three files, the same for every copy of a vertex, outward overall.
    v, f = ict_head.mean_mm.numpy().astype(np.float64), ict_head.triangles.numpy()
    ours = vertex_normals(v, f)
    assert np.allclose(np.asarray(obj.vertex_normals)[np.asarray(obj.faces)], ours[f], atol=1e-6)
    assert np.allclose(ply.vertex_normals, ours, atol=1e-6)
    acc, data = _glb_primitive(tmp_path / "mesh.glb")
    assert acc["NORMAL"]["count"] == acc["POSITION"]["count"] > ict_head.n_vertices
    _, _, _, src = split_by_uv(v, f, ict_head.uv.numpy())
    assert np.allclose(data["NORMAL"], ours[src], atol=1e-6)
    outward = ((ours * (v - v.mean(axis=0))).sum(1) > 0).mean()
    assert outward > 0.75  # a head is not convex, but most of it faces away from its centre


def test_obj_topology_lines_are_cached_per_layout(tmp_path):
    """vt and f lines are formatted once per topology; files equal uncached writes."""
    import numpy as np

    from faceclip.io import mesh as M

    rng = np.random.default_rng(0)
    tri = np.array([[0, 1, 2], [0, 2, 3]])
    uv = rng.uniform(0, 1, (2, 3, 2))
    tex = np.zeros((4, 4, 3), np.uint8)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    M.write_obj(tmp_path / "a.obj", a, tri, uv=uv, texture=tex)
    M.write_obj(tmp_path / "b.obj", b, tri, uv=uv, texture=tex)  # topology lines from the cache
    M._TOPOLOGY_CACHE.clear()
    M.write_obj(tmp_path / "b2.obj", b, tri, uv=uv, texture=tex)
    assert (tmp_path / "b.obj").read_text().replace("b_texture", "X").replace("b.mtl", "Y") == \
        (tmp_path / "b2.obj").read_text().replace("b2_texture", "X").replace("b2.mtl", "Y")
    other = np.array([[0, 2, 1], [0, 3, 2]])  # another layout: its own f lines
    M.write_obj(tmp_path / "c.obj", b, other, uv=uv, texture=tex)
    f_lines = [ln for ln in (tmp_path / "c.obj").read_text().splitlines() if ln.startswith("f ")]
    assert f_lines[0].split()[1].split("/")[0] == "1" and f_lines[0].split()[2].split("/")[0] == "3"
    assert (tmp_path / "a.obj").read_text() != (tmp_path / "b.obj").read_text()


def test_export_writes_the_given_texture_losslessly_and_the_mtl_names_it(tmp_path, ict_head):
    """The OBJ's texture is encoded in a worker thread: the file still holds exactly the texture."""
    from faceclip.api import export_mesh

    rng = np.random.default_rng(3)
    tex = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    files = export_mesh(ict_head, ict_head.mean_mm, tmp_path, texture=tex, formats=("obj",))
    assert [p.name for p in files] == ["mesh.obj", "mesh_texture.png", "mesh.mtl"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mesh_texture.png").convert("RGB")), tex)
    assert "map_Kd mesh_texture.png" in (tmp_path / "mesh.mtl").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.mtl", "mesh.obj", "mesh_texture.png"]


def test_encode_png_is_lossless_and_refuses_other_layouts():
    import io

    from faceclip.io.images import encode_png

    rgb = np.random.default_rng(4).integers(0, 256, (31, 17, 3), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(encode_png(rgb))))
    assert back.shape == rgb.shape and np.array_equal(back, rgb)  # RGB order kept
    for bad in (rgb[..., 0], rgb.astype(np.float32), rgb[..., :2]):
        with pytest.raises(ValueError, match="uint8 RGB"):
            encode_png(bad)


def test_export_writes_no_obj_when_its_texture_cannot_be_encoded(tmp_path, ict_head, monkeypatch):
    """The OBJ and MTL are written after the texture they name: a failed encode leaves neither."""
    from faceclip.api import export_mesh
    from faceclip.io import mesh as mesh_io

    def broken(rgb):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(mesh_io, "encode_png", broken)
    with pytest.raises(RuntimeError, match="encoder failed"):
        export_mesh(ict_head, ict_head.mean_mm, tmp_path, formats=("obj",))
    assert not list(tmp_path.glob("mesh.*")) and not list(tmp_path.glob("*.png"))


def test_glb_vertex_colours_load_as_vertex_colours(tmp_path, sphere):
    """Without a texture, the colours are COLOR_0 with glTF's default material, which trimesh
    (like Blender) reads as per-vertex colours."""
    v, f, _, _ = sphere
    colours = np.random.default_rng(1).random((len(v), 3))
    write_glb(tmp_path / "c.glb", v, f, vertex_colors=colours)
    mesh = trimesh.load(tmp_path / "c.glb", force="mesh", process=False)
    assert mesh.visual.kind == "vertex"
    back = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float)
    assert back.shape == (len(v), 3) and np.abs(back - colours * 255).max() <= 1.0
    acc, data = _glb_primitive(tmp_path / "c.glb")
    assert np.allclose(data["COLOR_0"], colours, atol=1e-6)


def test_glb_embeds_an_encoded_texture_as_given_and_checks_its_arguments(tmp_path, quad_mesh):
    v, f, uv, tex = quad_mesh
    from faceclip.io.images import encode_jpeg

    jpeg = encode_jpeg(tex)
    calls = []
    write_glb(tmp_path / "e.glb", v, f, uv, tex, texture_format="jpeg",
              encoded_texture=lambda: calls.append(1) or jpeg)
    assert calls == [1] and jpeg in (tmp_path / "e.glb").read_bytes()
    with pytest.raises(ValueError, match="texture_format"):
        write_glb(tmp_path / "x.glb", v, f, uv, tex, texture_format="webp")
    with pytest.raises(ValueError, match="at least one triangle"):
        write_glb(tmp_path / "x.glb", v, np.zeros((0, 3), np.int64))
    assert not (tmp_path / "x.glb").exists()
