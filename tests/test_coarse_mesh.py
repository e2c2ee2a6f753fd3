"""The coarse, mirror-symmetric triangulation of the face area (faceclip.fit.coarse_mesh)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _grid(n: int = 10, curved: bool = False):
    """A (2n+1) x (2n+1) grid over [-20, 20] mm (a plane z = 0, or a cap bulging toward +z),
    triangles counter-clockwise seen from +z, and the mirror map x -> -x."""
    xs = np.linspace(-20.0, 20.0, 2 * n + 1)
    X, Y = np.meshgrid(xs, xs)  # rows: y, columns: x
    Z = 8.0 - (X ** 2 + Y ** 2) / 100.0 if curved else np.zeros_like(X)
    v = np.stack([X, Y, Z], -1).reshape(-1, 3)
    k = 2 * n + 1
    idx = np.arange(k * k).reshape(k, k)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    f = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    mirror = idx[:, ::-1].ravel()
    return v, f, mirror


def _normals(v, f):
    return np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])


def _boundary(f):
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
    u, c = np.unique(e, axis=0, return_counts=True)
    return u[c == 1]


def test_decimating_a_plane_keeps_its_outline_area_orientation_and_symmetry():
    from faceclip.fit.coarse_mesh import decimate_symmetric

    v, f, mirror = _grid()
    target = 150
    out = decimate_symmetric(v, f, mirror, target)
    kept = np.unique(out)
    assert target - 2 <= len(kept) <= target + 2 < len(np.unique(f))
    assert set(mirror[kept]) == set(kept)  # mirror-symmetric vertex set
    assert set(_boundary(f).ravel()) <= set(kept)  # the outline is kept...
    n = _normals(v, out)
    assert (n[:, 2] > 0).all()  # ...no triangle folded over, orientation kept...
    assert np.isclose(0.5 * n[:, 2].sum(), 40.0 * 40.0)  # ...and the triangles tile the same square
    assert sorted(map(tuple, np.sort(_boundary(out), 1))) == sorted(map(tuple, np.sort(_boundary(f), 1)))


def test_decimating_a_curved_cap_stays_close_to_it():
    from faceclip.fit.coarse_mesh import decimate_symmetric

    v, f, mirror = _grid(curved=True)
    out = decimate_symmetric(v, f, mirror, 200)
    assert (_normals(v, out)[:, 2] > 0).all()  # the cap faces +z everywhere: nothing folded over
    # Every removed vertex lies near the coarse surface: distance to the nearest kept triangle's plane.
    kept = np.unique(out)
    removed = np.setdiff1d(np.unique(f), kept)
    n = _normals(v, out)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    centre = v[out].mean(1)
    nearest = np.argmin(((v[removed][:, None, :2] - centre[None, :, :2]) ** 2).sum(-1), 1)
    dist = np.abs(((v[removed] - centre[nearest]) * n[nearest]).sum(1))
    assert dist.max() < 0.5  # mm, on a cap 8 mm high


def test_decimation_keeps_vertices_without_a_mirror_partner():
    """A hole on one side only (its mirror vertex is in the mesh, it is not) and a mirror map
    that does not map back: no error, the surface and its outline are kept."""
    from faceclip.fit.coarse_mesh import decimate_symmetric

    v, f, mirror = _grid()
    hole = 21 * 10 + 5  # an interior vertex left of the midline; its mirror stays
    f = f[~(f == hole).any(1)]
    mirror = mirror.copy()
    mirror[21 * 4 + 3] = 21 * 4 + 2  # not an involution there
    out = decimate_symmetric(v, f, mirror, 200)
    n = _normals(v, out)
    assert (n[:, 2] > 0).all()
    assert np.isclose(0.5 * n[:, 2].sum(), 0.5 * _normals(v, f)[:, 2].sum())
    kept = set(np.unique(out))
    assert {hole} & kept == set() and {mirror[hole], 21 * 4 + 3, 21 * 4 + 2} <= kept
    assert len(kept) < len(np.unique(f))


def test_the_face_forward_renders_a_coarse_symmetric_face(ict_head):
    from faceclip.fit.stages import FaceForward, FitConfig
    from faceclip.facemodel.params import FaceParams

    full = FaceForward.build(ict_head, FitConfig(photo_mesh_fraction=1.0))
    coarse = FaceForward.build(ict_head, FitConfig())
    assert coarse.config.photo_mesh_fraction == 0.5
    n_full = len(full.render_tris.unique())
    assert len(coarse.photo_subset.vids) < 0.65 * len(full.photo_subset.vids)
    kept = coarse.photo_subset.vids[coarse.photo_tris.unique()]
    assert 0.45 * n_full <= len(kept) <= 0.55 * n_full
    mirror = coarse.albedo_model.mirror
    assert torch.isin(mirror[kept], kept).all()
    # every skin row's mirror is a skin row too (the albedo symmetry prior sees pairs)
    rows = coarse.photo_skin_rows
    assert torch.isin(coarse.photo_mirror_rows[rows], rows).all()
    # The two renders of the mean face cover the same pixels and shade them alike.
    c = full.config
    p = FaceParams.initial(1, ict_head.n_identity, ict_head.n_expression, full.albedo_model.n_coeffs,
                           (224, 224), c.focal_px, distance_mm=1500.0)
    p.angles_rad[0, 1] = 0.4  # a turned head
    renders = []
    for fw in (full, coarse):
        verts = fw.photo_subset.vertices(p)
        albedo = fw.photo_subset.albedo(p.albedo)
        renders.append(fw.render_subset(p, verts, albedo))
    (img_f, cov_f, skin_f), (img_c, cov_c, skin_c) = renders
    iou = (cov_f & cov_c).sum() / (cov_f | cov_c).sum()
    assert iou > 0.98
    both = cov_f & cov_c
    assert float((img_f - img_c).abs()[both].mean()) < 0.01
    assert (skin_f & skin_c).sum() / (skin_f | skin_c).sum() > 0.95


def test_coarse_triangles_are_cached_on_disk(tmp_path, monkeypatch):
    from faceclip.fit import coarse_mesh
    from faceclip.io import mesh

    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path))
    v, f, mirror = _grid(6)
    first = coarse_mesh.coarse_face_triangles(v, f, mirror, 0.5)
    assert list((tmp_path / "models" / "derived").glob("coarse_face_*.npz"))
    mesh._TOPOLOGY_CACHE.clear()  # a new process: only the disk cache is left

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of loaded")

    monkeypatch.setattr(coarse_mesh, "decimate_symmetric", fail)
    assert np.array_equal(coarse_mesh.coarse_face_triangles(v, f, mirror, 0.5), first)
    with pytest.raises(AssertionError, match="recomputed"):
        coarse_mesh.coarse_face_triangles(v, f, mirror, 0.4)  # another fraction is another mesh
    # A damaged cache file is computed again, not trusted.
    monkeypatch.undo()
    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path))
    mesh._TOPOLOGY_CACHE.clear()
    (path,) = (tmp_path / "models" / "derived").glob("coarse_face_*.npz")
    path.write_bytes(path.read_bytes()[:40])
    assert np.array_equal(coarse_mesh.coarse_face_triangles(v, f, mirror, 0.5), first)
    with pytest.raises(ValueError, match="photo_mesh_fraction"):
        coarse_mesh.coarse_face_triangles(v, f, mirror, 0.0)


def test_the_full_ict_geometry_builds_a_coarse_face_too(ict_model):
    """ICT's "full" geometry: some face-area vertices mirror onto the eyes (outside the area)."""
    from faceclip.fit.stages import FaceForward, FitConfig

    fw = FaceForward.build(ict_model, FitConfig())
    kept = fw.photo_subset.vids[fw.photo_tris.unique()]
    n_full = len(fw.render_tris.unique())
    assert 0.45 * n_full <= len(kept) <= 0.6 * n_full
    assert fw.photo_tri_is_skin.any()


def test_the_shipped_coarse_face_is_found_and_is_what_the_tool_makes(ict_head, tmp_path, monkeypatch):
    """The default geometry's decimation ships with the package (tools/make_coarse_face.py): a
    fresh install does not pay the 3 s, and the file is exactly what the algorithm gives."""
    from faceclip.fit import coarse_mesh
    from faceclip.fit.stages import FaceForward, FitConfig
    from faceclip.io import mesh

    fraction = FitConfig().photo_mesh_fraction
    full = FaceForward.build(ict_head, FitConfig(photo_mesh_fraction=1.0))
    args = (ict_head.mean_mm.numpy(), full.render_tris.numpy(), full.albedo_model.mirror.numpy())
    assert coarse_mesh.shipped_file(*args, fraction).is_file()
    computed = coarse_mesh.decimate_symmetric(*args, int(round(fraction * len(np.unique(args[1])))))
    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path))  # an empty cache
    mesh._TOPOLOGY_CACHE.clear()

    def fail(*a, **k):
        raise AssertionError("recomputed instead of loaded")

    monkeypatch.setattr(coarse_mesh, "decimate_symmetric", fail)
    assert np.array_equal(coarse_mesh.coarse_face_triangles(*args, fraction), computed)
    assert not (tmp_path / "models" / "derived").exists()  # nothing had to be written
