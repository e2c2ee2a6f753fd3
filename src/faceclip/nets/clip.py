"""Frozen CLIP encoders: the towers, reading a checkpoint into them, and the frozen wrappers.

Two image towers of OpenAI CLIP, built with ``open_clip``:

- **RN50x4** (``ModifiedResNet``, input 288 px): the *geometric* features are the outputs
  of ``layer2`` (B, 640, 36, 36) and ``layer3`` (B, 1280, 18, 18). Only the stem and
  ``layer1``..``layer3`` run; ``layer4`` and the attention pool are kept (so checkpoints load
  strictly) but never evaluated.
- **ViT-B/32** (input 224 px): the *semantic* feature is the final projected image
  embedding (B, 512). Its text tower is optional (``with_text=True``) for text-guided editing.

Where the weight files are looked for, how they are installed and the loaders that search for
them (:func:`~faceclip.nets.clip_weights.load_clip_encoders`,
:func:`~faceclip.nets.clip_weights.load_clip_image_text`) are in
:mod:`faceclip.nets.clip_weights`; this module loads a file it is given
(:func:`load_clip_tower`).

Accepted formats: OpenAI's TorchScript archives (``RN50x4.pt``, ``ViT-B-32.pt``), open_clip
checkpoints (``.safetensors``, or a ``torch.save``-d state dict, optionally under a
``"state_dict"`` key with DDP's ``module.`` prefix). Files are read with ``weights_only``
pickling; a file that is not a CLIP checkpoint of the right architecture is reported as a
:class:`~faceclip.errors.ModelNotInstalledError` naming it.

The encoders are frozen (``requires_grad=False``) and always in evaluation mode (BatchNorm
statistics of RN50x4 fixed), even when a parent module is put in training mode; gradients
still flow to the input images. :meth:`ClipEncoders.random` builds randomly initialised
stand-ins of the same architectures for tests: never the default anywhere.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceclip.errors import FaceClipError, ModelNotInstalledError

log = logging.getLogger(__name__)

#: OpenAI CLIP normalisation (``open_clip.constants.OPENAI_DATASET_MEAN`` / ``_STD``).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipArch:
    """One CLIP tower FaceCLIP uses and where its weights can be found."""

    key: str  #: ``"rn50x4"`` / ``"vitb32"``
    model_name: str  #: FaceCLIP model name (``faceclip models install <model_name>``)
    open_clip_name: str  #: open_clip architecture name
    image_size_px: int
    openai_filename: str  #: OpenAI's file name (also open_clip's URL-download cache name)
    hf_repo: str  #: open_clip's Hugging Face repo of the OpenAI weights
    env_var: str


RN50X4 = ClipArch("rn50x4", "clip-rn50x4", "RN50x4", 288, "RN50x4.pt", "timm/resnet50x4_clip.openai",
                  "FACECLIP_CLIP_RN50X4")
VITB32 = ClipArch("vitb32", "clip-vitb32", "ViT-B-32", 224, "ViT-B-32.pt", "timm/vit_base_patch32_clip_224.openai",
                  "FACECLIP_CLIP_VITB32")
CLIP_ARCHS = {RN50X4.key: RN50X4, VITB32.key: VITB32}
#: ``faceclip models install`` names -> architecture.
CLIP_MODEL_NAMES = {a.model_name: a for a in CLIP_ARCHS.values()}


def _install_hint(arch: ClipArch) -> str:
    return (f"get OpenAI's {arch.openai_filename} (or an open_clip {arch.open_clip_name} checkpoint) on a machine "
            f"with network, then run `faceclip models install {arch.model_name} --from FILE` "
            f"(or set {arch.env_var}=FILE)")


# --------------------------------------------------------------------------- reading checkpoints


def _open_clip():
    from faceclip.nets._torchvision import import_torchvision

    import_torchvision()  # open_clip imports torchvision
    import open_clip

    return open_clip


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_clip_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a CLIP checkpoint into an OpenAI / open_clip key layout (``visual.*``, text keys).

    OpenAI TorchScript archives are read with ``torch.jit.load`` (as
    ``open_clip.load_openai_model`` does); anything else with
    ``open_clip.factory.load_state_dict`` (safetensors, or ``weights_only`` pickles, with the
    ``state_dict`` / ``module.`` wrappers removed).

    Raises:
        ModelNotInstalledError: the file cannot be read as a checkpoint (names the file).
    """
    path = Path(path)
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():  # "torch.jit.load is deprecated": OpenAI ships TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                sd = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
            for key in ("input_resolution", "context_length", "vocab_size"):
                sd.pop(key, None)
        else:
            sd = _open_clip().factory.load_state_dict(str(path), device="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a usable checkpoint"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelNotInstalledError(
            f"{path} is not a readable CLIP checkpoint ({type(exc).__name__}: {first})",
            hint="give OpenAI's RN50x4.pt / ViT-B-32.pt or an open_clip checkpoint (.safetensors, .bin, .pt)",
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ModelNotInstalledError(f"{path} does not hold a state dict of tensors")
    return sd


def _model_config(arch: ClipArch) -> dict:
    cfg = _open_clip().get_model_config(arch.open_clip_name)
    if cfg is None:  # pragma: no cover - open_clip always ships these configs
        raise FaceClipError(f"open_clip has no config for {arch.open_clip_name}")
    return cfg


def build_clip_tower(arch: ClipArch, with_text: bool = False, quick_gelu: bool = True) -> nn.Module:
    """A randomly initialised tower: the image tower, or the whole CLIP model if ``with_text``."""
    oc = _open_clip()
    cfg = _model_config(arch)
    if with_text:
        return oc.CLIP(**cfg, quick_gelu=quick_gelu)
    from open_clip.model import _build_vision_tower

    return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=quick_gelu)


def _load_strict(module: nn.Module, sd: dict[str, Tensor], path: Path, arch: ClipArch, assign: bool = False
                 ) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise ModelNotInstalledError(
            f"{path} does not hold CLIP {arch.open_clip_name} weights: " + ", ".join(parts),
            hint=_install_hint(arch),
        )
    module.load_state_dict(sd, strict=True, assign=assign)


def load_clip_tower(arch: ClipArch, path: str | Path, with_text: bool = False,
                    quick_gelu: bool = True) -> nn.Module:
    """Build ``arch`` and load its weights from ``path`` (strictly; float32, CPU, eval mode).

    Args:
        arch: :data:`RN50X4` or :data:`VITB32`.
        path: checkpoint file (see :func:`read_clip_state_dict`).
        with_text: return the whole open_clip ``CLIP`` model (image and text towers; the file
            must hold both); otherwise only the image tower, loaded from the ``visual.*`` keys.

    Raises:
        ModelNotInstalledError: unreadable file or wrong architecture, naming the file.
    """
    path = Path(path)
    sd = read_clip_state_dict(path)
    if not with_text:
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    if with_text:  # the text model has non-persistent buffers (causal mask): build for real
        model = build_clip_tower(arch, with_text=True, quick_gelu=quick_gelu)
        if "logit_scale" in sd:
            sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
        _load_strict(model, sd, path, arch)
    else:  # image towers hold only state-dict tensors: skip the random init (seconds for RN50x4)
        with torch.device("meta"):
            model = build_clip_tower(arch, quick_gelu=quick_gelu)
        _load_strict(model, sd, path, arch, assign=True)
    return model.float().eval()


# --------------------------------------------------------------------------- encoders


class ClipFeatures(NamedTuple):
    """CLIP features of a batch of (masked) images.

    Attributes:
        geometric: RN50x4 ``layer2`` (B, 640, 36, 36) and ``layer3`` (B, 1280, 18, 18).
        semantic: ViT-B/32 image embedding (B, 512), not normalised.
    """

    geometric: tuple[Tensor, Tensor]
    semantic: Tensor


def _as_mask(mask: Tensor | None, images: Tensor) -> Tensor | None:
    if mask is None:
        return None
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"mask must be (B, 1, H, W) or (B, H, W) matching images {tuple(images.shape)}, "
                         f"got {tuple(mask.shape)}")
    return mask.to(images.dtype)


class _FrozenClip(nn.Module):
    """What the CLIP wrappers share: frozen, always in evaluation mode, CLIP's normalisation
    and resizing of [0, 1] images (differentiable), and the tokenizer (made on first use)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self._tokenizer = None

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True):
        """Always evaluation mode: the encoders are frozen feature extractors."""
        return super().train(False)

    def preprocess(self, images: Tensor, mask: Tensor | None, size_px: int) -> Tensor:
        """(B, 3, H, W) in [0, 1] (+ mask (B, 1, H, W) / (B, H, W)) -> (B, 3, S, S) normalised."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        m = _as_mask(mask, images)
        if m is not None:
            x = x * m
        if x.shape[-2:] != (size_px, size_px):
            x = F.interpolate(x, size=(size_px, size_px), mode="bilinear", align_corners=False, antialias=True)
        return x

    def _tokens(self, texts: Sequence[str], arch_name: str) -> Tensor:
        if self._tokenizer is None:
            self._tokenizer = _open_clip().get_tokenizer(arch_name)
        return self._tokenizer(list(texts)).to(self.mean.device)


class ClipEncoders(_FrozenClip):
    """Frozen RN50x4 and ViT-B/32 CLIP image encoders (plus, optionally, ViT-B/32's text tower).

    Images are (B, 3, H, W) RGB in [0, 1], any size (face crops are square; other aspect
    ratios are squashed). Preprocessing is differentiable: the image is normalised with
    CLIP's mean / std, multiplied by the face mask, and resized (bilinear, antialiased) to
    the tower's input size. Multiplying *after* normalisation puts the background at 0 in
    normalised space, i.e. at CLIP's mean colour, the input value carrying the least signal,
    rather than at black, which is far from the training distribution's mean and creates a
    strong artificial edge along the mask; soft masks blend towards the mean colour.

    Build with :func:`~faceclip.nets.clip_weights.load_clip_encoders` (real weights) or :meth:`random` (tests).
    """

    def __init__(self, rn50x4: nn.Module, vitb32: nn.Module, text: nn.Module | None = None,
                 source: str = "") -> None:
        """
        Args:
            rn50x4: open_clip ``ModifiedResNet`` of RN50x4 (the image tower).
            vitb32: open_clip ``VisionTransformer`` of ViT-B/32 (the image tower).
            text: an open_clip ``CLIP`` model of ViT-B/32 whose ``visual`` was removed, or None.
            source: where the weights came from (for logs and ``repr``).
        """
        super().__init__()
        self.rn50x4 = rn50x4
        self.vitb32 = vitb32
        self.text = text
        self.source = source
        self._freeze()

    # ---- construction

    @classmethod
    def random(cls, seed: int = 0, with_text: bool = False, device: str | torch.device | None = None
               ) -> ClipEncoders:
        """Randomly initialised stand-ins of the true architectures. For tests only.

        open_clip's initialisation zeroes the last BatchNorm scale of every residual block of
        RN50x4 (each block starts as the identity); here those scales are set to 1 so every
        block takes part in the features and in the gradient paths under test.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rn = build_clip_tower(RN50X4)
            for name, p in rn.named_parameters():
                if name.endswith("bn3.weight"):
                    nn.init.ones_(p)
            clip = build_clip_tower(VITB32, with_text=with_text)
        vit, text = _split_text(clip) if with_text else (clip, None)
        enc = cls(rn, vit, text, source=f"random(seed={seed})")
        return enc.to(device) if device is not None else enc

    # ---- features

    def geometric_features(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """RN50x4 ``layer2`` (B, 640, 36, 36) and ``layer3`` (B, 1280, 18, 18) outputs."""
        net = self.rn50x4
        x = self.preprocess(images, mask, RN50X4.image_size_px)
        x = net.layer1(net.stem(x))
        f2 = net.layer2(x)
        f3 = net.layer3(f2)
        return f2, f3

    def semantic_embedding(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """ViT-B/32 image embedding (B, 512), not normalised."""
        return self.vitb32(self.preprocess(images, mask, VITB32.image_size_px))

    def forward(self, images: Tensor, mask: Tensor | None = None) -> ClipFeatures:
        """Both feature sets of (B, 3, H, W) images in [0, 1] under ``mask``."""
        return ClipFeatures(self.geometric_features(images, mask), self.semantic_embedding(images, mask))

    # ---- text

    @property
    def has_text(self) -> bool:
        return self.text is not None

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """ViT-B/32 text embeddings (N, 512), not normalised, on the encoders' device.

        Raises:
            FaceClipError: the encoders were loaded without the text tower (``with_text=False``).
        """
        if self.text is None:
            raise FaceClipError("the CLIP text encoder is not loaded", hint="load the encoders with with_text=True")
        return self.text.encode_text(self._tokens(texts, VITB32.open_clip_name))

    def extra_repr(self) -> str:
        return f"source={self.source!r}, text={self.has_text}"


def _split_text(clip: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(image tower, the CLIP model without it) of a whole open_clip ``CLIP`` model."""
    visual = clip.visual
    clip.visual = None  # encode_text never touches it; keeps one copy of the image tower
    return visual, clip


class ClipImageText(_FrozenClip):
    """Frozen ViT-B/32 CLIP, image and text towers: the encoders of text-guided editing.

    ``encode_image`` takes (B, 3, H, W) RGB in [0, 1] (normalised with CLIP's mean / std and
    resized, bilinear and antialiased, to the tower's input size: differentiable) and
    ``encode_text`` a list of prompts; both return unnormalised embeddings (B, D).

    Build with :func:`~faceclip.nets.clip_weights.load_clip_image_text` (real weights) or :meth:`small_random`
    (tests).
    """

    def __init__(self, clip: nn.Module, image_size_px: int = VITB32.image_size_px, source: str = "",
                 tokenizer_name: str = VITB32.open_clip_name) -> None:
        super().__init__()
        self.clip = clip
        self.image_size_px = image_size_px
        self.source = source
        self.tokenizer_name = tokenizer_name
        self._freeze()

    @classmethod
    def small_random(cls, seed: int = 0, width: int = 64, layers: int = 2) -> ClipImageText:
        """A randomly initialised, narrow and shallow model of the same open_clip classes as
        ViT-B/32 (vision transformer with 32 px patches at 224 px, causal text transformer with
        CLIP's tokenizer and 77-token context). For tests only."""
        oc = _open_clip()
        vision = {"image_size": 224, "layers": layers, "width": width, "patch_size": 32, "head_width": 32}
        text = {"context_length": 77, "vocab_size": 49408, "width": width, "heads": max(1, width // 32),
                "layers": layers}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip = oc.CLIP(embed_dim=width, vision_cfg=vision, text_cfg=text, quick_gelu=True)
        return cls(clip.float().eval(), 224, source=f"small_random(seed={seed})")

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) image embeddings."""
        return self.clip.encode_image(self.preprocess(images, None, self.image_size_px))

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """N prompts -> (N, D) text embeddings."""
        return self.clip.encode_text(self._tokens(texts, self.tokenizer_name))

    def extra_repr(self) -> str:
        return f"source={self.source!r}"


__all__ = [
    "CLIP_ARCHS",
    "CLIP_MEAN",
    "CLIP_MODEL_NAMES",
    "CLIP_STD",
    "RN50X4",
    "VITB32",
    "ClipArch",
    "ClipEncoders",
    "ClipFeatures",
    "ClipImageText",
    "build_clip_tower",
    "load_clip_tower",
    "read_clip_state_dict",
]
