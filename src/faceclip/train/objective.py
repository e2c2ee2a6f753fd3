"""The training objective: predicted FaceParams + a batch -> weighted loss terms.

FaceCLIP's self-supervised loss (see ../GUIDE and the paper) with our loss functions:

    L = w_photo L_photo + w_id L_id + w_lm L_lm + w_reg L_reg + w_cl L_cl + priors
        (+ w_param L_param on synthetic faces with ground truth, for supervised warm-up)

- ``photometric``: masked per-pixel RGB distance between the SH-shaded render and the crop on
  the photo's skin mask intersected with the rendered skin (colours in [0, 1]).
- ``landmark``: weighted mean squared distance in 224-crop pixels (per-landmark weights of
  :data:`~faceclip.losses.DEFAULT_LANDMARK_WEIGHTS`), as in Deep3DFaceRecon, so the paper's
  weight 1.7e-3 applies unchanged.
- ``regularization``: ``|id|^2 + w_exp |exp|^2 + w_alb * smoothness(albedo)``.
- ``albedo_priors``: symmetry and plausible skin colour of the albedo, light chroma.
- ``expression_range``: squared excess outside [0, 1] for blendshape models.
- ``identity``: 1 - cos of face-recognition embeddings of the crop and of the render pasted
  over the crop (only when an identity encoder is given).
- ``clip``: CLIP feature consistency (geometric + semantic) on face-masked images (only when
  CLIP weights are given).
- ``param``: when the batch carries ground-truth parameters, the mean distance (cm) between
  predicted and ground-truth canonical vertices plus the mean distance of their projections
  (224-crop pixels / 10).
- ``detail_*`` (only with ``detail=True`` and a displacement map, :mod:`faceclip.losses.detail`):
  ``detail_photometric``, the colour error of the skin shaded per pixel with the map's
  bump-mapped normals over the coarse mesh, albedo and light (all detached: only the map
  learns), and the map's priors ``detail_smooth`` (Laplacian), ``detail_magnitude`` and
  ``detail_symmetry``. With ``coarse=False`` (the detail network trained alone) the coarse terms
  are not computed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from faceclip.facemodel.base import FaceModel
from faceclip.fit.fitter import FitConfig, Fitter
from faceclip.facemodel.params import FaceParams
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
from faceclip.losses.detail import DetailSurface, detail_photometric_loss, detail_priors

#: The detail network's terms, in the order they are logged.
DETAIL_TERMS = ("detail_photometric", "detail_smooth", "detail_magnitude", "detail_symmetry")


@dataclass
class LossWeights:
    """Weights of the training loss terms (0 disables a term). Defaults: the paper's.

    The paper gives photo 1, id 2, lm 1.7e-3, reg 1e-4, cl 2; the priors and the supervised
    ``param`` term are ours (the latter only acts on synthetic data with ground truth).
    """

    photometric: float = 1.0
    identity: float = 2.0
    landmark: float = 1.7e-3
    regularization: float = 1e-4
    clip: float = 2.0
    expression_reg: float = 1.0
    albedo_reg: float = 1.0
    albedo_priors: float = 1.0
    expression_range: float = 1.0
    param: float = 0.0
    #: The detail network's terms (used only when it is trained, ``model.detail: true``).
    detail_photometric: float = 1.0
    detail_smooth: float = 1e-2
    detail_magnitude: float = 1e-2
    detail_symmetry: float = 5e-3

    @staticmethod
    def from_dict(d: dict | None) -> "LossWeights":
        names = {f.name for f in fields(LossWeights)}
        d = dict(d or {})
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {sorted(names)}")
        return LossWeights(**{k: float(v) for k, v in d.items()})


class TrainingObjective(nn.Module):
    """Differentiable loss of predicted parameters against a batch.

    Args:
        model: the face model (the reconstruction geometry, e.g. ICT ``head_eyes``).
        weights: term weights.
        identity_loss: an :class:`~faceclip.losses.identity.IdentityLoss` or None.
        clip_loss: a :class:`~faceclip.losses.clip.ClipConsistencyLoss` or None.
        render_px: side of the rendered image (the crop is resized to it for the photo term).
        device: where the face model lives.
        detail: add the detail terms when :meth:`forward` is given a displacement map.
        coarse: compute the coarse terms (False: the detail terms only).
    """

    def __init__(self, model: FaceModel, weights: LossWeights | None = None, identity_loss: nn.Module | None = None,
                 clip_loss: nn.Module | None = None, render_px: int = 224, device: str | torch.device = "cpu",
                 detail: bool = False, coarse: bool = True) -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        # The model's own triangles (training's figures were measured with them).
        self.fitter = Fitter(model, FitConfig(render_px=render_px, photo_mesh_fraction=1.0, device=str(device)))
        self.identity_loss = identity_loss
        self.clip_loss = clip_loss
        self.landmark_weights = DEFAULT_LANDMARK_WEIGHTS.to(self.fitter.device)
        self.coarse = coarse
        self.detail_surface: DetailSurface | None = detail_surface(self.fitter.model) if detail else None

    @property
    def active_terms(self) -> list[str]:
        w = self.weights
        names = ["photometric", "landmark", "regularization", "albedo_priors", "expression_range"]
        if self.identity_loss is not None and w.identity > 0:
            names.append("identity")
        if self.clip_loss is not None and w.clip > 0:
            names.append("clip")
        if w.param > 0:
            names.append("param")
        names = names if self.coarse else []
        if self.detail_surface is not None:
            names += DETAIL_TERMS
        return [n for n in names if getattr(w, n) > 0]

    def forward(self, params: FaceParams, images: Tensor, landmarks_px: Tensor, skin_mask: Tensor,
                target_params: FaceParams | None = None,
                detail_map: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], dict]:
        """Loss of ``params`` (batch B, crop camera) against the batch.

        Args:
            images: (B, 3, S, S) crops in [0, 1]; landmarks_px: (B, 68, 2) in crop pixels;
            skin_mask: (B, S, S) bool/float; target_params: ground truth (synthetic data) or None.
            detail_map: (B, 1, R, R) displacement maps (mm) over the face's UV window (adds the
                detail terms; the objective must be made with ``detail=True``), or None.

        Returns:
            total (scalar), the unweighted terms ``{name: scalar}``, and a dict of tensors for
            visualisation (``rendered`` (B, S', S', 3), ``coverage``, ``landmarks_px`` (B, 68, 2)
            in crop pixels).
        """
        w = self.weights
        fit = self.fitter
        S = fit.config.render_px
        crop_px = images.shape[-1]
        # The fitter renders from its own crop camera (config.crop_px, scaled to S): express the
        # parameters there (same field of view), whatever the size of the crops.
        fit_px = fit.config.crop_px
        params = _with_crop(params, fit_px)
        if S != crop_px:
            target = nn.functional.interpolate(images, size=(S, S), mode="area")
            mask = nn.functional.interpolate(skin_mask[:, None].float(), size=(S, S), mode="area")[:, 0] > 0.5
        else:
            target, mask = images, skin_mask.bool()
        target_hwc = target.permute(0, 2, 3, 1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.coarse):
            out = fit.forward_subset(params)
        terms = (self._coarse_terms(params, out, target, target_hwc, mask, landmarks_px, crop_px, target_params)
                 if self.coarse else {})
        if detail_map is not None:
            if self.detail_surface is None:
                raise ValueError("a detail map was given to an objective made without detail=True")
            terms.update(self._detail_terms(params, detail_map, target_hwc, mask))
        total = sum(getattr(w, k) * v for k, v in terms.items()) if terms else target.new_zeros(())
        return total, terms, {"rendered": out.rendered, "coverage": out.coverage,
                              "landmarks_px": out.landmarks_px * (crop_px / fit_px)}

    def _coarse_terms(self, params: FaceParams, out, target: Tensor, target_hwc: Tensor, mask: Tensor,
                      landmarks_px: Tensor, crop_px: int, target_params: FaceParams | None) -> dict[str, Tensor]:
        """The unweighted coarse terms (``params`` in the fitter's crop camera, ``out`` its forward)."""
        w = self.weights
        fit = self.fitter
        fit_px = fit.config.crop_px
        am = fit.albedo_model
        terms: dict[str, Tensor] = {}
        terms["photometric"] = photometric_loss(out.rendered, target_hwc, out.skin & mask)
        terms["landmark"] = landmark_loss(out.landmarks_px * (224.0 / fit_px), landmarks_px * (224.0 / crop_px),
                                          weights=self.landmark_weights)
        terms["regularization"] = (coefficient_l2(params.identity) + w.expression_reg * coefficient_l2(params.expression)
                                   + w.albedo_reg * albedo_smoothness(params.albedo, am.eigenvalues))
        terms["albedo_priors"] = (20.0 * albedo_symmetry(out.albedo, out.mirror_rows, out.skin_rows)
                                  + 100.0 * albedo_skin_prior(out.albedo, out.skin_rows) + light_chroma(params.sh))
        if fit.model.expression_range == "blendshape":
            e = params.expression
            terms["expression_range"] = (torch.relu(-e) ** 2 + torch.relu(e - 1.0) ** 2).sum(1).mean()
        else:
            terms["expression_range"] = params.expression.new_zeros(())
        pasted = None
        if "identity" in self.active_terms or "clip" in self.active_terms:
            cover = out.coverage.unsqueeze(-1).to(target_hwc.dtype)
            pasted = (out.rendered * cover + target_hwc * (1 - cover)).permute(0, 3, 1, 2)
        if "identity" in self.active_terms:
            terms["identity"] = self.identity_loss(target, pasted)
        if "clip" in self.active_terms:
            face = out.coverage.unsqueeze(1).float()
            terms["clip"] = self.clip_loss(target, pasted, face).total
        if w.param > 0 and target_params is not None:
            terms["param"] = self._param_loss(params, _with_crop(target_params, fit_px), out.vertices_mm)
        return terms

    def _detail_terms(self, params: FaceParams, detail_map: Tensor, target_hwc: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The unweighted detail terms of (B, 1, R, R) maps over the coarse fit ``params``
        (fitter's crop camera; detached) against the (B, S, S, 3) target and its (B, S, S) skin mask."""
        surface = self.detail_surface
        S = target_hwc.shape[1]
        p = params.at_crop_size(S)
        with torch.no_grad():
            verts = self.fitter.model.vertices(p.identity, p.expression)
            albedo = self.fitter.albedo_model(p.albedo)
        photo = detail_photometric_loss(surface, detail_map.float(), verts, albedo, p.sh, p.camera(), target_hwc,
                                        mask.bool())
        priors = detail_priors(detail_map.float(), surface.mirror_u)
        return {"detail_photometric": photo, **{f"detail_{k}": v for k, v in priors.items()}}

    def _param_loss(self, params: FaceParams, target: FaceParams, verts: Tensor) -> Tensor:
        """Shape and image-alignment error against ground truth, both in ~cm units.

        ``mean |v - v_gt|`` of the canonical (unposed) subset vertices in cm, plus the mean
        distance between their projections in 224-crop pixels / 10 (1 px is about 1.2 mm on
        the face). Comparing posed vertices in 3D instead would be dominated by the distance
        to the camera, which the nearly orthographic crop camera barely constrains.
        """
        with torch.no_grad():
            verts_gt = self.fitter.subset_vertices(target)
            proj_gt = target.camera().project(verts_gt)
        shape_cm = (verts - verts_gt).norm(dim=-1).mean() / 10.0
        scale = 224.0 / params.image_size[0]
        image_px = (params.camera().project(verts) - proj_gt).norm(dim=-1).mean() * scale
        return shape_cm + image_px / 10.0


def detail_surface(model: FaceModel) -> DetailSurface:
    """What the detail terms rasterize: the fitter's face triangles and the skin ones (compared),
    UVs in the frame of the face's UV window (:func:`faceclip.fit.detail.face_uv_window`)."""
    from faceclip.fit.detail import face_uv_window, skin_triangle_mask

    window, mirror_u = face_uv_window(model)
    skin = skin_triangle_mask(model)
    region = model.region_mask("face_narrow" if "face_narrow" in model.regions else "face")
    keep = region[model.triangles].all(1) | skin
    return DetailSurface.from_window(model.triangles[keep], model.uv[keep], skin[keep],
                                     (window.u0, window.v0, window.side), mirror_u)


def _with_crop(params: FaceParams, crop_px: int) -> FaceParams:
    """``params`` re-expressed for a crop of ``crop_px`` pixels (same field of view)."""
    return params.at_crop_size(crop_px)
