"""Analysis-by-synthesis fitting of a face model to one aligned face crop.

Stages (each a few dozen vectorised steps of Adam):

0. **Pose initialisation**: PnP (OpenCV) of the mean face's inner 51 landmarks against the
   detected ones, with the crop's fixed focal length.
1. **Landmarks**: pose, identity and expression against the 68 landmarks (sliding jaw contour,
   see :mod:`faceclip.fit.contour`), with Gaussian priors. Only the landmark and contour
   vertices are evaluated, so this stage costs milliseconds.
2. **Photometric**: adds SH lighting and albedo; renders the face with the differentiable
   rasterizer and compares it to the crop on the skin mask, keeping the landmark term and the
   priors. Extra loss terms (identity features, CLIP consistency) plug in through
   :class:`LossTerm`.

The camera is a pinhole with focal ``1015 * crop / 224`` pixels (Deep3DFaceRecon's choice:
a long lens, nearly orthographic) and the principal point at the crop centre.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from faceclip.facemodel.base import FaceModel
from faceclip.fit.albedo import AlbedoModel, make_albedo_model
from faceclip.fit.contour import ContourBands, build_contour_bands, landmark_vertex_ids
from faceclip.fit.params import FaceParams, matrix_to_euler
from faceclip.losses import (
    albedo_skin_prior,
    albedo_smoothness,
    albedo_symmetry,
    coefficient_l2,
    landmark_loss,
    light_chroma,
    photometric_loss,
)
from faceclip.render.interpolate import interpolate_vertex_attributes
from faceclip.render.rasterize import rasterize_mesh
from faceclip.render.shading import sh_ambient, sh_shade_vertices

DEFAULT_FOCAL_224 = 1015.0


@dataclass
class FitConfig:
    """Fitting settings. ``fast()`` gives the quick variant.

    Loss weights are relative to the landmark term measured in pixels of a 224-pixel crop.
    """

    crop_px: int = 224
    landmark_steps: int = 120
    photo_steps: int = 30
    render_px: int = 224
    w_landmark: float = 1.0
    w_photo: float = 40.0
    w_identity: float = 0.02
    w_expression: float = 0.5
    w_albedo_smooth: float = 0.5
    w_albedo_sym: float = 20.0
    w_albedo_skin: float = 100.0
    w_light_chroma: float = 1.0
    lr_pose: float = 0.01
    lr_shape: float = 0.05
    lr_photo: float = 0.01
    device: str = "cpu"

    @staticmethod
    def fast() -> "FitConfig":
        """Landmark stage plus a short photometric stage at lower resolution."""
        return FitConfig(landmark_steps=80, photo_steps=8, render_px=160)

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


class Fitter:
    """Fits one face model; construct once, call :meth:`fit` per face."""

    def __init__(self, model: FaceModel, config: FitConfig | None = None,
                 extra_terms: list[LossTerm] | None = None) -> None:
        self.config = config or FitConfig()
        self.device = torch.device(self.config.device)
        self.model = model.to(self.device)
        self.albedo_model: AlbedoModel = make_albedo_model(self.model).to(self.device)
        self.bands: ContourBands = build_contour_bands(self.model).to(self.device)
        self.extra_terms = list(extra_terms or [])
        m = self.model
        # Triangles rendered for the photometric loss: the narrow face area (forehead to chin,
        # ear to ear; the rest never meets the photo's skin mask) and the skin ones among them.
        face_v = m.region_mask("face_narrow" if "face_narrow" in m.regions else "face")
        self.render_tris = m.triangles[face_v[m.triangles].all(1)]
        skin_v = m.region_mask("skin")
        self.render_tri_is_skin = skin_v[self.render_tris].all(1)
        # Vertices needed by the landmark stage.
        need = torch.unique(torch.cat([m.landmarks68, self.bands.candidates.reshape(-1)]))
        self._lm_vids = need
        self._lm_remap = torch.full((m.n_vertices,), -1, dtype=torch.long, device=self.device)
        self._lm_remap[need] = torch.arange(len(need), device=self.device)
        self._lm_mean = m.mean_mm[need]
        self._lm_id = m.identity_basis_mm[:, need]
        self._lm_exp = m.expression_basis_mm[:, need]
        self.skin_ids = m.regions["skin"].to(self.device)

    # ------------------------------------------------------------------ helpers

    def _sub_vertices(self, params: FaceParams) -> Tensor:
        """(B, N, 3) vertices of the landmark-stage subset."""
        return (self._lm_mean.unsqueeze(0)
                + torch.einsum("bk,knc->bnc", params.identity, self._lm_id)
                + torch.einsum("bk,knc->bnc", params.expression, self._lm_exp))

    def _clamp_(self, params: FaceParams) -> None:
        with torch.no_grad():
            if self.model.expression_range == "blendshape":
                params.expression.clamp_(0.0, 1.0)
            params.angles_rad[:, 1].clamp_(-1.4, 1.4)

    def initial_params(self, landmarks_px: Tensor) -> FaceParams:
        """Mean face posed by PnP on the inner landmarks (17-67). landmarks_px: (B, 68, 2)."""
        import cv2

        c = self.config
        B = landmarks_px.shape[0]
        p = FaceParams.initial(B, self.model.n_identity, self.model.n_expression,
                               self.albedo_model.n_coeffs, (c.crop_px, c.crop_px), c.focal_px,
                               distance_mm=c.focal_px * 150.0 / (0.55 * c.crop_px), device=self.device)
        p.sh = sh_ambient(0.8, B, device=self.device)
        obj = self.model.mean_mm[self.model.landmarks68].detach().cpu().numpy().astype(np.float64)
        K = np.array([[c.focal_px, 0, c.crop_px / 2], [0, c.focal_px, c.crop_px / 2], [0, 0, 1]])
        flip = np.diag([1.0, -1.0, -1.0])
        angles, trans = [], []
        for b in range(B):
            img = landmarks_px[b].detach().cpu().numpy().astype(np.float64)
            # Start frontal at a plausible distance: keeps solvePnP in the right basin.
            rvec0, _ = cv2.Rodrigues(flip)
            tvec0 = np.array([0.0, 0.0, float(p.translation_mm[b, 2])])
            ok, rvec, tvec = cv2.solvePnP(obj[17:], img[17:], K, None, rvec0.copy(), tvec0.copy(),
                                          useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
            if not ok or not np.isfinite(tvec).all() or tvec[2] <= 0:
                rvec, tvec = rvec0, tvec0.reshape(3, 1)
            R_cv, _ = cv2.Rodrigues(rvec)
            angles.append(matrix_to_euler(torch.from_numpy(flip @ R_cv).float().unsqueeze(0))[0])
            trans.append(torch.from_numpy(tvec.reshape(3)).float())
        p.angles_rad = torch.stack(angles).to(self.device)
        p.translation_mm = torch.stack(trans).to(self.device)
        return p

    def project_landmarks(self, params: FaceParams, vertices_mm: Tensor, sub: bool = False) -> Tensor:
        """(B, 68, 2) landmark pixels with the sliding contour; ``vertices_mm`` may be the subset."""
        cam = params.camera()
        if sub:
            ids = self._lm_remap[landmark_vertex_ids(self.model, self.bands, vertices_mm, cam, self._lm_remap)]
        else:
            ids = landmark_vertex_ids(self.model, self.bands, vertices_mm, cam)
        pts = torch.gather(vertices_mm, 1, ids.unsqueeze(-1).expand(-1, -1, 3))
        return cam.project(pts)

    def render(self, params: FaceParams, vertices_mm: Tensor, albedo: Tensor, size_px: int | None = None):
        """Render the face area with SH shading into the crop frame.

        Returns:
            rendered (B, S, S, 3), coverage (B, S, S) bool, skin coverage (B, S, S) bool, where
            S = ``size_px`` (default ``config.render_px``); the camera is scaled to S.
        """
        c = self.config
        S = size_px or c.render_px
        scale = S / c.crop_px
        p = FaceParams(**{**params.tensors(), "focal_px": params.focal_px * scale}, image_size=(S, S))
        cam = p.camera()
        colors = sh_shade_vertices(vertices_mm, self.model.triangles, albedo, params.sh, to_view=cam.to_view)
        frag, _, _ = rasterize_mesh(vertices_mm, self.render_tris, cam, cull_backfaces=True)
        col = interpolate_vertex_attributes(colors, frag, self.render_tris)
        rendered = frag.to_image(col, 0.0)
        cover = frag.mask
        skin = frag.to_image(self.render_tri_is_skin[frag.face].float().unsqueeze(-1), 0.0)[..., 0] > 0.5
        return rendered, cover, skin

    # ------------------------------------------------------------------ stages

    def _landmark_stage(self, p: FaceParams, target: Tensor, steps: int) -> dict[str, float]:
        c = self.config
        scale = c.crop_px / 224.0
        for t in (p.angles_rad, p.translation_mm, p.identity, p.expression):
            t.requires_grad_(True)
        # Translation in units of ~ pixels: x, y move ~1 px per mm at this focal; z is slower.
        opt = torch.optim.Adam([
            {"params": [p.angles_rad], "lr": c.lr_pose},
            {"params": [p.translation_mm], "lr": 1.0},
            {"params": [p.identity], "lr": c.lr_shape},
            {"params": [p.expression], "lr": c.lr_shape * 0.5},
        ])
        losses: dict[str, float] = {}
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            verts = self._sub_vertices(p)
            lm = self.project_landmarks(p, verts, sub=True)
            l_lm = landmark_loss(lm, target, scale_px=scale)
            l_id = coefficient_l2(p.identity)
            l_exp = coefficient_l2(p.expression)
            loss = c.w_landmark * l_lm + c.w_identity * l_id + c.w_expression * l_exp
            loss.backward()
            # z translation: scale its step (depth changes the image ~f/z^2 as slowly).
            p.translation_mm.grad[:, 2] *= 100.0
            opt.step()
            self._clamp_(p)
            losses = {"landmark": l_lm.item(), "identity_reg": l_id.item(), "expression_reg": l_exp.item()}
        return losses

    def _photo_stage(self, p: FaceParams, target_lm: Tensor, crop: Tensor, skin_mask: Tensor,
                     steps: int) -> tuple[dict[str, float], Tensor]:
        c = self.config
        S = c.render_px
        scale = c.crop_px / 224.0
        if S != c.crop_px:
            crop = torch.nn.functional.interpolate(crop.permute(0, 3, 1, 2), size=(S, S), mode="area").permute(0, 2, 3, 1)
            skin_mask = torch.nn.functional.interpolate(skin_mask[:, None].float(), size=(S, S), mode="area")[:, 0] > 0.5
        for t in p.tensors().values():
            t.requires_grad_(t is not p.focal_px)
        opt = torch.optim.Adam([
            {"params": [p.angles_rad], "lr": c.lr_pose * 0.3},
            {"params": [p.translation_mm], "lr": 0.3},
            {"params": [p.identity], "lr": c.lr_photo * 3},
            {"params": [p.expression], "lr": c.lr_photo},
            {"params": [p.sh], "lr": c.lr_photo * 3},
            {"params": [p.albedo], "lr": c.lr_photo * 10},
        ])
        am = self.albedo_model
        losses: dict[str, float] = {}
        albedo = am(p.albedo)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            verts = self.model.vertices(p.identity, p.expression)
            albedo = am(p.albedo)
            rendered, cover, skin = self.render(p, verts, albedo)
            mask = skin & skin_mask
            terms = {
                "landmark": c.w_landmark * landmark_loss(self.project_landmarks(p, verts), target_lm, scale_px=scale),
                "photometric": c.w_photo * photometric_loss(rendered, crop, mask),
                "identity_reg": c.w_identity * coefficient_l2(p.identity),
                "expression_reg": c.w_expression * coefficient_l2(p.expression),
                "albedo_smooth": c.w_albedo_smooth * albedo_smoothness(p.albedo, am.eigenvalues),
                "albedo_symmetry": c.w_albedo_sym * albedo_symmetry(albedo, am.mirror, self.skin_ids),
                "albedo_skin": c.w_albedo_skin * albedo_skin_prior(albedo, self.skin_ids),
                "light_chroma": c.w_light_chroma * light_chroma(p.sh),
            }
            if self.extra_terms:
                ctx = {"params": p, "vertices_mm": verts, "rendered": rendered, "coverage": cover,
                       "target": crop, "camera": p.camera()}
                for term in self.extra_terms:
                    terms[term.name] = term.weight * term.fn(ctx)
            loss = sum(terms.values())
            loss.backward()
            p.translation_mm.grad[:, 2] *= 100.0
            opt.step()
            self._clamp_(p)
            losses = {k: v.item() for k, v in terms.items()}
        return losses, albedo.detach()

    # ------------------------------------------------------------------ public

    def fit(self, crop_rgb: Tensor, landmarks_px: Tensor, skin_mask: Tensor,
            init: FaceParams | None = None) -> FitResult:
        """Fit one face.

        Args:
            crop_rgb: (S, S, 3) float crop in [0, 1] (S = ``config.crop_px``).
            landmarks_px: (68, 2) detected landmarks in crop pixels.
            skin_mask: (S, S) bool skin mask of the crop.
            init: optional starting parameters (e.g. from a regressor); default PnP + mean face.
        """
        c = self.config
        dev = self.device
        crop = crop_rgb.to(dev, torch.float32).unsqueeze(0)
        target = landmarks_px.to(dev, torch.float32).unsqueeze(0)
        skin = skin_mask.to(dev).bool().unsqueeze(0)
        if not torch.isfinite(crop).all() or not torch.isfinite(target).all():
            raise ValueError("crop or landmarks contain NaN / infinite values")
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        p = init.detach().to(dev) if init is not None else self.initial_params(target)
        seconds["init"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        losses = self._landmark_stage(p, target, c.landmark_steps)
        seconds["landmarks"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        albedo = self.albedo_model(p.albedo).detach()
        if c.photo_steps > 0:
            losses, albedo = self._photo_stage(p, target, crop, skin, c.photo_steps)
        seconds["photometric"] = time.perf_counter() - t0
        p = p.detach()
        with torch.no_grad():
            verts = self.model.vertices(p.identity, p.expression)
            lm = self.project_landmarks(p, verts)
        active = list(losses)
        return FitResult(params=p, vertices_mm=verts[0], albedo=albedo[0].clamp(0, 1),
                         landmarks_crop_px=lm[0], losses=losses, active_terms=active, seconds=seconds)
