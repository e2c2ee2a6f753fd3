"""Photo in, textured 3D face out: a few stages around one typed record.

The stages, each a function with explicit inputs and outputs:

1. :func:`load_source` (or :func:`source_from_array`): the photo, its working copy and a
   :class:`SourceImage`;
2. :func:`choose_faces`: the faces to reconstruct (detector, landmarks, face policy);
3. :func:`reconstruct_face`: align, fit, texture, overlay and detail for one face, giving a
   frozen :class:`FaceReconstruction` (source, face, crop, :class:`~faceclip.fit.fitter.FitResult`
   with the :class:`~faceclip.facemodel.params.FaceParams` in the crop camera, the photo camera,
   texture, overlay, detail, landmarks, metrics and :class:`Provenance`);
4. :func:`describe` (the record -> ``params.json``) and :func:`write_reconstruction` (the
   record -> its folder, atomically).

:class:`Reconstructor` holds what the stages need that is loaded once (face model, fitter,
detectors, networks). The CLI and batch runs (:meth:`Reconstructor.reconstruct_image`), the API
(:func:`faceclip.api.reconstruct_array`, :meth:`Reconstructor.reconstruct_faces`) and the web
demo all go through these stages.

:meth:`Reconstructor.reconstruct_image` does one photo (every selected face); :func:`reconstruct_one` wraps
it for a batch, turning any failure into the photo's report (many photos:
:func:`faceclip.batch.reconstruct_batch`). Every face's outputs are written
into a temporary folder that is renamed into place only when complete, so a crash or a bad
face never leaves half-written results; folder names and replacement follow the output policy
of :mod:`faceclip.io.outputs` (safe, unique names; nothing the tool did not write is deleted).

Resolution: detection, landmarks and fitting work on a copy of the photo whose longer side is
at most :data:`WORK_MAX_SIDE_PX`, and landmarks of large faces are predicted at a standard face
size (:data:`LANDMARK_MAX_FACE_PX`), so an upscaled photo gives the same reconstruction as the
original and the work and memory are bounded. The texture samples the full-resolution photo;
``overlay.png`` is drawn on the working copy. All coordinates in ``params.json`` are in pixels
of the full-resolution photo.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
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
from faceclip.io.mesh import MESH_FORMATS, check_formats
from faceclip.io.outputs import check_replaceable, remove_stale_results, safe_name, write_result_folder

log = logging.getLogger(__name__)

RECONSTRUCTION_GEOMETRY = "head_eyes"
#: Longer side (pixels) of the working copy that detection, landmarks and fitting use.
WORK_MAX_SIDE_PX = 1600
#: Faces larger than this (box side, pixels of the working copy) get their landmarks predicted
#: on a copy downscaled to this size.
LANDMARK_MAX_FACE_PX = 320


#: The reconstruction methods: one vocabulary for ``faceclip reconstruct --method``,
#: :func:`faceclip.api.reconstruct_array` and ``faceclip benchmark synthetic --method``
#: (:func:`resolve_method` turns a name into the options it stands for).
METHODS = {
    "fit": "analysis-by-synthesis fitting from the mean face posed by PnP (the default)",
    "fit_mean": "the same as fit, named explicitly",
    "fit_regressor": "fitting from the regressor's prediction, with fewer steps (--init regressor)",
    "fit_net": "fitting to the dense landmark network's points (--landmarks net)",
    "regress": "the regressor alone, no fitting",
}


@dataclass(frozen=True)
class FrontEndOptions:
    """Which faces are reconstructed and which landmarks they are fitted to."""

    #: "auto" (MediaPipe + dlib HOG, merged), "mediapipe", "hog" or "cnn".
    detector: str = "auto"
    #: "mediapipe" (478-point mesh, calibrated dense landmarks), "dlib68", or "net": the
    #: project's dense landmark network (68 landmarks + N surface points, each with its
    #: sigma; MediaPipe's 68 points only place its first crop).
    landmarks: str = "mediapipe"
    #: The dense landmark network file for ``landmarks="net"`` (None: the shipped one).
    landmark_net: str | None = None
    #: Also fit the calibrated dense MediaPipe points (per-point uncertainty, correlated-error
    #: model) instead of the inner 51 of the 68 landmarks; only with ``landmarks="mediapipe"``
    #: and the ICT model. Off by default: on the synthetic benchmark it does not beat the 68
    #: points from the calibrated map (see docs/front-end.md for the figures).
    dense: bool = False
    #: With ``detector="hog"``: try dlib's CNN detector on a photo where HOG finds nothing.
    cnn_fallback: bool = True
    #: Every face (largest first) instead of the largest one.
    all_faces: bool = False
    #: Faces smaller than this (box side, working-copy pixels) are ignored.
    min_face_px: float = 32.0
    #: Detections scored below this are dropped when a confident face exists.
    min_score: float = 0.3


@dataclass(frozen=True)
class OutputOptions:
    """What is written for each face, and where it may be written."""

    #: UV texture side in pixels (None: 1024, or 512 with ``fast``).
    texture_px: int | None = None
    #: Divide the texture by the fitted lighting.
    delight: bool = False
    #: Mesh files to write: any of "obj", "ply", "glb" (params.json and overlay.png always).
    formats: tuple[str, ...] = MESH_FORMATS
    #: Replace existing result folders even when they were not written by faceclip (or hold
    #: files it did not write). Off: such folders are refused (see faceclip.io.outputs).
    overwrite: bool = False
    #: Also recover mid-frequency detail (a displacement map by shape from shading, see
    #: :mod:`faceclip.fit.detail`) and write displacement.png, normal_map.png, mesh_detail.*.
    detail: bool = False
    #: Settings of the detail fit (None: :class:`faceclip.fit.detail.DetailConfig` defaults).
    detail_config: object | None = None
    #: A trained detail network (``detail.pt`` of ``faceclip train`` with ``model.detail``):
    #: the map is predicted from the regressor's features instead of fitted (implies ``detail``).
    #: It reads the features of the regressor it was trained with: ``checkpoint`` (default: the
    #: shipped regressor).
    detail_net: str | None = None


#: The option groups of :class:`ReconstructOptions` and the fields each holds.
_OPTION_GROUPS = {"front_end": FrontEndOptions, "outputs": OutputOptions}


@dataclass(frozen=True, init=False)
class ReconstructOptions:
    """Options of :meth:`Reconstructor.reconstruct_image` (the CLI's flags), frozen.

    The method and the face model sit at the top; the front-end's and the outputs' settings in
    two groups, :class:`FrontEndOptions` (``options.front_end``) and :class:`OutputOptions`
    (``options.outputs``). The constructor takes the groups, or any of their fields by name
    (``ReconstructOptions(fast=True, all_faces=True, texture_px=512)``, as the CLI flags), and so
    does :func:`dataclasses.replace`. :meth:`flat` gives every setting under its own name.
    """

    #: One of :data:`METHODS` ("fit": analysis-by-synthesis fitting; "regress": the regressor
    #: alone; "fit_mean", "fit_regressor", "fit_net": fitting with that start or landmarks).
    method: str = "fit"
    #: Where fitting starts: "mean" (the mean face posed by PnP; the default: with the
    #: calibrated MediaPipe landmarks it beats starting from the shipped regressor, which was
    #: trained for dlib's landmarks: tuning seed 7, n=40, 1.414 vs 1.479 mm) or "regressor"
    #: (its prediction, with fewer steps: faster). ``checkpoint`` implies "regressor".
    init: str = "mean"
    #: Regressor checkpoint; None: the shipped default when present.
    checkpoint: str | None = None
    #: Fit from the mean face even when a regressor is available (the same as init="mean").
    no_regressor: bool = False
    #: Fewer, lower-resolution fitting steps (landmarks, then closed-form light).
    fast: bool = False
    #: Weight of the face-recognition identity term in the photometric stage (0: off;
    #: ``--identity`` gives :data:`faceclip.fit.identity.DEFAULT_IDENTITY_WEIGHT`): the fitted face,
    #: rendered over the photo, should have the photo's FaceNet embedding. Shapes of one person
    #: agree better across photos (bald_guys.jpg: nearest shape of the same person 0.88 vs 0.42)
    #: at several times the time per face (docs/front-end.md).
    identity_weight: float = 0.0
    device: str = "cpu"
    face_model: str = "ict"
    face_model_path: str | None = None
    front_end: FrontEndOptions = field(default_factory=FrontEndOptions)
    outputs: OutputOptions = field(default_factory=OutputOptions)

    def __init__(self, **options) -> None:
        by_group: dict[str, dict] = {g: {} for g in _OPTION_GROUPS}
        for name in list(options):
            for group, cls in _OPTION_GROUPS.items():
                if name in cls.__dataclass_fields__:
                    by_group[group][name] = options.pop(name)
        for f in dataclasses.fields(self):
            if f.name in _OPTION_GROUPS:
                value = options.pop(f.name, None) or _OPTION_GROUPS[f.name]()
                if not isinstance(value, _OPTION_GROUPS[f.name]):
                    raise TypeError(f"ReconstructOptions({f.name}=...) takes a {_OPTION_GROUPS[f.name].__name__}")
                if by_group[f.name]:
                    value = dataclasses.replace(value, **by_group[f.name])
            else:
                value = options.pop(f.name, f.default)
                if f.name == "identity_weight" and isinstance(value, (int, float)):
                    value = float(value)  # 2 and 2.0 are one setting (batch signatures, caches)
            object.__setattr__(self, f.name, value)
        if options:
            raise TypeError(f"unknown reconstruction option(s): {', '.join(sorted(options))}")

    def flat(self) -> dict:
        """Every setting under its own name (the groups' fields included), as the CLI flags."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _OPTION_GROUPS}
        for group in _OPTION_GROUPS:
            out.update({f.name: getattr(getattr(self, group), f.name)
                        for f in dataclasses.fields(getattr(self, group))})
        return out


@dataclass
class FaceOutput:
    """One reconstructed face: where its files are and its headline numbers."""

    image: Path
    face_index: int
    folder: Path
    files: list[Path]
    landmark_nme: float
    seconds: dict[str, float] = field(default_factory=dict)
    #: How many faces the photo had (selected by the options' policy).
    faces_found: int = 1


class FaceIndexError(InputError):
    """A face asked for by index (``reconstruct_image(faces=...)``) is not in the photo."""

    def __init__(self, message: str, n_faces: int) -> None:
        super().__init__(message)
        self.n_faces = n_faces


@dataclass
class ImageReport:
    """Result of one input image in a batch: its faces, or the error that stopped it."""

    image: Path
    faces: list[FaceOutput] = field(default_factory=list)
    error: str | None = None
    #: Wall time of the whole photo (load, detection, every face), seconds.
    seconds: float = 0.0
    #: True when a resumed run found this photo already done (its faces read from the manifest).
    skipped: bool = False


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
        #: The options, with ``method`` resolved to "fit" or "regress" (:func:`resolve_method`).
        self.options = resolve_method(options or ReconstructOptions())
        self._provenance: Provenance | None = None  # worked out on first use (hashes the model files)
        o = self.options
        if o.device.startswith("cuda") and not torch.cuda.is_available():
            raise FaceClipError("--device cuda requested but CUDA is not available",
                                hint="use --device cpu, or install a CUDA build of torch")
        geometry = RECONSTRUCTION_GEOMETRY if o.face_model == "ict" else None
        self.model: FaceModel = load_face_model(o.face_model, path=o.face_model_path, geometry=geometry)
        config = dataclasses.replace(FitConfig.fast() if o.fast else FitConfig(), device=o.device)
        if o.identity_weight > 0:
            # The accurate, slow mode (the encoder's passes dominate its time) keeps the settings
            # its figures were measured with: 224-px renders of the full mesh, 25 landmark
            # iterations from the mean face (a regressor start still takes refine()'s 10 below).
            # One PyTorch thread was faster on 2 cores (2.37 against 3.23 s per face); with more
            # cores, where the encoder's convolutions may gain from threads (not measured here),
            # the fit keeps PyTorch's own setting, as before.
            config = dataclasses.replace(config, render_px=224, photo_mesh_fraction=1.0,
                                         threads=1 if (os.cpu_count() or 1) <= 2 else 0,
                                         landmarks=dataclasses.replace(config.landmarks, steps=25))
        #: The texture side used (the options' or the mode's default; the options stay as given).
        self.texture_px = o.outputs.texture_px if o.outputs.texture_px is not None else (512 if o.fast else 1024)
        self.fitter = Fitter(self.model, config)
        self.dense_points = self._calibration = None
        self.landmarker = None
        if o.front_end.landmarks == "net":
            from faceclip.detect.landmark_net import DenseLandmarker

            self.landmarker = DenseLandmarker(o.front_end.landmark_net, device=o.device, face_model=self.model)
            self.fitter.set_dense_vertices(self.landmarker.vertex_ids)
        if o.front_end.landmarks == "mediapipe" and o.front_end.dense:
            from faceclip.detect.calibration import load_calibration

            self._calibration = load_calibration()
            self.dense_points = self._calibration.dense_points(self.model.triangles.cpu().numpy())
            self.fitter.set_dense_points(self.dense_points)
        self.identity_encoder_path = None
        if o.identity_weight > 0:
            from faceclip.fit.identity import identity_term
            from faceclip.nets.facenet_weights import facenet_cache_path, load_facenet

            self.fitter.extra_terms.append(identity_term(load_facenet(o.device), o.identity_weight))
            self.identity_encoder_path = facenet_cache_path()
        self.regressor, self.regressor_path = self._load_regressor()
        self.detail_net = self.feature_net = self.feature_net_path = None
        if o.outputs.detail_net:
            self.detail_net, self.feature_net = self._load_detail_net()
        if self.regressor is not None and not o.fast:  # a start near the answer: fewer steps, stronger prior
            refine = FitConfig.refine()
            self.fitter.config = dataclasses.replace(
                config,
                landmarks=dataclasses.replace(config.landmarks, steps=refine.landmarks.steps,
                                              identity_prior=refine.landmarks.identity_prior),
                photo=dataclasses.replace(config.photo, steps=refine.photo.steps),
                priors=dataclasses.replace(config.priors, identity=refine.priors.identity))

    def _load_regressor(self):
        """The regressor to use (or None) and its file, following ``method`` / ``checkpoint``."""
        from faceclip.errors import ModelNotInstalledError
        from faceclip.nets.regressor import default_checkpoint_path, load_regressor

        o = self.options
        if o.method == "fit" and not o.checkpoint and (o.no_regressor or o.init == "mean"):
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

    def _load_detail_net(self):
        """The trained detail network and the regressor whose features it reads."""
        from faceclip.errors import ModelNotInstalledError
        from faceclip.nets.detail import load_detail_net
        from faceclip.nets.regressor import default_checkpoint_path, load_regressor

        o = self.options
        net = load_detail_net(o.outputs.detail_net, device=o.device)
        features, path = self.regressor, self.regressor_path
        if features is None:
            path = Path(o.checkpoint) if o.checkpoint else default_checkpoint_path()
            if not path.is_file():
                raise ModelNotInstalledError(f"--detail-net reads a regressor's features; {path} is missing",
                                             hint="pass --checkpoint, the regressor.pt of the detail network's run")
            features = load_regressor(path, device=o.device, face_model=self.model)
        width = features.refine.out_features
        c = net.config
        if (c.in_features, c.face_model, c.n_expression) != (width, self.model.name, self.model.n_expression):
            raise FaceClipError(f"{o.outputs.detail_net}: the detail network reads {c.in_features} features and "
                                f"{c.n_expression} expression weights of {c.face_model}; the regressor gives "
                                f"{width} features of {self.model.name} ({self.model.n_expression} expression weights)",
                                hint="pass --checkpoint, the regressor.pt of the same training run")
        self.feature_net_path = Path(path)
        return net, features

    @torch.no_grad()
    def predict_detail(self, aligned):
        """The trained network's map for an aligned face: a :class:`faceclip.fit.detail.DetailResult`."""
        from faceclip.fit.detail import DetailResult, UVWindow

        t0 = time.perf_counter()
        reg = self.feature_net
        x = torch.from_numpy(np.ascontiguousarray(aligned.crop)).float().div(255.0).permute(2, 0, 1)[None]
        size = reg.config.crop_px
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=True)
        x = x.to(self.fitter.device)
        features = reg.features(x)
        params = reg.decode(reg.heads(features))  # as in training (RegressorWithDetail)
        disp = self.detail_net(features, params.expression)[0, 0].float().cpu().numpy()
        c = self.detail_net.config
        R = disp.shape[0]
        return DetailResult(disp.astype(np.float32), UVWindow(*c.window), float(c.mirror_u), np.ones((R, R), bool),
                            {"max_abs_mm": float(np.abs(disp).max())}, time.perf_counter() - t0)

    def weights_used(self) -> dict[str, dict]:
        """File and hash of every model file involved, or "none" for networks not used."""
        from faceclip.detect.models import dlib_model_path
        from faceclip.facemodel.registry import cache_path

        o, fe = self.options, self.options.front_end
        out: dict[str, dict] = {}

        def add(key: str, path) -> None:
            out[key] = {"file": str(path), "sha256": file_sha256(Path(path))}

        if fe.detector in ("auto", "mediapipe") or fe.landmarks in ("mediapipe", "net"):
            from faceclip.detect.mediapipe import mediapipe_model_files

            mp_files = mediapipe_model_files()
        if fe.detector in ("auto", "mediapipe"):
            add("face_detector_mediapipe_short_range", mp_files["face_detector_short_range"])
            add("face_detector_mediapipe_full_range", mp_files["face_detector_full_range"])
        if fe.detector in ("auto", "hog"):
            out["face_detector_hog"] = {"file": "dlib HOG frontal detector (built into dlib)", "sha256": "none"}
        if fe.detector == "cnn" or (fe.detector == "hog" and fe.cnn_fallback):
            add("face_detector_cnn", dlib_model_path("mmod_human_face_detector.dat"))
        if fe.landmarks == "mediapipe":
            from faceclip.detect.calibration import load_calibration

            add("landmarks_mesh478", mp_files["face_mesh"])
            add("landmarks_calibration", load_calibration().path)
        elif fe.landmarks == "net":
            from faceclip.detect.calibration import load_calibration

            add("landmarks_mesh478", mp_files["face_mesh"])  # places the network's first crop
            add("landmarks_calibration", load_calibration().path)
            add("landmark_network", self.landmarker.path)
        else:
            add("landmarks68", dlib_model_path("shape_predictor_68_face_landmarks.dat"))
        fm = Path(o.face_model_path) if o.face_model_path else cache_path(o.face_model)
        out["face_model"] = {"file": str(fm), "sha256": file_sha256(fm) if fm.is_file() else "none"}
        rp = self.regressor_path
        out["regressor"] = {"file": str(rp), "sha256": file_sha256(rp)} if rp else {"file": "none", "sha256": "none"}
        out["identity_network"] = {"file": "none", "sha256": "none"}
        if self.identity_encoder_path is not None:
            add("identity_network", self.identity_encoder_path)
        out["clip"] = {"file": "none", "sha256": "none"}
        return out

    # ------------------------------------------------------------------ per image

    def detect(self, rgb: np.ndarray, source: str):
        """Faces to reconstruct, landmarked, by the options' detector, landmarks and policy
        (:func:`faceclip.detect.frontend.faces_by_policy`, the rule the training caches use too)."""
        from faceclip.detect import FacePolicy
        from faceclip.detect.frontend import faces_by_policy

        fe = self.options.front_end
        landmarks = "mediapipe" if fe.landmarks == "net" else fe.landmarks  # the network refines them later
        policy = FacePolicy(all_faces=fe.all_faces, min_face_px=fe.min_face_px, min_score=fe.min_score)
        return faces_by_policy(rgb, policy, fe.detector, landmarks, source=source, cnn_fallback=fe.cnn_fallback,
                               landmark_max_face_px=LANDMARK_MAX_FACE_PX)

    def refine_landmarks(self, rgb: np.ndarray, face) -> tuple[np.ndarray, object]:
        """The 68 landmarks to fit a detected face with, and the network's points (or None).

        With ``landmarks="net"`` the dense landmark network runs on the face (its crop placed
        by the front-end's landmarks) and its own 68 points replace the front-end's.
        """
        if self.landmarker is None:
            return face.landmarks, None
        points = self.landmarker.predict(rgb, face.landmarks)
        return points.landmarks68, points

    def fit_detected(self, rgb: np.ndarray, face) -> tuple[FitResult, object, np.ndarray, object]:
        """Fit a face found by :meth:`detect`: ``(fit, aligned crop, 68 landmarks used, network points)``."""
        t0 = time.perf_counter()
        landmarks68, net_points = self.refine_landmarks(rgb, face)
        t_net = time.perf_counter() - t0
        result, aligned = self.fit_face(rgb, landmarks68, face.extra.get("mesh478"), net_points)
        if net_points is not None:
            result.seconds["landmark_net"] = t_net
        return result, aligned, landmarks68, net_points

    def _calibrated_landmark_weights(self, mesh478: np.ndarray | None) -> tuple[torch.Tensor | None, float]:
        """(68,) weights of MediaPipe's mapped landmarks and the landmark term's scale for this
        face's yaw (:meth:`faceclip.detect.calibration.MeshCalibration.landmark_weights`), or
        ``(None, 1.0)``: other landmarks, no mesh, or ``landmarks.calibrated_weights`` off."""
        if (mesh478 is None or self.options.front_end.landmarks != "mediapipe"
                or not self.fitter.config.landmarks.calibrated_weights):
            return None, 1.0
        from faceclip.detect.calibration import load_calibration

        cal = self._calibration or load_calibration()
        got = cal.landmark_weights(cal.yaw_deg(mesh478))
        if got is None:
            return None, 1.0
        return torch.from_numpy(got[0]).float(), got[1]

    def fit_face(self, rgb: np.ndarray, landmarks68: np.ndarray, mesh478: np.ndarray | None = None,
                 net_points=None) -> tuple[FitResult, object]:
        """Align and fit one face. Returns the fit and the :class:`AlignedFace`.

        ``mesh478``: the face's MediaPipe points (image pixels); with dense fitting on, its
        calibrated points join the 68 landmarks. ``net_points``: the dense landmark network's
        :class:`~faceclip.detect.landmark_net.DenseLandmarks` (image pixels) for the face; its
        dense points join the 68 landmarks (pass its ``landmarks68`` as ``landmarks68``).
        """
        from faceclip.detect import align_face, skin_mask

        crop_px = self.fitter.config.crop_px
        aligned = align_face(rgb, landmarks68, size_px=crop_px)
        mask = skin_mask(aligned.crop, aligned.landmarks, valid=aligned.valid)
        torch.manual_seed(0)  # nothing below is random today; keeps it deterministic if that changes
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
        dense = dense_sigma = lm_sigma = None
        if self.dense_points is not None and mesh478 is not None:
            xy = self._calibration.dense_positions(mesh478, self.dense_points.point_ids)
            pts = aligned.transform.image_to_crop(xy)
            dense = torch.from_numpy(pts).float()
        if net_points is not None:
            dense = torch.from_numpy(aligned.transform.image_to_crop(net_points.dense_px)).float()
            dense_sigma = torch.from_numpy(net_points.dense_sigma_px * aligned.transform.scale).float()
            lm_sigma = torch.from_numpy(net_points.sigma_px[:68] * aligned.transform.scale).float()
        lm_weights, lm_scale = self._calibrated_landmark_weights(mesh478)  # (None, 1.0) unless MediaPipe's 68
        result = self.fitter.fit(
            crop,
            torch.from_numpy(aligned.landmarks.copy()).float(),
            torch.from_numpy(np.ascontiguousarray(mask)),
            init=init,
            dense_px=dense,
            dense_sigma_px=dense_sigma,
            landmark_sigma_px=lm_sigma,
            landmark_weights=lm_weights,
            landmark_scale=lm_scale,
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

    def provenance(self) -> "Provenance":
        """What produced this reconstructor's results: method, start, front-end, model files
        (worked out once; the files are hashed then)."""
        if self._provenance is not None:
            return self._provenance
        o, m = self.options, self.model
        detail_network = None
        if self.detail_net is not None:
            detail_network = {
                "file": str(o.outputs.detail_net), "sha256": file_sha256(Path(o.outputs.detail_net)),
                "features_from": {"file": str(self.feature_net_path), "sha256": file_sha256(self.feature_net_path)},
                "note": "the map is the network's prediction on the crop (the regressor's own expression), "
                        "not fitted"}
        self._provenance = Provenance(
            method=self._method_name(),
            initialisation=(f"regressor {self.regressor_path.name}" if self.regressor is not None
                            else "mean face + PnP pose (no regressor)"),
            weights=self.weights_used(),
            detector=o.front_end.detector, landmarks=o.front_end.landmarks,
            model={"name": m.name, "geometry": m.geometry, "n_vertices": m.n_vertices,
                   "n_triangles": m.n_triangles, "licence": m.licence},
            albedo_model=self.fitter.albedo_model.kind,
            texture_px=self.texture_px, delight=o.outputs.delight, formats=tuple(o.outputs.formats),
            detail_network=detail_network)
        return self._provenance

    def reconstruct_image(self, path: Path, out_dir: Path, base: str | None = None,
                          faces: list[int] | None = None) -> list[FaceOutput]:
        """Reconstruct every selected face of one photo into ``out_dir/<base>[_faceK]/``.

        ``base``: the photo's folder name (default: its file stem made safe); a batch plans
        safe, unique names for all photos up front (:func:`faceclip.batch.plan_output_names`).
        ``faces``: only these of the selected faces (indices, largest first; the web demo's
        face picker); folders are named as if all were done.
        Every target folder is checked before any fitting, so a folder that may not be replaced
        fails the photo at once.

        The stages: :func:`load_source` -> :func:`choose_faces` -> :func:`reconstruct_face` (fit,
        texture, detail: one :class:`FaceReconstruction` per face) -> :func:`write_reconstruction`.
        """
        base = base or safe_name(Path(path).stem)
        t0 = time.perf_counter()
        source, full, work = load_source(path)
        t_load = time.perf_counter() - t0
        found, chosen, t_detect = self._choose(work, str(path), faces)
        folders = {k: out_dir / (base if len(found) == 1 else f"{base}_face{k}") for k in chosen}
        for folder in folders.values():
            check_replaceable(folder, self.options.outputs.overwrite)
        provenance = self.provenance()
        outputs = []
        for k, folder in folders.items():
            seconds = {"load": t_load, "detect": t_detect / len(found)}
            record = reconstruct_face(self, source, full, work, k, found[k], seconds, provenance)
            t0 = time.perf_counter()
            files = write_reconstruction(record, folder, overwrite=self.options.outputs.overwrite)
            seconds = {**record.seconds, "write": time.perf_counter() - t0}
            log.debug("%s face %d: NME %.4f, %.2f s", path, k, record.landmark_nme,
                      sum(v for k2, v in seconds.items() if not k2.startswith("fit_")))
            outputs.append(FaceOutput(Path(path), k, folder, files, record.landmark_nme,
                                      {k2: round(v, 4) for k2, v in seconds.items()}, faces_found=len(found)))
        if outputs and faces is None:  # folders of this photo's faces from an earlier run that found other faces
            for stale in remove_stale_results(out_dir, base, list(folders.values()), str(path)):
                log.info("removed %s: an earlier result of %s for a face this run did not find", stale, path)
        return outputs

    def reconstruct_faces(self, rgb: np.ndarray, source: str = "image", texture: bool = True,
                          faces: list[int] | None = None) -> list[FaceReconstruction]:
        """Reconstruct the selected faces of an in-memory ``(H, W, 3)`` uint8 RGB image; no file
        is written. ``texture=False`` skips the texture, overlay and detail (fitting only).
        ``faces``: only these of the selected faces (indices, largest first)."""
        t0 = time.perf_counter()
        src, full, work = source_from_array(rgb, source)
        t_load = time.perf_counter() - t0
        found, chosen, t_detect = self._choose(work, source, faces)
        provenance = self.provenance()
        return [reconstruct_face(self, src, full, work, k, found[k], {"load": t_load, "detect": t_detect / len(found)},
                                 provenance, texture=texture) for k in chosen]

    def _choose(self, work: np.ndarray, source: str, faces: list[int] | None):
        """:func:`choose_faces`, then the indices asked for: ``(faces found, indices to do,
        detection seconds)``. Raises :class:`FaceIndexError` for an index not found."""
        t0 = time.perf_counter()
        found = choose_faces(self, work, source)
        t_detect = time.perf_counter() - t0
        chosen = range(len(found)) if faces is None else [k for k in faces if 0 <= k < len(found)]
        if faces is not None and len(chosen) != len(faces):
            raise FaceIndexError(f"{source}: face {sorted(set(faces) - set(chosen))} not found ({len(found)} faces)",
                                 len(found))
        return found, chosen, t_detect

    def _method_name(self) -> str:
        if self.options.method == "regress":
            return "regress"
        return "fit" + (" (fast)" if self.options.fast else "") + (
            f" + identity term (weight {self.options.identity_weight:g})" if self.options.identity_weight > 0 else "")


# ---------------------------------------------------------------------- the record

@dataclass(frozen=True)
class SourceImage:
    """The photo a face came from."""

    #: The photo's path (or a label for an in-memory image).
    path: Path
    #: (H, W) of the full-resolution photo.
    size_hw: tuple[int, int]
    #: Working-copy pixels per photo pixel (<= 1): detection, landmarks and fitting ran on the
    #: photo scaled by this (see :func:`working_copy`).
    work_scale: float


@dataclass(frozen=True)
class Provenance:
    """What produced a reconstruction: method, start, front-end, and every model file (hashed)."""

    method: str
    initialisation: str
    #: ``{role: {"file": ..., "sha256": ...}}`` (see :meth:`Reconstructor.weights_used`).
    weights: dict
    detector: str
    landmarks: str
    #: The face model: name, geometry, vertex and triangle counts, licence.
    model: dict
    albedo_model: str
    texture_px: int
    delight: bool
    formats: tuple[str, ...]
    #: The trained detail network and the regressor it read features from (None: fitted detail).
    detail_network: dict | None = None


@dataclass(frozen=True)
class FaceReconstruction:
    """One reconstructed face: everything the writers, the API and the demo read.

    Coordinates: ``fit`` is in the aligned crop's camera (``aligned.size_px`` pixels);
    ``camera`` is the same head seen by the full-resolution photo's camera; landmark arrays
    named ``*_px`` are full-photo pixels. Produced by :func:`reconstruct_face`; written by
    :func:`write_reconstruction`; :func:`describe` gives its ``params.json``.
    """

    source: SourceImage
    #: The face model the vertices belong to (shared, not copied).
    model: FaceModel
    #: Index of the face among the photo's selected faces (largest first).
    face_index: int
    #: The detection (:class:`faceclip.detect.types.Face`, working-copy pixels).
    face: object
    #: The aligned crop the face was fitted in (:class:`faceclip.detect.align.AlignedFace`).
    aligned: object
    #: (68, 2) landmarks the fit used, working-copy pixels (the network's when it ran).
    landmarks68_used: np.ndarray
    #: The dense landmark network's points (working-copy pixels), or None.
    net_points: object | None
    #: The fit: :class:`faceclip.fit.fitter.FitResult` (params in the crop camera, (V, 3)
    #: canonical vertices in mm, (V, 3) albedo in [0, 1], losses, stage timings).
    fit: FitResult
    #: The photo's camera for the fitted head (:class:`faceclip.render.camera.PerspectiveCamera`).
    camera: object
    #: (68, 2) fitted model landmarks projected into the photo, pixels.
    landmarks68_px: np.ndarray
    #: (68, 2) detected landmarks in the photo, pixels.
    detected68_px: np.ndarray
    #: Inter-ocular NME of ``landmarks68_px`` against ``detected68_px``.
    landmark_nme: float
    #: How many dense points (calibrated MediaPipe points or the network's) the fit used.
    n_dense_points: int
    provenance: Provenance
    #: (T, T, 3) uint8 UV texture, or None (``texture=False``).
    texture: np.ndarray | None = None
    #: Fraction of the face's texels seen in the photo.
    photo_fraction: float = 0.0
    #: (h, w, 3) uint8 overlay on the working copy, or None.
    overlay: np.ndarray | None = None
    #: Mid-frequency detail (:class:`faceclip.fit.detail.DetailResult`), or None.
    detail: object | None = None
    #: The detail over the whole UV atlas at the texture's size, (T, T) mm, or None.
    detail_atlas_mm: np.ndarray | None = None
    #: Why the detail failed (the coarse result stands), or None.
    detail_error: str | None = None
    #: Wall time per stage, seconds.
    seconds: dict = field(default_factory=dict)

    @property
    def params(self):
        """The fitted :class:`~faceclip.facemodel.params.FaceParams` (crop camera)."""
        return self.fit.params

    @property
    def vertices_mm(self) -> torch.Tensor:
        """(V, 3) canonical (unposed) vertices in mm, model frame."""
        return self.fit.vertices_mm


# ---------------------------------------------------------------------- the stages

def load_source(path: Path) -> tuple[SourceImage, np.ndarray, np.ndarray]:
    """Read a photo: its :class:`SourceImage`, the full-resolution ``(H, W, 3)`` uint8 RGB array
    and the working copy (:func:`working_copy`)."""
    from faceclip.io.images import load_image

    full = load_image(path)
    work, scale = working_copy(full)
    return SourceImage(Path(path), tuple(full.shape[:2]), scale), full, work


def source_from_array(rgb: np.ndarray, label: str = "image") -> tuple[SourceImage, np.ndarray, np.ndarray]:
    """:func:`load_source` for an in-memory ``(H, W, 3)`` uint8 RGB image."""
    full = np.ascontiguousarray(rgb)
    work, scale = working_copy(full)
    return SourceImage(Path(label), tuple(full.shape[:2]), scale), full, work


def choose_faces(models: Reconstructor, work: np.ndarray, source: str) -> list:
    """The faces to reconstruct in the working copy, landmarked, by the options' detector,
    landmarks and face policy (largest first). Raises :class:`faceclip.detect.NoFaceError`."""
    return models.detect(work, source)


def reconstruct_face(models: Reconstructor, source: SourceImage, full: np.ndarray, work: np.ndarray, k: int, face,
                     seconds: dict, provenance: Provenance, texture: bool = True) -> FaceReconstruction:
    """Fit one detected face on the working copy; texture from the full photo; detail if asked.

    ``seconds`` (stage -> seconds so far) is copied into the record with this face's stages
    added. Nothing is written.
    """
    seconds = dict(seconds)
    scale = source.work_scale
    t0 = time.perf_counter()
    result, aligned, landmarks68, net_points = models.fit_detected(work, face)
    seconds["fit"] = time.perf_counter() - t0
    seconds.update({f"fit_{k2}": v for k2, v in result.seconds.items()})
    t0 = time.perf_counter()
    crop_to_work = aligned.transform.inverse_matrix  # (3, 3) crop -> working copy
    crop_to_full = crop_to_work.copy()
    crop_to_full[:2] /= scale
    cam = image_camera(result.params, crop_to_full, full.shape[:2])
    tex = overlay = None
    photo_fraction = 0.0
    if texture:
        tex, photo_fraction = unwrap_texture(
            models.model, result.vertices_mm, result.albedo, result.params, cam, full,
            size_px=models.texture_px, delight=models.options.outputs.delight)
        cam_work = image_camera(result.params, crop_to_work, work.shape[:2])
        overlay = render_overlay(models.model, result.vertices_mm, result.albedo, result.params, cam_work, work)
        seconds["texture_overlay"] = time.perf_counter() - t0
    detail, detail_error = (face_detail(models, result, aligned, cam, full, source, k, seconds) if texture
                            else (None, None))
    lm_img = aligned.transform.crop_to_image(result.landmarks_crop_px.cpu().numpy().astype(np.float64)) / scale
    detected = landmarks68 / scale
    n_dense = (len(net_points.vertex_ids) if net_points is not None else
               0 if models.dense_points is None or face.extra.get("mesh478") is None
               else len(models.dense_points.point_ids))
    return FaceReconstruction(
        source=source, model=models.model, n_dense_points=n_dense, face_index=k, face=face, aligned=aligned, landmarks68_used=landmarks68,
        net_points=net_points, fit=result, camera=cam, landmarks68_px=lm_img, detected68_px=detected,
        landmark_nme=landmark_nme(lm_img, detected), provenance=provenance, texture=tex,
        photo_fraction=photo_fraction, overlay=overlay, detail=detail, detail_error=detail_error, seconds=seconds,
        detail_atlas_mm=None if detail is None else detail.atlas(models.texture_px))


def face_detail(models: Reconstructor, result: FitResult, aligned, cam, full: np.ndarray, source: SourceImage,
                k: int, seconds: dict):
    """The face's detail map, from the trained network (``detail_net``) or fitted (``detail``):
    ``(DetailResult or None, error or None)``. A failure keeps the coarse result and says why;
    the time taken goes into ``seconds["detail"]``."""
    detail = detail_error = None
    path = source.path
    if models.detail_net is not None:
        try:
            detail = models.predict_detail(aligned)
            seconds["detail"] = detail.seconds
        except (FaceClipError, ValueError, RuntimeError) as exc:  # the coarse result still stands
            detail_error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            log.warning("%s face %d: no detail (%s); the coarse result is written", path, k, detail_error)
    elif models.options.outputs.detail:
        from faceclip.fit.detail import fit_detail

        t0 = time.perf_counter()
        try:
            detail = fit_detail(models.model, result.vertices_mm, result.albedo, result.params.sh[0], cam, full,
                                models.options.outputs.detail_config)
        except FaceClipError as exc:  # the coarse result still stands; params.json says why no detail
            log.warning("%s face %d: no detail (%s); the coarse result is written", path, k, exc.message)
            detail_error = exc.message
        seconds["detail"] = time.perf_counter() - t0
    return detail, detail_error


def describe(record: FaceReconstruction) -> dict:
    """The face's ``params.json`` (a JSON-ready dict; coordinates in full-photo pixels)."""
    p, face, aligned, cam, pv = record.fit.params, record.face, record.aligned, record.camera, record.provenance
    scale, net_points = record.source.work_scale, record.net_points
    R = p.rotation()[0].cpu().numpy()
    mesh478 = face.extra.get("mesh478")
    params = {
        "faceclip_version": _version(),
        "image": str(record.source.path),
        "image_size": {"width": int(cam.image_size[1]), "height": int(cam.image_size[0])},
        "face_index": record.face_index,
        "detection": {"box": [round(float(x) / scale, 2) for x in face.box], "score": round(float(face.score), 4),
                      "detector": face.detector},
        "front_end": {"detector": pv.detector, "landmarks": pv.landmarks, "dense_points": record.n_dense_points},
        "working_copy": {"scale": round(scale, 6), "max_side_px": WORK_MAX_SIDE_PX,
                         "note": "detection, landmarks, fitting and overlay.png use the photo scaled by "
                                 "this factor; all coordinates here are full-photo pixels"},
        "model": dict(pv.model),
        "method": pv.method,
        "initialisation": pv.initialisation,
        "weights": pv.weights,
        "loss_terms": {name: round(v, 6) for name, v in record.fit.losses.items()},
        "units": "mm; mesh in the model frame (right-handed, +X subject's left, +Y up, +Z out of the face)",
        "identity": [round(float(x), 6) for x in p.identity[0]],
        "expression": {n: round(float(x), 6) for n, x in zip(record.model.expression_names, p.expression[0])},
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
        "crop": {"size_px": aligned.size_px, "of": "working copy", **aligned.transform.to_dict()},
        "lighting": {"sh_9x3": np.round(p.sh[0].cpu().numpy(), 6).tolist(),
                     "convention": "Deep3DFaceRecon SH basis with Lambertian constants, view frame (see faceclip.render.shading)"},
        "albedo": {"model": pv.albedo_model, "coefficients": np.round(p.albedo[0].cpu().numpy(), 6).tolist()},
        "texture": {"size_px": pv.texture_px if record.texture is not None else None, "delit": pv.delight,
                    "photo_fraction_of_face": round(record.photo_fraction, 4)},
        "landmarks68_2d": np.round(record.landmarks68_px, 3).tolist(),
        **({"detected_landmarks478": np.round(mesh478 / scale, 3).tolist()} if mesh478 is not None else {}),
        "detected_landmarks68_2d": np.round(record.detected68_px, 3).tolist(),
        **({"network_points": {
            "vertex_ids": [int(i) for i in net_points.vertex_ids],
            "points_2d": np.round(net_points.points_px / scale, 3).tolist(),
            "sigma_px": np.round(net_points.sigma_px / scale, 3).tolist(),
            "layout": "68 landmarks (2D-detector convention), then one point per vertex id"}}
           if net_points is not None else {}),
        "landmark_nme_interocular": round(record.landmark_nme, 5),
    }
    if record.detail is not None:
        params["detail"] = detail_record(record.detail, record.detail_atlas_mm, pv.formats)
        if pv.detail_network is not None:
            params["detail"]["fit"]["network"] = pv.detail_network
    elif record.detail_error is not None:
        params["detail"] = {"error": record.detail_error}
    return params


def write_reconstruction(record: FaceReconstruction, folder: Path, overwrite: bool = False) -> list[Path]:
    """Write a face's folder atomically: meshes (the record's formats), texture, overlay.png,
    params.json (:func:`describe`) and, with detail, displacement.png, normal_map.png and
    mesh_detail.* (see :func:`write_face_outputs`)."""
    if record.texture is None or record.overlay is None:
        raise ValueError("this record has no texture or overlay (reconstructed with texture=False)")
    return write_face_outputs(folder, record.model, record.fit, record.texture, record.overlay, describe(record),
                              overwrite=overwrite, formats=record.provenance.formats,
                              detail_atlas_mm=record.detail_atlas_mm)


def landmark_nme(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean landmark distance normalised by the outer-eye-corner distance (landmarks 36, 45)."""
    iod = float(np.linalg.norm(target[36] - target[45]))
    return float(np.linalg.norm(pred - target, axis=1).mean() / max(iod, 1e-9))


def _version() -> str:
    from faceclip import __version__

    return __version__


def working_copy(rgb: np.ndarray, max_side_px: int = WORK_MAX_SIDE_PX) -> tuple[np.ndarray, float]:
    """The photo downscaled (area filter) so its longer side is at most ``max_side_px``.

    Returns:
        ``(H', W', 3)`` uint8 copy (``rgb`` itself when small enough) and the scale
        (working-copy pixels per photo pixel, <= 1; the same on both axes).
    """
    import cv2

    h, w = rgb.shape[:2]
    if max(h, w) <= max_side_px:
        return rgb, 1.0
    s = max_side_px / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return small, s


def resolve_method(o: ReconstructOptions) -> ReconstructOptions:
    """The options with ``method`` one of "fit" / "regress" and what a :data:`METHODS` name
    stands for set explicitly ("fit_regressor": ``init="regressor"``; "fit_net":
    ``landmarks="net"``; "fit_mean": ``init="mean"``), checked (:func:`check_options`).

    Raises:
        FaceClipError: an unknown method, or options that contradict it or each other.
    """
    resolved = _method_as_options(o)
    _check_resolved(resolved)
    return resolved


def _method_as_options(o: ReconstructOptions) -> ReconstructOptions:
    """:func:`resolve_method` without the other options' checks."""
    if o.method not in METHODS:
        raise FaceClipError(f"unknown method {o.method!r}", hint=f"use one of {', '.join(METHODS)}")
    if o.method == "fit_mean":
        if o.init == "regressor" or o.checkpoint:
            raise FaceClipError("--method fit_mean fits from the mean face; --init regressor / --checkpoint "
                                "contradict it", hint="use --method fit_regressor")
        return dataclasses.replace(o, method="fit", init="mean")
    if o.method == "fit_regressor":
        if o.no_regressor:
            raise FaceClipError("--method fit_regressor needs the regressor; --no-regressor turns it off")
        return dataclasses.replace(o, method="fit", init="regressor")
    if o.method == "fit_net":
        fe = o.front_end
        if fe.landmarks not in ("mediapipe", "net") or fe.dense:
            raise FaceClipError(f"--method fit_net fits the dense landmark network's points; "
                                f"--landmarks {fe.landmarks}{' --dense' if fe.dense else ''} contradicts it")
        return dataclasses.replace(o, method="fit", landmarks="net")
    return o


def check_options(o: ReconstructOptions) -> None:
    """Refuse contradictory options up front (before any model is loaded); a :data:`METHODS`
    name is checked as the options it stands for (:func:`resolve_method`)."""
    _check_resolved(_method_as_options(o))


def _check_resolved(o: ReconstructOptions) -> None:
    """:func:`check_options` for options whose method is already "fit" or "regress"."""
    fe = o.front_end
    if o.init not in ("mean", "regressor"):
        raise FaceClipError(f"--init {o.init}: use mean or regressor")
    if o.no_regressor and o.init == "regressor":
        raise FaceClipError("--no-regressor and --init regressor contradict each other", hint="drop one")
    if o.no_regressor and o.checkpoint:
        raise FaceClipError("--no-regressor and --checkpoint contradict each other",
                            hint="drop one: --no-regressor fits from the mean face, --checkpoint picks a regressor")
    if o.no_regressor and o.method == "regress":
        raise FaceClipError("--method regress needs the regressor; --no-regressor turns it off",
                            hint="drop --no-regressor, or use --method fit")
    check_formats(o.outputs.formats)
    if fe.landmarks not in ("mediapipe", "dlib68", "net"):
        raise FaceClipError(f"--landmarks {fe.landmarks}: use mediapipe, dlib68 or net")
    if fe.dense and fe.landmarks != "mediapipe":
        raise FaceClipError("--dense fits MediaPipe's calibrated points: it needs --landmarks mediapipe",
                            hint="--landmarks net brings its own dense points")
    if fe.landmark_net and fe.landmarks != "net":
        raise FaceClipError("--landmark-net needs --landmarks net")
    if not (isinstance(o.identity_weight, float) and math.isfinite(o.identity_weight) and o.identity_weight >= 0):
        raise FaceClipError(f"--identity-weight {o.identity_weight}: the identity term's weight must be a non-negative number")
    if o.identity_weight > 0 and (o.fast or o.method == "regress"):
        raise FaceClipError("--identity weighs the photometric fitting stage, which "
                            + ("--fast skips" if o.fast else "--method regress does not run"),
                            hint="drop --identity, or " + ("fit without --fast" if o.fast else "use --method fit"))
    if o.outputs.texture_px is not None and not 16 <= o.outputs.texture_px <= 8192:
        raise FaceClipError(f"--texture-size {o.outputs.texture_px}: must be between 16 and 8192")


def detail_record(detail, atlas_mm: np.ndarray, formats: tuple[str, ...] = MESH_FORMATS) -> dict:
    """The ``detail`` entry of params.json: how to read displacement.png back, and the fit."""
    from faceclip.io.detail import displacement_params

    meshes = {"obj": "mesh_detail.obj: skin subdivided once (1 to 4 triangles) and displaced",
              "glb": "mesh_detail.glb: the coarse mesh with the normal map in its material"}
    return {**displacement_params(atlas_mm), "normal_map": "normal_map.png",  # the map's layout is in displacement_params
            "normal_map_convention": "tangent space, OpenGL / glTF (+X along +u, +Y along +v, +Z out)",
            "meshes": "; ".join(v for k, v in meshes.items() if k in formats) or "none (--formats has neither obj nor glb)",
            "fit": {"uv_window": {"u0": round(detail.window.u0, 6), "v0": round(detail.window.v0, 6),
                                  "side": round(detail.window.side, 6)},
                    "map_px": int(detail.map_mm.shape[0]),
                    **{k: round(float(v), 6) for k, v in detail.stats.items()},
                    "max_abs_mm": round(float(np.abs(atlas_mm).max()), 4),
                    "seconds": round(detail.seconds, 4)}}


def write_face_outputs(folder: Path, model: FaceModel, result: FitResult, texture: np.ndarray,
                       overlay: np.ndarray, params: dict, overwrite: bool = False,
                       formats: tuple[str, ...] = MESH_FORMATS, detail_atlas_mm: np.ndarray | None = None) -> list[Path]:
    """Write mesh.obj/.mtl/_texture.png, mesh.ply, mesh.glb, params.json, overlay.png atomically;
    with ``detail_atlas_mm`` ((S, S) mm over the UV atlas) also displacement.png, normal_map.png
    and mesh_detail.obj/.glb (in the chosen formats among obj and glb).

    Everything goes to a temporary sibling folder first, which replaces ``folder`` at the end
    (see :func:`faceclip.io.outputs.write_result_folder`: a folder the tool did not write, or
    one holding files it did not write, is refused unless ``overwrite``).
    """
    from concurrent.futures import ThreadPoolExecutor

    from faceclip.io.images import encode_png
    from faceclip.io.mesh import export_mesh

    def write(tmp: Path) -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="faceclip-png") as pool:
            overlay_png = pool.submit(encode_png, overlay)  # encoded beside the mesh files (no GIL)
            export_mesh(model, result.vertices_mm.cpu(), tmp, texture=texture,
                        vertex_colors=result.albedo.cpu().numpy(), glb_texture_format="jpeg", formats=formats)
            if detail_atlas_mm is not None:
                from faceclip.fit.detail import write_face_detail

                write_face_detail(tmp, model, result.vertices_mm, detail_atlas_mm, texture, formats)
            (tmp / "params.json").write_text(json.dumps(params, indent=1))
            (tmp / "overlay.png").write_bytes(overlay_png.result())

    meta = {"image": params.get("image"), "face_index": params.get("face_index")}
    return write_result_folder(Path(folder), write, meta=meta, overwrite=overwrite)


def reconstruct_one(rec: Reconstructor, path: Path, out_dir: Path, base: str) -> ImageReport:
    """One photo of a batch: its faces, or its error as one line (never raises but on Ctrl-C)."""
    report = ImageReport(Path(path))
    t0 = time.perf_counter()
    try:
        report.faces = rec.reconstruct_image(Path(path), out_dir, base)
    except FaceClipError as exc:
        report.error = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    except MemoryError:
        report.error = "out of memory while processing this image"
    except Exception as exc:  # noqa: BLE001 - one bad photo must not end the batch
        log.debug("failure on %s", path, exc_info=True)
        report.error = f"{type(exc).__name__}: {exc}"
    report.seconds = time.perf_counter() - t0
    return report


def expand_inputs(items: Iterable[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths.

    Raises:
        InputError: a pattern matches nothing, or a folder holds no image.
    """
    import glob

    from faceclip.io.images import list_image_files

    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_image_files([p])
            if not found:
                raise InputError(f"{p}: a folder with no image files in it",
                                 hint="give image files, or a folder holding them (not searched recursively)")
            out.extend(found)
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise InputError(f"no files match {item!r}")
            out.extend(Path(m) for m in matches if Path(m).is_file())
        else:
            out.append(p)  # missing files are reported per image, not here
    return out
