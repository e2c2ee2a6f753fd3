"""The ``faceclip`` command: help, exit codes, the main job (demo) and model commands."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import trimesh
from PIL import Image

from faceclip.cli import main


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "faceclip models install ict" in out and "faceclip demo" in out


def test_console_script_is_installed():
    exe = subprocess.run([sys.executable, "-m", "faceclip.cli", "--version"], capture_output=True, text=True)
    assert exe.returncode == 0 and exe.stdout.startswith("faceclip ")


def test_bare_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: faceclip" in capsys.readouterr().out


def test_export_mean_writes_mesh_preview_and_params(tmp_path, ict_cache):
    d = tmp_path / "mean_face"
    assert main(["export-mean", "--geometry", "head_eyes", "--out", str(d)]) == 0
    for name in ("mesh.obj", "mesh.mtl", "mesh_texture.png", "mesh.ply", "mesh.glb", "preview.png", "params.json"):
        assert (d / name).is_file(), name
    params = json.loads((d / "params.json").read_text())
    assert params["model"] == "ict" and params["geometry"] == "head_eyes" and params["units"] == "mm"
    assert len(params["expression"]) == 53 and "jawOpen" in params["expression"]
    mesh = trimesh.load(d / "mesh.obj", process=False)
    assert len(mesh.faces) == params["n_triangles"]
    # The preview is a real picture: mostly white background, a face-coloured middle.
    img = np.asarray(Image.open(d / "preview.png").convert("RGB")).astype(float)
    assert img.shape[0] > 300 and img.shape[1] > 1000
    tile = img[30:400, :384]
    centre = tile[150:250, 150:230]
    assert centre.std() > 3 and abs(centre[..., 0].mean() - 255) > 30  # shaded skin, not background


def test_preview_unknown_geometry_exit_2(ict_cache, tmp_path, capsys):
    assert main(["models", "preview", "--geometry", "torso", "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "unknown geometry 'torso'" in err and "Traceback" not in err


def test_export_mean_full_geometry(ict_cache, tmp_path):
    assert main(["export-mean", "--geometry", "face", "--out", str(tmp_path)]) == 0
    mesh = trimesh.load(tmp_path / "mesh.ply", process=False)
    assert len(mesh.vertices) == 9409


def test_install_from_missing_path_exit_2(tmp_path, capsys):
    assert main(["models", "install", "ict", "--from", str(tmp_path / "nowhere"), "--force", "--quiet"]) == 2
    assert "ICT-FaceKit source not found" in capsys.readouterr().err
