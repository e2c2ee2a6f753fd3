"""Where dlib's model files live, and loading them once per process.

The 68-point shape predictor and the CNN (MMOD) face detector come from the
``face_recognition_models`` package. That package's ``__init__`` imports ``pkg_resources``,
which fails on current setuptools, so it is never imported: its folder is found through
``importlib.util.find_spec`` (which does not execute the package) or, failing that, through
the installed distribution's file list. ``$FACECLIP_DLIB_MODELS`` may point at a folder that
holds the ``.dat`` files instead.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from faceclip.errors import ModelNotInstalledError

log = logging.getLogger(__name__)

SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
MMOD_DETECTOR = "mmod_human_face_detector.dat"
_PACKAGE = "face_recognition_models"
_INSTALL_HINT = "pip install face_recognition_models dlib-bin"


def dlib_model_path(filename: str) -> Path:
    """Return the path of one of dlib's ``.dat`` model files.

    Looks in ``$FACECLIP_DLIB_MODELS`` first, then in the installed
    ``face_recognition_models`` package (without importing it).

    Raises:
        ModelNotInstalledError: the file is nowhere to be found; the message names the
            package to install.
    """
    for folder in _candidate_folders():
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    raise ModelNotInstalledError(
        f"dlib model file {filename} not found: the package '{_PACKAGE}' is not installed"
        " (or $FACECLIP_DLIB_MODELS does not hold it)",
        hint=_INSTALL_HINT,
    )


def _candidate_folders() -> list[Path]:
    folders: list[Path] = []
    env = os.environ.get("FACECLIP_DLIB_MODELS")
    if env:
        folders.append(Path(env).expanduser())
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for loc in spec.submodule_search_locations or []:
            folders.append(Path(loc) / "models")
    try:
        files = importlib.metadata.files(_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name.endswith(".dat"):
            folders.append(Path(str(f.locate())).parent)
            break
    return folders


def import_dlib() -> Any:
    """Import dlib, with an actionable error when it is missing."""
    try:
        import dlib
    except ImportError as exc:
        raise ModelNotInstalledError(
            "the face detector needs dlib, which is not installed", hint="pip install dlib-bin"
        ) from exc
    return dlib


@functools.cache
def hog_detector() -> Any:
    """dlib's frontal face detector (HOG + linear SVM), loaded once."""
    return import_dlib().get_frontal_face_detector()


@functools.cache
def cnn_detector() -> Any:
    """dlib's CNN (MMOD) face detector, loaded once."""
    path = dlib_model_path(MMOD_DETECTOR)
    log.debug("loading %s", path)
    return import_dlib().cnn_face_detection_model_v1(str(path))


@functools.cache
def shape_predictor_68() -> Any:
    """dlib's 68-point shape predictor (iBUG 300-W scheme), loaded once."""
    path = dlib_model_path(SHAPE_PREDICTOR_68)
    log.debug("loading %s", path)
    return import_dlib().shape_predictor(str(path))
