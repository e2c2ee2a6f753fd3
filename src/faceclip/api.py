"""High-level Python API; the ``faceclip`` command line only wraps these functions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from faceclip.facemodel import load_face_model
# export_mesh lives with the writers it calls; re-exported as part of the high-level API.
from faceclip.io.mesh import DEFAULT_SKIN_RGB, MESH_FORMATS, export_mesh  # noqa: F401

def export_mean_face(out_dir: Path, face_model: str = "ict", face_model_path: str | None = None,
                     geometry: str | None = None, preview: bool = True, overwrite: bool = False) -> list[Path]:
    """Export a model's mean face (OBJ/MTL/PNG, PLY, GLB), a preview PNG and ``params.json``.

    ``out_dir`` is written as one result folder (see :mod:`faceclip.io.outputs`): created, or
    replaced atomically when it is empty or an earlier export; a folder holding anything else
    is refused unless ``overwrite``.
    """
    from faceclip.io.outputs import check_replaceable, write_result_folder
    from faceclip.io.preview import save_model_preview

    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite)  # before the model is loaded
    model = load_face_model(face_model, path=face_model_path, geometry=geometry)
    params = {
        "model": model.name,
        "geometry": model.geometry,
        "method": "mean face",
        "units": "mm",
        "orientation": "right-handed; +X subject's left, +Y up, +Z out of the face",
        "n_vertices": model.n_vertices,
        "n_triangles": model.n_triangles,
        "identity": [0.0] * model.n_identity,
        "expression": {name: 0.0 for name in model.expression_names},
        "licence": model.licence,
    }

    def write(tmp: Path) -> None:
        export_mesh(model, model.mean_mm, tmp)
        if preview:
            save_model_preview(model, tmp / "preview.png")
        (tmp / "params.json").write_text(json.dumps(params, indent=2))

    return write_result_folder(out_dir, write, meta={"command": "export-mean"}, overwrite=overwrite)


def example_image() -> Path:
    """The bundled example photo (NASA's public-domain astronaut portrait)."""
    from faceclip.errors import InputError
    from faceclip.paths import repo_root

    candidates = [Path(__file__).resolve().parent / "data" / "astronaut.png"]
    root = repo_root()
    if root is not None:
        candidates.append(root / "examples" / "astronaut.png")
    for c in candidates:
        if c.is_file():
            return c
    raise InputError("the bundled example image examples/astronaut.png is missing",
                     hint="run from a complete checkout of the repository")


def run_demo(out_dir: Path, fast: bool = False):
    """The README's main job: reconstruct the bundled example photo into ``out_dir``.

    Installs the default face model first if needed. Returns the batch reports.
    """
    from faceclip.facemodel.registry import cache_path, install_model
    from faceclip.batch import reconstruct_batch
    from faceclip.reconstruction import ReconstructOptions

    if not cache_path("ict").is_file():
        install_model("ict")
    return reconstruct_batch([example_image()], Path(out_dir), ReconstructOptions(fast=fast))


_RECONSTRUCTORS: dict[tuple, object] = {}


def reconstruct_array(image, method: str = "fit", fast: bool = False, device: str = "cpu",
                      checkpoint: str | None = None, landmark_net: str | None = None,
                      identity_weight: float = 0.0) -> dict:
    """Reconstruct the largest face of an in-memory image (no files written).

    Args:
        image: (H, W, 3) uint8 RGB array.
        method: ``"fit"`` (the default reconstruction: fitting from the mean face),
            ``"fit_mean"`` (the same, named explicitly), ``"fit_regressor"`` (fitting from the
            regressor's prediction), ``"fit_net"`` (fitting to the dense landmark network's
            points, ``--landmarks net``) or ``"regress"`` (the network alone): the names of
            ``faceclip reconstruct --method`` (:data:`faceclip.reconstruction.METHODS`).
            ``"fit_mean"`` refuses a ``checkpoint`` (a checkpoint means the regressor's start).
        checkpoint: regressor checkpoint (default: ``$FACECLIP_REGRESSOR`` or the shipped one).
        landmark_net: dense landmark network for ``"fit_net"`` (default:
            ``$FACECLIP_LANDMARK_NET`` or the shipped one).
        identity_weight: weight of the FaceNet identity term in the fitting (0: off; 2.0 is
            ``faceclip reconstruct --identity``).

    Returns:
        dict with ``vertices_mm`` (V, 3) canonical mesh (model frame), ``triangles`` (F, 3),
        ``landmarks68_px`` (68, 2) fitted landmarks in image pixels, ``params`` (FaceParams,
        crop camera), ``seconds`` per fitting stage, and ``record``: the whole
        :class:`faceclip.reconstruction.FaceReconstruction` (detection, crop, fit, cameras).
        Like ``faceclip reconstruct``, detection and fitting run on a copy of at most
        1600 px on the longer side; coordinates are pixels of ``image``.

    Raises:
        FaceClipError: no face found, or the method is not available (no regressor checkpoint).
    """
    from faceclip.errors import FaceClipError
    from faceclip.reconstruction import ReconstructOptions, Reconstructor

    from faceclip.reconstruction import METHODS

    if method not in METHODS:
        raise FaceClipError(f"unknown method {method!r}", hint=f"use one of {', '.join(map(repr, METHODS))}")
    from faceclip.nets.landmarks import default_landmark_net_path
    from faceclip.nets.regressor import default_checkpoint_path

    net = str(landmark_net or default_landmark_net_path()) if method == "fit_net" else None
    key = (method, fast, device, str(checkpoint or default_checkpoint_path()), net, float(identity_weight))
    rec = _RECONSTRUCTORS.get(key)
    if rec is None:
        options = ReconstructOptions(fast=fast, device=device, method=method, checkpoint=checkpoint,
                                     landmark_net=net, identity_weight=float(identity_weight))
        rec = _RECONSTRUCTORS[key] = Reconstructor(options)
    record = rec.reconstruct_faces(np.ascontiguousarray(image), "image", texture=False, faces=[0])[0]
    return {"vertices_mm": record.vertices_mm.cpu(), "triangles": rec.model.triangles,
            "landmarks68_px": record.landmarks68_px, "params": record.params, "seconds": record.fit.seconds,
            "record": record}
