"""Geometry kernels and readers of faceclip.evaluate: closest points, similarity fits, mesh and
keypoint files, 2D NME."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faceclip.errors import InputError
from faceclip.evaluate.geometry import (
    Similarity,
    SurfaceQuery,
    align_surface_to_points,
    closest_points_on_triangles,
    fit_similarity,
)
from faceclip.evaluate.mesh import Mesh, load_keypoints, load_mesh
from faceclip.evaluate.nme import nme, normaliser


def _bumpy_sphere(subdiv: int = 3, seed: int = 0) -> Mesh:
    import trimesh

    rng = np.random.default_rng(seed)
    s = trimesh.creation.icosphere(subdiv, 50.0)
    v = s.vertices * (1 + 0.25 * rng.random((len(s.vertices), 1)))  # irregular, non-convex
    return Mesh(v, s.faces)


def _random_rotation(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _brute_force_distances(mesh: Mesh, q: np.ndarray) -> np.ndarray:
    tri = mesh.vertices[mesh.triangles]
    out = np.empty(len(q))
    for s in range(0, len(q), 100):
        cp = closest_points_on_triangles(q[s:s + 100, None], tri[None, :, 0], tri[None, :, 1], tri[None, :, 2])
        out[s:s + 100] = np.linalg.norm(cp - q[s:s + 100, None], axis=-1).min(1)
    return out


def test_closest_point_on_triangle_regions():
    a, b, c = np.array([0.0, 0, 0]), np.array([1.0, 0, 0]), np.array([0.0, 1, 0])
    cases = {
        (0.2, 0.2, 3.0): (0.2, 0.2, 0.0),  # interior: straight down
        (-1.0, -1.0, 0.0): (0.0, 0.0, 0.0),  # vertex A
        (2.0, -0.5, 1.0): (1.0, 0.0, 0.0),  # vertex B
        (0.5, -2.0, 0.0): (0.5, 0.0, 0.0),  # edge AB
        (1.0, 1.0, 0.0): (0.5, 0.5, 0.0),  # edge BC
        (-3.0, 0.25, 0.0): (0.0, 0.25, 0.0),  # edge AC
    }
    for p, expected in cases.items():
        got = closest_points_on_triangles(np.array(p), a, b, c)
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_surface_query_matches_brute_force_on_irregular_mesh():
    mesh = _bumpy_sphere()
    rng = np.random.default_rng(1)
    q = rng.normal(size=(600, 3)) * 45  # inside, near and outside the surface
    _, d, tri = SurfaceQuery(mesh).closest(q)
    np.testing.assert_allclose(d, _brute_force_distances(mesh, q), atol=1e-9)
    # the reported triangle really is at that distance
    cp = closest_points_on_triangles(q, *(mesh.vertices[mesh.triangles[tri, k]] for k in range(3)))
    np.testing.assert_allclose(np.linalg.norm(cp - q, axis=1), d, atol=1e-9)


def test_points_on_the_surface_have_zero_distance():
    mesh = _bumpy_sphere(2)
    rng = np.random.default_rng(2)
    f = rng.integers(0, mesh.n_triangles, 300)
    w = rng.dirichlet([1, 1, 1], 300)
    pts = np.einsum("nk,nkc->nc", w, mesh.vertices[mesh.triangles[f]])
    assert SurfaceQuery(mesh).distances(pts).max() < 1e-9


@pytest.mark.parametrize("estimator", ["least_squares", "l1_ratio"])
def test_fit_similarity_recovers_transform_and_never_reflects(estimator):
    rng = np.random.default_rng(3)
    src = rng.normal(size=(40, 3)) * 30
    R = _random_rotation(rng)
    dst = 1.37 * src @ R.T + np.array([5.0, -7.0, 300.0])
    T = fit_similarity(src, dst, scale_estimator=estimator)
    assert T.scale == pytest.approx(1.37, rel=1e-10)
    np.testing.assert_allclose(T.rotation, R, atol=1e-10)
    np.testing.assert_allclose(T.apply(src), dst, atol=1e-8)
    mirrored = src * np.array([-1.0, 1.0, 1.0])
    T2 = fit_similarity(src, mirrored)
    assert np.linalg.det(T2.rotation) == pytest.approx(1.0)


def test_similarity_compose_and_inverse():
    rng = np.random.default_rng(4)
    a = Similarity(1.2, _random_rotation(rng), rng.normal(size=3))
    b = Similarity(0.7, _random_rotation(rng), rng.normal(size=3))
    p = rng.normal(size=(10, 3))
    np.testing.assert_allclose(a.then(b).apply(p), b.apply(a.apply(p)), atol=1e-12)
    np.testing.assert_allclose(a.inverse().apply(a.apply(p)), p, atol=1e-12)


def test_surface_to_points_icp_recovers_a_small_similarity():
    mesh = _bumpy_sphere()
    rng = np.random.default_rng(5)
    angle = np.radians(6.0)
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    truth = Similarity(1.05, R, np.array([2.0, -1.0, 1.5]))
    pts = truth.apply(mesh.vertices[rng.choice(mesh.n_vertices, 400, replace=False)])
    T, _ = align_surface_to_points(SurfaceQuery(mesh), pts, with_scale=True, tolerance=1e-12)
    np.testing.assert_allclose(T.apply(mesh.vertices), truth.apply(mesh.vertices), atol=1e-3)


def test_subdivision_keeps_the_surface_and_submesh_keeps_whole_triangles():
    mesh = _bumpy_sphere(1)
    sub = mesh.subdivided()
    assert sub.n_triangles == 4 * mesh.n_triangles
    assert sub.n_vertices == mesh.n_vertices + len(mesh.edges())
    assert SurfaceQuery(mesh).distances(sub.vertices).max() < 1e-9
    part, keep = mesh.submesh(np.arange(mesh.n_vertices // 2))
    assert part.n_vertices == len(keep) and part.triangles.max() < part.n_vertices
    np.testing.assert_array_equal(part.vertices, mesh.vertices[keep])


def test_load_mesh_keeps_vertex_order_and_rejects_bad_files(tmp_path):
    from faceclip.io.mesh import write_obj, write_ply

    mesh = _bumpy_sphere(1)
    write_obj(tmp_path / "m.obj", mesh.vertices, mesh.triangles)
    write_ply(tmp_path / "m.ply", mesh.vertices, mesh.triangles)
    for name in ("m.obj", "m.ply"):
        back = load_mesh(tmp_path / name)
        np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-5)
        np.testing.assert_array_equal(back.triangles, mesh.triangles)
    with pytest.raises(InputError, match="not found"):
        load_mesh(tmp_path / "missing.obj")
    (tmp_path / "junk.ply").write_bytes(b"ply\nthis is not a mesh\x00\x01")
    with pytest.raises(InputError):
        load_mesh(tmp_path / "junk.ply")
    (tmp_path / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(InputError, match="no triangles"):
        load_mesh(tmp_path / "points.obj")


def test_load_keypoints_formats_and_errors(tmp_path):
    pts = np.arange(21, dtype=float).reshape(7, 3)
    np.savetxt(tmp_path / "k.txt", pts)
    np.save(tmp_path / "k.npy", pts)
    (tmp_path / "k.json").write_text(json.dumps({"keypoints": pts.tolist()}))
    (tmp_path / "k.obj").write_text("".join(f"v {x} {y} {z}\n" for x, y, z in pts) + "f 1 2 3\n")
    pp = "<!DOCTYPE PickedPoints>\n<PickedPoints>\n" + "".join(
        f' <point x="{x}" y="{y}" z="{z}" active="1" name="{i}"/>\n' for i, (x, y, z) in enumerate(pts)) + "</PickedPoints>\n"
    (tmp_path / "k.pp").write_text(pp)
    for name in ("k.txt", "k.npy", "k.json", "k.obj", "k.pp"):
        np.testing.assert_allclose(load_keypoints(tmp_path / name, n=7), pts)
    with pytest.raises(InputError, match="expected 68"):
        load_keypoints(tmp_path / "k.txt", n=68)
    (tmp_path / "bad.txt").write_text("1 2\n3 4\n")
    with pytest.raises(InputError, match="3 coordinates"):
        load_keypoints(tmp_path / "bad.txt")
    (tmp_path / "text.txt").write_text("hello world foo\n")
    with pytest.raises(InputError):
        load_keypoints(tmp_path / "text.txt")
    with pytest.raises(InputError, match="not found"):
        load_keypoints(tmp_path / "none.txt")


def test_nme_known_values():
    rng = np.random.default_rng(6)
    gt = rng.uniform(50, 150, (68, 2))
    gt[36], gt[45] = (60.0, 80.0), (100.0, 80.0)  # inter-ocular distance 40
    assert nme(gt, gt) == 0.0
    shifted = gt + np.array([3.0, 4.0])  # every point 5 px off
    assert nme(shifted, gt, "inter_ocular") == pytest.approx(5.0 / 40.0)
    w, h = np.ptp(gt[:, 0]), np.ptp(gt[:, 1])
    assert nme(shifted, gt, "box") == pytest.approx(5.0 / np.sqrt(w * h))
    # scale-free: the same error in a 3x larger image is the same NME
    assert nme(3 * shifted, 3 * gt) == pytest.approx(nme(shifted, gt))
    batch = nme(np.stack([gt, shifted]), np.stack([gt, gt]))
    np.testing.assert_allclose(batch, [0.0, 0.125])
    vis = np.zeros(68, bool)
    vis[:10] = True
    off = gt.copy()
    off[20:] += 100.0  # invisible points are ignored
    assert nme(off, gt, visible=vis) == 0.0
    assert normaliser(gt) == pytest.approx(40.0)
    with pytest.raises(ValueError):
        nme(gt[:10], gt[:10])


def test_load_mesh_keeps_every_obj_vertex_in_order(tmp_path):
    """trimesh drops unreferenced vertices of OBJ files whose faces carry normals (f v//vn);
    keypoint indices into the file would then point at the wrong vertices."""
    import numpy as np

    from faceclip.evaluate.mesh import load_mesh
    from faceclip.io.mesh import write_obj

    verts = np.array([[9.0, 9.0, 9.0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [5.0, 5.0, 5.0]])
    tris = np.array([[1, 2, 3], [2, 4, 3]])
    for normals in (True, False):
        write_obj(tmp_path / "m.obj", verts, tris, normals=normals)
        m = load_mesh(tmp_path / "m.obj")
        np.testing.assert_allclose(m.vertices, verts, atol=1e-6)
        np.testing.assert_array_equal(m.triangles, tris)
    (tmp_path / "quad.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1/1/1 2/2/2 3/3/3 4/4/4\nf -4 -3 -2\n")
    q = load_mesh(tmp_path / "quad.obj")
    np.testing.assert_array_equal(q.triangles, [[0, 1, 2], [0, 2, 3], [0, 1, 2]])
    # indented records and tabs between fields are valid OBJ (some exporters write them)
    (tmp_path / "tabs.obj").write_text("  v 0 0 0\nv\t1 0 0\n\tv 1 1 0\n v 0 1 0\n  f 1 2 3\nf\t1 3 4\n")
    t = load_mesh(tmp_path / "tabs.obj")
    np.testing.assert_allclose(t.vertices, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(t.triangles, [[0, 1, 2], [0, 2, 3]])
    from faceclip.evaluate.mesh import load_keypoints

    (tmp_path / "kp.obj").write_text("  v 1 2 3\nv\t4 5 6\n")
    np.testing.assert_allclose(load_keypoints(tmp_path / "kp.obj"), [[1, 2, 3], [4, 5, 6]])
