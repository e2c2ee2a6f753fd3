"""Loss terms, each a small function of tensors with documented shapes.

The fitting (``faceclip.fit``) and training code combine them with weights; every function
returns a scalar tensor (mean over the batch) and is differentiable in its inputs.
"""

from faceclip.losses.clip import ClipConsistencyLoss, clip_geometric_loss, clip_semantic_loss, make_clip_loss
from faceclip.losses.identity import IdentityLoss, identity_loss
from faceclip.losses.landmark import DEFAULT_LANDMARK_WEIGHTS, landmark_loss
from faceclip.losses.photometric import photometric_loss
from faceclip.losses.regularizers import (
    albedo_skin_prior,
    albedo_smoothness,
    albedo_symmetry,
    coefficient_l2,
    light_chroma,
)

__all__ = [
    "DEFAULT_LANDMARK_WEIGHTS",
    "ClipConsistencyLoss",
    "IdentityLoss",
    "clip_geometric_loss",
    "clip_semantic_loss",
    "identity_loss",
    "make_clip_loss",
    "albedo_skin_prior",
    "albedo_smoothness",
    "albedo_symmetry",
    "coefficient_l2",
    "landmark_loss",
    "light_chroma",
    "photometric_loss",
]
