"""The detail benchmark: synthetic faces with ground-truth wrinkles, coarse fit vs fit + detail.

Each face of :class:`~faceclip.evaluate.synthetic.SyntheticFaceGenerator` (seed, index) gets a
procedural displacement map (:func:`~faceclip.evaluate.synthetic_detail.procedural_detail`,
dynamic with its expression) and is rendered with per-pixel bump-mapped shading and sensor noise.
The default reconstruction fits it; :func:`faceclip.fit.detail.fit_detail` then recovers the map.
Figures per face:

- ``coarse_deg`` / ``detail_deg``: mean angle between the ground-truth normals (shape + detail)
  and the reconstruction's, without and with the recovered map, over the visible skin both
  cover (the issue's figure; its ratio is ``detail_normal_err_ratio``);
- ``wrinkle_*_deg``: the same over the pixels where the ground-truth detail tilts the normal
  by more than 2 degrees (where there is detail to recover);
- ``oracle_deg``: the ground-truth map itself on the coarse fit: what a perfect detail stage
  would reach without correcting the coarse shape;
- ``shape_coarse_mm`` / ``shape_detail_mm``: the REALY-style shape error (all regions) of the
  coarse and of the displaced mesh against the displaced ground truth;
- ``mean_abs_mm``: the recovered map's mean magnitude on the texels the photo shows (on faces
  drawn without detail, ``--detail-scale 0``, this is structure invented on smooth skin).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

__all__ = ["DetailBenchmarkReport", "DetailSample", "format_detail_report", "run_detail_benchmark"]

#: A pixel counts as wrinkled where the ground-truth detail tilts its normal more than this.
WRINKLE_TILT_DEG = 2.0


@dataclass
class DetailSample:
    """One face's figures (degrees, mm, seconds; NaN where not measurable)."""

    index: int
    yaw_deg: float
    coarse_deg: float
    detail_deg: float
    oracle_deg: float
    wrinkle_coarse_deg: float
    wrinkle_detail_deg: float
    shape_coarse_mm: float
    shape_detail_mm: float
    mean_abs_mm: float
    max_abs_mm: float
    seconds_detail: float
    failed: str = ""


@dataclass
class DetailBenchmarkReport:
    """All faces of a run and the summary."""

    seed: int
    n: int
    size_px: int
    detail_scale: float
    samples: list[DetailSample] = field(default_factory=list)

    def _ok(self) -> list[DetailSample]:
        return [s for s in self.samples if not s.failed]

    def _mean(self, key: str) -> float:
        vals = [getattr(s, key) for s in self._ok() if math.isfinite(getattr(s, key))]
        return float(np.mean(vals)) if vals else math.nan

    @property
    def detail_normal_err_ratio(self) -> float:
        """Mean normal error with detail / without (visible skin; < 1: detail helps)."""
        return self._mean("detail_deg") / self._mean("coarse_deg")

    def summary(self) -> dict[str, float]:
        keys = ("coarse_deg", "detail_deg", "oracle_deg", "wrinkle_coarse_deg", "wrinkle_detail_deg",
                "shape_coarse_mm", "shape_detail_mm", "mean_abs_mm", "max_abs_mm", "seconds_detail")
        out = {k: self._mean(k) for k in keys}
        out["faces"] = len(self._ok())
        out["failed"] = len(self.samples) - len(self._ok())
        out["oracle_ratio"] = out["oracle_deg"] / out["coarse_deg"]
        out["wrinkle_ratio"] = out["wrinkle_detail_deg"] / out["wrinkle_coarse_deg"]
        out["detail_normal_err_ratio"] = self.detail_normal_err_ratio
        secs = [s.seconds_detail for s in self._ok()]
        out["median_seconds_detail"] = float(np.median(secs)) if secs else math.nan
        return out

    def as_dict(self) -> dict:
        return {"seed": self.seed, "n": self.n, "size_px": self.size_px, "detail_scale": self.detail_scale,
                "summary": self.summary(), "samples": [asdict(s) for s in self.samples]}


def _mean_angle(a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> float:
    from faceclip.evaluate.synthetic_detail import angular_error_deg

    return float(angular_error_deg(a[sel], b[sel]).mean()) if sel.any() else math.nan


def run_detail_benchmark(n: int, seed: int = 0, *, size_px: int = 512, detail_scale: float = 1.0,
                         config=None, gt_map_px: int = 1024,
                         progress: Callable[[int], None] | None = None) -> DetailBenchmarkReport:
    """Faces ``0..n-1`` of ``seed`` with ground-truth detail (``detail_scale`` x the procedural
    amplitudes; 0: smooth skin), reconstructed and scored (module docstring).

    Args:
        config: a :class:`faceclip.fit.detail.DetailConfig` (default settings when None).
        gt_map_px: side of the ground-truth map over the whole UV atlas.
    """
    from faceclip.errors import FaceClipError
    from faceclip.evaluate.keypoints import realy_regions_for_model
    from faceclip.evaluate.mesh import Mesh
    from faceclip.evaluate.realy import realy_evaluate, realy_ground_truth_from_mesh
    from faceclip.evaluate.synthetic import SyntheticFaceGenerator, background_image
    from faceclip.evaluate.synthetic_detail import (
        angular_error_deg,
        detail_normals_image,
        procedural_detail,
        render_with_detail,
    )
    from faceclip.fit.detail import displace_vertices, fit_detail, skin_triangle_mask
    from faceclip.reconstruction import ReconstructOptions, Reconstructor
    from faceclip.fit.texture import image_camera

    rec = Reconstructor(ReconstructOptions())
    gen = SyntheticFaceGenerator(rec.model, seed=seed)
    m = gen.model
    skin = skin_triangle_mask(m)
    regions = realy_regions_for_model(m)
    tri = m.triangles.numpy()
    lm_idx = m.landmarks68.numpy()
    report = DetailBenchmarkReport(seed, n, size_px, detail_scale)
    for i in range(n):
        p = gen.draw_params(i)
        verts = torch.from_numpy(gen.vertices(p)).float()
        albedo = torch.from_numpy(gen.albedo(p, np.random.default_rng([seed, i, 1]))).float()
        gt_map = procedural_detail(m, np.random.default_rng([seed, i, 5]), size_px=gt_map_px,
                                   expression=p.expression, scale=detail_scale)
        cam = gen.camera(p, size_px)
        img, _ = render_with_detail(m, verts, albedo, torch.tensor(p.sh).float(), cam, gt_map,
                                    background_image(p.background, size_px))
        img = img + np.random.default_rng([seed, i, 9]).normal(0.0, gen.config.noise_level, img.shape)
        rgb = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        nan = math.nan
        faces = rec.detect(rgb, f"synthetic {seed}/{i}")
        if not faces:
            report.samples.append(DetailSample(i, p.angles_deg[1], *[nan] * 9, 0.0, failed="no face found"))
            if progress is not None:
                progress(i + 1)
            continue
        try:
            res, aligned = rec.fit_face(rgb, faces[0].landmarks, faces[0].extra.get("mesh478"))
            cam_fit = image_camera(res.params, aligned.transform.inverse().matrix_2x3, (size_px, size_px))
            t0 = time.perf_counter()
            det = fit_detail(m, res.vertices_mm, res.albedo, res.params.sh[0], cam_fit, rgb, config)
        except FaceClipError as exc:
            report.samples.append(DetailSample(i, p.angles_deg[1], *[nan] * 9, 0.0, failed=exc.message))
            if progress is not None:
                progress(i + 1)
            continue
        seconds = time.perf_counter() - t0
        atlas = det.atlas(gt_map_px)
        fit_map = torch.from_numpy(atlas)[None, None]
        gt_n, gt_c = detail_normals_image(m, verts, cam, gt_map, skin)
        smooth_n, _ = detail_normals_image(m, verts, cam, None, skin)
        co_n, co_c = detail_normals_image(m, res.vertices_mm, cam_fit, None)
        de_n, _ = detail_normals_image(m, res.vertices_mm, cam_fit, fit_map)
        or_n, _ = detail_normals_image(m, res.vertices_mm, cam_fit, gt_map)
        sel = gt_c & co_c
        wrinkled = sel & (angular_error_deg(gt_n, smooth_n) > WRINKLE_TILT_DEG)
        gt_v = displace_vertices(m, verts, gt_map[0, 0].numpy()).double().numpy()
        gt = realy_ground_truth_from_mesh(Mesh(gt_v, tri), regions, gt_v[lm_idx])

        def shape(v: np.ndarray) -> float:
            return float(realy_evaluate(Mesh(v, tri), v[lm_idx], gt).all_mm)

        coarse_v = res.vertices_mm.double().numpy()
        detail_v = displace_vertices(m, res.vertices_mm, atlas).double().numpy()
        report.samples.append(DetailSample(
            i, float(p.angles_deg[1]), _mean_angle(gt_n, co_n, sel), _mean_angle(gt_n, de_n, sel),
            _mean_angle(gt_n, or_n, sel), _mean_angle(gt_n, co_n, wrinkled), _mean_angle(gt_n, de_n, wrinkled),
            shape(coarse_v), shape(detail_v), float(np.abs(det.map_mm[det.seen]).mean()) if det.seen.any() else nan,
            float(np.abs(det.map_mm).max()), seconds))
        if progress is not None:
            progress(i + 1)
    return report


def format_detail_report(report: DetailBenchmarkReport) -> str:
    """A short table: per face, then the means."""
    lines = [f"detail benchmark: seed {report.seed}, {report.n} faces at {report.size_px} px, "
             f"ground-truth detail x{report.detail_scale:g}",
             f"{'face':>4} {'yaw':>6} {'coarse°':>8} {'detail°':>8} {'oracle°':>8} {'wrinkle c°':>10} "
             f"{'wrinkle d°':>10} {'shape c':>8} {'shape d':>8} {'|D| mm':>7} {'s':>5}"]
    for s in report.samples:
        if s.failed:
            lines.append(f"{s.index:>4} {s.yaw_deg:>6.1f}  failed: {s.failed}")
            continue
        lines.append(f"{s.index:>4} {s.yaw_deg:>6.1f} {s.coarse_deg:>8.2f} {s.detail_deg:>8.2f} {s.oracle_deg:>8.2f} "
                     f"{s.wrinkle_coarse_deg:>10.2f} {s.wrinkle_detail_deg:>10.2f} {s.shape_coarse_mm:>8.3f} "
                     f"{s.shape_detail_mm:>8.3f} {s.mean_abs_mm:>7.3f} {s.seconds_detail:>5.2f}")
    sm = report.summary()
    lines.append(f"mean: coarse {sm['coarse_deg']:.2f}°, detail {sm['detail_deg']:.2f}°, oracle {sm['oracle_deg']:.2f}° "
                 f"(ratio {sm['oracle_ratio']:.3f}); wrinkled pixels {sm['wrinkle_coarse_deg']:.2f}° -> "
                 f"{sm['wrinkle_detail_deg']:.2f}° (ratio {sm['wrinkle_ratio']:.3f}); shape {sm['shape_coarse_mm']:.3f} -> "
                 f"{sm['shape_detail_mm']:.3f} mm; |D| {sm['mean_abs_mm']:.3f} mm; detail {sm['median_seconds_detail']:.2f} s/face")
    return "\n".join(lines)


@dataclass
class DynamicSample:
    """One face of the dynamic-detail measurement (degrees on the wrinkled skin at ``e1``)."""

    index: int
    photo_brows: float
    photo_smile: float
    edit_brows: float
    edit_smile: float
    unchanged_deg: float
    dynamic_deg: float
    no_detail_deg: float


def run_dynamic_benchmark(n: int, seed: int = 0, *, size_px: int = 512, gt_map_px: int = 1024,
                          config=None, progress: Callable[[int], None] | None = None) -> list[DynamicSample]:
    """Does the dynamic split put the right wrinkles on an edited expression?

    Face ``i`` of ``seed`` is photographed at expression ``e0`` (brows raised ``b0``, smile
    ``s0``, drawn in [0.3, 0.8]) with its procedural detail at ``e0``; the map is fitted with the
    exact coarse shape, albedo and light (so only the detail stage is measured) and carried to
    an edited expression ``e1`` (brows and smile each 0 or 1, the far end from ``e0``). Scored on
    the ground-truth face at ``e1`` with its own detail: mean normal error on the pixels whose
    detail tilts more than 2 degrees, for the fitted map unchanged, the map through
    :func:`faceclip.fit.dynamic_detail.split_detail`, and no map at all.

    The ground truth comes from the same procedural family the split assumes (depth linear in
    the activation), so this checks the machinery and its recovery from shading, not whether
    real wrinkles follow that law.
    """
    from faceclip.evaluate.synthetic import SyntheticFaceGenerator, background_image
    from faceclip.evaluate.synthetic_detail import (
        angular_error_deg,
        detail_normals_image,
        procedural_detail,
        render_with_detail,
    )
    from faceclip.facemodel import load_face_model
    from faceclip.fit.detail import fit_detail, skin_triangle_mask
    from faceclip.fit.dynamic_detail import split_detail

    m = load_face_model("ict", geometry="head_eyes")
    gen = SyntheticFaceGenerator(m, seed=seed)
    skin = skin_triangle_mask(m)
    out = []
    for i in range(n):
        p = gen.draw_params(i)
        rng = np.random.default_rng([seed, i, 7])
        b0, s0 = rng.uniform(0.3, 0.8, 2)
        b1, s1 = float(b0 < 0.55), float(s0 < 0.55)
        e0 = {"browInnerUp_L": b0, "browInnerUp_R": b0, "mouthSmile_L": s0, "mouthSmile_R": s0}
        e1 = {"browInnerUp_L": b1, "browInnerUp_R": b1, "mouthSmile_L": s1, "mouthSmile_R": s1}
        p.expression = e0
        v0 = torch.from_numpy(gen.vertices(p)).float()
        p.expression = e1
        v1 = torch.from_numpy(gen.vertices(p)).float()
        albedo = torch.from_numpy(gen.albedo(p, np.random.default_rng([seed, i, 1]))).float()
        gt0 = procedural_detail(m, np.random.default_rng([seed, i, 5]), size_px=gt_map_px, expression=e0)
        gt1 = procedural_detail(m, np.random.default_rng([seed, i, 5]), size_px=gt_map_px, expression=e1)
        cam = gen.camera(p, size_px)
        sh = torch.tensor(p.sh).float()
        img, _ = render_with_detail(m, v0, albedo, sh, cam, gt0, background_image(p.background, size_px))
        img = img + np.random.default_rng([seed, i, 9]).normal(0.0, gen.config.noise_level, img.shape)
        rgb = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        atlas0 = fit_detail(m, v0, albedo, sh, cam, rgb, config).atlas(gt_map_px)
        moved = split_detail(m, atlas0, e0).at(e1)
        gt_n, cover = detail_normals_image(m, v1, cam, gt1, skin)
        smooth_n, _ = detail_normals_image(m, v1, cam, None, skin)
        wrinkled = cover & (angular_error_deg(gt_n, smooth_n) > WRINKLE_TILT_DEG)

        def err(atlas: np.ndarray | None) -> float:
            disp = None if atlas is None else torch.from_numpy(np.asarray(atlas, np.float32))[None, None]
            n_img, _ = detail_normals_image(m, v1, cam, disp, skin)
            return _mean_angle(gt_n, n_img, wrinkled)

        out.append(DynamicSample(i, float(b0), float(s0), b1, s1, err(atlas0), err(moved), err(None)))
        if progress is not None:
            progress(i + 1)
    return out
