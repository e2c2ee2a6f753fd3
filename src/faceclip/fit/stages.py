"""The fitting stages as functions with explicit inputs and outputs, and the forward model.

:class:`faceclip.fit.fitter.Fitter` composes these; training (:mod:`faceclip.train.objective`)
calls the same forward model through it. Nothing here keeps per-fit state:

- :class:`FaceForward`: the **forward model** (parameters -> vertices, landmarks, image). It holds
  what is precomputed once per face model and settings: the face and albedo models, the contour
  bands, the vertex subsets each stage evaluates, the rendered triangles and the dense points'
  bases. It is immutable; :meth:`FaceForward.with_dense_points` returns a new one.
- :class:`FitProblem`: **one fit's inputs** (crop, landmarks, skin mask, optional dense points and
  per-point uncertainties, prior centres), validated by :meth:`FitProblem.from_inputs`.
- the stages, run in this order by :meth:`Fitter.fit <faceclip.fit.fitter.Fitter.fit>`:
  :func:`initial_params` (PnP pose of the mean face), :func:`landmark_stage`
  (Levenberg-Marquardt on pose, identity and expression), :func:`closed_form_light` (SH light and
  a uniform skin colour by least squares) and :func:`photo_stage` (Adam on everything against the
  photo). The stages update the :class:`FaceParams` they are given in place and return their
  losses and whatever a later stage needs (:class:`LandmarkStageResult`).

Shapes: ``B`` batch (the fitter uses 1), ``S`` crop side (``config.crop_px``), ``S'`` render side
(``config.render_px``), ``V`` model vertices, ``N`` rows of a vertex subset, ``K`` dense points.
All pixel coordinates are in the crop camera (focal ``1015 * S / 224``, principal point at the
centre) unless stated otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from faceclip.facemodel.base import FaceModel
from faceclip.facemodel.params import (DEFAULT_FOCAL_224, MODEL_TO_OPENCV, FaceParams, euler_jacobian_np,
                                       euler_to_matrix, matrix_to_euler, pose_from_landmarks)
from faceclip.facemodel.albedo import AlbedoModel, make_albedo_model
from faceclip.fit.adam import Adam
from faceclip.fit.contour import ContourBands, build_contour_bands, landmark_vertex_ids
from faceclip.losses import (
    DEFAULT_LANDMARK_WEIGHTS,
    albedo_skin_prior,
    albedo_smoothness,
    albedo_symmetry,
    coefficient_l2,
    landmark_loss,
    light_chroma,
    photometric_loss,
)
from faceclip.render.camera import OPENCV_TO_VIEW
from faceclip.render.interpolate import interpolate_vertex_attributes
from faceclip.render.rasterize import rasterize_mesh
from faceclip.render.shading import sh_ambient, sh_shade_vertices

__all__ = [
    "FLAT_FIELDS", "DenseBases", "DenseConfig", "FaceForward", "FitConfig", "FitProblem", "FitResult",
    "LandmarkStageConfig", "LandmarkStageResult", "LossTerm", "PhotoStageConfig", "PriorConfig", "SubsetForward",
    "VertexSubset", "closed_form_light", "dense_cost", "dense_point_weights", "initial_params", "landmark_stage",
    "photo_stage",
]


@dataclass(frozen=True)
class LandmarkStageConfig:
    """The 68-landmark term (both stages) and the landmark stage (Levenberg-Marquardt).

    Weights are relative to the landmark term measured in pixels of a 224-pixel crop.
    """

    #: Iterations of the landmark stage (at most; it stops when converged). 12 rather than 25:
    #: the photometric stage finishes the job (tuning seed 7, n=40: 1.383 mm with 25, 1.385 with
    #: 12, 1.390 with 16), and the stage takes half the time (most fits used all 25).
    steps: int = 12
    #: Weight of the 68-landmark term, in the landmark and the photometric stage.
    weight: float = 0.4
    #: Identity prior weight of the landmark stage (None: ``priors.identity``). A stronger prior there
    #: keeps imperfect detector landmarks from bending the face before the photo is consulted.
    identity_prior: float | None = 0.5
    #: Cauchy scale (224-crop pixels) of the robust landmark weights; 0 disables them.
    robust_px: float = 6.0
    #: With per-landmark sigmas (the network's, :meth:`Fitter.fit` ``landmark_sigma_px``), scale
    #: each of the 68 landmarks' weights by ``(median sigma / sigma_k)^2``, clipped to [0.25, 4]
    #: (their sum unchanged).
    sigma_weighting: bool = True
    #: With MediaPipe's mapped landmarks, weight each of the 68 by ``1 / sigma^2`` of its spread
    #: on frontal heads and the whole term by how much less certain a turned head's landmarks
    #: are (:meth:`faceclip.detect.calibration.MeshCalibration.landmark_weights`; the reconstruction
    #: passes them to :meth:`Fitter.fit`). Tuning seed 7, n=40: 1.414 -> 1.373 mm.
    calibrated_weights: bool = True


@dataclass(frozen=True)
class PhotoStageConfig:
    """The photometric stage (Adam against the photo): its steps, learning rates and weights."""

    #: Adam steps of the photometric stage; 0 skips it.
    steps: int = 30
    #: Weight of the photometric term.
    weight: float = 40.0
    #: Base learning rate of the pose: the angles use 0.3 times it (the translation's is fixed).
    lr_pose: float = 0.01
    #: Base learning rate of the coefficients: expression 1x, identity and light 3x, albedo 10x.
    lr: float = 0.01
    #: Weights of the albedo smoothness, symmetry and skin-colour priors.
    albedo_smooth: float = 0.5
    albedo_sym: float = 20.0
    albedo_skin: float = 100.0
    #: Weight of the light chroma prior (keeps the SH light near white).
    light_chroma: float = 1.0


@dataclass(frozen=True)
class PriorConfig:
    """Gaussian priors on the identity and expression coefficients."""

    #: Identity prior weight (the photometric stage; the landmark stage's is
    #: ``landmarks.identity_prior``).
    identity: float = 0.05
    #: Expression prior weight (both stages).
    expression: float = 0.5
    #: With an initialisation (a regressor's prediction), centre the identity and expression
    #: priors on it instead of on the mean face: the fit then stays near the prediction unless
    #: the landmarks and the photo say otherwise.
    from_init: bool = False


@dataclass(frozen=True)
class DenseConfig:
    """Dense landmarks (used only when dense points are given to :meth:`Fitter.fit`)."""

    #: Weight of the dense landmark term (calibrated MediaPipe points, see
    #: :mod:`faceclip.detect.calibration`): ``weight * sum_k |r_k|^2 / sigma_k^2`` with each
    #: point's sigma (mm at the face, per yaw bin) turned into crop pixels by the current pose.
    #: Tuning seed 7, n=40 (without the inner 68): 0.005 / 0.02 / 0.1 gave 1.615 / 1.605 / 1.629 mm.
    weight: float = 0.02
    #: Weight of dense points that come with their own per-point sigma (the dense landmark
    #: network, :mod:`faceclip.detect.landmark_net`): ``net_weight * |r_k|^2 / sigma_k^2``
    #: with sigma in crop pixels.
    net_weight: float = 0.02
    #: With dense landmarks, the weight factor of the inner 51 of the 68 landmarks (the jaw
    #: contour, 0-16, keeps its weight: the dense points hold no silhouette). Tuning seed 7,
    #: n=40: 1 gave 1.550 mm, 0 gave 1.605 mm.
    inner68: float = 1.0
    #: Model the correlation of the dense points' errors (low rank + isotropic, from the
    #: calibration) instead of treating them as independent.
    correlated: bool = True


#: The former flat field names of :class:`FitConfig` -> (group, field) (group None: top level);
#: accepted by :meth:`FitConfig.with_overrides`.
FLAT_FIELDS: dict[str, tuple[str | None, str]] = {
    "crop_px": (None, "crop_px"),
    "render_px": (None, "render_px"),
    "photo_mesh_fraction": (None, "photo_mesh_fraction"),
    "device": (None, "device"),
    "threads": (None, "threads"),
    "closed_form_light": (None, "closed_form_light"),
    "landmark_steps": ("landmarks", "steps"),
    "w_landmark": ("landmarks", "weight"),
    "w_identity_landmarks": ("landmarks", "identity_prior"),
    "robust_px": ("landmarks", "robust_px"),
    "landmark_sigma_weighting": ("landmarks", "sigma_weighting"),
    "calibrated_landmark_weights": ("landmarks", "calibrated_weights"),
    "photo_steps": ("photo", "steps"),
    "w_photo": ("photo", "weight"),
    "lr_pose": ("photo", "lr_pose"),
    "lr_photo": ("photo", "lr"),
    "w_albedo_smooth": ("photo", "albedo_smooth"),
    "w_albedo_sym": ("photo", "albedo_sym"),
    "w_albedo_skin": ("photo", "albedo_skin"),
    "w_light_chroma": ("photo", "light_chroma"),
    "w_identity": ("priors", "identity"),
    "w_expression": ("priors", "expression"),
    "prior_from_init": ("priors", "from_init"),
    "w_dense": ("dense", "weight"),
    "w_dense_net": ("dense", "net_weight"),
    "inner68_with_dense": ("dense", "inner68"),
    "dense_correlated": ("dense", "correlated"),
}


@dataclass(frozen=True)
class FitConfig:
    """Fitting settings, frozen, in small groups: :attr:`landmarks` (the landmark term and
    stage), :attr:`photo` (the photometric stage), :attr:`priors` (coefficient priors) and
    :attr:`dense` (dense landmarks). Derive variants with :func:`dataclasses.replace` or
    :meth:`with_overrides` (flat names such as ``photo_steps=0``). ``fast()`` gives the quick
    variant, ``refine()`` the settings for a regressor's start.

    Loss weights are relative to the landmark term measured in pixels of a 224-pixel crop.
    The defaults balance trust in the detector's landmarks against the photometric term and the
    priors. Measured on the synthetic benchmark (n=10, seed 0, REALY-style "all"; mean face
    1.78 mm): with exact landmarks 0.92 mm, with dlib's landmarks on the renders 2.21 mm; landmark
    NME on the real test photos 0.039. Trusting the landmarks more (``landmarks.weight`` 1,
    identity prior 0.02 in both stages) gives 0.81 / 3.13 mm; less (``landmarks.weight`` 0.2)
    0.97 / 1.98 mm but NME 0.045.
    """

    crop_px: int = 224
    #: Side of the photometric stage's render (the crop is area-resampled to it). 160 rather
    #: than the crop's 224: a photometric step 10% faster (fit 0.525 -> 0.468 s per face on the
    #: shared photos), and the same shape error on the tuning seed (7, n=40: 1.373 mm at 224,
    #: 1.381 at 160, 1.376 at 112).
    render_px: int = 160
    #: The photometric stage renders a coarser, mirror-symmetric triangulation of the face area
    #: keeping this fraction of its vertices (:mod:`faceclip.fit.coarse_mesh`); 1 renders the
    #: model's own triangles.
    photo_mesh_fraction: float = 0.5
    device: str = "cpu"
    #: PyTorch's intra-op threads during a fit on the CPU (restored afterwards); 0 leaves
    #: PyTorch's own setting. One thread, because a fit is thousands of small operations and
    #: each multi-threaded one wakes and waits for the other threads: on the 2-core machine the
    #: default fit took 0.24 s per face with 2 threads and 0.16 s with 1
    #: (``benchmarks/reconstruct.py``; ``--identity`` 3.23 -> 2.37 s). Measured on 2 cores only.
    threads: int = 1
    landmarks: LandmarkStageConfig = field(default_factory=LandmarkStageConfig)
    photo: PhotoStageConfig = field(default_factory=PhotoStageConfig)
    priors: PriorConfig = field(default_factory=PriorConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    #: After the landmark stage, solve lighting and a uniform skin albedo in closed form
    #: (linear least squares on the skin pixels); used alone in fast mode.
    closed_form_light: bool = True

    def with_overrides(self, **settings) -> "FitConfig":
        """A copy with settings changed, by their flat names (see :data:`FLAT_FIELDS`: e.g.
        ``photo_steps=0``, ``w_dense=1.0``, ``landmark_sigma_weighting=False``), by
        ``"group.field"`` (``**{"photo.steps": 0}``) or by top-level field (``photo=...``).

        Raises:
            TypeError: for a name that is none of these.
        """
        top: dict[str, object] = {}
        groups: dict[str, dict[str, object]] = {}
        group_names = ("landmarks", "photo", "priors", "dense")
        for name, value in settings.items():
            if name in FLAT_FIELDS:
                group, key = FLAT_FIELDS[name]
            elif name in group_names:
                group, key = None, name
            elif name.count(".") == 1 and name.split(".")[0] in group_names:
                group, key = name.split(".")
                if key not in {f.name for f in fields(getattr(self, group))}:
                    raise TypeError(f"FitConfig.with_overrides: {type(getattr(self, group)).__name__} "
                                    f"has no field {key!r}")
            else:
                raise TypeError(f"FitConfig.with_overrides: unknown setting {name!r}; known: "
                                f"{', '.join(FLAT_FIELDS)}, or group.field with a group in {group_names}")
            if group is None:
                top[key] = value
            else:
                groups.setdefault(group, {})[key] = value
        for group, changes in groups.items():
            top[group] = replace(top.get(group, getattr(self, group)), **changes)
        return replace(self, **top)

    @staticmethod
    def fast() -> "FitConfig":
        """Landmarks only, then closed-form light and skin colour: no photometric iterations."""
        return FitConfig(render_px=160, photo_mesh_fraction=1.0, landmarks=LandmarkStageConfig(steps=8),
                         photo=PhotoStageConfig(steps=0))

    @staticmethod
    def refine() -> "FitConfig":
        """Refinement of a regressor's prediction (what ``faceclip reconstruct`` uses by default).

        A start close to the answer needs fewer iterations (10 landmark, 10 photometric steps
        instead of 12 and 30; the choice below was made when the default was 25 and 30), and a
        stronger identity prior (0.2 / 2.0 instead of 0.05 / 0.5) keeps imperfect detector
        landmarks from bending the shape. Chosen on the first 30 faces
        of the synthetic benchmark (seed 0, REALY-style "all", 1 thread): 15/15 steps 1.92 mm,
        10/10 1.87, 15/15 + stronger prior 1.83, 10/10 + stronger prior 1.82 mm at 0.46 s per
        face; priors centred on the prediction (``priors.from_init``) were worse (2.06-2.12).
        Fitting from the mean face scored 1.95 mm on the same faces.
        """
        return FitConfig(landmarks=LandmarkStageConfig(steps=10, identity_prior=2.0),
                         photo=PhotoStageConfig(steps=10), priors=PriorConfig(identity=0.2))

    @property
    def focal_px(self) -> float:
        return DEFAULT_FOCAL_224 * self.crop_px / 224.0


@dataclass
class LossTerm:
    """A pluggable loss: ``fn(ctx) -> scalar`` weighted by ``weight`` in the photometric stage.

    ``ctx`` is a dict with ``params`` (FaceParams), ``vertices_mm`` (B, V, 3) canonical,
    ``rendered`` (B, H, W, 3), ``coverage`` (B, H, W), ``target`` (B, H, W, 3) and ``camera``.
    """

    name: str
    weight: float
    fn: Callable[[dict], Tensor]


@dataclass
class FitResult:
    """Output of :meth:`Fitter.fit` for one face (batch of 1).

    Attributes:
        params: fitted parameters (camera in crop pixels).
        vertices_mm: (V, 3) canonical (unposed) vertices with identity and expression.
        albedo: (V, 3) fitted per-vertex albedo in [0, 1].
        landmarks_crop_px: (68, 2) projected model landmarks in crop pixels.
        losses: final value of each active loss term.
        active_terms: names of the loss terms used.
        seconds: wall time per stage.
    """

    params: FaceParams
    vertices_mm: Tensor
    albedo: Tensor
    landmarks_crop_px: Tensor
    losses: dict[str, float]
    active_terms: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    #: (K, 2) projected dense points in crop pixels when dense landmarks were used.
    dense_crop_px: Tensor | None = None


@dataclass
class SubsetForward:
    """Output of :meth:`FaceForward.forward_subset` (N subset vertices, S render size).

    Attributes:
        vertices_mm: (B, N, 3) canonical vertices; albedo: (B, N, 3) unclamped albedo.
        rendered: (B, S, S, 3); coverage, skin: (B, S, S) bool (any face / skin triangles).
        landmarks_px: (B, 68, 2) in crop pixels.
        mirror_rows: (N,) subset row of each vertex's mirror; skin_rows: subset rows of skin.
    """

    vertices_mm: Tensor
    albedo: Tensor
    rendered: Tensor
    coverage: Tensor
    skin: Tensor
    landmarks_px: Tensor
    mirror_rows: Tensor
    skin_rows: Tensor


def _euler_jacobian(angles: Tensor) -> Tensor:
    """(3,) pitch, yaw, roll -> (3, 3, 3) derivatives of :func:`euler_to_matrix` (last axis: angle)."""
    d = euler_jacobian_np(*angles.tolist())
    return torch.as_tensor(d, dtype=angles.dtype, device=angles.device)


def _linear_points(mean: Tensor, id_basis: Tensor, exp_basis: Tensor, p: FaceParams) -> Tensor:
    """(B, N, 3) points linear in the coefficients: mean (N, 3) + bases (K, N, 3) x coefficients.

    Written as two (B, K) x (K, 3N) matrix products on the bases' contiguous memory (einsum
    rearranged the bases at every call: this runs at every fitting step, forward and backward).
    """
    n = mean.shape[0]
    flat = p.identity @ id_basis.reshape(id_basis.shape[0], 3 * n) + p.expression @ exp_basis.reshape(
        exp_basis.shape[0], 3 * n)
    return mean.unsqueeze(0) + flat.view(-1, n, 3)


class VertexSubset:
    """The face and albedo models restricted to a set of vertices (evaluated per step).

    Attributes:
        vids: (N,) sorted model vertex ids of the subset's rows.
        remap: (V,) subset row of each model vertex, -1 outside the subset.
        mean: (N, 3); id_basis: (n_identity, N, 3); exp_basis: (n_expression, N, 3), in mm.
        albedo_model: the albedo model on the subset's rows.
    """

    def __init__(self, model: FaceModel, albedo_model: AlbedoModel, vertex_ids: Tensor) -> None:
        self.vids = torch.unique(vertex_ids)
        self.remap = torch.full((model.n_vertices,), -1, dtype=torch.long, device=self.vids.device)
        self.remap[self.vids] = torch.arange(len(self.vids), device=self.vids.device)
        self.mean = model.mean_mm[self.vids]
        self.id_basis = model.identity_basis_mm[:, self.vids]
        self.exp_basis = model.expression_basis_mm[:, self.vids]
        am = albedo_model
        self.albedo_model = AlbedoModel(am.kind, am.mean[self.vids],
                                        am.basis[:, self.vids], am.eigenvalues, am.mirror[self.vids])

    def vertices(self, p: FaceParams) -> Tensor:
        """(B, N, 3) vertices of the subset."""
        return _linear_points(self.mean, self.id_basis, self.exp_basis, p)

    def albedo(self, coeffs: Tensor) -> Tensor:
        """(B, N, 3) albedo of the subset."""
        return self.albedo_model(coeffs)


@dataclass(frozen=True, eq=False)
class DenseBases:
    """Dense surface points as linear functions of the coefficients (see :meth:`FaceForward.with_dense_points`).

    Attributes:
        points: the :class:`faceclip.detect.calibration.DensePoints` they come from.
        mean: (K, 3) mean positions (mm); id_basis: (n_identity, K, 3); exp_basis: (n_expression, K, 3).
        noise_basis, noise_shrink, noise_nu: the low-rank + isotropic model of the points'
            correlated errors ((2K, r), (r,), scalar), or None to treat them as independent.
    """

    points: object
    mean: Tensor
    id_basis: Tensor
    exp_basis: Tensor
    noise_basis: Tensor | None = None
    noise_shrink: Tensor | None = None
    noise_nu: float | None = None

    @property
    def n_points(self) -> int:
        return int(self.mean.shape[0])

    def vertices(self, p: FaceParams) -> Tensor:
        """(B, K, 3) canonical positions of the dense points."""
        return _linear_points(self.mean, self.id_basis, self.exp_basis, p)

    def whiten(self, x: Tensor) -> Tensor:
        """Decorrelate dense residuals (2K,) or Jacobian rows (2K, P) already divided by sigma."""
        if self.noise_basis is None:
            return x
        U, x2 = self.noise_basis, x.reshape(x.shape[0], -1)
        return ((x2 - U @ (self.noise_shrink[:, None] * (U.T @ x2))) / self.noise_nu ** 0.5).reshape(x.shape)


@dataclass(frozen=True, eq=False)
class FaceForward:
    """The differentiable forward model: parameters -> vertices, 68 landmarks, rendered image.

    Build it with :meth:`build`; it holds only what is precomputed from the face model and the
    settings, never the state of a fit, so one instance serves any number of fits (and training).

    Attributes:
        config: the settings; the camera of :meth:`render` uses ``crop_px`` and ``render_px``.
        device: where every tensor lives.
        model, albedo_model, bands: face model, albedo model and sliding-contour bands on ``device``.
        render_tris: (F, 3) model triangles of the photometric loss's face area (the narrow face
            area); render_tri_is_skin: (F,) bool, the skin ones among them.
        skin_ids: (Ns,) model vertex ids of the skin region.
        landmark_subset: the vertices of the landmark stage (68 landmarks + contour candidates).
        photo_subset: the vertices of the photometric stage (the above, the rendered triangles'
            and the skin's with their mirrors); photo_tris (F', 3) are the triangles it renders
            in its rows (``render_tris``, or their coarser triangulation with
            ``config.photo_mesh_fraction`` < 1), photo_tri_is_skin (F',) the skin ones among
            them; photo_skin_rows (Ns',) are the rows of the skin vertices (all of them with the
            full mesh, those kept with the coarse one) and photo_mirror_rows (N,) the albedo
            mirror map in its rows (rows whose mirror is
            outside the subset map to themselves).
        dense: the dense points' bases (:meth:`with_dense_points`), or None.
    """

    config: "FitConfig"
    device: torch.device
    model: FaceModel
    albedo_model: AlbedoModel
    bands: ContourBands
    render_tris: Tensor
    render_tri_is_skin: Tensor
    skin_ids: Tensor
    landmark_subset: VertexSubset
    photo_subset: VertexSubset
    photo_tris: Tensor
    photo_tri_is_skin: Tensor
    photo_skin_rows: Tensor
    photo_mirror_rows: Tensor
    dense: DenseBases | None = None

    @classmethod
    def build(cls, model: FaceModel, config: "FitConfig | None" = None) -> "FaceForward":
        """Precompute the forward model of ``model`` (moved to ``config.device``)."""
        config = config or FitConfig()
        device = torch.device(config.device)
        model = model.to(device)
        albedo_model: AlbedoModel = make_albedo_model(model).to(device)
        bands: ContourBands = build_contour_bands(model).to(device)
        m = model
        # The photometric loss's face area: the narrow face area (forehead to chin,
        # ear to ear; the rest never meets the photo's skin mask) and the skin ones among them.
        face_v = m.region_mask("face_narrow" if "face_narrow" in m.regions else "face")
        render_tris = m.triangles[face_v[m.triangles].all(1)]
        skin_v = m.region_mask("skin")
        render_tri_is_skin = skin_v[render_tris].all(1)
        skin_ids = m.regions["skin"].to(device)
        # Each stage evaluates the model only at the vertices it needs.
        lm_ids = torch.cat([m.landmarks68, bands.candidates.reshape(-1)])
        lm_sub = VertexSubset(m, albedo_model, lm_ids)
        mirror = albedo_model.mirror.to(device)
        photo_tris = render_tris
        if config.photo_mesh_fraction < 1.0:
            from faceclip.fit.coarse_mesh import coarse_face_triangles

            photo_tris = torch.from_numpy(coarse_face_triangles(
                m.mean_mm.detach().cpu().numpy(), render_tris.cpu().numpy(), mirror.cpu().numpy(),
                config.photo_mesh_fraction)).to(device)
        # The skin vertices the photometric stage sees, and their mirrors, for the albedo priors
        # (with the symmetric coarse triangulation the mirrors are among them already).
        ph_skin_ids = skin_ids[torch.isin(skin_ids, photo_tris.unique())] if config.photo_mesh_fraction < 1.0 else skin_ids
        ph = VertexSubset(m, albedo_model, torch.cat([lm_ids, photo_tris.reshape(-1), ph_skin_ids, mirror[ph_skin_ids]]))
        ph_tris = ph.remap[photo_tris]
        ph_skin = ph.remap[ph_skin_ids]
        # Mirror map in subset rows (rows whose mirror is outside the subset map to themselves).
        local = ph.remap[mirror[ph.vids]]
        rows = torch.arange(len(ph.vids), device=device)
        ph_mirror = torch.where(local >= 0, local, rows)
        return cls(config=config, device=device, model=model, albedo_model=albedo_model, bands=bands,
                   render_tris=render_tris, render_tri_is_skin=render_tri_is_skin, skin_ids=skin_ids,
                   landmark_subset=lm_sub, photo_subset=ph, photo_tris=ph_tris,
                   photo_tri_is_skin=skin_v[photo_tris].all(1), photo_skin_rows=ph_skin,
                   photo_mirror_rows=ph_mirror)

    # ------------------------------------------------------------------ dense points

    def with_dense_points(self, points) -> "FaceForward":
        """A copy using dense surface points (a :class:`faceclip.detect.calibration.DensePoints`, or None).

        Each point is a barycentric combination of three model vertices, so its position is
        linear in the coefficients like a vertex: its mean and bases are precomputed here. The
        correlated-error model is used when the points have one and ``config.dense.correlated``.
        """
        if points is None:
            return replace(self, dense=None)
        m = self.model
        vid = torch.as_tensor(points.vertex_ids, dtype=torch.long, device=self.device)  # (K, 3)
        bary = torch.as_tensor(points.bary, dtype=torch.float32, device=self.device)  # (K, 3)

        def combine(x: Tensor) -> Tensor:  # (..., V, 3) -> (..., K, 3)
            return (x[..., vid, :] * bary[..., None]).sum(-2)

        noise = {}
        if points.noise_basis is not None and self.config.dense.correlated:
            noise = dict(noise_basis=torch.as_tensor(points.noise_basis, dtype=torch.float32, device=self.device),
                         noise_shrink=torch.as_tensor(points.noise_shrink, dtype=torch.float32, device=self.device),
                         noise_nu=float(points.noise_nu))
        dense = DenseBases(points=points, mean=combine(m.mean_mm), id_basis=combine(m.identity_basis_mm),
                           exp_basis=combine(m.expression_basis_mm), **noise)
        return replace(self, dense=dense)

    def with_dense_vertices(self, vertex_ids) -> "FaceForward":
        """A copy using fixed model vertices (N,) as dense points (the dense landmark network's);
        their uncertainty comes with each fit (:attr:`FitProblem.dense_sigma_px`)."""
        from faceclip.detect.calibration import DensePoints

        ids = np.asarray(vertex_ids, np.int64)
        n = len(ids)
        bary = np.zeros((n, 3))
        bary[:, 0] = 1.0
        return self.with_dense_points(DensePoints(point_ids=np.arange(n), vertex_ids=np.repeat(ids[:, None], 3, 1),
                                                  bary=bary, sigma_mm=np.ones((n, 1)),
                                                  pose_bins_deg=np.array([[0.0, 180.0]])))

    def dense_vertices(self, p: FaceParams) -> Tensor:
        """(B, K, 3) canonical positions of the dense points (requires :attr:`dense`)."""
        return self.dense.vertices(p)

    # ------------------------------------------------------------------ geometry, camera, image

    def subset_vertices(self, params: FaceParams) -> Tensor:
        """(B, N, 3) the rendered vertex subset (:attr:`photo_subset`, the one :meth:`forward_subset`
        uses), posed by ``params``' identity and expression (model frame, mm)."""
        return self.photo_subset.vertices(params)

    def project_landmarks(self, params: FaceParams, vertices_mm: Tensor, subset: VertexSubset | None = None) -> Tensor:
        """(B, 68, 2) landmark pixels with the sliding contour.

        ``vertices_mm`` (B, V, 3) holds all vertices, or (B, N, 3) the rows of ``subset`` when
        one is given.
        """
        cam = params.camera()
        if subset is not None:
            ids = subset.remap[landmark_vertex_ids(self.model, self.bands, vertices_mm, cam, subset.remap)]
        else:
            ids = landmark_vertex_ids(self.model, self.bands, vertices_mm, cam)
        pts = torch.gather(vertices_mm, 1, ids.unsqueeze(-1).expand(-1, -1, 3))
        return cam.project(pts)

    def render(self, params: FaceParams, vertices_mm: Tensor, albedo: Tensor, size_px: int | None = None):
        """Render the face area with SH shading into the crop frame.

        Args:
            vertices_mm, albedo: (B, V, 3) of the whole model.

        Returns:
            rendered (B, S', S', 3), coverage (B, S', S') bool, skin coverage (B, S', S') bool,
            where S' = ``size_px`` (default ``config.render_px``); the camera is scaled to S'.
        """
        return self.render_triangles(params, vertices_mm, albedo, self.render_tris, self.render_tri_is_skin, size_px)

    def render_subset(self, params: FaceParams, vertices_mm: Tensor, albedo: Tensor, size_px: int | None = None):
        """:meth:`render` for the photo subset's (B, N, 3) vertices and albedo."""
        return self.render_triangles(params, vertices_mm, albedo, self.photo_tris, self.photo_tri_is_skin, size_px)

    def render_triangles(self, params: FaceParams, vertices_mm: Tensor, albedo: Tensor, tris: Tensor,
                         tri_is_skin: Tensor, size_px: int | None = None):
        """Render triangles ``tris`` (F, 3) (rows of ``vertices_mm`` (B, N, 3), ``albedo`` (B, N, 3))
        with ``params.sh``; ``tri_is_skin`` (F,) bool marks the skin ones. Returns as :meth:`render`."""
        c = self.config
        S = size_px or c.render_px
        scale = S / c.crop_px
        p = FaceParams(**{**params.tensors(), "focal_px": params.focal_px * scale}, image_size=(S, S))
        cam = p.camera()
        colors = sh_shade_vertices(vertices_mm, tris, albedo, params.sh, to_view=cam.to_view)
        frag, _, _ = rasterize_mesh(vertices_mm, tris, cam, cull_backfaces=True)
        col = interpolate_vertex_attributes(colors, frag, tris)
        rendered = frag.to_image(col, 0.0)
        cover = frag.mask
        skin = frag.to_image(tri_is_skin[frag.face].float().unsqueeze(-1), 0.0)[..., 0] > 0.5
        return rendered, cover, skin

    def forward_subset(self, params: FaceParams, size_px: int | None = None) -> SubsetForward:
        """Differentiable forward model on the rendered vertex subset (training uses it).

        Returns the subset's vertices and albedo, the SH-shaded render of the face area at
        ``size_px`` (default ``config.render_px``) in the crop frame, and the 68 projected
        landmarks in crop pixels (sliding contour).
        """
        sub = self.photo_subset
        verts = sub.vertices(params)
        albedo = sub.albedo(params.albedo)
        rendered, cover, skin = self.render_triangles(params, verts, albedo, self.photo_tris,
                                                      self.photo_tri_is_skin, size_px)
        lm = self.project_landmarks(params, verts, sub)
        return SubsetForward(verts, albedo, rendered, cover, skin, lm, self.photo_mirror_rows, self.photo_skin_rows)

    def clamp_(self, params: FaceParams) -> None:
        """Project ``params`` in place onto the valid set: blendshape weights in [0, 1], yaw in +-80 degrees."""
        with torch.no_grad():
            if self.model.expression_range == "blendshape":
                params.expression.clamp_(0.0, 1.0)
            params.angles_rad[:, 1].clamp_(-1.4, 1.4)


# ---------------------------------------------------------------------- one fit's inputs


@dataclass(frozen=True, eq=False)
class FitProblem:
    """One fit's inputs, on the forward model's device (batch B = 1 from :meth:`from_inputs`).

    Attributes:
        crop: (B, S, S, 3) float32 crop in [0, 1].
        landmarks: (B, 68, 2) float32 target landmarks in crop pixels.
        skin: (B, S, S) bool skin mask of the crop.
        dense: (B, K, 2) float32 target positions of the forward model's dense points in crop
            pixels, or None (the 68 landmarks alone).
        dense_sigma_px: (K,) float32 standard deviation of each dense point in crop pixels, or
            None (the points' own model, the calibration's sigmas).
        landmark_sigma_px: (68,) float32 standard deviation of each landmark in crop pixels, or
            None (fixed weights).
        landmark_weights: (68,) float32 relative weights of the 68 landmarks replacing
            :data:`~faceclip.losses.DEFAULT_LANDMARK_WEIGHTS` (e.g. from the calibration's
            spread of each mapped point), or None.
        landmark_scale: factor on ``config.landmarks.weight`` for this face, in both stages
            (e.g. below 1 for a turned head whose landmarks are less certain).
        prior_identity, prior_expression: (B, n_identity), (B, n_expression) centres of the
            Gaussian priors, or None for zero (the mean face); see :meth:`with_priors`.
    """

    crop: Tensor
    landmarks: Tensor
    skin: Tensor
    dense: Tensor | None = None
    dense_sigma_px: Tensor | None = None
    landmark_sigma_px: Tensor | None = None
    landmark_weights: Tensor | None = None
    landmark_scale: float = 1.0
    prior_identity: Tensor | None = None
    prior_expression: Tensor | None = None

    @classmethod
    def from_inputs(cls, forward: FaceForward, crop_rgb: Tensor, landmarks_px: Tensor, skin_mask: Tensor,
                    dense_px: Tensor | None = None, dense_sigma_px: Tensor | None = None,
                    landmark_sigma_px: Tensor | None = None, landmark_weights: Tensor | None = None,
                    landmark_scale: float = 1.0) -> "FitProblem":
        """Validate one face's inputs (shapes as :meth:`Fitter.fit <faceclip.fit.fitter.Fitter.fit>`:
        (S, S, 3), (68, 2), (S, S), (K, 2), (K,), (68,), (68,), scalar) and batch them.

        Raises:
            ValueError: non-finite crop or landmarks; dense points without
                :attr:`FaceForward.dense`, of the wrong shape or non-finite; sigmas or landmark
                weights that are not positive and finite with the right shape; ``dense_sigma_px``
                without ``dense_px``; a landmark scale that is not positive and finite.
        """
        dev = forward.device
        crop = crop_rgb.to(dev, torch.float32).unsqueeze(0)
        target = landmarks_px.to(dev, torch.float32).unsqueeze(0)
        skin = skin_mask.to(dev).bool().unsqueeze(0)
        if not torch.isfinite(crop).all() or not torch.isfinite(target).all():
            raise ValueError("crop or landmarks contain NaN / infinite values")
        dense_t = None
        if dense_px is not None:
            if forward.dense is None:
                raise ValueError("dense_px given but no dense points set (Fitter.set_dense_points)")
            dense_t = dense_px.to(dev, torch.float32).unsqueeze(0)
            if dense_t.shape[1:] != forward.dense.mean.shape[:1] + (2,) or not torch.isfinite(dense_t).all():
                raise ValueError(f"dense_px must be finite with shape ({forward.dense.mean.shape[0]}, 2)")
        dense_sig = None
        if dense_sigma_px is not None:
            if dense_t is None:
                raise ValueError("dense_sigma_px given without dense_px")
            sig = dense_sigma_px.to(dev, torch.float32).reshape(-1)
            if sig.shape[0] != dense_t.shape[1] or not torch.isfinite(sig).all() or bool((sig <= 0).any()):
                raise ValueError(f"dense_sigma_px must be positive and finite with shape ({dense_t.shape[1]},)")
            dense_sig = sig
        lm_sig = None
        if landmark_sigma_px is not None:
            sig = landmark_sigma_px.to(dev, torch.float32).reshape(-1)
            if sig.shape[0] != 68 or not torch.isfinite(sig).all() or bool((sig <= 0).any()):
                raise ValueError("landmark_sigma_px must be positive and finite with shape (68,)")
            lm_sig = sig
        lm_w = None
        if landmark_weights is not None:
            lw = torch.as_tensor(landmark_weights, dtype=torch.float32, device=dev).reshape(-1)
            if lw.shape[0] != 68 or not torch.isfinite(lw).all() or bool((lw <= 0).any()):
                raise ValueError("landmark_weights must be positive and finite with shape (68,)")
            lm_w = lw
        if not (np.isfinite(landmark_scale) and landmark_scale > 0):
            raise ValueError(f"landmark_scale must be positive and finite, got {landmark_scale}")
        return cls(crop=crop, landmarks=target, skin=skin, dense=dense_t, dense_sigma_px=dense_sig,
                   landmark_sigma_px=lm_sig, landmark_weights=lm_w, landmark_scale=float(landmark_scale))

    def with_priors(self, params: FaceParams, centred_on_params: bool = False) -> "FitProblem":
        """A copy with the priors centred on ``params``' identity and expression (copies) when
        ``centred_on_params``, else on zero (tensors shaped and typed like ``params``')."""
        if centred_on_params:
            return replace(self, prior_identity=params.identity.clone(), prior_expression=params.expression.clone())
        return replace(self, prior_identity=torch.zeros_like(params.identity),
                       prior_expression=torch.zeros_like(params.expression))

    def priors(self, params: FaceParams) -> tuple[Tensor, Tensor]:
        """(B, n_identity), (B, n_expression) prior centres (zeros shaped like ``params``' when unset)."""
        pi = self.prior_identity if self.prior_identity is not None else torch.zeros_like(params.identity)
        pe = self.prior_expression if self.prior_expression is not None else torch.zeros_like(params.expression)
        return pi, pe


# ---------------------------------------------------------------------- stages


def initial_params(forward: FaceForward, config: FitConfig, landmarks_px: Tensor) -> FaceParams:
    """Mean face posed by PnP (OpenCV) on the inner landmarks (17-67).

    Args:
        landmarks_px: (B, 68, 2) target landmarks in crop pixels.

    Returns:
        new :class:`FaceParams` (B) in the crop camera (``config.crop_px``, ``config.focal_px``):
        zero coefficients, ambient light 0.8, the PnP rotation and translation.
    """
    c = config
    B = landmarks_px.shape[0]
    dev = forward.device
    p = FaceParams.initial(B, forward.model.n_identity, forward.model.n_expression,
                           forward.albedo_model.n_coeffs, (c.crop_px, c.crop_px), c.focal_px,
                           distance_mm=c.focal_px * 150.0 / (0.55 * c.crop_px), device=dev)
    p.sh = sh_ambient(0.8, B, device=dev)
    obj = forward.model.mean_mm[forward.model.landmarks68].detach().cpu().numpy().astype(np.float64)
    K = np.array([[c.focal_px, 0, c.crop_px / 2], [0, c.focal_px, c.crop_px / 2], [0, 0, 1]])
    angles, trans = [], []
    for b in range(B):
        img = landmarks_px[b].detach().cpu().numpy().astype(np.float64)
        # A plausible starting distance keeps PnP in the right basin.
        R_cv, t, _ = pose_from_landmarks(obj, img, K, distance_mm=float(p.translation_mm[b, 2]))
        angles.append(matrix_to_euler(torch.from_numpy(MODEL_TO_OPENCV @ R_cv).float().unsqueeze(0))[0])
        trans.append(torch.from_numpy(t).float())
    p.angles_rad = torch.stack(angles).to(dev)
    p.translation_mm = torch.stack(trans).to(dev)
    return p


def dense_point_weights(forward: FaceForward, config: FitConfig, params: FaceParams, b: int, yaw_rad: float,
                        tz_mm: float, sigma_px: Tensor | None = None) -> Tensor:
    """(K,) NLL weights ``dense.weight / sigma_px^2`` of the dense points for face ``b``'s current
    pose (yaw in radians, distance in mm), with each point's sigma (mm, per yaw bin) turned into
    pixels; or ``dense.net_weight / sigma_px^2`` with given per-point sigmas ``sigma_px`` (K,)."""
    if sigma_px is not None:
        return config.dense.net_weight / sigma_px.clamp_min(0.05) ** 2
    sigma_mm = torch.as_tensor(forward.dense.points.sigma_at(np.degrees(yaw_rad)), dtype=torch.float32,
                               device=forward.device)
    px_per_mm = float(params.focal_px[b]) / max(tz_mm, 1.0)
    return config.dense.weight / (sigma_mm * px_per_mm) ** 2


def dense_cost(dense: DenseBases, weights: Tensor, proj_px: Tensor, target_px: Tensor) -> Tensor:
    """Scalar: the dense term for (B, K, 2) projections and targets with (B, K) or (1, K) weights
    (:attr:`LandmarkStageResult.dense_weights`), whitened, mean over the batch."""
    r = (proj_px - target_px) * weights.sqrt().unsqueeze(-1)
    return torch.stack([(dense.whiten(rb.reshape(-1)) ** 2).sum() for rb in r]).mean()


@dataclass(frozen=True, eq=False)
class LandmarkStageResult:
    """Output of :func:`landmark_stage`.

    Attributes:
        losses: final unweighted ``landmark``, ``identity_reg``, ``expression_reg`` (and
            ``dense_landmark``) of the last face of the batch.
        landmark_weights: (B, 68) per-landmark weights reached (robust and sigma reweighting,
            normalised to the sum of the default weights); the photometric stage keeps them.
        dense_weights: (1, K) dense points' weights reached (last face of the batch), or None
            without dense points.
    """

    losses: dict[str, float]
    landmark_weights: Tensor
    dense_weights: Tensor | None = None


def _params_from_theta(p: FaceParams, theta: Tensor, sizes: list[int], t_unit: float, b: int) -> FaceParams:
    ang, tr, ident, expr = torch.split(theta, sizes)
    return FaceParams(identity=ident[None], expression=expr[None], angles_rad=ang[None],
                      translation_mm=(tr * t_unit)[None], focal_px=p.focal_px[b:b + 1],
                      sh=p.sh[b:b + 1], albedo=p.albedo[b:b + 1], image_size=p.image_size)


def _project_theta(forward: FaceForward, theta: Tensor, sizes: list[int]) -> Tensor:
    """Keep yaw in +-80 degrees and blendshape weights in [0, 1] (flat parameter vector)."""
    theta = theta.clone()
    theta[1] = theta[1].clamp(-1.4, 1.4)
    if forward.model.expression_range == "blendshape":
        start = sum(sizes[:3])
        theta[start:] = theta[start:].clamp(0.0, 1.0)
    return theta


def _robust_weights(config: FitConfig, theta, rows, b, base_w, evaluate, device) -> Tensor:
    """(68,) per-landmark weights: base weights times a Cauchy factor of the current error."""
    robust_px = config.landmarks.robust_px
    if robust_px <= 0:
        return base_w
    r, _ = evaluate(theta, rows, b, False, torch.ones(68, 1, device=device))
    d = r.view(68, 2).norm(dim=1) * (224.0 / config.crop_px)  # error in 224-crop pixels
    return base_w / (1.0 + (d / robust_px) ** 2)


@torch.no_grad()
def landmark_stage(forward: FaceForward, config: FitConfig, params: FaceParams, problem: FitProblem,
                   steps: int) -> LandmarkStageResult:
    """Levenberg-Marquardt on pose, identity and expression against the 68 landmarks.

    The objective is the same weighted sum of squares as the photometric stage's landmark
    and prior terms, written as residuals. The Jacobian is analytic (the model is linear in
    its coefficients, the camera a rotation, a translation and a perspective division), so an
    iteration costs one (136 x P) matrix and a P x P solve (P = 6 + n_identity + n_expression);
    ``steps`` (>= 1) bounds the iterations. The sliding contour is re-selected at every iteration
    and held fixed within it. Blendshape weights are projected onto [0, 1] after every step.
    With ``problem.dense`` (B, K, 2) the forward model's dense points add K rows weighted by
    each point's uncertainty (``problem.dense_sigma_px`` or the calibration's).

    Args:
        forward: the forward model (its landmark subset, contour bands, dense bases).
        config: the weights (``landmarks``: ``weight``, ``identity_prior``, ``robust_px``,
            ``sigma_weighting``; ``priors``; ``dense``); ``crop_px`` must be the forward model's.
        params: (B) starting parameters, **updated in place** (angles, translation, identity,
            expression).
        problem: targets ``landmarks`` (B, 68, 2), optional dense targets and sigmas, priors.
        steps: maximum iterations per face.
    """
    c = config
    p = params
    dev = forward.device
    target = problem.landmarks
    dense_target = problem.dense
    prior_identity, prior_expression = problem.priors(p)
    scale = c.crop_px / 224.0
    default_w = DEFAULT_LANDMARK_WEIGHTS.to(dev)
    w = default_w if problem.landmark_weights is None else problem.landmark_weights * (
        default_w.sum() / problem.landmark_weights.sum())
    if problem.landmark_sigma_px is not None and c.landmarks.sigma_weighting:
        sig = problem.landmark_sigma_px.clamp_min(0.05)
        w = w * ((sig.median() / sig) ** 2).clamp(0.25, 4.0)  # a few overconfident points cannot dominate
        w = w * (default_w.sum() / w.sum())
    base_w = w / w.sum()
    sizes = [3, 3, forward.model.n_identity, forward.model.n_expression]
    # Translation is solved in cm so that all unknowns have similar scales.
    t_unit = 10.0
    prior_w = torch.cat([torch.zeros(6, device=dev),
                         torch.full((sizes[2],), c.priors.identity if c.landmarks.identity_prior is None
                                    else c.landmarks.identity_prior, device=dev),
                         torch.full((sizes[3],), c.priors.expression, device=dev)])
    flip = torch.tensor(OPENCV_TO_VIEW, device=dev).view(3, 1)
    sub = forward.landmark_subset

    dense = forward.dense if dense_target is not None else None

    def evaluate(theta: Tensor, rows: Tensor, b: int, jacobian: bool, w_sqrt: Tensor):
        """Residuals (N*2,) and Jacobian (N*2, P): the 68 landmarks, then any dense points."""
        ang, tr, ident, expr = torch.split(theta, sizes)
        bid, bexp, mean, tgt = sub.id_basis[:, rows], sub.exp_basis[:, rows], sub.mean[rows], target[b]
        if dense is not None and w_sqrt.shape[0] > 68:
            bid, bexp = torch.cat([bid, dense.id_basis], 1), torch.cat([bexp, dense.exp_basis], 1)
            mean, tgt = torch.cat([mean, dense.mean]), torch.cat([tgt, dense_target[b]])
        n = mean.shape[0]
        X = mean + torch.einsum("k,knc->nc", ident, bid) + torch.einsum("k,knc->nc", expr, bexp)
        R = flip * euler_to_matrix(ang[None])[0]
        Xc = X @ R.T + tr * t_unit
        f = p.focal_px[b]
        x, y, z = Xc.unbind(-1)
        uv = torch.stack([f * x / z, f * y / z], -1) + torch.tensor(
            [p.image_size[1] / 2.0, p.image_size[0] / 2.0], device=dev)
        r = ((uv - tgt) * w_sqrt).reshape(-1)
        if n > 68:
            r = torch.cat([r[:136], dense.whiten(r[136:])])
        if not jacobian:
            return r, None
        zero = torch.zeros_like(z)
        duv = torch.stack([torch.stack([f / z, zero, -f * x / z**2], -1),
                           torch.stack([zero, f / z, -f * y / z**2], -1)], 1)  # (N, 2, 3)
        dR = flip.view(3, 1, 1) * _euler_jacobian(ang)  # (3, 3, 3): d R[i, j] / d angle k
        d_ang = torch.einsum("ijk,nj->nik", dR, X)  # (N, 3, 3)
        d_t = (torch.eye(3, device=dev) * t_unit).expand(n, 3, 3)
        d_id = torch.einsum("ij,knj->nik", R, bid)
        d_exp = torch.einsum("ij,knj->nik", R, bexp)
        dX = torch.cat([d_ang, d_t, d_id, d_exp], -1)  # (N, 3, P)
        J = (torch.einsum("nac,ncp->nap", duv, dX) * w_sqrt.view(n, 1, 1)).reshape(2 * n, -1)
        if n > 68:
            J = torch.cat([J[:136], dense.whiten(J[136:])])
        return r, J

    def total(r: Tensor, theta: Tensor) -> float:
        d = theta - mu
        return float(r @ r + (prior_w * d * d).sum())

    losses: dict[str, float] = {}
    landmark_weights = w.expand(p.batch_size, 68).clone()
    dense_weights: Tensor | None = None
    inner_factor = torch.ones(68, 1, device=dev)
    if dense is not None:
        inner_factor[17:] = c.dense.inner68 ** 0.5
    for b in range(p.batch_size):
        theta = torch.cat([p.angles_rad[b], p.translation_mm[b] / t_unit, p.identity[b], p.expression[b]])
        mu = torch.cat([torch.zeros(6, device=dev), prior_identity[b], prior_expression[b]])
        lam = 1e-2
        for _ in range(steps):
            q = _params_from_theta(p, theta, sizes, t_unit, b)
            rows = sub.remap[landmark_vertex_ids(forward.model, forward.bands, sub.vertices(q), q.camera(), sub.remap)[0]]
            # Iteratively reweighted: a Cauchy weight per landmark (scale c px) keeps a few
            # badly detected landmarks from bending the whole face.
            w_sqrt = _robust_weights(c, theta, rows, b, base_w, evaluate, dev).sqrt().view(68, 1) * (
                ((c.landmarks.weight * problem.landmark_scale) ** 0.5) / scale)
            if dense is not None:
                w_sqrt = torch.cat([w_sqrt * inner_factor, dense_point_weights(
                    forward, c, p, b, float(theta[1]), float(theta[5]) * t_unit,
                    problem.dense_sigma_px).sqrt().view(-1, 1)])
            r, J = evaluate(theta, rows, b, True, w_sqrt)
            cost = total(r, theta)
            JtJ = J.T @ J + torch.diag(prior_w)
            g = J.T @ r + prior_w * (theta - mu)
            diag = torch.diagonal(JtJ)
            improved = converged = False
            for _ in range(6):
                step = torch.linalg.solve(JtJ + lam * torch.diag(diag + 1e-6), g)
                cand = _project_theta(forward, theta - step, sizes)
                cost_c = total(evaluate(cand, rows, b, False, w_sqrt)[0], cand)
                if cost_c < cost:
                    converged = cost - cost_c < 1e-5 * cost
                    theta, lam, improved = cand, max(lam / 3.0, 1e-7), True
                    break
                lam *= 4.0
            if not improved or converged:
                break
        ang, tr, ident, expr = torch.split(theta, sizes)
        p.angles_rad[b], p.translation_mm[b] = ang, tr * t_unit
        p.identity[b], p.expression[b] = ident, expr
        q = _params_from_theta(p, theta, sizes, t_unit, b)
        lm = forward.project_landmarks(q, sub.vertices(q), sub)
        landmark_weights[b] = (w_sqrt[:68].view(68) ** 2 * scale**2 / (c.landmarks.weight * problem.landmark_scale)
                               * w.sum())
        losses = {"landmark": float(landmark_loss(lm, target[b:b + 1], scale_px=scale)),
                  "identity_reg": float(ident @ ident), "expression_reg": float(expr @ expr)}
        if dense is not None:
            dense_weights = (w_sqrt[68:].view(-1) ** 2).unsqueeze(0)
            pd = q.camera().project(forward.dense_vertices(q))
            losses["dense_landmark"] = float(dense_cost(dense, dense_weights, pd, dense_target[b:b + 1]))
    return LandmarkStageResult(losses=losses, landmark_weights=landmark_weights, dense_weights=dense_weights)


def _at_render_size(config: FitConfig, crop: Tensor, skin_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(B, S, S, 3) crop and (B, S, S) mask area-resampled to (B, S', S', ...) when S' != S."""
    S = config.render_px
    if S != config.crop_px:
        crop = torch.nn.functional.interpolate(crop.permute(0, 3, 1, 2), size=(S, S), mode="area").permute(0, 2, 3, 1)
        skin_mask = torch.nn.functional.interpolate(skin_mask[:, None].float(), size=(S, S), mode="area")[:, 0] > 0.5
    return crop, skin_mask


def photo_stage(forward: FaceForward, config: FitConfig, params: FaceParams, problem: FitProblem,
                landmark_weights: Tensor, dense_weights: Tensor | None, steps: int,
                extra_terms: Sequence[LossTerm] = ()) -> tuple[dict[str, float], Tensor]:
    """Adam on pose, identity, expression, light and albedo against the photo.

    Renders the photo subset at ``config.render_px`` and compares it with the crop on the
    rendered skin within ``problem.skin``, keeping the landmark term (with the landmark stage's
    weights), the dense term (with ``problem.dense``), the priors and the albedo/light priors.

    Args:
        forward: the forward model.
        config: weights and learning rates; ``crop_px`` must be the forward model's.
        params: (B) parameters, **updated in place** (their tensors are left with
            ``requires_grad`` set, except ``focal_px``).
        problem: ``crop`` (B, S, S, 3), ``skin`` (B, S, S), ``landmarks`` (B, 68, 2), optional
            ``dense`` (B, K, 2), priors.
        landmark_weights: (B, 68) from :class:`LandmarkStageResult`.
        dense_weights: (1, K) from :class:`LandmarkStageResult`, needed with ``problem.dense``.
        steps: Adam iterations.
        extra_terms: :class:`LossTerm` s added to the objective.

    Returns:
        the last step's weighted terms ``{name: value}`` and the (B, V, 3) albedo (detached, unclamped).
    """
    c = config
    p = params
    scale = c.crop_px / 224.0
    crop, skin_mask = _at_render_size(c, problem.crop, problem.skin)
    target_lm, dense_target = problem.landmarks, problem.dense
    prior_identity, prior_expression = problem.priors(p)
    for t in p.tensors().values():
        t.requires_grad_(t is not p.focal_px)
    opt = Adam([  # torch.optim.Adam's update, without importing torch._dynamo (faceclip.fit.adam)
        {"params": [p.angles_rad], "lr": c.photo.lr_pose * 0.3},
        {"params": [p.translation_mm], "lr": 0.3},
        {"params": [p.identity], "lr": c.photo.lr * 3},
        {"params": [p.expression], "lr": c.photo.lr},
        {"params": [p.sh], "lr": c.photo.lr * 3},
        {"params": [p.albedo], "lr": c.photo.lr * 10},
    ])
    am, sub = forward.albedo_model, forward.photo_subset
    losses: dict[str, float] = {}
    for _ in range(steps):
        opt.zero_grad()
        verts = sub.vertices(p)
        albedo = sub.albedo(p.albedo)
        rendered, cover, skin = forward.render_triangles(p, verts, albedo, forward.photo_tris,
                                                         forward.photo_tri_is_skin)
        mask = skin & skin_mask
        terms = {
            "landmark": c.landmarks.weight * problem.landmark_scale * landmark_loss(
                forward.project_landmarks(p, verts, sub), target_lm, weights=landmark_weights, scale_px=scale),
            "photometric": c.photo.weight * photometric_loss(rendered, crop, mask),
            "identity_reg": c.priors.identity * coefficient_l2(p.identity - prior_identity),
            "expression_reg": c.priors.expression * coefficient_l2(p.expression - prior_expression),
            "albedo_smooth": c.photo.albedo_smooth * albedo_smoothness(p.albedo, am.eigenvalues),
            "albedo_symmetry": c.photo.albedo_sym * albedo_symmetry(albedo, forward.photo_mirror_rows,
                                                                forward.photo_skin_rows),
            "albedo_skin": c.photo.albedo_skin * albedo_skin_prior(albedo, forward.photo_skin_rows),
            "light_chroma": c.photo.light_chroma * light_chroma(p.sh),
        }
        if dense_target is not None:
            pd = p.camera().project(forward.dense_vertices(p))
            terms["dense_landmark"] = dense_cost(forward.dense, dense_weights, pd, dense_target)
        if extra_terms:
            ctx = {"params": p, "vertices_mm": verts, "rendered": rendered, "coverage": cover,
                   "target": crop, "camera": p.camera()}
            for term in extra_terms:
                terms[term.name] = term.weight * term.fn(ctx)
        loss = sum(terms.values())
        loss.backward()
        p.translation_mm.grad[:, 2] *= 100.0
        opt.step()
        forward.clamp_(p)
        losses = {k: v.item() for k, v in terms.items()}
    return losses, am(p.albedo).detach()


@torch.no_grad()
def closed_form_light(forward: FaceForward, config: FitConfig, params: FaceParams, crop: Tensor,
                      skin: Tensor) -> float:
    """Least-squares SH light times a uniform albedo on the skin pixels, then split them.

    Solves ``I_c(x) = Y(n(x)) . K_c`` per colour channel for K (9, 3) over the pixels where
    the rendered skin (at ``config.render_px``) meets the photo's skin mask, then writes
    ``K_c = rho_c * L_c`` with a uniform albedo ``rho`` (the skin colour) chosen so that the
    ambient irradiance is 0.8. **Sets** ``params.sh`` and the albedo coefficients (all zero but
    the constant one) **in place**, per face of the batch; a face with fewer than 50 skin pixels
    keeps its values.

    Args:
        crop: (B, S, S, 3) float crop; skin: (B, S, S) bool skin mask.

    Returns:
        the RMS residual of the fit (mean over the solved faces; NaN when none was solved).
    """
    from faceclip.render.interpolate import interpolate_vertex_attributes as interp
    from faceclip.render.shading import SH_CONSTANTS, sh_basis, vertex_normals

    c = config
    p = params
    S = c.render_px
    crop, skin_mask = _at_render_size(c, crop, skin)
    sub = forward.photo_subset
    verts = sub.vertices(p)
    scale = S / c.crop_px
    q = FaceParams(**{**p.tensors(), "focal_px": p.focal_px * scale}, image_size=(S, S))
    cam = q.camera()
    normals = cam.to_view(vertex_normals(verts, forward.photo_tris))
    frag, _, _ = rasterize_mesh(verts, forward.photo_tris, cam, cull_backfaces=True)
    n_pix = torch.nn.functional.normalize(interp(normals, frag, forward.photo_tris), dim=1)
    use = forward.photo_tri_is_skin[frag.face] & skin_mask.reshape(-1)[frag.pix]
    base = forward.albedo_model.mean[forward.skin_ids].mean(0)  # (3,) default skin colour
    rmse = []
    for b in range(p.batch_size):
        sel = use & (frag.batch_index == b)
        if int(sel.sum()) < 50:  # too few skin pixels: keep the defaults
            rmse.append(float("nan"))
            continue
        Y = sh_basis(n_pix[sel].unsqueeze(0))[0]  # (N, 9)
        target = crop.reshape(-1, 3)[frag.pix[sel]]  # (N, 3)
        reg = 1e-3 * torch.eye(9, dtype=Y.dtype, device=Y.device)
        K = torch.linalg.solve(Y.T @ Y + reg * len(Y), Y.T @ target)  # (9, 3)
        rho = (K[0] * SH_CONSTANTS[0] / 0.8).clamp(0.02, 1.0)  # skin colour at ambient 0.8
        p.sh[b] = K / rho
        # The first harmonic is constant over the face: shift the albedo to rho with it.
        p.albedo[b] = 0.0
        p.albedo[b, 0] = (rho - base) / forward.albedo_model.basis[0, forward.skin_ids].mean()
        rmse.append(float(((Y @ K - target) ** 2).mean().sqrt()))
    return float(np.nanmean(rmse)) if not all(np.isnan(rmse)) else float("nan")
