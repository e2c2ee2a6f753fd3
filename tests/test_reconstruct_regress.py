"""`faceclip reconstruct --method regress|fit --checkpoint`: the regressor in the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from conftest import REPO
from faceclip.cli import main

EXAMPLE = REPO / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def untrained_checkpoint(ict_cache, tmp_path_factory):
    """An untrained regressor for the reconstruction geometry: it predicts the mean face."""
    from faceclip.facemodel import load_face_model
    from faceclip.reconstruction import RECONSTRUCTION_GEOMETRY
    from faceclip.nets.regressor import FaceRegressor, config_for_model, save_regressor

    model = load_face_model("ict", geometry=RECONSTRUCTION_GEOMETRY)
    net = FaceRegressor(config_for_model(model), pretrained=False)
    return save_regressor(net, tmp_path_factory.mktemp("ckpt") / "untrained.pt", half=True)


def test_regress_method_writes_everything(untrained_checkpoint, tmp_path):
    code = main(["reconstruct", str(EXAMPLE), "--out", str(tmp_path), "--method", "regress",
                 "--checkpoint", str(untrained_checkpoint), "--quiet", "--texture-size", "256"])
    assert code == 0
    d = tmp_path / "astronaut"
    params = json.loads((d / "params.json").read_text())
    assert params["method"] == "regress"
    assert params["initialisation"] == "regressor untrained.pt"
    assert params["weights"]["regressor"]["file"] == str(untrained_checkpoint)
    assert len(params["weights"]["regressor"]["sha256"]) == 64
    # Untrained heads: the mean face, neutral, frontal, placed on the aligned face.
    assert max(abs(v) for v in params["identity"]) == 0.0
    assert params["rotation"]["euler_pitch_yaw_roll_deg"] == [0.0, 0.0, 0.0]
    assert params["landmark_nme_interocular"] < 0.15
    mesh = trimesh.load(d / "mesh.ply", process=False)
    assert np.isfinite(mesh.vertices).all() and len(mesh.vertices) == 14388


def test_fit_starts_from_the_regressor(untrained_checkpoint, tmp_path):
    code = main(["reconstruct", str(EXAMPLE), "--out", str(tmp_path), "--fast", "--quiet",
                 "--checkpoint", str(untrained_checkpoint), "--texture-size", "256"])
    assert code == 0
    params = json.loads((tmp_path / "astronaut" / "params.json").read_text())
    assert params["method"] == "fit (fast)"
    assert params["initialisation"] == "regressor untrained.pt"
    assert params["landmark_nme_interocular"] < 0.06  # fitting refines the mean-face start
    assert "landmark" in params["loss_terms"]


def test_no_regressor_flag_fits_from_the_mean_face(untrained_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("FACECLIP_REGRESSOR", str(untrained_checkpoint))
    code = main(["reconstruct", str(EXAMPLE), "--out", str(tmp_path), "--fast", "--quiet", "--no-regressor",
                 "--texture-size", "256"])
    assert code == 0
    params = json.loads((tmp_path / "astronaut" / "params.json").read_text())
    assert params["initialisation"].startswith("mean face")
    assert params["weights"]["regressor"]["file"] == "none"


def test_bad_checkpoints_fail_clearly(ict_cache, tmp_path, capsys):
    code = main(["reconstruct", str(EXAMPLE), "--out", str(tmp_path / "o"), "--method", "regress",
                 "--checkpoint", str(tmp_path / "missing.pt"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "regressor checkpoint not found" in err and "Traceback" not in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    code = main(["reconstruct", str(EXAMPLE), "--out", str(tmp_path / "o"), "--checkpoint", str(bad), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.pt" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
