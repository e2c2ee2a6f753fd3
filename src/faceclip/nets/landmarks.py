"""The dense landmark network: aligned face crop -> K model surface points with uncertainty.

Two heads on a MobileNetV2 backbone (ImageNet start):

- ``"integral"`` (the default): a small feature pyramid brings the stride-32 and stride-16
  features up to stride 8 (a 16 x 16 grid for 128 px crops) and predicts, per point, a heatmap
  and a log-sigma map; the point is the heatmap's soft-argmax (the expected position under its
  softmax) and its log sigma the softmax-weighted mean of its map. Positions stay tied to image
  locations, which makes them learn far faster than coordinates regressed from pooled features;
- ``"fc"``: ``1x1 conv -> flatten -> MLP -> K x (x, y, log sigma)`` offsets from a template.

The K points are the 68 iBUG landmarks in 2D-detector convention (the jaw on the visible
silhouette) followed by ``N`` fixed model vertices (:func:`faceclip.facemodel.surface_points.dense_vertex_ids`).
Positions are crop pixels (x right, y down, pixel centres at +0.5, as in :mod:`faceclip.detect`).
The ``fc`` head predicts them as offsets from a template (the mean position of each point over
training faces: an untrained ``fc`` network outputs the template); the soft-argmax of the
``integral`` head keeps them within the outer cell centres (4 px from the border of a 128 px
crop). Each point has an isotropic standard deviation
``sigma_px``: the network is trained with the Gaussian negative log-likelihood
(:func:`gaussian_nll`), and the fitter weights each point by ``1 / sigma_px^2``.

Files (:func:`save_landmark_net` / :func:`load_landmark_net`) hold the configuration, the vertex
ids and the weights: a file is self-describing, and loading checks it against the face model.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from faceclip.errors import InputError, ModelNotInstalledError
from faceclip.nets.files import load_weights, read_record
from faceclip.nets.backbones import make_backbone

__all__ = ["LandmarkNetConfig", "DenseLandmarkNet", "gaussian_nll", "save_landmark_net", "load_landmark_net",
           "landmark_net_record", "default_landmark_net_path", "SHIPPED_LANDMARK_NET"]

FORMAT = "faceclip-landmark-net"
VERSION = 1
#: log sigma (in units of the crop side) is clamped to this range: 0.3 px .. 0.37 S.
LOG_SIGMA_RANGE = (-6.0, -1.0)


@dataclass
class LandmarkNetConfig:
    """Architecture and output layout.

    Attributes:
        vertex_ids: the N dense model vertices (after the 68 landmarks).
        crop_px: input crop side S.
        face_model, geometry, n_vertices: the model the vertex ids refer to.
        backbone: ``"mobilenet_v2"`` (or ``"resnet50"``).
        head: ``"integral"`` (soft-argmax heatmaps at stride 8) or ``"fc"`` (regression).
        reduce_channels: ``fc``: channels of the 1x1 convolution before flattening.
        hidden: ``fc``: width of the hidden layer; ``integral``: channels of the pyramid.
    """

    vertex_ids: list[int] = field(default_factory=list)
    crop_px: int = 128
    face_model: str = "ict"
    geometry: str = "head_eyes"
    n_vertices: int = 0
    backbone: str = "mobilenet_v2"
    head: str = "integral"
    reduce_channels: int = 64
    hidden: int = 128

    @property
    def n_points(self) -> int:
        """K = 68 + N."""
        return 68 + len(self.vertex_ids)

    @staticmethod
    def from_dict(d: dict) -> LandmarkNetConfig:
        known = {f.name for f in fields(LandmarkNetConfig)}
        d = {"head": "fc", **d}  # files written before the integral head had only the fc one
        return LandmarkNetConfig(**{k: v for k, v in d.items() if k in known})


class DenseLandmarkNet(nn.Module):
    """Aligned crops -> (mu_px, sigma_px) of the K points.

    Args:
        config: the layout.
        pretrained: start the MobileNetV2 backbone from the installed ImageNet weights.
        template_px: (K, 2) starting positions in crop pixels (default: the crop centre).
    """

    def __init__(self, config: LandmarkNetConfig, *, pretrained: bool = True, template_px: Tensor | None = None,
                 backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        S, K = config.crop_px, config.n_points
        if config.head not in ("integral", "fc"):
            raise InputError(f"unknown landmark head {config.head!r}", hint="use 'integral' or 'fc'")
        if config.head == "integral" and config.backbone != "mobilenet_v2":
            raise InputError("the integral head needs the mobilenet_v2 backbone")
        self.backbone = make_backbone(config.backbone, pretrained=pretrained, weights=backbone_weights)
        t = torch.full((K, 2), 0.5) if template_px is None else torch.as_tensor(template_px, dtype=torch.float32) / S
        self.register_buffer("template", t.reshape(K, 2).clone())
        log_s0 = float(math.log(0.02))  # start at sigma = 2% of the crop side
        if config.head == "fc":
            cells = math.ceil(S / self.backbone.stride) ** 2
            self.reduce = nn.Sequential(nn.Conv2d(self.backbone.channels, config.reduce_channels, 1, bias=False),
                                        nn.BatchNorm2d(config.reduce_channels), nn.ReLU(inplace=True))
            self.mlp = nn.Sequential(nn.Linear(config.reduce_channels * cells, config.hidden), nn.ReLU(inplace=True),
                                     nn.Linear(config.hidden, 3 * K))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
            with torch.no_grad():
                self.mlp[-1].bias[2 * K:] = log_s0
            return
        c = config.hidden

        def cbr(i: int, o: int, k: int = 1, groups: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(o),
                                 nn.ReLU(inplace=True))

        self.lat32 = cbr(1280, c)
        self.fuse16 = nn.Sequential(cbr(c + 96, c), cbr(c, c, 3, groups=c), cbr(c, c))
        self.fuse8 = nn.Sequential(cbr(c + 32, c), cbr(c, c, 3, groups=c), cbr(c, c))
        self.maps = nn.Conv2d(c, 2 * K, 1)
        nn.init.normal_(self.maps.weight, std=0.01)
        nn.init.zeros_(self.maps.bias)
        with torch.no_grad():
            self.maps.bias[K:] = log_s0

    def _integral(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Soft-argmax head: (B, K, 2) crop pixels and (B, K) log sigma."""
        import torch.nn.functional as F

        S, K = self.config.crop_px, self.config.n_points
        bb = self.backbone
        x = (images - bb.mean) / bb.std
        feats = {}
        for i, layer in enumerate(bb.trunk):
            x = layer(x)
            if i in (6, 13):
                feats[i] = x
        y = F.interpolate(self.lat32(x), size=feats[13].shape[-2:], mode="bilinear", align_corners=False)
        y = self.fuse16(torch.cat([y, feats[13]], 1))
        y = F.interpolate(y, size=feats[6].shape[-2:], mode="bilinear", align_corners=False)
        y = self.maps(self.fuse8(torch.cat([y, feats[6]], 1)))  # (B, 2K, h, w)
        B, _, h, w = y.shape
        prob = y[:, :K].reshape(B, K, h * w).float().softmax(-1)
        gy, gx = torch.meshgrid((torch.arange(h, device=y.device) + 0.5) * (S / h),
                                (torch.arange(w, device=y.device) + 0.5) * (S / w), indexing="ij")
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1).float()  # (hw, 2)
        mu = prob @ grid
        log_sigma = (prob * y[:, K:].reshape(B, K, h * w).float()).sum(-1)
        return mu, log_sigma

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, S, S) RGB in [0, 1] -> mu_px (B, K, 2), log_sigma (B, K) in units of S.

        Use :meth:`sigma_px` to turn ``log_sigma`` into pixels.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
        S, K = self.config.crop_px, self.config.n_points
        if images.shape[-1] != S or images.shape[-2] != S:
            raise ValueError(f"the network takes {S} x {S} crops, got {tuple(images.shape[-2:])}")
        if self.config.head == "integral":
            mu, log_sigma = self._integral(images)
            return mu, log_sigma.clamp(*LOG_SIGMA_RANGE)
        f = self.reduce(self.backbone(images)).flatten(1)
        out = self.mlp(f)
        mu = (self.template + out[:, :2 * K].view(-1, K, 2)) * S
        log_sigma = out[:, 2 * K:].clamp(*LOG_SIGMA_RANGE)
        return mu, log_sigma

    def sigma_px(self, log_sigma: Tensor) -> Tensor:
        """(B, K) standard deviations in crop pixels."""
        return log_sigma.exp() * self.config.crop_px


def gaussian_nll(mu_px: Tensor, log_sigma: Tensor, target_px: Tensor, crop_px: int,
                 weight: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood of 2D isotropic Gaussians (positions in units of the crop).

    ``0.5 |target - mu|^2 / sigma^2 + 2 log sigma`` per point (constants dropped).

    Args:
        mu_px, target_px: (B, K, 2) crop pixels.
        log_sigma: (B, K) log standard deviation in units of the crop side.
        weight: optional (B, K) point weights (0 drops a point, e.g. one without ground truth).
    """
    d2 = ((target_px - mu_px) / crop_px).square().sum(-1)
    nll = 0.5 * d2 * torch.exp(-2.0 * log_sigma) + 2.0 * log_sigma
    if weight is None:
        return nll.mean()
    nll = torch.where(weight > 0, nll, torch.zeros_like(nll))  # points without ground truth: no NaN leaks in
    return (nll * weight).sum() / weight.sum().clamp_min(1e-9)


# ---------------------------------------------------------------------- files


def landmark_net_record(net: DenseLandmarkNet) -> dict:
    """The self-describing dict stored for a landmark network (also inside training checkpoints)."""
    return {"format": FORMAT, "version": VERSION, "config": asdict(net.config),
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}


def save_landmark_net(net: DenseLandmarkNet, path: str | Path, half: bool = False, meta: dict | None = None) -> Path:
    """Write the network atomically; ``half`` stores float weights as float16."""
    from faceclip.nets.files import save_record

    return save_record(landmark_net_record(net), path, half=half, meta=meta)


def load_landmark_net(path: str | Path, device: str | torch.device = "cpu", face_model=None) -> DenseLandmarkNet:
    """Load a landmark network (a run's ``landmarks.pt``) in eval mode.

    Raises:
        ModelNotInstalledError: the file does not exist.
        InputError: unreadable, not a landmark network, or made for another face model.
    """
    path = Path(path)
    if not path.is_file():
        if path == SHIPPED_LANDMARK_NET:
            raise ModelNotInstalledError(
                "no dense landmark network ships with this version of faceclip",
                hint="train one with `faceclip train --config configs/landmarks_cpu.yaml` and pass "
                     "--landmark-net runs/landmarks/landmarks.pt (or set FACECLIP_LANDMARK_NET)")
    rec = read_record(path, what="landmark network", fmt=FORMAT, max_version=VERSION, checkpoint_key="model",
                      missing_hint="train one with `faceclip train --config configs/landmarks_cpu.yaml`",
                      unreadable_hint="the file is truncated or not a network file (a training run's network is "
                                      "<run>/landmarks.pt; checkpoints/last.pt is for --resume)",
                      wrong_hint="give a file written by `faceclip train` with task: landmarks")
    try:
        config = LandmarkNetConfig.from_dict(rec["config"])
    except (KeyError, TypeError) as exc:
        raise InputError(f"{path}: malformed landmark network configuration ({exc})") from exc
    if face_model is not None:
        want = (face_model.name, face_model.n_vertices)
        got = (config.face_model, config.n_vertices)
        if want != got:
            raise InputError(f"{path} predicts points of face model {got[0]} ({got[1]} vertices), "
                             f"not {want[0]} ({want[1]} vertices)", hint="use a network trained for this face model")
    return load_weights(DenseLandmarkNet(config, pretrained=False), rec, path).to(device).eval()


SHIPPED_LANDMARK_NET = Path(__file__).resolve().parent.parent / "data" / "landmarks_ict_mobilenet_v2.pt"


def default_landmark_net_path() -> Path:
    """``$FACECLIP_LANDMARK_NET`` when set, else the network shipped with the package."""
    env = os.environ.get("FACECLIP_LANDMARK_NET")
    return Path(env) if env else SHIPPED_LANDMARK_NET
