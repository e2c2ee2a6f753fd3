"""Identity loss: cosine distance of face-recognition embeddings of the photo and the rendering.

FaceCLIP (after Deep3DFaceRecon) compares a frozen face-recognition network's embeddings of
the input image and of the rendered face. ArcFace weights cannot be obtained here, so the
default encoder is FaceNet (:func:`faceclip.nets.facenet_weights.load_facenet`); an ArcFace iresnet
you bring (:func:`faceclip.nets.arcface.load_arcface`) plugs in the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceclip.nets.facenet import crop_aligned


def identity_loss(emb_input: Tensor, emb_render: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean cosine distance between two batches of embeddings.

    Args:
        emb_input: ``(B, D)`` embeddings of the input photos (normally computed without grad).
        emb_render: ``(B, D)`` embeddings of the renderings.
        eps: guards the norms of zero vectors.

    Returns:
        Scalar: mean over the batch of ``1 - cos(e_in, e_r)``, in [0, 2] (0: same direction,
        1: orthogonal, 2: opposite). Embeddings need not be normalised.
    """
    if emb_input.shape != emb_render.shape or emb_input.ndim != 2:
        raise ValueError(f"expected two (B, D) tensors of one shape, got {tuple(emb_input.shape)} "
                         f"and {tuple(emb_render.shape)}")
    return (1.0 - F.cosine_similarity(emb_input, emb_render, dim=1, eps=eps)).mean()


class IdentityLoss(nn.Module):
    """:func:`identity_loss` of a frozen encoder's embeddings of photo and rendering.

    Args:
        encoder: a module with ``embed(images)`` mapping ``(B, 3, h, w)`` RGB face crops in
            [0, 1] to ``(B, D)`` embeddings, and ``aligned_box`` (its sub-crop of an aligned
            FaceCLIP crop): :func:`~faceclip.nets.facenet_weights.load_facenet` or
            :func:`~faceclip.nets.arcface.load_arcface`. It is kept frozen and in eval mode.
        box: ``(x0, y0, x1, y1)`` sub-crop, in units of the image side, taken from both images
            before embedding; default the encoder's ``aligned_box`` (for FaceCLIP's aligned
            crops); None: the whole image.
        channels_last: images come as ``(B, H, W, 3)`` (the renderer's layout) instead of
            ``(B, 3, H, W)``.

    The encoder is a registered submodule so that ``.to(device)`` moves it; keep this loss
    out of the modules whose ``state_dict`` you checkpoint.
    """

    def __init__(self, encoder: nn.Module, box: tuple[float, float, float, float] | None | str = "encoder",
                 channels_last: bool = False) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.box = getattr(encoder, "aligned_box", None) if box == "encoder" else box
        self.channels_last = channels_last

    def train(self, mode: bool = True) -> IdentityLoss:
        super().train(mode)
        self.encoder.eval()  # frozen: batch norm statistics and dropout stay in inference mode
        return self

    def embed(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` (or ``(B, H, W, 3)`` with ``channels_last``) in [0, 1] -> ``(B, D)``."""
        if self.channels_last:
            images = images.permute(0, 3, 1, 2)
        if self.box is not None:
            images = crop_aligned(images, self.box, self.encoder.input_px)
        return self.encoder.embed(images)

    def forward(self, input_images: Tensor, rendered_images: Tensor) -> Tensor:
        """Scalar identity loss; gradients flow to ``rendered_images`` only.

        Args:
            input_images: ``(B, 3, H, W)`` photos (aligned crops) in [0, 1].
            rendered_images: ``(B, 3, H, W)`` renderings in [0, 1], normally composited over
                the photo so that the background matches.
        """
        with torch.no_grad():
            emb_input = self.embed(input_images)
        return identity_loss(emb_input, self.embed(rendered_images))
