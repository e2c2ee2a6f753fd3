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
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from faceclip.facemodel.base import FaceModel
from faceclip.fit.fitter import FitConfig, Fitter
from faceclip.fit.params import FaceParams
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
    """

    def __init__(self, model: FaceModel, weights: LossWeights | None = None, identity_loss: nn.Module | None = None,
                 clip_loss: nn.Module | None = None, render_px: int = 224, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        self.fitter = Fitter(model, FitConfig(render_px=render_px, device=str(device)))
        self.identity_loss = identity_loss
        self.clip_loss = clip_loss
        self.landmark_weights = DEFAULT_LANDMARK_WEIGHTS.to(self.fitter.device)

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
        return [n for n in names if getattr(w, n) > 0]

    def forward(self, params: FaceParams, images: Tensor, landmarks_px: Tensor, skin_mask: Tensor,
                target_params: FaceParams | None = None) -> tuple[Tensor, dict[str, Tensor], dict]:
        """Loss of ``params`` (batch B, crop camera) against the batch.

        Args:
            images: (B, 3, S, S) crops in [0, 1]; landmarks_px: (B, 68, 2) in crop pixels;
            skin_mask: (B, S, S) bool/float; target_params: ground truth (synthetic data) or None.

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
        out = fit.forward_subset(params)
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
        total = sum(getattr(w, k) * v for k, v in terms.items())
        return total, terms, {"rendered": out.rendered, "coverage": out.coverage,
                              "landmarks_px": out.landmarks_px * (crop_px / fit_px)}

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


def _with_crop(params: FaceParams, crop_px: int) -> FaceParams:
    """``params`` re-expressed for a crop of ``crop_px`` pixels (same field of view)."""
    return params.at_crop_size(crop_px)
