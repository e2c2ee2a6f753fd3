"""A face-recognition identity term for the photometric stage (``faceclip reconstruct --identity``).

Landmarks pin a face's outline and the photo's shading its light; neither says much about what
makes a person recognisable. FaceCLIP's identity loss (after Deep3DFaceRecon) does: the fitted
face, rendered over the photo, should have the same face-recognition embedding as the photo.
This module turns :class:`faceclip.losses.IdentityLoss` into a :class:`~faceclip.fit.stages.LossTerm`
of the fitter's photometric stage.

Each step renders the face area (``config.render_px``), pastes it over the crop where it covers
it, and adds ``weight * (1 - cos(e_photo, e_render))`` with the frozen encoder's embeddings
(FaceNet by default, :func:`faceclip.nets.facenet_weights.load_facenet`). The photo's embedding
is computed once per fit. Gradients flow through the encoder and the differentiable renderer to
the shape, expression, pose, light and albedo.

Measured (``benchmarks/identity_consistency.py``, ``benchmarks/frontend_ablation.py``; see
``docs/front-end.md``): on the 24 faces of ``bald_guys.jpg`` the nearest reconstructed shape
belongs to the same person for 0.88 of the faces (0.42 without the term), and on the synthetic
benchmark (seed 0, n=100) the shape error is 1.280 mm against the default's 1.317 (1.301 with
the default's previous, slower settings, which ``--identity`` keeps); the cost is one encoder
forward and backward pass per photometric step (about 0.12 s on two CPU cores).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from faceclip.fit.stages import LossTerm
from faceclip.losses.identity import IdentityLoss, identity_loss

__all__ = ["DEFAULT_IDENTITY_WEIGHT", "IdentityTerm", "identity_term"]

#: The weight ``--identity`` uses (relative to the landmark term in 224-crop pixels; the
#: photometric term's is 40). Not tuned: the first value tried (see ``docs/front-end.md``).
DEFAULT_IDENTITY_WEIGHT = 2.0


class IdentityTerm:
    """``ctx -> 1 - cos`` of the encoder's embeddings of the crop and of the render pasted on it.

    Args:
        encoder: a frozen face-recognition encoder with ``embed`` and ``aligned_box``
            (:func:`~faceclip.nets.facenet_weights.load_facenet`,
            :func:`~faceclip.nets.arcface.load_arcface`).

    The encoder is converted to channels-last memory format (faster on a CPU). Called by the
    photometric stage with its context (``rendered`` (B, S, S, 3), ``coverage``
    (B, S, S) bool, ``target`` (B, S, S, 3) crop in [0, 1]); the target's embedding is kept while
    the same target tensor comes back (one fit) and computed again for a new one.
    """

    def __init__(self, encoder: nn.Module) -> None:
        # Channels-last convolutions: the encoder's forward and backward pass 1.3x faster on a CPU
        # (0.119 against 0.157 s on two cores; same embeddings to 1e-7). Converts ``encoder`` in place.
        self.loss = IdentityLoss(encoder.to(memory_format=torch.channels_last), channels_last=True)
        self._target: Tensor | None = None
        self._target_embedding: Tensor | None = None

    def target_embedding(self, target: Tensor) -> Tensor:
        """(B, D) embedding of the crop (computed once per target tensor, without gradients)."""
        if target is not self._target:
            with torch.no_grad():
                self._target_embedding = self.loss.embed(target.detach())
            self._target = target
        return self._target_embedding

    def __call__(self, ctx: dict) -> Tensor:
        target = ctx["target"]
        pasted = torch.where(ctx["coverage"].unsqueeze(-1), ctx["rendered"], target)
        return identity_loss(self.target_embedding(target), self.loss.embed(pasted))


def identity_term(encoder: nn.Module, weight: float = DEFAULT_IDENTITY_WEIGHT) -> LossTerm:
    """The identity term as a :class:`LossTerm` named ``"identity"`` for :class:`~faceclip.fit.fitter.Fitter`'s
    ``extra_terms``.

    Raises:
        ValueError: a weight that is not positive and finite.
    """
    if not (weight > 0 and weight < float("inf")):
        raise ValueError(f"identity weight must be positive and finite, got {weight}")
    return LossTerm("identity", float(weight), IdentityTerm(encoder))
