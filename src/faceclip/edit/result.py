"""A ``faceclip reconstruct`` result folder, read back as tensors for editing.

A result folder holds ``params.json`` (identity and expression coefficients, the photo camera,
SH light, albedo coefficients, the path of the photo) and ``mesh_texture.png``. Reading it
gives a :class:`ResultFace`: the face model it was made with, the coefficients, the camera of
the photo (at the size of the working copy the reconstruction used, as ``overlay.png``), the
light, the per-vertex albedo, the texture and, when the photo can still be read, the photo.
Re-evaluating the model with the stored coefficients gives the stored mesh (to the 6 decimals
``params.json`` keeps).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from faceclip.errors import InputError
from faceclip.facemodel import FaceModel, load_face_model
from faceclip.render.camera import PerspectiveCamera

TEXTURE_NAME = "mesh_texture.png"
PARAMS_NAME = "params.json"


@dataclass(frozen=True)
class ResultFace:
    """One reconstructed face, as needed to edit and re-render it.

    Attributes:
        folder: the result folder.
        params: its ``params.json`` as read.
        model: the face model (same name and geometry as the reconstruction).
        identity: (1, K_id) identity coefficients.
        expression: (1, K_exp) expression coefficients.
        camera: the photo's camera at ``photo`` size (OpenCV convention).
        sh: (1, 9, 3) SH light in the camera's view frame.
        albedo: (V, 3) per-vertex albedo in [0, 1].
        texture: (Ht, Wt, 3) uint8 UV texture (row 0 = v 1).
        photo: (H, W, 3) uint8 photo at the working-copy scale, or None when it cannot be read.
        photo_note: why ``photo`` is None ("" when it is not).
    """

    folder: Path
    params: dict
    model: FaceModel
    identity: Tensor
    expression: Tensor
    camera: PerspectiveCamera
    sh: Tensor
    albedo: Tensor
    texture: np.ndarray
    photo: np.ndarray | None
    photo_note: str

    @property
    def expression_names(self) -> list[str]:
        return list(self.model.expression_names)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the camera's image."""
        return tuple(self.camera.image_size)

    def vertices(self, expression: Tensor | None = None) -> Tensor:
        """(B, V, 3) mesh in mm for (B, K_exp) expression coefficients (default: the fitted ones)."""
        e = self.expression if expression is None else expression
        return self.model.vertices(self.identity.expand(e.shape[0], -1), e)


def _bad(folder: Path, what: str) -> InputError:
    return InputError(f"{folder}: not a usable `faceclip reconstruct` result ({what})",
                      hint="pass a folder written by `faceclip reconstruct` (it holds params.json and "
                           "mesh_texture.png)")


def _numbers(folder: Path, value, n: int | None, what: str) -> list[float]:
    if not isinstance(value, list) or (n is not None and len(value) != n):
        raise _bad(folder, f"{what}: expected {n if n is not None else 'a list of'} numbers")
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        raise _bad(folder, f"{what}: not numbers") from None
    if not all(math.isfinite(v) for v in out):
        raise _bad(folder, f"{what}: not finite")
    return out


def read_params(folder: str | Path) -> dict:
    """``params.json`` of a result folder.

    Raises:
        InputError: no such folder or file, or not JSON.
    """
    folder = Path(folder)
    path = folder / PARAMS_NAME
    if not folder.is_dir():
        raise InputError(f"{folder}: no such result folder", hint="pass a folder written by `faceclip reconstruct`")
    if not path.is_file():
        raise _bad(folder, f"no {PARAMS_NAME}")
    try:
        params = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(folder, f"{PARAMS_NAME} is not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise _bad(folder, f"{PARAMS_NAME} is not a JSON object")
    return params


def expression_coefficients(folder: Path, params: dict, model: FaceModel) -> list[float]:
    """The expression coefficients of ``params`` in the model's order."""
    exp = params.get("expression")
    if isinstance(exp, dict):
        missing = [n for n in model.expression_names if n not in exp]
        if missing:
            raise _bad(folder, f"expression lacks {', '.join(missing[:3])}")
        return _numbers(folder, [exp[n] for n in model.expression_names], model.n_expression, "expression")
    return _numbers(folder, exp, model.n_expression, "expression")


def _photo_camera(folder: Path, params: dict, scale: float) -> PerspectiveCamera:
    rot, cam = params.get("rotation"), params.get("camera")
    if not isinstance(rot, dict) or not isinstance(cam, dict):
        raise _bad(folder, "no rotation / camera")
    R = np.asarray([_numbers(folder, row, 3, "camera_matrix_R") for row in rot.get("camera_matrix_R", [])]
                   or [[float("nan")] * 3])
    if R.shape != (3, 3):
        raise _bad(folder, "camera_matrix_R is not 3 x 3")
    t = _numbers(folder, params.get("translation_mm"), 3, "translation_mm")
    f = _numbers(folder, [cam.get("fx_px"), cam.get("fy_px"), cam.get("cx_px"), cam.get("cy_px")], 4, "camera")
    hw = _numbers(folder, cam.get("image_size_hw"), 2, "camera image_size_hw")
    size = (max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale)))
    return PerspectiveCamera.create(
        torch.tensor(R, dtype=torch.float32)[None], torch.tensor([t], dtype=torch.float32),
        torch.tensor([[f[0] * scale, f[1] * scale]], dtype=torch.float32), size,
        principal_point_px=torch.tensor([[f[2] * scale, f[3] * scale]], dtype=torch.float32))


def _read_photo(params: dict, folder: Path, size_hw: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    import cv2

    from faceclip.io.images import load_image

    src = params.get("image")
    if not isinstance(src, str) or not src:
        return None, "params.json names no photo"
    p = Path(src)
    candidates = [p] if p.is_absolute() else [p, folder / p, folder.parent / p]
    for c in candidates:
        if c.is_file():
            try:
                rgb = load_image(c)
            except InputError as exc:
                return None, f"the photo {src} cannot be read ({exc.message})"
            h, w = size_hw
            if rgb.shape[:2] != (h, w):
                rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
            return rgb, ""
    return None, f"the photo {src} is not found"


def load_result(folder: str | Path, face_model_path: str | Path | None = None, read_photo: bool = True,
                ) -> ResultFace:
    """Read a result folder (see the module docstring).

    Args:
        folder: a folder written by ``faceclip reconstruct``.
        face_model_path: the model file, for user-provided models (BFM); ICT uses the installed one.
        read_photo: also read the photo named in ``params.json`` (for overlays).

    Raises:
        InputError: the folder is not a usable result (naming what is wrong).
        ModelNotInstalledError: its face model is not installed.
    """
    from faceclip.facemodel.albedo import make_albedo_model
    from faceclip.io.images import load_image

    folder = Path(folder)
    params = read_params(folder)
    info = params.get("model")
    if not isinstance(info, dict) or not isinstance(info.get("name"), str):
        raise _bad(folder, "no model name")
    model = load_face_model(info["name"], path=face_model_path, geometry=info.get("geometry"))
    if info.get("n_vertices") not in (None, model.n_vertices):
        raise _bad(folder, f"made with {info.get('n_vertices')} vertices, the installed {info['name']} "
                           f"{info.get('geometry')} has {model.n_vertices}")
    identity = _numbers(folder, params.get("identity"), model.n_identity, "identity")
    expression = expression_coefficients(folder, params, model)
    scale = float((params.get("working_copy") or {}).get("scale", 1.0) or 1.0)
    if not (math.isfinite(scale) and 0 < scale <= 1):
        raise _bad(folder, "working_copy scale")
    camera = _photo_camera(folder, params, scale)
    light = params.get("lighting") or {}
    sh = np.asarray([_numbers(folder, row, 3, "lighting") for row in light.get("sh_9x3", [])])
    if sh.shape != (9, 3):
        raise _bad(folder, "lighting sh_9x3 is not 9 x 3")
    am = make_albedo_model(model)
    alb = params.get("albedo") or {}
    coeffs = np.asarray([_numbers(folder, row, 3, "albedo") for row in alb.get("coefficients", [])])
    if coeffs.shape != (am.n_coeffs, 3):
        raise _bad(folder, f"albedo coefficients are {coeffs.shape}, expected ({am.n_coeffs}, 3)")
    albedo = am(torch.tensor(coeffs, dtype=torch.float32)[None])[0].clamp(0, 1)
    tex_path = folder / TEXTURE_NAME
    if not tex_path.is_file():
        raise _bad(folder, f"no {TEXTURE_NAME}")
    texture = load_image(tex_path)
    photo, note = _read_photo(params, folder, camera.image_size) if read_photo else (None, "not read")
    return ResultFace(folder, params, model, torch.tensor([identity]), torch.tensor([expression]), camera,
                      torch.tensor(sh, dtype=torch.float32)[None], albedo, texture, photo, note)
