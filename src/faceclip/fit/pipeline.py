"""Photo in, textured 3D face out: detection -> alignment -> fitting -> texture -> files.

:func:`reconstruct_image` does one photo (every selected face); :func:`reconstruct_batch`
runs many photos, keeps going past failures and reports each. Every face's outputs are written
into a temporary folder that is renamed into place only when complete, so a crash or a bad
face never leaves half-written results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from faceclip.errors import FaceClipError, InputError
from faceclip.facemodel import FaceModel, load_face_model
from faceclip.fit.fitter import FitConfig, Fitter, FitResult
from faceclip.fit.texture import image_camera, render_overlay, unwrap_texture

log = logging.getLogger(__name__)

RECONSTRUCTION_GEOMETRY = "head_eyes"


@dataclass
class ReconstructOptions:
    """Options of :func:`reconstruct_image` (the CLI's flags)."""

    fast: bool = False
    all_faces: bool = False
    min_face_px: float = 32.0
    min_score: float = 0.3
    device: str = "cpu"
    seed: int = 0
    texture_px: int = 1024
    delight: bool = False
    face_model: str = "ict"
    face_model_path: str | None = None
    detector: str = "hog"
    cnn_fallback: bool = True
    #: "fit": analysis-by-synthesis fitting, initialised by the regressor when a checkpoint is
    #: available (the shipped one by default); "regress": the regressor alone.
    method: str = "fit"
    #: Regressor checkpoint; None: the shipped default when present.
    checkpoint: str | None = None
    #: Fit from the mean face even when a regressor is available.
    no_regressor: bool = False


@dataclass
class FaceOutput:
    """One reconstructed face: where its files are and its headline numbers."""

    image: Path
    face_index: int
    folder: Path
    files: list[Path]
    landmark_nme: float
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ImageReport:
    """Result of one input image in a batch: its faces, or the error that stopped it."""

    image: Path
    faces: list[FaceOutput] = field(default_factory=list)
    error: str | None = None


_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (memoised per path, size and mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


class Reconstructor:
    """Holds the face model, fitter and detectors; reuse it across photos."""

    def __init__(self, options: ReconstructOptions | None = None) -> None:
        self.options = options or ReconstructOptions()
        o = self.options
        if o.device.startswith("cuda") and not torch.cuda.is_available():
            raise FaceClipError("--device cuda requested but CUDA is not available",
                                hint="use --device cpu, or install a CUDA build of torch")
        geometry = RECONSTRUCTION_GEOMETRY if o.face_model == "ict" else None
        self.model: FaceModel = load_face_model(o.face_model, path=o.face_model_path, geometry=geometry)
        config = FitConfig.fast() if o.fast else FitConfig()
        if o.fast and o.texture_px == ReconstructOptions.texture_px:
            o.texture_px = 512  # fast mode: a 512 texture unless asked otherwise
        config.device = o.device
        self.fitter = Fitter(self.model, config)
        self.regressor, self.regressor_path = self._load_regressor()
        if self.regressor is not None and not o.fast:
            refine = FitConfig.refine()
            for name in ("landmark_steps", "photo_steps", "w_identity", "w_identity_landmarks"):
                setattr(config, name, getattr(refine, name))

    def _load_regressor(self):
        """The regressor to use (or None) and its file, following ``method`` / ``checkpoint``."""
        from faceclip.errors import ModelNotInstalledError
        from faceclip.nets.regressor import default_checkpoint_path, load_regressor

        o = self.options
        if o.method not in ("fit", "regress"):
            raise FaceClipError(f"unknown method {o.method!r}", hint="use --method fit or --method regress")
        if o.no_regressor and o.method == "fit" and not o.checkpoint:
            return None, None
        path = Path(o.checkpoint) if o.checkpoint else default_checkpoint_path()
        if not path.is_file():
            if o.checkpoint or o.method == "regress":
                raise ModelNotInstalledError(f"regressor checkpoint not found: {path}",
                                             hint="pass --checkpoint FILE (trained with `faceclip train`)")
            return None, None
        net = load_regressor(path, device=o.device, face_model=self.model)
        if net.config.n_albedo != self.fitter.albedo_model.n_coeffs:
            raise FaceClipError(f"{path}: regressor predicts {net.config.n_albedo} albedo coefficients, "
                                f"the fitter uses {self.fitter.albedo_model.n_coeffs}")
        return net, path

    def weights_used(self) -> dict[str, dict]:
        """File and hash of every model file involved, or "none" for networks not used."""
        from faceclip.detect.models import dlib_model_path
        from faceclip.facemodel.registry import cache_path

        out: dict[str, dict] = {}
        det = {"hog": None, "cnn": "mmod_human_face_detector.dat"}[self.options.detector]
        files = {"landmarks68": "shape_predictor_68_face_landmarks.dat"}
        if det:
            files["face_detector"] = det
        else:
            out["face_detector"] = {"file": "dlib HOG frontal detector (built into dlib)", "sha256": "none"}
        for key, name in files.items():
            p = dlib_model_path(name)
            out[key] = {"file": str(p), "sha256": file_sha256(p)}
        fm = Path(self.options.face_model_path) if self.options.face_model_path else cache_path(self.options.face_model)
        out["face_model"] = {"file": str(fm), "sha256": file_sha256(fm) if fm.is_file() else "none"}
        rp = self.regressor_path
        out["regressor"] = {"file": str(rp), "sha256": file_sha256(rp)} if rp else {"file": "none", "sha256": "none"}
        out["identity_network"] = {"file": "none", "sha256": "none"}
        out["clip"] = {"file": "none", "sha256": "none"}
        return out

    # ------------------------------------------------------------------ per image

    def detect(self, rgb: np.ndarray, source: str):
        """Faces to reconstruct, by the options' policy.

        With the HOG detector, an image where it finds nothing is tried once more with dlib's
        CNN detector (slower, ~2 s on a CPU, but it finds strongly turned faces).
        """
        from faceclip.detect import FacePolicy, detect_faces, select_faces

        o = self.options
        found = detect_faces(rgb, detector=o.detector)
        if not found and o.detector == "hog" and o.cnn_fallback:
            log.debug("%s: no face with HOG, trying the CNN detector", source)
            found = detect_faces(rgb, detector="cnn")
        # Weak HOG detections (e.g. a face-like badge) are dropped when a confident face exists.
        confident = [f for f in found if f.score >= o.min_score]
        faces = confident if confident else found
        return select_faces(faces, FacePolicy(all_faces=o.all_faces, min_face_px=o.min_face_px), source=source)

    def fit_face(self, rgb: np.ndarray, landmarks68: np.ndarray) -> tuple[FitResult, object]:
        """Align and fit one face. Returns the fit and the :class:`AlignedFace`."""
        from faceclip.detect import align_face, skin_mask

        crop_px = self.fitter.config.crop_px
        aligned = align_face(rgb, landmarks68, size_px=crop_px)
        mask = skin_mask(aligned.crop, aligned.landmarks, valid=aligned.valid)
        torch.manual_seed(self.options.seed)
        crop = torch.from_numpy(aligned.crop.copy()).float() / 255.0
        init = None
        if self.regressor is not None:
            t0 = time.perf_counter()
            init = self.regress(crop)
            t_reg = time.perf_counter() - t0
            if self.options.method == "regress":
                result = self.regressed_result(init)
                result.seconds["regress"] = t_reg
                return result, aligned
        result = self.fitter.fit(
            crop,
            torch.from_numpy(aligned.landmarks.copy()).float(),
            torch.from_numpy(np.ascontiguousarray(mask)),
            init=init,
        )
        if init is not None:
            result.seconds["regress"] = t_reg
        if not torch.isfinite(result.vertices_mm).all():
            raise FaceClipError("fitting diverged (non-finite vertices)")
        return result, aligned

    @torch.no_grad()
    def regress(self, crop: torch.Tensor):
        """(S, S, 3) crop in [0, 1] -> FaceParams (batch 1) from the regressor, resized to its input."""
        x = crop.to(self.fitter.device).permute(2, 0, 1).unsqueeze(0)
        size = self.regressor.config.crop_px
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=True)
        return self.regressor(x, clamp=True).at_crop_size(self.fitter.config.crop_px)

    @torch.no_grad()
    def regressed_result(self, p) -> FitResult:
        """A :class:`FitResult` from regressed parameters alone (``--method regress``)."""
        verts = self.model.vertices(p.identity, p.expression)
        albedo = self.fitter.albedo_model(p.albedo).clamp(0.0, 1.0)
        lm = self.fitter.project_landmarks(p, verts)
        return FitResult(params=p, vertices_mm=verts[0], albedo=albedo[0], landmarks_crop_px=lm[0],
                         losses={}, active_terms=["regressor"], seconds={})

    def reconstruct_image(self, path: Path, out_dir: Path, progress: Callable[[str], None] | None = None) -> list[FaceOutput]:
        """Reconstruct every selected face of one photo into ``out_dir/<stem>[_faceK]/``."""
        from faceclip.io.images import load_image

        t0 = time.perf_counter()
        rgb = load_image(path)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        faces = self.detect(rgb, str(path))
        t_detect = time.perf_counter() - t0
        outputs = []
        for k, face in enumerate(faces):
            name = path.stem if len(faces) == 1 else f"{path.stem}_face{k}"
            seconds = {"load": t_load, "detect": t_detect / len(faces)}
            outputs.append(self._reconstruct_face(rgb, path, k, face, out_dir / name, seconds))
        return outputs

    def _reconstruct_face(self, rgb, path: Path, k: int, face, folder: Path, seconds: dict) -> FaceOutput:
        t0 = time.perf_counter()
        result, aligned = self.fit_face(rgb, face.landmarks)
        seconds["fit"] = time.perf_counter() - t0
        seconds.update({f"fit_{k2}": v for k2, v in result.seconds.items()})
        t0 = time.perf_counter()
        cam = image_camera(result.params, aligned.transform.inverse_matrix, rgb.shape[:2])
        texture, photo_fraction = unwrap_texture(
            self.model, result.vertices_mm, result.albedo, result.params, cam, rgb,
            size_px=self.options.texture_px, delight=self.options.delight)
        overlay = render_overlay(self.model, result.vertices_mm, result.albedo, result.params, cam, rgb)
        seconds["texture_overlay"] = time.perf_counter() - t0
        lm_img = aligned.transform.crop_to_image(result.landmarks_crop_px.cpu().numpy().astype(np.float64))
        nme = landmark_nme(lm_img, face.landmarks)
        t0 = time.perf_counter()
        params = self._params_json(path, k, face, result, cam, lm_img, nme, photo_fraction, aligned)
        files = write_face_outputs(folder, self.model, result, texture, overlay, params)
        seconds["write"] = time.perf_counter() - t0
        params_seconds = {k2: round(v, 4) for k2, v in seconds.items()}
        log.debug("%s face %d: NME %.4f, %.2f s", path, k, nme, sum(v for k2, v in seconds.items() if not k2.startswith("fit_")))
        return FaceOutput(path, k, folder, files, nme, params_seconds)

    def _method_name(self) -> str:
        if self.options.method == "regress":
            return "regress"
        return "fit" + (" (fast)" if self.options.fast else "")

    def _params_json(self, path, k, face, result: FitResult, cam, lm_img, nme, photo_fraction, aligned) -> dict:
        p = result.params
        m = self.model
        R = p.rotation()[0].cpu().numpy()
        return {
            "faceclip_version": _version(),
            "image": str(path),
            "image_size": {"width": int(cam.image_size[1]), "height": int(cam.image_size[0])},
            "face_index": k,
            "detection": {"box": [round(float(x), 2) for x in face.box], "score": round(float(face.score), 4),
                          "detector": face.detector},
            "model": {"name": m.name, "geometry": m.geometry, "n_vertices": m.n_vertices,
                      "n_triangles": m.n_triangles, "licence": m.licence},
            "method": self._method_name(),
            "initialisation": (f"regressor {self.regressor_path.name}" if self.regressor is not None
                               else "mean face + PnP pose (no regressor)"),
            "weights": self.weights_used(),
            "loss_terms": {name: round(v, 6) for name, v in result.losses.items()},
            "seed": self.options.seed,
            "units": "mm; mesh in the model frame (right-handed, +X subject's left, +Y up, +Z out of the face)",
            "identity": [round(float(x), 6) for x in p.identity[0]],
            "expression": {n: round(float(x), 6) for n, x in zip(m.expression_names, p.expression[0])},
            "rotation": {
                "euler_pitch_yaw_roll_deg": [round(float(a) * 180.0 / np.pi, 4) for a in p.angles_rad[0]],
                "head_matrix": np.round(R, 6).tolist(),
                "camera_matrix_R": np.round(cam.R[0].cpu().numpy(), 6).tolist(),
                "convention": "X_cam = camera_matrix_R @ X_model + translation_mm (OpenCV camera: x right, y down, z forward)",
            },
            "translation_mm": [round(float(x), 4) for x in cam.t[0]],
            "camera": {"fx_px": float(cam.fx[0]), "fy_px": float(cam.fy[0]), "cx_px": float(cam.cx[0]),
                       "cy_px": float(cam.cy[0]), "image_size_hw": list(cam.image_size),
                       "pixel_convention": "x right, y down, origin at the top-left image corner, pixel centres at +0.5"},
            "crop": {"size_px": aligned.size_px, **aligned.transform.to_dict()},
            "lighting": {"sh_9x3": np.round(p.sh[0].cpu().numpy(), 6).tolist(),
                         "convention": "Deep3DFaceRecon SH basis with Lambertian constants, view frame (see faceclip.render.shading)"},
            "albedo": {"model": self.fitter.albedo_model.kind,
                       "coefficients": np.round(p.albedo[0].cpu().numpy(), 6).tolist()},
            "texture": {"size_px": self.options.texture_px, "delit": self.options.delight,
                        "photo_fraction_of_face": round(photo_fraction, 4)},
            "landmarks68_2d": np.round(lm_img, 3).tolist(),
            "detected_landmarks68_2d": np.round(face.landmarks, 3).tolist(),
            "landmark_nme_interocular": round(nme, 5),
        }


def landmark_nme(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean landmark distance normalised by the outer-eye-corner distance (landmarks 36, 45)."""
    iod = float(np.linalg.norm(target[36] - target[45]))
    return float(np.linalg.norm(pred - target, axis=1).mean() / max(iod, 1e-9))


def _version() -> str:
    from faceclip import __version__

    return __version__


def write_face_outputs(folder: Path, model: FaceModel, result: FitResult, texture: np.ndarray,
                       overlay: np.ndarray, params: dict) -> list[Path]:
    """Write mesh.obj/.mtl/_texture.png, mesh.ply, mesh.glb, params.json, overlay.png atomically.

    Everything goes to a temporary sibling folder first, which replaces ``folder`` at the end.
    """
    from PIL import Image

    from faceclip.api import export_mesh

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        export_mesh(model, result.vertices_mm.cpu(), tmp, texture=texture, vertex_colors=result.albedo.cpu().numpy(),
                    glb_texture_format="jpeg")
        (tmp / "params.json").write_text(json.dumps(params, indent=1))
        Image.fromarray(overlay).save(tmp / "overlay.png", compress_level=3)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(folder.iterdir())


def reconstruct_batch(inputs: Iterable[Path], out_dir: Path, options: ReconstructOptions | None = None,
                      show_progress: bool = True) -> list[ImageReport]:
    """Reconstruct many photos; one failing photo never stops the others.

    Returns one :class:`ImageReport` per input (``error`` set for failures).
    """
    from tqdm import tqdm

    paths = list(inputs)
    rec = Reconstructor(options)
    reports = []
    for path in tqdm(paths, desc="reconstruct", unit="image", disable=None if show_progress else True):
        report = ImageReport(Path(path))
        try:
            report.faces = rec.reconstruct_image(Path(path), Path(out_dir))
        except FaceClipError as exc:
            report.error = str(exc).splitlines()[0]
        except (ValueError, RuntimeError, OSError) as exc:
            log.debug("failure on %s", path, exc_info=True)
            report.error = f"{type(exc).__name__}: {exc}"
        reports.append(report)
    return reports


def expand_inputs(items: Iterable[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths.

    Raises:
        InputError: a pattern or path matches nothing.
    """
    import glob

    from faceclip.io.images import list_image_files

    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(list_image_files([p]))
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise InputError(f"no files match {item!r}")
            out.extend(Path(m) for m in matches if Path(m).is_file())
        else:
            out.append(p)  # missing files are reported per image, not here
    return out
