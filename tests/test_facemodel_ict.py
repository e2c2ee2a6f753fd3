"""ICT-FaceKit conversion: exactness against the OBJ files, sizes, geometries and regions."""

from __future__ import annotations

import re
import tarfile

import numpy as np
import pytest
import torch

from conftest import ICT_ARCHIVE

README_LANDMARKS = [
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088,
    3443, 268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140,
    2075, 1147, 4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732,
    5708, 5695, 2081, 0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216,
    6207, 6470, 5517, 5966,
]
CHECK_IDENTITY = [0, 1, 37, 99]
CHECK_EXPRESSION = ["jawOpen", "mouthSmile_L", "eyeBlink_R", "browInnerUp_L"]


def _read_obj_vertices_plain(text: str) -> np.ndarray:
    """Independent, slow-but-simple OBJ vertex reader (not the converter's regex)."""
    rows = [line.split()[1:4] for line in text.splitlines() if line.startswith("v ")]
    return np.array(rows, dtype=np.float64)


@pytest.fixture(scope="module")
def reference_objs() -> dict[str, np.ndarray]:
    wanted = {"generic_neutral_mesh"} | {f"identity{i:03d}" for i in CHECK_IDENTITY} | set(CHECK_EXPRESSION)
    out = {}
    with tarfile.open(ICT_ARCHIVE, "r|xz") as t:
        for m in t:
            stem = m.name.rsplit("/", 1)[-1][:-4]
            if m.name.endswith(".obj") and stem in wanted:
                out[stem] = _read_obj_vertices_plain(t.extractfile(m).read().decode())
    assert set(out) == wanted
    return out


def test_sizes_and_landmarks(ict_model):
    assert ict_model.n_vertices == 26719
    assert ict_model.n_identity == 100
    assert ict_model.n_expression == 53
    assert ict_model.landmarks68.tolist() == README_LANDMARKS
    assert "jawOpen" in ict_model.expression_names and "PupilDilate_L" not in ict_model.expression_names
    assert ict_model.expression_range == "blendshape"
    assert ict_model.triangles.shape[1] == 3 and ict_model.uv.shape == (ict_model.n_triangles, 3, 2)
    assert 0.0 <= float(ict_model.uv.min()) and float(ict_model.uv.max()) <= 1.0


def test_mean_reproduces_neutral_obj(ict_model, reference_objs):
    neutral_cm = ict_model.mean_mm.double().numpy() / 10.0
    assert np.abs(neutral_cm - reference_objs["generic_neutral_mesh"]).max() < 1e-5


@pytest.mark.parametrize("index", CHECK_IDENTITY)
def test_identity_mode_reproduces_obj(ict_model, reference_objs, index):
    coeffs = torch.zeros(1, 100)
    coeffs[0, index] = 1.0
    verts_cm = ict_model.vertices(identity=coeffs)[0].double().numpy() / 10.0
    err = np.abs(verts_cm - reference_objs[f"identity{index:03d}"]).max()
    assert err < 1e-5, f"identity{index:03d}: max error {err} cm"


@pytest.mark.parametrize("name", CHECK_EXPRESSION)
def test_expression_shape_reproduces_obj(ict_model, reference_objs, name):
    coeffs = torch.zeros(1, 53)
    coeffs[0, ict_model.expression_index(name)] = 1.0
    verts_cm = ict_model.vertices(expression=coeffs)[0].double().numpy() / 10.0
    assert np.abs(verts_cm - reference_objs[name]).max() < 1e-5


def test_units_are_millimetres(ict_model):
    v = ict_model.mean_mm
    eye_dist = (v[ict_model.landmarks68[36]] - v[ict_model.landmarks68[45]]).norm()
    assert 80.0 < float(eye_dist) < 110.0  # outer eye corners of an adult: ~90-100 mm
    # Orientation: +Y up (brows above chin), +Z toward viewer (nose tip in front), +X subject's left.
    lm = v[ict_model.landmarks68]
    assert lm[19, 1] > lm[8, 1]
    assert lm[30, 2] > lm[0, 2]
    assert lm[45, 0] > lm[36, 0]


def test_batched_evaluation_matches_loop_and_is_differentiable(ict_head):
    torch.manual_seed(0)
    ident = torch.randn(3, 100, requires_grad=True)
    expr = torch.rand(3, 53, requires_grad=True)
    out = ict_head(identity=ident, expression=expr)
    assert out.vertices_mm.shape == (3, ict_head.n_vertices, 3) and out.albedo is None
    for b in range(3):
        single = ict_head.vertices(ident[b : b + 1], expr[b : b + 1])
        assert torch.allclose(single, out.vertices_mm[b : b + 1], atol=1e-4)
    out.vertices_mm[:, ict_head.landmarks68[30], 2].sum().backward()
    # Linear model: d(nose tip z)/d(identity_k) is the basis value itself.
    expected = ict_head.identity_basis_mm[:, ict_head.landmarks68[30], 2]
    assert torch.allclose(ident.grad[0], expected, atol=1e-6)
    assert expr.grad is not None and expr.grad.abs().sum() > 0


def test_wrong_coefficient_shape_is_rejected(ict_head):
    with pytest.raises(ValueError, match=r"\(B, 100\)"):
        ict_head.vertices(identity=torch.zeros(1, 80))


@pytest.mark.parametrize(
    "geometry,n_vertices", [("face", 9409), ("head", 11248), ("head_eyes", 14388), ("full", 26719)]
)
def test_geometries(ict_cache, ict_model, geometry, n_vertices):
    from faceclip.facemodel import load_face_model

    sub = load_face_model("ict", geometry=geometry)
    assert sub.n_vertices == n_vertices
    assert int(sub.triangles.max()) < n_vertices and int(sub.triangles.min()) >= 0
    # Landmarks keep their 3D positions whatever the subset.
    assert torch.equal(sub.mean_mm[sub.landmarks68], ict_model.mean_mm[ict_model.landmarks68])
    # Every vertex of a surface subset is used by some triangle.
    assert torch.unique(sub.triangles).numel() == n_vertices


def test_unknown_geometry_is_a_clear_error(ict_cache):
    from faceclip.errors import FaceClipError
    from faceclip.facemodel import load_face_model

    with pytest.raises(FaceClipError, match="known: face, head, head_eyes, full"):
        load_face_model("ict", geometry="torso")


def test_regions(ict_model):
    required = {"face", "skin", "eyes", "mouth_interior", "nose", "mouth", "forehead", "cheeks",
                "cheek_left", "cheek_right"}
    assert required <= set(ict_model.regions)
    for name in required:
        assert ict_model.regions[name].numel() > 50, name
    lm = ict_model.landmarks68
    mask = {k: ict_model.region_mask(k) for k in required}
    assert mask["nose"][lm[30]] and mask["nose"][lm[33]]
    assert not mask["nose"][lm[8]] and not mask["cheeks"][lm[8]]
    assert all(mask["mouth"][lm[i]] for i in range(48, 60))
    assert mask["eyes"][21451] and not mask["skin"][21451]  # an eyeball vertex
    assert mask["mouth_interior"][17100] and not mask["skin"][17100]  # a tooth vertex
    v = ict_model.mean_mm
    # Forehead lies above the brows, cheeks on the correct sides.
    assert float(v[ict_model.regions["forehead"], 1].min()) > float(v[lm[17:27], 1].max())
    assert float(v[ict_model.regions["cheek_left"], 0].min()) > 0
    assert float(v[ict_model.regions["cheek_right"], 0].max()) < 0
    assert not (mask["nose"] & mask["cheeks"]).any()
    # Skin is part of the face, never the eyes.
    assert not (mask["skin"] & ~mask["face"]).any()
    assert not (mask["skin"] & mask["eyes"]).any()


def test_contour_candidates_from_readme(ict_model):
    c = ict_model.contour_candidates
    assert c is not None and c.shape == (2, 17)
    assert c[0, :2].tolist() == [1280, 1278] and c[1, :2].tolist() == [3041, 3661]


def test_readme_parser_reads_geometry_table():
    from faceclip.facemodel.ict import _README_GEOMETRY, parse_readme

    with tarfile.open(ICT_ARCHIVE, "r|xz") as t:
        for m in t:
            if m.name.endswith("README.md") and m.name.count("/") == 1:
                text = t.extractfile(m).read().decode()
                break
    parsed = parse_readme(text)
    assert {k: (list(a), list(b)) for k, (a, b) in parsed["geometry"].items()} == {
        k: (list(a), list(b)) for k, (a, b) in _README_GEOMETRY.items()
    }
    assert parsed["landmarks68"] == README_LANDMARKS
    assert parsed["jaw_right"] == [1278, 1272, 12, 1834, 243, 781, 2199, 1447]
    assert re.search(r"Eyelashes right", text)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_evaluation(ict_head):
    gpu = ict_head.to("cuda")
    ident = torch.randn(2, 100, device="cuda")
    assert torch.allclose(gpu.vertices(ident).cpu(), ict_head.vertices(ident.cpu()), atol=1e-3)


def test_uv_atlas_cells_do_not_overlap(ict_cache):
    from faceclip.facemodel import load_face_model

    m = load_face_model("ict", geometry="head_eyes")
    n_face = load_face_model("ict", geometry="face").n_triangles  # face polygons come first
    face_uv, other_uv = m.uv[:n_face], m.uv[n_face:]
    # 4 UV groups (face, head+sockets, two eyeballs) -> 2 x 2 atlas, face in the top-left cell.
    assert float(face_uv[..., 0].max()) <= 0.5 and float(face_uv[..., 1].min()) >= 0.5
    in_face_cell = (other_uv[..., 0] < 0.5) & (other_uv[..., 1] > 0.5)
    assert not in_face_cell.all(dim=1).any()
