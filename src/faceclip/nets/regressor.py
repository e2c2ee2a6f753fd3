"""The FaceCLIP regressor: aligned 224 crop -> :class:`~faceclip.facemodel.params.FaceParams`.

``backbone -> refinement -> heads``, the refinement chosen by ``RegressorConfig.refine``:
``"prm"`` (FaceCLIP's PRM, :mod:`faceclip.nets.prm`), ``"msma"`` (MSMA's multi-scale fusion
with large-kernel attention and one branch per attribute, :mod:`faceclip.nets.msma`; each head
then reads its attribute's features) or ``"none"`` (pooled backbone features). One linear head
per parameter group:

============  =====================  ==============================================
group         outputs                decoded as
============  =====================  ==============================================
identity      K_id                   coefficients (N(0, 1) prior)
expression    K_exp                  coefficients (ICT: blendshape weights; the
                                     regressor leaves them unclamped during
                                     training, :meth:`FaceRegressor.forward`
                                     clamps to [0, 1] when ``clamp=True``)
albedo        K_alb x 3              albedo coefficients (the fitter's albedo model)
pose          3                      pitch, yaw, roll (rad)
camera        3                      translation (mm) about the rest translation
light         9 x 3                  SH coefficients added to neutral ambient light
============  =====================  ==============================================

Every head starts with zero weights and bias, so an untrained network outputs the mean face,
frontal, at the rest translation (where the mean face's eyes, nose and mouth corners land on
the alignment template of :func:`faceclip.detect.align_face`), under neutral ambient light.
The camera is the fitter's: focal ``1015 * crop / 224`` px, principal point at the crop centre.

Checkpoints (:func:`save_regressor` / :func:`load_regressor`) hold the configuration and the
weights, so a file is self-describing; training checkpoints embed the same record.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from faceclip.errors import InputError
from faceclip.facemodel.params import DEFAULT_FOCAL_224, FIVE_POINT_TEMPLATE, FaceParams
from faceclip.nets.backbones import make_backbone
from faceclip.nets.msma import MSMARefinement
from faceclip.nets.prm import ParameterRefinementModule, PooledHead
from faceclip.render.shading import sh_ambient

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "faceclip-regressor"
CHECKPOINT_VERSION = 1

#: Output scale per group: decoded value = scale * raw network output (+ offset).
OUTPUT_SCALES = {"identity": 1.0, "expression": 0.5, "albedo": 0.5, "pose": 0.5, "camera_xy": 10.0,
                 "camera_z": 100.0, "light": 0.3}


#: The refinement modules between backbone and heads.
REFINEMENTS = ("prm", "msma", "none")


def check_refine(name: str | None, where: str = "refinement") -> None:
    """Refuse an unknown refinement name (empty / None: the default)."""
    if name not in (None, "") and name not in REFINEMENTS:
        raise InputError(f"unknown {where} {name!r}", hint=f"choose one of {', '.join(REFINEMENTS)}")

@dataclass
class RegressorConfig:
    """Architecture and output layout of a :class:`FaceRegressor`.

    ``n_identity``, ``n_expression``, ``n_albedo`` and ``rest_translation_mm`` come from the
    face model (see :func:`config_for_model`); a checkpoint only fits the model it was made for.
    """

    n_identity: int
    n_expression: int
    n_albedo: int
    rest_translation_mm: tuple[float, float, float]
    face_model: str = "ict"
    expression_range: str = "blendshape"
    backbone: str = "mobilenet_v2"
    prm: bool = True
    prm_dim: int = 256
    prm_local_blocks: int = 2
    prm_transformer_layers: int = 2
    prm_heads: int = 4
    crop_px: int = 224
    extra: dict = field(default_factory=dict)
    #: ``"prm"``, ``"msma"`` or ``"none"``; empty: ``"prm"`` if :attr:`prm` else ``"none"``
    #: (how checkpoints made before the choice existed say it).
    refine: str = ""
    msma_dim: int = 128
    msma_attribute_dim: int = 128
    msma_blocks: int = 1
    msma_kernel: int = 21
    msma_dilation: int = 3

    def __post_init__(self) -> None:
        check_refine(self.refine)

    @property
    def refine_kind(self) -> str:
        """The refinement actually used: ``"prm"``, ``"msma"`` or ``"none"``."""
        return self.refine or ("prm" if self.prm else "none")

    @property
    def focal_px(self) -> float:
        return DEFAULT_FOCAL_224 * self.crop_px / 224.0

    def group_sizes(self) -> dict[str, int]:
        return {"identity": self.n_identity, "expression": self.n_expression, "albedo": 3 * self.n_albedo,
                "pose": 3, "camera": 3, "light": 27}

    @staticmethod
    def from_dict(d: dict) -> "RegressorConfig":
        names = {f.name for f in fields(RegressorConfig)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown regressor settings {sorted(unknown)}")
        d = dict(d)
        d["rest_translation_mm"] = tuple(float(x) for x in d["rest_translation_mm"])
        return RegressorConfig(**d)


def rest_translation(model, crop_px: int = 224) -> tuple[float, float, float]:
    """Translation (mm) putting the frontal mean face's five points on the alignment template.

    Least squares over (tx, ty, tz) of the projections of the eye centres, nose tip and mouth
    corners (from the model's 68 landmarks) against ``FIVE_POINT_TEMPLATE * crop_px``.
    """
    from scipy.optimize import least_squares

    lm = model.mean_mm[model.landmarks68].detach().cpu().numpy().astype(np.float64)
    pts3 = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])  # as five_points_from_68
    target = np.asarray(FIVE_POINT_TEMPLATE, dtype=np.float64) * crop_px
    f = DEFAULT_FOCAL_224 * crop_px / 224.0
    c = crop_px / 2.0

    def residual(t):
        x = pts3[:, 0] + t[0]
        y = -pts3[:, 1] + t[1]
        z = -pts3[:, 2] + t[2]
        return np.concatenate([f * x / z + c - target[:, 0], f * y / z + c - target[:, 1]])

    z0 = f * 150.0 / (0.55 * crop_px)
    sol = least_squares(residual, np.array([0.0, 0.0, z0]))
    return tuple(float(v) for v in sol.x)


def config_for_model(model, n_albedo: int | None = None, **overrides) -> RegressorConfig:
    """A :class:`RegressorConfig` matching ``model`` (a FaceModel) and its albedo model.

    ``n_albedo`` defaults to the size of the fitter's albedo model for ``model``.
    """
    if n_albedo is None:
        from faceclip.facemodel.albedo import make_albedo_model

        n_albedo = make_albedo_model(model).n_coeffs
    crop = int(overrides.get("crop_px", 224))
    return RegressorConfig(n_identity=model.n_identity, n_expression=model.n_expression, n_albedo=n_albedo,
                           rest_translation_mm=rest_translation(model, crop), face_model=model.name,
                           expression_range=model.expression_range, **overrides)


class ParameterHeads(nn.Module):
    """One zero-initialised linear layer per parameter group: (B, F) -> dict of (B, n_g)."""

    def __init__(self, in_features: int, sizes: dict[str, int], slices: dict[str, slice] | None = None) -> None:
        """``slices``: group -> the part of the features its head reads (default: all)."""
        super().__init__()
        self.sizes = dict(sizes)
        self.slices = {k: (slices or {}).get(k, slice(None)) for k in sizes}
        width = {k: len(range(in_features)[sl]) for k, sl in self.slices.items()}
        self.heads = nn.ModuleDict({k: nn.Linear(width[k], n) for k, n in sizes.items()})
        for lin in self.heads.values():
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {k: head(features[:, self.slices[k]]) for k, head in self.heads.items()}


class FaceRegressor(nn.Module):
    """Backbone, optional PRM and heads; ``forward`` returns decoded :class:`FaceParams`.

    Args:
        config: architecture and output layout.
        pretrained: initialise a MobileNetV2 backbone from the installed ImageNet weights.
        backbone_weights: a state dict file for the backbone instead.
    """

    def __init__(self, config: RegressorConfig, *, pretrained: bool = True,
                 backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = make_backbone(config.backbone, pretrained=pretrained, weights=backbone_weights)
        kind = config.refine_kind
        slices = None
        if kind == "msma":
            self.refine: nn.Module = MSMARefinement(
                self.backbone.tap_channels, dim=config.msma_dim, attribute_dim=config.msma_attribute_dim,
                blocks=config.msma_blocks, kernel=config.msma_kernel, dilation=config.msma_dilation)
            slices = self.refine.group_slices()
        elif kind == "prm":
            self.refine = ParameterRefinementModule(
                self.backbone.channels, dim=config.prm_dim, local_blocks=config.prm_local_blocks,
                transformer_layers=config.prm_transformer_layers, heads=config.prm_heads)
        else:
            self.refine = PooledHead(self.backbone.channels)
        self.heads = ParameterHeads(self.refine.out_features, config.group_sizes(), slices)
        self.register_buffer("rest_t", torch.tensor(config.rest_translation_mm, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("ambient", sh_ambient(0.8, 1)[0], persistent=False)

    def features(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, F) refined features."""
        if isinstance(self.refine, MSMARefinement):
            return self.refine(self.backbone.multiscale(images))
        return self.refine(self.backbone(images))

    def raw(self, images: Tensor) -> dict[str, Tensor]:
        """Undecoded head outputs, ``{group: (B, n_group)}``."""
        return self.heads(self.features(images))

    def decode(self, raw: dict[str, Tensor], clamp: bool = False) -> FaceParams:
        """Head outputs -> FaceParams in the crop camera (see the module table)."""
        s = OUTPUT_SCALES
        cfg = self.config
        b = raw["identity"].shape[0]
        cam = raw["camera"]
        t = self.rest_t + torch.stack([cam[:, 0] * s["camera_xy"], cam[:, 1] * s["camera_xy"],
                                       cam[:, 2] * s["camera_z"]], dim=1)
        expression = raw["expression"] * s["expression"]
        if clamp and cfg.expression_range == "blendshape":
            expression = expression.clamp(0.0, 1.0)
        return FaceParams(
            identity=raw["identity"] * s["identity"],
            expression=expression,
            angles_rad=raw["pose"] * s["pose"],
            translation_mm=t,
            focal_px=torch.full((b,), cfg.focal_px, device=t.device, dtype=t.dtype),
            sh=self.ambient + raw["light"].reshape(b, 9, 3) * s["light"],
            albedo=raw["albedo"].reshape(b, cfg.n_albedo, 3) * s["albedo"],
            image_size=(cfg.crop_px, cfg.crop_px),
        )

    def forward(self, images: Tensor, clamp: bool = False) -> FaceParams:
        """(B, 3, S, S) RGB in [0, 1] (S = ``config.crop_px``) -> FaceParams (batch B)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
        return self.decode(self.raw(images), clamp=clamp)


# ---------------------------------------------------------------------- checkpoints


def regressor_record(model: FaceRegressor) -> dict:
    """The self-describing dict stored for a regressor (also embedded in training checkpoints)."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": config_record(model.config),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def config_record(config: RegressorConfig) -> dict:
    """The stored configuration. PRM and pooled networks are stored as before the refinement
    choice existed (``prm`` true / false, no ``refine`` or ``msma_*`` keys), so files that
    earlier versions could read stay readable by them."""
    rec = asdict(config)
    kind = config.refine_kind
    if kind != "msma":
        rec = {k: v for k, v in rec.items() if k != "refine" and not k.startswith("msma_")}
    rec["prm"] = kind == "prm"
    return rec


def save_regressor(model: FaceRegressor, path: str | Path, half: bool = False, meta: dict | None = None) -> Path:
    """Write the regressor atomically. ``half`` stores float weights as float16 (half the size)."""
    from faceclip.nets.files import save_record

    return save_record(regressor_record(model), path, half=half, meta=meta)


def load_regressor(path: str | Path, device: str | torch.device = "cpu", face_model=None) -> FaceRegressor:
    """Load a regressor (or the model of a training checkpoint) in eval mode.

    Args:
        face_model: when given, the checkpoint's face model and sizes must match it.

    Raises:
        ModelNotInstalledError: the file does not exist.
        InputError: the file is unreadable, not a regressor, or made for another face model.
    """
    from faceclip.nets.files import load_weights, read_record

    path = Path(path)
    rec = read_record(path, what="regressor checkpoint", fmt=CHECKPOINT_FORMAT, max_version=CHECKPOINT_VERSION,
                      checkpoint_key="model",
                      missing_hint="train one with `faceclip train`, or omit --checkpoint to use the shipped one",
                      unreadable_hint="the file is truncated or not a PyTorch checkpoint",
                      wrong_hint="give a file written by `faceclip train` or faceclip.nets.save_regressor")
    try:
        config = RegressorConfig.from_dict(rec["config"])
    except (KeyError, TypeError) as exc:
        raise InputError(f"{path}: malformed regressor configuration ({exc})") from exc
    if face_model is not None:
        want = (face_model.name, face_model.n_identity, face_model.n_expression)
        got = (config.face_model, config.n_identity, config.n_expression)
        if want != got:
            raise InputError(f"{path} was trained for face model {got[0]} ({got[1]} identity, {got[2]} expression "
                             f"coefficients), not {want[0]} ({want[1]}, {want[2]})",
                             hint="use a checkpoint trained with this face model")
    return load_weights(FaceRegressor(config, pretrained=False), rec, path).to(device).eval()


SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "data" / "regressor_ict_mobilenet_v2.pt"


def default_checkpoint_path() -> Path:
    """``$FACECLIP_REGRESSOR`` when set, else the regressor shipped with the package."""
    import os

    env = os.environ.get("FACECLIP_REGRESSOR")
    return Path(env) if env else SHIPPED_CHECKPOINT
