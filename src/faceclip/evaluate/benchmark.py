"""The synthetic benchmark: render faces with known shape, reconstruct them, measure.

Pipeline per sample (:func:`run_synthetic_benchmark`): draw and render a face
(:class:`~faceclip.evaluate.synthetic.SyntheticFaceGenerator`), run a reconstruction *method* on
the image, then evaluate

- the 3D shape with the REALY protocol (:mod:`faceclip.evaluate.realy`): prediction and ground
  truth share the ICT topology here, but the protocol never uses that (keypoints + ICP +
  non-rigid ICP only); regions: :func:`~faceclip.evaluate.keypoints.realy_regions_for_model`;
  keypoints: the model's 68 landmark vertices on both sides (REALY's 85-point sets without the
  four extra points, see :mod:`faceclip.evaluate.keypoints`);
- the 2D landmarks with the NME (:mod:`faceclip.evaluate.nme`) against the rendered ground-truth
  landmarks in the 2D-detector convention.

Methods (:data:`METHODS`, extend with :func:`register_method`) map an RGB image to a
:class:`MethodOutput`:

- ``mean``: the model's mean face, posed from the 68 landmarks that ``faceclip.detect`` finds on
  the image (dlib HOG detector; OpenCV PnP with a fixed focal length; the jaw contour slides like
  a detector's).
  Its 3D error is the floor every method must beat (it ignores the image).
- ``fit``: ``faceclip.api.reconstruct_array(image, method="fit")`` (test-time fitting).
- ``regress``: ``faceclip.api.reconstruct_array(image, method="regress")`` (the network).
- ``fit_mean``: fitting from the mean face (what ``fit`` does by default);
- ``fit_regressor``: fitting from the regressor's prediction.
- ``fit_net``: fitting to the dense landmark network's points (``--landmarks net``; the network
  file from ``$FACECLIP_LANDMARK_NET`` or the shipped one).

A method that cannot run here raises :class:`MethodUnavailable` with the reason (checked before
any work). A method that fails on one image with an input error (e.g. no face found) is scored as
the mean face for that sample and counted in the ``fail`` column, so every method is measured on
the same faces.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from faceclip.errors import FaceClipError, InputError
from faceclip.facemodel import FaceModel

log = logging.getLogger(__name__)

__all__ = [
    "MethodOutput",
    "MethodUnavailable",
    "METHODS",
    "register_method",
    "get_method",
    "SampleResult",
    "BenchmarkReport",
    "run_synthetic_benchmark",
    "format_report",
]

POSE_BINS = ("0-20", "20-40", "40-60")


class MethodUnavailable(FaceClipError):
    """A reconstruction method is not available in this installation."""


@dataclass
class MethodOutput:
    """What a reconstruction method returns for one image.

    Attributes:
        vertices_mm: (V, 3) predicted vertices, model frame (any scale/pose is fine: the protocol
            aligns), on the topology of ``triangles``.
        triangles: (F, 3) triangles.
        keypoints_3d: (68, 3) (or 85) 3D keypoints on the prediction (for the alignment).
        landmarks68_px: (68, 2) predicted 2D landmarks in the input image's pixels, or None.
    """

    vertices_mm: np.ndarray
    triangles: np.ndarray
    keypoints_3d: np.ndarray
    landmarks68_px: np.ndarray | None = None


MethodFn = Callable[[np.ndarray, FaceModel], MethodOutput]
METHODS: dict[str, MethodFn] = {}


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator: ``@register_method("mine") def f(image_rgb_uint8, model) -> MethodOutput``."""

    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn

    return deco


def get_method(name: str) -> MethodFn:
    """The registered method ``name``; raises :class:`MethodUnavailable` for unknown names and
    for methods that cannot run in this installation (checked before any work)."""
    if name not in METHODS:
        raise MethodUnavailable(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    fn = METHODS[name]
    check = getattr(fn, "check", None)
    if check is not None:
        check()
    return fn


# ----------------------------------------------------------------------------- methods


@register_method("mean")
def mean_face_method(image: np.ndarray, model: FaceModel) -> MethodOutput:
    """The mean face posed from detected landmarks (PnP, focal ``1015 * S / 224`` px, the fitter's)."""
    import torch

    from faceclip.detect import detect_faces
    from faceclip.fit.contour import build_contour_bands, landmark_vertex_ids
    from faceclip.facemodel.params import DEFAULT_FOCAL_224, pose_from_landmarks
    from faceclip.render import PerspectiveCamera

    mean = model.mean_mm.detach().cpu().double().numpy()
    tri = model.triangles.cpu().numpy()
    lm_idx = model.landmarks68.cpu().numpy()
    out = MethodOutput(mean, tri, mean[lm_idx], None)
    # The HOG detector, as the fitting method uses: a face it misses gets no 2D landmarks (its
    # NME is then not counted; the "lmk" column says how many had landmarks). dlib's CNN detector
    # finds more of the turned and pitched faces, but its boxes do not suit the 68-point shape
    # predictor (median NME ~25% on such faces in our runs), so it is not used here.
    faces = detect_faces(image)
    if not faces:
        return out
    face = max(faces, key=lambda f: f.width * f.height)
    h, w = image.shape[:2]
    f = DEFAULT_FOCAL_224 * w / 224.0
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    # The distance at which the eye corners are as far apart as detected (the default start).
    R, t, ok = pose_from_landmarks(mean[lm_idx], np.asarray(face.landmarks, np.float64), K)
    if not ok:
        return out
    cam = PerspectiveCamera.create(torch.tensor(R, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), f, (h, w))
    v_t = model.mean_mm.detach().cpu().float()[None]
    ids = landmark_vertex_ids(model, build_contour_bands(model), v_t, cam)[0]
    out.landmarks68_px = cam.project(v_t[:, ids])[0].numpy().astype(np.float64)
    return out


def _api_method(kind: str) -> MethodFn:
    def api_function():
        try:
            from faceclip import api
        except Exception as exc:  # noqa: BLE001
            raise MethodUnavailable(f"method {kind!r}: faceclip.api cannot be imported ({exc})") from None
        fn = getattr(api, "reconstruct_array", None)
        if fn is None:
            raise MethodUnavailable(
                f"method {kind!r} is not available yet: faceclip.api.reconstruct_array does not exist in this version",
                hint="use --method mean, or update FaceCLIP")
        return fn

    def run(image: np.ndarray, model: FaceModel) -> MethodOutput:
        return _as_method_output(api_function()(image, method=kind), model)

    def check() -> None:
        """Call the method on a blank image: "no face found" means it can run."""
        fn = api_function()
        try:
            fn(np.zeros((64, 64, 3), np.uint8), method=kind)
        except InputError:
            return
        except FaceClipError as exc:
            raise MethodUnavailable(f"method {kind!r} is not available: {exc.message}", hint=exc.hint) from None

    run.check = check  # type: ignore[attr-defined]
    return run


METHODS["fit"] = _api_method("fit")
METHODS["regress"] = _api_method("regress")
METHODS["fit_mean"] = _api_method("fit_mean")
METHODS["fit_regressor"] = _api_method("fit_regressor")
METHODS["fit_net"] = _api_method("fit_net")


def _as_method_output(result, model: FaceModel) -> MethodOutput:
    """Accept a MethodOutput, a dict or an object with ``vertices_mm`` (+ optional ``triangles``,
    ``keypoints_3d`` and 2D ``landmarks68_px`` / ``landmarks_px`` / ``landmarks``)."""
    if isinstance(result, MethodOutput):
        return result

    def get(*names):
        for n in names:
            v = result.get(n) if isinstance(result, dict) else getattr(result, n, None)
            if v is not None:
                return v
        return None

    def arr(x):
        if x is None:
            return None
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        return np.asarray(x, np.float64)

    verts = arr(get("vertices_mm", "vertices"))
    if verts is None:
        raise FaceClipError("reconstruct_array returned no vertices_mm")
    verts = verts[0] if verts.ndim == 3 else verts
    tri = get("triangles", "faces")
    tri = model.triangles.cpu().numpy() if tri is None else np.asarray(arr(tri), np.int64)
    kp = arr(get("keypoints_3d"))
    if kp is None:
        if len(verts) != model.n_vertices:
            raise FaceClipError(f"the method returned {len(verts)} vertices but the benchmark's model has "
                                f"{model.n_vertices}; return keypoints_3d for another topology")
        kp = verts[model.landmarks68.cpu().numpy()]
    kp = kp[0] if kp.ndim == 3 else kp
    lm2 = arr(get("landmarks68_px", "landmarks_px", "landmarks68_2d", "landmarks"))
    if lm2 is not None:
        lm2 = lm2.reshape(68, 2) if lm2.size == 136 else None
    return MethodOutput(verts, tri, kp, lm2)


# ----------------------------------------------------------------------------- benchmark


@dataclass
class SampleResult:
    """One sample's figures (NaN where not measurable)."""

    index: int
    yaw_deg: float
    pitch_deg: float
    skin_tone: float
    pose_bin: str
    nmse_mm: dict[str, float]
    nmse_all_mm: float
    nme_inter_ocular: float
    nme_box: float
    landmarks_found: bool
    seconds_method: float
    seconds_eval: float
    method_failed: bool = False

    def as_row(self) -> dict:
        row = {"index": self.index, "pose_bin": self.pose_bin, "yaw_deg": round(self.yaw_deg, 3),
               "pitch_deg": round(self.pitch_deg, 3), "skin_tone": round(self.skin_tone, 4)}
        row.update({f"nmse_{k}_mm": v for k, v in self.nmse_mm.items()})
        row.update({"nmse_all_mm": self.nmse_all_mm, "nme_inter_ocular": self.nme_inter_ocular,
                    "nme_box": self.nme_box, "landmarks_found": self.landmarks_found,
                    "method_failed": self.method_failed,
                    "seconds_method": round(self.seconds_method, 4), "seconds_eval": round(self.seconds_eval, 4)})
        return row


@dataclass
class BenchmarkReport:
    """All samples and the summary per pose bin."""

    method: str
    seed: int
    size_px: int
    samples: list[SampleResult] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name in POSE_BINS + ("all",):
            rows = [s for s in self.samples if name == "all" or s.pose_bin == name]
            out[name] = _aggregate(rows)
        return out

    @property
    def nmse_all_mm(self) -> float:
        return self.summary()["all"]["nmse_all_mm"]

    def as_dict(self) -> dict:
        return {"method": self.method, "seed": self.seed, "size_px": self.size_px, "summary": self.summary(),
                "samples": [s.as_row() for s in self.samples]}


def _aggregate(rows: list[SampleResult]) -> dict[str, float]:
    def mean(vals):
        v = np.array([x for x in vals if x is not None and np.isfinite(x)], dtype=np.float64)
        return float(v.mean()) if len(v) else float("nan")

    agg = {"n": len(rows), "landmarks_found": sum(r.landmarks_found for r in rows),
           "method_failed": sum(r.method_failed for r in rows)}
    for region in ("nose", "mouth", "forehead", "cheek"):
        agg[f"nmse_{region}_mm"] = mean(r.nmse_mm.get(region) for r in rows)
    agg["nmse_all_mm"] = mean(r.nmse_all_mm for r in rows)
    agg["nme_inter_ocular"] = mean(r.nme_inter_ocular for r in rows)
    agg["nme_box"] = mean(r.nme_box for r in rows)
    times = [r.seconds_method for r in rows]
    agg["seconds_method_median"] = float(np.median(times)) if times else float("nan")
    return agg


def run_synthetic_benchmark(
    n: int,
    seed: int = 0,
    method: str = "mean",
    *,
    size_px: int = 224,
    model: FaceModel | None = None,
    progress: Callable[[int], None] | None = None,
    save_samples_to=None,
) -> BenchmarkReport:
    """Generate ``n`` faces (indices 0..n-1 of ``seed``), reconstruct them with ``method`` from the
    ``size_px`` image, and evaluate. Raises :class:`MethodUnavailable` before any work when the
    method cannot run.

    Args:
        progress: called with the number of samples done after each one.
        save_samples_to: a folder to write every sample's files to (images, GT mesh, JSON).
    """
    from faceclip.evaluate.keypoints import realy_regions_for_model
    from faceclip.evaluate.mesh import Mesh
    from faceclip.evaluate.nme import nme
    from faceclip.evaluate.realy import realy_evaluate, realy_ground_truth_from_mesh
    from faceclip.evaluate.synthetic import SyntheticConfig, SyntheticFaceGenerator, pose_bin, write_sample

    fn = get_method(method)
    sizes = tuple(sorted({224, 512, size_px})) if save_samples_to is not None else (size_px,)
    gen = SyntheticFaceGenerator(model, seed=seed, config=SyntheticConfig(sizes_px=sizes))
    model = gen.model
    regions = realy_regions_for_model(model)
    lm_idx = model.landmarks68.numpy()
    tri = model.triangles.numpy()
    report = BenchmarkReport(method, seed, size_px)
    for i in range(n):
        sample = gen.sample(i)
        if save_samples_to is not None:
            write_sample(sample, save_samples_to, triangles=tri)
        image = sample.images[size_px]
        t0 = time.perf_counter()
        failed = False
        try:
            out = fn(image, model)
        except InputError as exc:  # e.g. no face found: scored as the mean face, counted as failed
            log.info("sample %d: %s failed (%s); scoring the mean face", i, method, exc.message)
            failed = True
            mean = model.mean_mm.numpy().astype(np.float64)
            out = MethodOutput(mean, tri, mean[lm_idx], None)
        t_method = time.perf_counter() - t0
        t0 = time.perf_counter()
        gt_v = sample.vertices_mm.astype(np.float64)
        gt = realy_ground_truth_from_mesh(Mesh(gt_v, tri), regions, gt_v[lm_idx])
        res = realy_evaluate(Mesh(out.vertices_mm, out.triangles), out.keypoints_3d, gt)
        gt_lm = sample.landmarks68_px[size_px]
        found = out.landmarks68_px is not None
        nme_io = nme(out.landmarks68_px, gt_lm, "inter_ocular") if found else math.nan
        nme_box = nme(out.landmarks68_px, gt_lm, "box") if found else math.nan
        t_eval = time.perf_counter() - t0
        p = sample.params
        report.samples.append(SampleResult(
            i, p.angles_deg[1], p.angles_deg[0], p.skin_tone, pose_bin(p.angles_deg[1]), dict(res.nmse_mm),
            res.all_mm, float(nme_io), float(nme_box), found, t_method, t_eval, failed,
        ))
        if progress is not None:
            progress(i + 1)
    return report


def format_report(report: BenchmarkReport) -> str:
    """A fixed-width table per pose bin (NMSE in mm, NME in % of the normaliser)."""
    summary = report.summary()
    head = f"{'yaw bin':<8} {'n':>4} {'fail':>4} {'lmk':>4} {'nose':>6} {'mouth':>6} {'fhead':>6} {'cheek':>6} {'all':>6} {'NME io%':>8} {'NME box%':>9} {'s/face':>7}"
    lines = [f"synthetic benchmark: method={report.method} seed={report.seed} image={report.size_px}px "
             f"(REALY-style NMSE in mm; NME in %; fail: method failed, scored as the mean face; "
             f"lmk: 2D landmarks returned; s/face: median seconds of the method per image)", head]
    for name in POSE_BINS + ("all",):
        s = summary[name]
        lines.append(
            f"{name:<8} {s['n']:>4d} {s['method_failed']:>4d} {s['landmarks_found']:>4d} {s['nmse_nose_mm']:>6.3f} {s['nmse_mouth_mm']:>6.3f} "
            f"{s['nmse_forehead_mm']:>6.3f} {s['nmse_cheek_mm']:>6.3f} {s['nmse_all_mm']:>6.3f} "
            f"{100 * s['nme_inter_ocular']:>8.2f} {100 * s['nme_box']:>9.2f} {s['seconds_method_median']:>7.3f}"
        )
    return "\n".join(lines)
