"""Model installation sources, cache validation and clear errors for missing/corrupt files."""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ICT_ARCHIVE
from faceclip.errors import ModelNotInstalledError


def test_missing_cache_names_file_and_command(tmp_path, monkeypatch):
    from faceclip.facemodel import load_face_model

    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path))
    with pytest.raises(ModelNotInstalledError) as exc:
        load_face_model("ict")
    msg = str(exc.value)
    assert str(tmp_path / "models" / "ict.npz") in msg
    assert "faceclip models install ict" in msg


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_arrays"])
def test_corrupt_cache_is_reported(tmp_path, monkeypatch, ict_cache, damage):
    from faceclip.facemodel import load_face_model

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    target = home / "models" / "ict.npz"
    if damage == "truncate":
        data = ict_cache.read_bytes()
        target.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        target.write_bytes(os.urandom(4096))
    else:
        np.savez(target, mean=np.zeros((3, 3)))
    monkeypatch.setenv("FACECLIP_HOME", str(home))
    with pytest.raises(ModelNotInstalledError, match="ict.npz") as exc:
        load_face_model("ict")
    assert "faceclip models install ict" in str(exc.value)


def test_cli_reports_missing_model_without_traceback(tmp_path, monkeypatch, capsys):
    from faceclip.cli import main

    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path))
    code = main(["models", "preview", "--out", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: face model cache not found" in err and "faceclip models install ict" in err
    assert "Traceback" not in err
    assert not (tmp_path / "p.png").exists()


def test_source_order_user_path_then_home_then_mirror(tmp_path, monkeypatch):
    from faceclip.facemodel.registry import find_ict_source

    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path / "home"))
    # Nothing in FACECLIP_HOME: the environment's mirror next to the checkout is found.
    assert find_ict_source(None).samefile(ICT_ARCHIVE)
    # An archive placed in FACECLIP_HOME comes before the mirror.
    (tmp_path / "home").mkdir()
    placed = tmp_path / "home" / "ICT-FaceKit-master.zip"
    placed.write_bytes(b"PK")
    assert find_ict_source(None) == placed
    # A user path comes first; a missing one is an error naming it.
    assert find_ict_source(tmp_path) == tmp_path
    with pytest.raises(ModelNotInstalledError, match="not-there"):
        find_ict_source(tmp_path / "not-there")


def test_not_an_ict_source_is_a_clear_error(tmp_path):
    from faceclip.facemodel.ict import convert_ict

    (tmp_path / "FaceXModel").mkdir()
    (tmp_path / "FaceXModel" / "readme.txt").write_text("hello")
    with pytest.raises(ModelNotInstalledError, match="generic_neutral_mesh.obj"):
        convert_ict(tmp_path)
    bogus = tmp_path / "bogus.bin"
    bogus.write_bytes(b"\x00\x01")
    with pytest.raises(ModelNotInstalledError, match="not an ICT-FaceKit folder or archive"):
        convert_ict(bogus)


def _extract_subset(dest: Path, drop: str | None = None) -> Path:
    with tarfile.open(ICT_ARCHIVE, "r|xz") as t:
        for m in t:
            if drop and m.name.endswith(drop):
                continue
            if m.isfile():
                t.extract(m, dest, filter="data")
    return dest / "ict"


@pytest.mark.slow
def test_folder_and_zip_sources_convert_identically(tmp_path, ict_cache):
    """A clone-like folder and a GitHub-style zip give the same cache as the tar archive."""
    from faceclip.facemodel.cache import load_cache
    from faceclip.facemodel.ict import convert_ict

    folder = _extract_subset(tmp_path / "x")
    ref = load_cache(ict_cache, "")
    from_folder = convert_ict(folder)
    assert np.array_equal(from_folder.identity_basis, ref.identity_basis)
    assert np.array_equal(from_folder.triangles, ref.triangles)
    assert from_folder.landmarks68.tolist() == ref.landmarks68.tolist()
    # The same files zipped as GitHub serves the repository archive.
    zpath = tmp_path / "ICT-FaceKit-master.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, "ICT-FaceKit-master/" + f.relative_to(folder).as_posix())
    from_zip = convert_ict(zpath)
    assert np.array_equal(from_zip.expression_basis, ref.expression_basis)
    # A missing identity mode is named.
    (folder / "FaceXModel" / "identity042.obj").unlink()
    with pytest.raises(ModelNotInstalledError, match="identity042.obj"):
        convert_ict(folder)


def test_download_is_atomic_and_reports_failures(tmp_path):
    from faceclip.facemodel.registry import download_ict

    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("ICT-FaceKit-master/README.md", "x")
    dest = download_ict(tmp_path / "dl", url=src.as_uri(), progress=False)
    assert dest.read_bytes() == src.read_bytes()
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [dest.name]
    with pytest.raises(ModelNotInstalledError, match="could not download"):
        download_ict(tmp_path / "dl2", url=(tmp_path / "missing.zip").as_uri(), progress=False)
    assert not any((tmp_path / "dl2").iterdir())  # no partial file left


def test_models_list_shows_ict_installed(ict_cache, capsys):
    from faceclip.cli import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("ict"))
    assert " yes " in line and str(ict_cache) in line and "MIT" in line
    assert any(line.startswith("bfm") and " no " in line for line in out.splitlines())


def test_install_is_idempotent(ict_cache):
    from faceclip.facemodel.registry import install_model

    before = ict_cache.stat().st_mtime_ns
    assert install_model("ict") == ict_cache
    assert ict_cache.stat().st_mtime_ns == before  # valid cache kept, no reconversion
