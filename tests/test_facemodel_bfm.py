"""BFM loader on a small synthetic BFM_model_front.mat written by the test (no BFM data ships)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from faceclip.errors import ModelNotInstalledError


def _synthetic_face(n_side: int = 24, seed: int = 0):
    """A bumpy half-ellipsoid 'face' in Deep3DFaceRecon units (1 unit = 100 mm)."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.linspace(-0.75, 0.75, n_side), np.linspace(-0.9, 0.9, n_side))
    zs = 0.6 * np.sqrt(np.clip(1 - (xs / 0.9) ** 2 - (ys / 1.1) ** 2, 0, None))
    verts = np.stack([xs, ys, zs], axis=-1).reshape(-1, 3) + 3.0  # off-centre: loader centres it
    idx = np.arange(n_side * n_side).reshape(n_side, n_side)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    # Deliberately wound clockwise seen from +Z, to test that the loader orients outward.
    tri = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    n = len(verts)
    lmk = rng.choice(n, 68, replace=False)
    return verts, tri, lmk, rng


def write_bfm_mat(path, with_texture: bool = True, drop: str | None = None):
    verts, tri, lmk, rng = _synthetic_face()
    n = len(verts)
    data = {
        "meanshape": verts.reshape(1, -1),
        "idBase": rng.normal(scale=1e-3, size=(3 * n, 80)),
        "exBase": rng.normal(scale=1e-3, size=(3 * n, 64)),
        "tri": tri + 1,  # 1-based, as in the .mat
        "keypoints": (lmk + 1).reshape(1, 68),
        "skinmask": (rng.random((1, n)) > 0.3).astype(np.float64),
    }
    if with_texture:
        data["meantex"] = rng.uniform(80, 200, size=(1, 3 * n))
        data["texBase"] = rng.normal(scale=2.0, size=(3 * n, 80))
    if drop:
        data.pop(drop)
    scipy.io.savemat(str(path), data)
    return data, verts, tri, lmk


def test_bfm_loads_with_units_topology_and_albedo(tmp_path):
    from faceclip.facemodel import load_face_model

    path = tmp_path / "BFM_model_front.mat"
    data, verts, tri, lmk = write_bfm_mat(path)
    m = load_face_model("bfm", path=path)
    n = len(verts)
    assert (m.n_vertices, m.n_identity, m.n_expression, m.n_albedo) == (n, 80, 64, 80)
    assert m.landmarks68.tolist() == lmk.tolist()  # 1-based -> 0-based
    # Units: Deep3DFaceRecon files are 1 unit = 100 mm; the loader centres the mean shape.
    expected = (verts - verts.mean(0)) * 100.0
    assert np.allclose(m.mean_mm.numpy(), expected, atol=1e-3)
    # Basis in mm per unit coefficient, xyz interleaved per vertex.
    k = 5
    coeffs = torch.zeros(1, 80)
    coeffs[0, k] = 1.0
    delta = (m.vertices(identity=coeffs) - m.mean_mm)[0].numpy()
    assert np.allclose(delta, data["idBase"][:, k].reshape(n, 3) * 100.0, atol=1e-4)
    # Albedo in [0, 1] from 0-255, with its basis.
    out = m(identity=coeffs, albedo=torch.ones(1, 80))
    mean_alb = data["meantex"].reshape(n, 3) / 255.0
    assert np.allclose(m.albedo_mean.numpy(), mean_alb, atol=1e-5)
    assert np.allclose(out.albedo[0].numpy(), mean_alb + data["texBase"].sum(1).reshape(n, 3) / 255.0, atol=1e-4)
    # Triangles re-oriented so that normals face the viewer (+Z) on the face.
    p = m.mean_mm[m.triangles]
    normals = torch.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=1)
    assert float(normals[:, 2].sum()) > 0
    assert set(np.unique(m.triangles.numpy())) <= set(range(n))
    # Skin region from the file's skinmask; generated UVs in [0, 1].
    assert m.regions["skin"].tolist() == np.nonzero(data["skinmask"][0] > 0)[0].tolist()
    assert float(m.uv.min()) >= 0 and float(m.uv.max()) <= 1
    assert {"nose", "forehead", "cheeks", "mouth", "eyes"} <= set(m.regions)


def test_bfm_without_texture_has_no_albedo(tmp_path):
    from faceclip.facemodel import load_face_model

    path = tmp_path / "bfm.mat"
    write_bfm_mat(path, with_texture=False)
    m = load_face_model("bfm", path=path)
    assert not m.has_albedo and m(identity=torch.zeros(2, 80)).albedo is None


def test_bfm_missing_variable_names_it(tmp_path):
    from faceclip.facemodel import load_face_model

    path = tmp_path / "bfm.mat"
    write_bfm_mat(path, drop="exBase")
    with pytest.raises(ModelNotInstalledError, match="missing exBase"):
        load_face_model("bfm", path=path)


def test_bfm_missing_or_corrupt_file(tmp_path):
    from faceclip.facemodel import load_face_model

    with pytest.raises(ModelNotInstalledError, match="BFM file not found"):
        load_face_model("bfm", path=tmp_path / "nope.mat")
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file garbage" + b"\x00" * 50)
    with pytest.raises(ModelNotInstalledError, match="cannot read BFM file"):
        load_face_model("bfm", path=bad)


def test_bfm_install_to_cache_and_cli(tmp_path, faceclip_home):
    from faceclip.cli import main
    from faceclip.facemodel import load_face_model
    from faceclip.facemodel.registry import cache_path, remove_model

    path = tmp_path / "BFM_model_front.mat"
    write_bfm_mat(path)
    try:
        assert main(["models", "install", "bfm", "--from", str(path), "--quiet"]) == 0
        assert cache_path("bfm").is_file()
        m = load_face_model("bfm")
        assert m.n_identity == 80 and m.licence.startswith("Basel")
        out = tmp_path / "export"
        assert main(["export-mean", "--face-model", "bfm", "--out", str(out)]) == 0
        assert (out / "mesh.obj").is_file() and (out / "mesh.glb").is_file()
    finally:
        remove_model("bfm")
