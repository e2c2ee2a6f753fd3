"""The detail network: a face's UV displacement map regressed from image features.

The paper's detail branch (after DECA): a *detail code* is computed from the image features and
decoded, together with the predicted expression, into a displacement map (millimetres along the
surface normal) over the face's UV window (:func:`faceclip.fit.detail.face_uv_window`; row 0 at
the window's top, ``v = v0 + side``, the texture convention). The expression input lets the
wrinkles depend on it (forehead lines with raised brows, folds with a smile).

Architecture (:class:`DetailNet`)::

    features (B, F) -> Linear + LeakyReLU -> code (B, code_dim)
    [code, expression (B, E)] -> Linear -> (B, C0, 4, 4)
    -> log2(map_px / 4) x [nearest 2x upsampling, 3x3 conv, LeakyReLU]  (channels halve, >= 16)
    -> 3x3 conv to one channel (zero-initialised) -> max_mm * tanh     (B, 1, map_px, map_px)

The last convolution starts at zero, so an untrained network outputs a flat map (the coarse
surface), as the regressor's zero heads output the mean face. ``features`` are the
regressor's refined features (:meth:`faceclip.nets.regressor.FaceRegressor.features`, any
backbone and refinement); the training loop detaches them, so the detail is learnt on top of
the coarse network as in DECA's second stage.

Files (:func:`save_detail_net` / :func:`load_detail_net`) hold the configuration (the window
included, so the map can be placed on the UV atlas: ``UVWindow(*config.window).to_atlas``)
and the weights; training checkpoints embed the same record under ``"detail"``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from faceclip.errors import InputError

__all__ = ["DetailNet", "DetailNetConfig", "RegressorWithDetail", "check_map_px", "detail_net_record", "load_detail_net",
           "save_detail_net"]

CHECKPOINT_FORMAT = "faceclip-detail-net"
CHECKPOINT_VERSION = 1


def check_map_px(map_px: int, where: str = "detail map_px") -> None:
    """Refuse a map side that is not a power of two between 8 and 1024 (the decoder doubles from 4)."""
    ok = isinstance(map_px, int) and 8 <= map_px <= 1024 and (map_px & (map_px - 1)) == 0
    if not ok:
        raise InputError(f"{where} must be a power of two between 8 and 1024, got {map_px!r}")


@dataclass
class DetailNetConfig:
    """Architecture of a :class:`DetailNet`.

    Attributes:
        in_features: width F of the image features (the regressor's ``refine.out_features``).
        n_expression: width E of the expression input (the face model's).
        map_px: side R of the output map (a power of two, 8 to 1024).
        code_dim: width of the detail code.
        base_channels: channels C0 of the 4 x 4 start of the decoder (halved by each upsampling
            block, never below 16).
        max_mm: the map is bounded to ``[-max_mm, max_mm]``.
        face_model: name of the face model the map's UV window belongs to.
        window: ``(u0, v0, side)`` of that window (see :class:`faceclip.fit.detail.UVWindow`);
            mirror_u: its symmetry axis (atlas u).
    """

    in_features: int
    n_expression: int
    map_px: int = 64
    code_dim: int = 128
    base_channels: int = 128
    max_mm: float = 2.0
    face_model: str = "ict"
    window: tuple[float, float, float] = (0.0, 0.0, 1.0)
    mirror_u: float = 0.5

    def __post_init__(self) -> None:
        check_map_px(self.map_px)
        self.window = tuple(float(x) for x in self.window)
        if self.in_features < 1 or self.n_expression < 0 or self.code_dim < 1 or self.base_channels < 1:
            raise InputError("detail network: in_features, code_dim and base_channels must be positive")
        if not self.max_mm > 0:
            raise InputError(f"detail network: max_mm must be positive, got {self.max_mm}")

    @staticmethod
    def from_dict(d: dict) -> "DetailNetConfig":
        names = {f.name for f in fields(DetailNetConfig)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown detail network settings {sorted(unknown)}")
        return DetailNetConfig(**d)


def _channels(config: DetailNetConfig) -> list[int]:
    """Channels after the 4 x 4 start and after each upsampling block (length n_blocks + 1)."""
    n_blocks = int(math.log2(config.map_px // 4))
    return [max(16, config.base_channels >> k) for k in range(n_blocks + 1)]


class DetailNet(nn.Module):
    """Features and expression -> displacement map (module docstring).

    ``forward(features (B, F), expression (B, E)) -> (B, 1, R, R)`` millimetres.
    """

    def __init__(self, config: DetailNetConfig) -> None:
        super().__init__()
        self.config = config
        ch = _channels(config)
        self.encode = nn.Sequential(nn.Linear(config.in_features, config.code_dim), nn.LeakyReLU(0.2))
        self.start = nn.Linear(config.code_dim + config.n_expression, ch[0] * 16)
        blocks = []
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1),
                       nn.LeakyReLU(0.2)]
        self.decode = nn.Sequential(*blocks)
        self.out = nn.Conv2d(ch[-1], 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def code(self, features: Tensor) -> Tensor:
        """(B, F) -> (B, code_dim) detail code."""
        return self.encode(features)

    def forward(self, features: Tensor, expression: Tensor) -> Tensor:
        """(B, F) features and (B, E) expression -> (B, 1, R, R) displacement (mm)."""
        c = self.config
        if features.ndim != 2 or features.shape[1] != c.in_features:
            raise ValueError(f"expected (B, {c.in_features}) features, got {tuple(features.shape)}")
        if expression.shape != (features.shape[0], c.n_expression):
            raise ValueError(f"expected ({features.shape[0]}, {c.n_expression}) expression, got {tuple(expression.shape)}")
        x = self.start(torch.cat([self.code(features), expression.to(features.dtype)], 1))
        x = self.decode(x.view(features.shape[0], -1, 4, 4))
        return c.max_mm * torch.tanh(self.out(x))


class RegressorWithDetail(nn.Module):
    """A regressor and a detail network run as one module (what training optimises).

    ``forward(images (B, 3, S, S), clamp=False) -> (FaceParams, (B, 1, R, R) map in mm)``: the
    regressor's refined features are computed once; the detail network reads them and the
    predicted expression **detached**, so its losses never reach the regressor.

    Args:
        regressor: a :class:`faceclip.nets.regressor.FaceRegressor`.
        detail: the :class:`DetailNet`.
        freeze_regressor: the regressor is fixed (no gradients, always in eval mode): the
            detail network is trained alone, on top of a trained regressor.
    """

    def __init__(self, regressor: nn.Module, detail: DetailNet, freeze_regressor: bool = False) -> None:
        super().__init__()
        self.regressor = regressor
        self.detail = detail
        self.freeze_regressor = freeze_regressor
        if freeze_regressor:
            regressor.requires_grad_(False)
            regressor.eval()

    def train(self, mode: bool = True) -> "RegressorWithDetail":
        super().train(mode)
        if self.freeze_regressor:
            self.regressor.eval()
        return self

    def forward(self, images: Tensor, clamp: bool = False):
        reg = self.regressor
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_regressor):
            features = reg.features(images)
            params = reg.decode(reg.heads(features), clamp=clamp)
        return params, self.detail(features.detach(), params.expression.detach())


# ---------------------------------------------------------------------- files


def detail_net_record(net: DetailNet) -> dict:
    """The self-describing dict stored for a detail network (also inside training checkpoints)."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": asdict(net.config),
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}


def save_detail_net(net: DetailNet, path: str | Path, half: bool = False, meta: dict | None = None) -> Path:
    """Write the detail network atomically (``half``: float16 weights)."""
    from faceclip.nets.files import save_record

    return save_record(detail_net_record(net), path, half=half, meta=meta)


def load_detail_net(path: str | Path, device: str | torch.device = "cpu") -> DetailNet:
    """Load a detail network (a file of :func:`save_detail_net` or a training checkpoint) in eval mode.

    Raises:
        ModelNotInstalledError: the file does not exist.
        InputError: the file is unreadable, holds no detail network, or does not match its
            stored architecture.
    """
    from faceclip.nets.files import load_weights, read_record

    path = Path(path)
    rec = read_record(path, what="detail network", fmt=CHECKPOINT_FORMAT, max_version=CHECKPOINT_VERSION,
                      checkpoint_key="detail", missing_hint="train one with `faceclip train` and model.detail: true",
                      wrong_message="{path} holds no FaceCLIP detail network",
                      wrong_hint="give detail.pt or a checkpoint of a run with model.detail: true")
    try:
        net = DetailNet(DetailNetConfig.from_dict(rec["config"]))
    except (KeyError, TypeError) as exc:
        raise InputError(f"{path}: malformed detail network ({str(exc).splitlines()[0]})") from exc
    return load_weights(net, rec, path).to(device).eval()
