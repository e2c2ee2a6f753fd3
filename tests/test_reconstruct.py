"""End to end: `faceclip reconstruct` and `faceclip demo` on real photos."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import trimesh
from PIL import Image

from conftest import FACES_DIR, REPO
from faceclip.cli import main

EXAMPLE = REPO / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def astronaut_result(ict_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    code = main(["reconstruct", str(EXAMPLE), "--out", str(out), "--fast", "--quiet", "--texture-size", "512"])
    assert code == 0
    return out / "astronaut"


def test_outputs_exist_and_open(astronaut_result):
    d = astronaut_result
    names = sorted(p.name for p in d.iterdir())
    assert names == ["mesh.glb", "mesh.mtl", "mesh.obj", "mesh.ply", "mesh_texture.png", "overlay.png", "params.json"]
    obj = trimesh.load(d / "mesh.obj", process=False)
    assert obj.visual.material.image.size == (512, 512)
    ply = trimesh.load(d / "mesh.ply", process=False)
    assert len(ply.vertices) == 14388 and ply.visual.vertex_colors.shape == (14388, 4)
    (glb,) = trimesh.load(d / "mesh.glb").geometry.values()
    assert len(glb.faces) == len(ply.faces)
    assert not list(d.parent.glob(".*"))  # no temporary folders left behind


def test_params_json(astronaut_result):
    params = json.loads((astronaut_result / "params.json").read_text())
    assert params["model"]["name"] == "ict" and params["model"]["geometry"] == "head_eyes"
    assert params["method"].startswith("fit")
    assert len(params["identity"]) == 100 and len(params["expression"]) == 53
    assert all(0.0 <= v <= 1.0 for v in params["expression"].values())
    assert params["expression"]["mouthSmile_L"] > 0.1  # she smiles
    w = params["weights"]
    assert w["landmarks68"]["file"].endswith("shape_predictor_68_face_landmarks.dat")
    assert len(w["landmarks68"]["sha256"]) == 64
    from faceclip.nets.regressor import SHIPPED_CHECKPOINT

    # The shipped regressor initialises the fitting by default.
    assert w["regressor"]["file"] == str(SHIPPED_CHECKPOINT) and len(w["regressor"]["sha256"]) == 64
    assert params["initialisation"] == f"regressor {SHIPPED_CHECKPOINT.name}"
    assert w["clip"]["file"] == "none"
    assert {"landmark", "identity_reg", "light_fit_rmse"} <= set(params["loss_terms"])  # --fast
    assert params["method"] == "fit (fast)"
    img = Image.open(EXAMPLE)
    assert params["image_size"] == {"width": img.width, "height": img.height}
    lm = np.array(params["landmarks68_2d"])
    det = np.array(params["detected_landmarks68_2d"])
    assert lm.shape == (68, 2)
    iod = np.linalg.norm(det[36] - det[45])
    assert np.linalg.norm(lm - det, axis=1).mean() / iod < 0.05
    assert np.array(params["lighting"]["sh_9x3"]).shape == (9, 3)
    cam = params["camera"]
    assert cam["fx_px"] > 0 and 0 < cam["cx_px"] < img.width
    # Same pixel convention as `faceclip landmarks`: the face box contains the landmarks.
    x0, y0, x1, y1 = params["detection"]["box"]
    assert (lm[:, 0].mean() > x0) and (lm[:, 0].mean() < x1) and (lm[:, 1].mean() > y0) and (lm[:, 1].mean() < y1)


def test_overlay_shows_the_face_over_the_photo(astronaut_result):
    photo = np.asarray(Image.open(EXAMPLE).convert("RGB")).astype(float)
    overlay = np.asarray(Image.open(astronaut_result / "overlay.png")).astype(float)
    assert overlay.shape == photo.shape
    changed = np.abs(overlay - photo).sum(-1) > 30
    params = json.loads((astronaut_result / "params.json").read_text())
    x0, y0, x1, y1 = (int(v) for v in params["detection"]["box"])
    inside = changed[y0:y1, x0:x1].mean()
    outside = changed.copy()
    outside[max(0, y0 - 60): y1 + 60, max(0, x0 - 60): x1 + 60] = False
    assert inside > 0.3  # the render covers the face box...
    assert outside.mean() < 0.01  # ...and leaves the rest of the photo untouched


def test_texture_is_from_the_photo(astronaut_result):
    tex = np.asarray(Image.open(astronaut_result / "mesh_texture.png").convert("RGB")).astype(float)
    face_cell = tex[: tex.shape[0] // 2, : tex.shape[1] // 2]  # face: top-left atlas cell
    centre = face_cell[64:192, 64:192]
    # Skin-coloured (R > G > B) and textured (not one flat colour).
    r, g, b = centre.reshape(-1, 3).mean(0)
    assert r > g > b and centre.std() > 5


def test_batch_keeps_going_and_reports_failures(ict_cache, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = tmp_path / "face.png"
    shutil.copy(EXAMPLE, good)
    out = tmp_path / "out"
    code = main(["reconstruct", str(bad), str(FACES_DIR / "dogs.jpg"), str(good), "--out", str(out),
                 "--fast", "--quiet", "--texture-size", "256"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.jpg" in captured.err and "dogs.jpg" in captured.err and "no face" in captured.err
    assert "Traceback" not in captured.err
    assert "1/3 images reconstructed" in captured.out
    assert (out / "face" / "mesh.obj").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["face"]


def test_demo_command(ict_cache, tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--fast"]) == 0
    assert (tmp_path / "astronaut" / "overlay.png").is_file()


def test_missing_inputs_are_clear(ict_cache, tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "nope*.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert "no files match" in capsys.readouterr().err
