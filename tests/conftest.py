"""Shared fixtures.

The tests never download anything: the ICT-FaceKit archive comes from ``../shared/data`` beside
the checkout (as in CI). All tests run with ``FACECLIP_HOME`` pointing at a temporary folder,
so a user's own installed models are never touched. Set ``FACECLIP_TEST_ICT_CACHE`` to an
existing converted ``ict.npz`` to skip the ~10 s conversion during development.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ICT_ARCHIVE = SHARED_DATA / "ict-facekit.tar.xz"
FACES_DIR = SHARED_DATA / "faces"


@pytest.fixture(scope="session")
def faceclip_home(tmp_path_factory) -> Path:
    """A private FACECLIP_HOME for the whole test session."""
    home = tmp_path_factory.mktemp("faceclip_home")
    old = os.environ.get("FACECLIP_HOME")
    os.environ["FACECLIP_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("FACECLIP_HOME", None)
    else:
        os.environ["FACECLIP_HOME"] = old


@pytest.fixture(scope="session")
def ict_cache(faceclip_home) -> Path:
    """Path of the converted ICT cache inside the session's FACECLIP_HOME."""
    from faceclip.facemodel.registry import cache_path, install_model

    if not ICT_ARCHIVE.is_file():
        pytest.fail(f"test data missing: {ICT_ARCHIVE} (the tests expect ../shared/data beside the checkout)")
    target = cache_path("ict")
    prebuilt = os.environ.get("FACECLIP_TEST_ICT_CACHE")
    if prebuilt and Path(prebuilt).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(prebuilt, target)
    else:
        install_model("ict", source=ICT_ARCHIVE)
    return target


@pytest.fixture(scope="session")
def ict_model(ict_cache):
    """The full ICT model (26,719 vertices) on CPU."""
    from faceclip.facemodel import load_face_model

    return load_face_model("ict")


@pytest.fixture(scope="session")
def ict_head(ict_cache):
    """The ICT ``head_eyes`` geometry used by reconstruction."""
    from faceclip.facemodel import load_face_model

    return load_face_model("ict", geometry="head_eyes")


def plane_mesh(n: int = 9, width_mm: float = 40.0, height_mm: float = 40.0, mirror_u: bool = False):
    """A flat n x n grid in z = 0 facing +z, for the detail tests: ``(vertices (n*n, 3) mm,
    triangles (F, 3), uv_corners (F, 3, 2))`` (NumPy), UVs ``u = x / width`` (or
    ``1 - x / width``), ``v = y / height`` (v up = +y)."""
    import numpy as np

    xx, yy = np.meshgrid(np.linspace(0, width_mm, n), np.linspace(0, height_mm, n))
    v = np.stack([xx.ravel(), yy.ravel(), np.zeros(n * n)], 1)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    a, b = (i * n + j).ravel(), (i * n + j + 1).ravel()
    c, d = ((i + 1) * n + j).ravel(), ((i + 1) * n + j + 1).ravel()
    tri = np.stack([np.stack([a, b, d], 1), np.stack([a, d, c], 1)], 1).reshape(-1, 3)
    uv = np.stack([v[:, 0] / width_mm, v[:, 1] / height_mm], 1)
    if mirror_u:
        uv[:, 0] = 1.0 - uv[:, 0]
    return v, tri, uv[tri]
