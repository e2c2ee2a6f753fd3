"""Analysis-by-synthesis fitting of a face model to one aligned face crop.

:class:`Fitter` is the public facade: construct it once per face model and settings, call
:meth:`Fitter.fit` per face. It composes the stage functions of :mod:`faceclip.fit.stages`,
which take their inputs and return their outputs explicitly:

- :class:`~faceclip.fit.stages.FaceForward` (``Fitter.forward``): the forward model, parameters
  -> vertices, landmarks, image. It holds everything precomputed once (face and albedo models,
  contour bands, the vertex subsets each stage evaluates, rendered triangles, dense points'
  bases) and no per-fit state; training calls it too (:meth:`Fitter.forward_subset`).
- :class:`~faceclip.fit.stages.FitProblem`: one fit's validated inputs (crop, landmarks, skin
  mask, optional dense points and uncertainties, prior centres).

Stages (each a few dozen vectorised steps):

0. **Pose initialisation** (:func:`~faceclip.fit.stages.initial_params`): PnP (OpenCV) of the
   mean face's inner 51 landmarks against the detected ones, with the crop's fixed focal length.
1. **Landmarks** (:func:`~faceclip.fit.stages.landmark_stage`): pose, identity and expression
   against the 68 landmarks (sliding jaw contour, see :mod:`faceclip.fit.contour`), with
   Gaussian priors, by Levenberg-Marquardt. Only the landmark and contour vertices are
   evaluated, so this stage costs milliseconds. It returns the landmark (and dense point)
   weights it reached, which the photometric stage keeps.
2. **Closed-form light** (:func:`~faceclip.fit.stages.closed_form_light`): SH lighting and a
   uniform skin colour by least squares on the skin pixels (``FitConfig.closed_form_light``).
3. **Photometric** (:func:`~faceclip.fit.stages.photo_stage`): adds SH lighting and albedo;
   renders the face with the differentiable rasterizer and compares it to the crop on the skin
   mask, keeping the landmark term and the priors. Extra loss terms (identity features, CLIP
   consistency) plug in through :class:`LossTerm`.

The camera is a pinhole with focal ``1015 * crop / 224`` pixels (Deep3DFaceRecon's choice:
a long lens, nearly orthographic) and the principal point at the crop centre.

:class:`FitConfig` (with its groups :class:`LandmarkStageConfig`, :class:`PhotoStageConfig`,
:class:`PriorConfig` and :class:`DenseConfig`), :class:`FitResult`, :class:`LossTerm` and
:class:`SubsetForward` live in :mod:`faceclip.fit.stages` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import Tensor

from faceclip.facemodel.base import FaceModel
from faceclip.facemodel.params import DEFAULT_FOCAL_224, FaceParams
from faceclip.facemodel.albedo import AlbedoModel
from faceclip.fit.contour import ContourBands
from faceclip.fit.stages import (
    DenseBases,
    DenseConfig,
    FaceForward,
    FitConfig,
    FitProblem,
    FitResult,
    LandmarkStageConfig,
    LossTerm,
    PhotoStageConfig,
    PriorConfig,
    SubsetForward,
    VertexSubset,
    closed_form_light,
    initial_params,
    landmark_stage,
    photo_stage,
)

__all__ = ["DEFAULT_FOCAL_224", "DenseConfig", "FaceForward", "FitConfig", "FitProblem", "FitResult", "Fitter",
           "LandmarkStageConfig", "LossTerm", "PhotoStageConfig", "PriorConfig", "SubsetForward"]

_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"active": 0, "saved": 0}


@contextlib.contextmanager
def fit_threads(config: FitConfig) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``config.threads`` for a CPU fit, restored after
    (nothing changes on other devices or with ``threads`` 0). The setting is the process's: fits
    running at once in several threads share it, the first one's count holds until the last one
    ends, and the caller's count is restored then."""
    if config.threads <= 0 or torch.device(config.device).type != "cpu":
        yield
        return
    with _THREADS_LOCK:
        if _THREADS_STATE["active"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            if config.threads != _THREADS_STATE["saved"]:
                torch.set_num_threads(config.threads)
        _THREADS_STATE["active"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["active"] -= 1
            if _THREADS_STATE["active"] == 0 and torch.get_num_threads() != _THREADS_STATE["saved"]:
                torch.set_num_threads(_THREADS_STATE["saved"])


class Fitter:
    """Fits one face model; construct once, call :meth:`fit` per face.

    A thin facade over :mod:`faceclip.fit.stages`: :attr:`forward` is the forward model, and
    :meth:`fit` runs the stage functions on it. The fitter keeps no state of a fit: fits in any
    order give the same results as fresh fitters. What can change is which forward model it
    holds: assigning :attr:`config` (a frozen :class:`FitConfig`) or setting dense points
    (:meth:`set_dense_points`) replaces it; and :attr:`extra_terms`.
    """

    def __init__(self, model: FaceModel, config: FitConfig | None = None,
                 extra_terms: list[LossTerm] | None = None) -> None:
        #: The forward model (:class:`~faceclip.fit.stages.FaceForward`); replaced, never mutated.
        self.forward: FaceForward = FaceForward.build(model, config or FitConfig())
        #: Loss terms added to the photometric stage.
        self.extra_terms = list(extra_terms or [])

    # ------------------------------------------------------------------ precomputed parts

    @property
    def config(self) -> FitConfig:
        """The settings (the forward model's; assigning a new config replaces the forward model's)."""
        return self.forward.config

    @config.setter
    def config(self, value: FitConfig) -> None:
        if value.photo_mesh_fraction != self.forward.config.photo_mesh_fraction:  # another photometric mesh
            self.forward = replace(FaceForward.build(self.model, value), dense=self.forward.dense)
        else:
            self.forward = replace(self.forward, config=value)

    @property
    def device(self) -> torch.device:
        return self.forward.device

    @property
    def model(self) -> FaceModel:
        return self.forward.model

    @property
    def albedo_model(self) -> AlbedoModel:
        return self.forward.albedo_model

    @property
    def bands(self) -> ContourBands:
        return self.forward.bands

    @property
    def render_tris(self) -> Tensor:
        """(F, 3) model triangles of the photometric loss's face area (the stage renders them, or
        their coarser triangulation :attr:`FaceForward.photo_tris` with ``photo_mesh_fraction`` < 1)."""
        return self.forward.render_tris

    @property
    def render_tri_is_skin(self) -> Tensor:
        """(F,) bool: which of :attr:`render_tris` are skin."""
        return self.forward.render_tri_is_skin

    @property
    def skin_ids(self) -> Tensor:
        """(Ns,) model vertex ids of the skin region."""
        return self.forward.skin_ids

    @property
    def dense(self) -> DenseBases | None:
        """The dense points' bases (:meth:`set_dense_points`), or None."""
        return self.forward.dense

    def set_dense_vertices(self, vertex_ids) -> None:
        """Use fixed model vertices (N,) as dense points (the dense landmark network's);
        their uncertainty is given per fit (:meth:`fit` ``dense_sigma_px``)."""
        self.forward = self.forward.with_dense_vertices(vertex_ids)

    def set_dense_points(self, points) -> None:
        """Use dense surface points (a :class:`faceclip.detect.calibration.DensePoints`, or None).

        Each point is a barycentric combination of three model vertices, so its position is
        linear in the coefficients like a vertex: its mean and bases are precomputed here (with
        the points' correlated-error model when ``config.dense.correlated``, read now).
        """
        self.forward = self.forward.with_dense_points(points)

    # ------------------------------------------------------------------ forward model

    def initial_params(self, landmarks_px: Tensor) -> FaceParams:
        """Mean face posed by PnP on the inner landmarks (17-67). landmarks_px: (B, 68, 2)."""
        return initial_params(self.forward, self.config, landmarks_px)

    def project_landmarks(self, params: FaceParams, vertices_mm: Tensor, subset: VertexSubset | None = None) -> Tensor:
        """(B, 68, 2) landmark pixels with the sliding contour.

        ``vertices_mm`` holds all vertices, or the rows of ``subset`` when one is given.
        """
        return self.forward.project_landmarks(params, vertices_mm, subset)

    def render(self, params: FaceParams, vertices_mm: Tensor, albedo: Tensor, size_px: int | None = None):
        """Render the face area with SH shading into the crop frame.

        Args:
            vertices_mm, albedo: (B, V, 3) of the whole model.

        Returns:
            rendered (B, S, S, 3), coverage (B, S, S) bool, skin coverage (B, S, S) bool, where
            S = ``size_px`` (default ``config.render_px``); the camera is scaled to S.
        """
        return self.forward.render(params, vertices_mm, albedo, size_px)

    def subset_vertices(self, params: FaceParams) -> Tensor:
        """(B, V', 3) the rendered vertex subset (the one :meth:`forward_subset` uses), posed by
        ``params``' identity and expression (model frame, mm)."""
        return self.forward.subset_vertices(params)

    def render_subset(self, params: FaceParams, vertices_mm: Tensor, albedo: Tensor, size_px: int | None = None):
        """:meth:`render` for the subset's (B, V', 3) vertices and albedo."""
        return self.forward.render_subset(params, vertices_mm, albedo, size_px)

    def forward_subset(self, params: FaceParams, size_px: int | None = None) -> SubsetForward:
        """Differentiable forward model on the rendered vertex subset (training uses it).

        Returns the subset's vertices and albedo, the SH-shaded render of the face area at
        ``size_px`` (default ``config.render_px``) in the crop frame, and the 68 projected
        landmarks in crop pixels (sliding contour).
        """
        return self.forward.forward_subset(params, size_px)

    def dense_vertices(self, p: FaceParams) -> Tensor:
        """(B, K, 3) canonical positions of the dense points."""
        return self.forward.dense_vertices(p)

    # ------------------------------------------------------------------ public

    def fit(self, crop_rgb: Tensor, landmarks_px: Tensor, skin_mask: Tensor,
            init: FaceParams | None = None, dense_px: Tensor | None = None,
            dense_sigma_px: Tensor | None = None, landmark_sigma_px: Tensor | None = None,
            landmark_weights: Tensor | None = None, landmark_scale: float = 1.0) -> FitResult:
        """Fit one face.

        Args:
            crop_rgb: (S, S, 3) float crop in [0, 1] (S = ``config.crop_px``).
            landmarks_px: (68, 2) detected landmarks in crop pixels.
            skin_mask: (S, S) bool skin mask of the crop.
            init: optional starting parameters (e.g. from a regressor); default PnP + mean face.
            dense_px: (K, 2) positions of the dense points set by :meth:`set_dense_points`, in
                crop pixels (e.g. calibrated MediaPipe points); None: the 68 landmarks alone.
            dense_sigma_px: (K,) each dense point's standard deviation in crop pixels (the
                dense landmark network's); None: the points' own model (calibration sigmas).
            landmark_sigma_px: (68,) each landmark's standard deviation in crop pixels (the
                network's); with ``config.landmarks.sigma_weighting`` it reweights the 68.
            landmark_weights: (68,) relative weights of the 68 landmarks replacing the default
                ones (:meth:`faceclip.detect.calibration.MeshCalibration.landmark_weights`).
            landmark_scale: factor on ``config.landmarks.weight`` for this face (both stages).
        """
        with fit_threads(self.config):
            return self._fit(crop_rgb, landmarks_px, skin_mask, init, dense_px, dense_sigma_px, landmark_sigma_px,
                             landmark_weights, landmark_scale)

    def _fit(self, crop_rgb: Tensor, landmarks_px: Tensor, skin_mask: Tensor, init: FaceParams | None,
             dense_px: Tensor | None, dense_sigma_px: Tensor | None, landmark_sigma_px: Tensor | None,
             landmark_weights: Tensor | None, landmark_scale: float) -> FitResult:
        c = self.config
        forward = self.forward
        problem = FitProblem.from_inputs(forward, crop_rgb, landmarks_px, skin_mask, dense_px=dense_px,
                                         dense_sigma_px=dense_sigma_px, landmark_sigma_px=landmark_sigma_px,
                                         landmark_weights=landmark_weights, landmark_scale=landmark_scale)
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        p = init.detach().to(forward.device) if init is not None else initial_params(forward, c, problem.landmarks)
        problem = problem.with_priors(p, centred_on_params=init is not None and c.priors.from_init)
        seconds["init"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        lm_stage = landmark_stage(forward, c, p, problem, c.landmarks.steps)
        losses = dict(lm_stage.losses)
        seconds["landmarks"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if c.closed_form_light:
            losses["light_fit_rmse"] = closed_form_light(forward, c, p, problem.crop, problem.skin)
        albedo = forward.albedo_model(p.albedo).detach()
        if c.photo.steps > 0:
            losses, albedo = photo_stage(forward, c, p, problem, lm_stage.landmark_weights, lm_stage.dense_weights,
                                         c.photo.steps, self.extra_terms)
        seconds["photometric"] = time.perf_counter() - t0
        p = p.detach()
        with torch.no_grad():
            verts = forward.model.vertices(p.identity, p.expression)
            lm = forward.project_landmarks(p, verts)
            dense_proj = p.camera().project(forward.dense_vertices(p))[0] if problem.dense is not None else None
        active = list(losses)
        return FitResult(params=p, vertices_mm=verts[0], albedo=albedo[0].clamp(0, 1),
                         landmarks_crop_px=lm[0], losses=losses, active_terms=active, seconds=seconds,
                         dense_crop_px=dense_proj)
