"""ArcFace iresnet encoders (insightface ``arcface_torch`` layout) for weights you bring.

ArcFace weights cannot be obtained here; FaceCLIP's identity loss defaults to FaceNet
(:mod:`faceclip.nets.facenet`). If you have an insightface ``backbone.pth`` for iresnet50 or
iresnet100 (e.g. ``ms1mv3_arcface_r100_fp16/backbone.pth``), :func:`load_arcface` loads it
into :class:`IResNet` and it plugs into :class:`faceclip.losses.identity.IdentityLoss`.

Input convention (insightface): RGB 112 x 112 crops aligned to the ArcFace five-point
template, normalised to ``(x - 0.5) / 0.5`` from [0, 1]. FaceCLIP's aligned crop uses that
template scaled by 0.66, so the ArcFace crop is an exact box of it: :data:`ARCFACE_ALIGNED_BOX`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceclip.errors import ModelNotInstalledError

log = logging.getLogger(__name__)

__all__ = ["ARCFACE_ALIGNED_BOX", "IResNet", "iresnet50", "iresnet100", "load_arcface"]

ARCFACE_INPUT_PX = 112
ARCFACE_LAYERS = {"iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}

#: The ArcFace 112 px crop inside FaceCLIP's aligned crop, ``(x0, y0, x1, y1)`` in units of
#: the crop side. :data:`faceclip.conventions.FIVE_POINT_TEMPLATE` is the ArcFace template
#: (symmetrised) mapped by ``u -> 0.66 u + (0.17, 0.0959)``, so the ArcFace crop is
#: ``[0.17, 0.83] x [0.0959, 0.7559]``.
ARCFACE_ALIGNED_BOX: tuple[float, float, float, float] = (0.17, 0.0959, 0.83, 0.7559)

_BN_EPS = 1e-5


class _IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN, 3x3 conv, BN, PReLU, 3x3 conv (stride), BN.

    ``(B, c_in, H, W)`` -> ``(B, c_out, H / stride, W / stride)``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, eps=_BN_EPS)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=_BN_EPS)
        self.prelu = nn.PReLU(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out, eps=_BN_EPS)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out, eps=_BN_EPS))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """insightface's iresnet: 112 x 112 face in, 512-d embedding out.

    Shapes: stem ``(B, 64, 112, 112)``; four stages of :class:`_IBasicBlock` (first block of
    each with stride 2) to ``(B, 512, 7, 7)``; BN; flatten; linear ``(B, 512)``; BN
    (``features``, scale fixed to 1). Parameter names match insightface's state dicts.

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 14, 3)`` (iresnet50).
        embedding_dim: output size (512).
    """

    input_px = ARCFACE_INPUT_PX
    aligned_box = ARCFACE_ALIGNED_BOX

    def __init__(self, layers: tuple[int, int, int, int], embedding_dim: int = 512) -> None:
        super().__init__()
        self.layers_config = tuple(layers)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=_BN_EPS)
        self.prelu = nn.PReLU(64)
        widths, c_in = (64, 128, 256, 512), 64
        for i, (n, c_out) in enumerate(zip(layers, widths), start=1):
            blocks = [_IBasicBlock(c_in if j == 0 else c_out, c_out, 2 if j == 0 else 1) for j in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            c_in = c_out
        self.bn2 = nn.BatchNorm2d(512, eps=_BN_EPS)
        self.fc = nn.Linear(512 * 7 * 7, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=_BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, 112, 112)`` normalised RGB -> ``(B, 512)`` raw (unnormalised) embeddings."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))

    def embed(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` RGB face crops in [0, 1] -> ``(B, 512)`` unit-length embeddings.

        Resized to 112 x 112 (bilinear) when needed; differentiable in ``images``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (self.input_px, self.input_px):
            images = F.interpolate(images, size=(self.input_px, self.input_px), mode="bilinear",
                                   align_corners=False, antialias=False)
        return F.normalize(self(images * 2.0 - 1.0), dim=1)


def iresnet50() -> IResNet:
    """iresnet50 (blocks 3, 4, 14, 3)."""
    return IResNet(ARCFACE_LAYERS["iresnet50"])


def iresnet100() -> IResNet:
    """iresnet100 (blocks 3, 13, 30, 3)."""
    return IResNet(ARCFACE_LAYERS["iresnet100"])


def _layers_from_keys(keys: list[str]) -> tuple[int, int, int, int]:
    """Blocks per stage read from ``layer{i}.{j}.`` state-dict keys."""
    counts = [0, 0, 0, 0]
    for k in keys:
        m = re.match(r"layer([1-4])\.(\d+)\.", k)
        if m:
            i = int(m.group(1)) - 1
            counts[i] = max(counts[i], int(m.group(2)) + 1)
    return tuple(counts)  # type: ignore[return-value]


def load_arcface(path: str | Path, device: str | torch.device = "cpu") -> IResNet:
    """Load insightface iresnet weights (``backbone.pth``) as a frozen, eval-mode encoder.

    The depth (iresnet50, iresnet100, or another stage layout) is read from the keys; a
    ``module.`` prefix (DataParallel) is removed; fp16 weights are cast to float32.

    Args:
        path: a ``torch.save`` state dict (or a dict holding one under ``state_dict``).
        device: where to put the model.

    Raises:
        ModelNotInstalledError: the file is missing, unreadable, or not iresnet weights.
    """
    path = Path(path).expanduser()
    hint = "give an insightface arcface_torch backbone.pth (iresnet50 / iresnet100 state dict)"
    if not path.is_file():
        raise ModelNotInstalledError(f"ArcFace weights not found: {path}", hint=hint)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, garbage, pickle errors: a bad file
        raise ModelNotInstalledError(f"cannot read ArcFace weights {path} ({type(exc).__name__})", hint=hint) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelNotInstalledError(f"{path} is not a state dict", hint=hint)
    state = {k.removeprefix("module."): v.float() for k, v in state.items()}
    layers = _layers_from_keys(list(state))
    if min(layers) == 0 or "fc.weight" not in state:
        raise ModelNotInstalledError(f"{path} does not hold iresnet weights (no layer1-4 / fc keys)", hint=hint)
    model = IResNet(layers, embedding_dim=state["fc.weight"].shape[0])
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise ModelNotInstalledError(f"{path} does not match iresnet{layers}: {str(exc)[:300]}", hint=hint) from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelNotInstalledError(
            f"{path} does not match iresnet{layers}: missing {missing[:3]}, unexpected {unexpected[:3]}", hint=hint)
    log.info("loaded ArcFace iresnet with stages %s from %s", layers, path)
    model.requires_grad_(False)
    return model.eval().to(device)
