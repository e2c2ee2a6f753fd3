"""Each loss term on small constructed inputs."""

from __future__ import annotations

import torch

from faceclip.losses import (
    DEFAULT_LANDMARK_WEIGHTS,
    albedo_skin_prior,
    albedo_smoothness,
    albedo_symmetry,
    coefficient_l2,
    landmark_loss,
    light_chroma,
    photometric_loss,
)


def test_landmark_loss_value_weights_and_scale():
    target = torch.zeros(2, 68, 2)
    pred = target.clone()
    assert landmark_loss(pred, target) == 0
    pred[:, 30, 0] = 2.0  # nose tip (weight 2) off by 2 px
    w = DEFAULT_LANDMARK_WEIGHTS
    expected = 2.0 * 4.0 / w.sum()
    assert torch.allclose(landmark_loss(pred, target), expected)
    assert torch.allclose(landmark_loss(pred, target, scale_px=2.0), expected / 4.0)
    # A jaw point (weight 0.5) costs a quarter of a nose point for the same error.
    jaw = target.clone()
    jaw[:, 3, 0] = 2.0
    assert torch.allclose(landmark_loss(jaw, target), expected / 4.0)
    # The gradient pulls the prediction toward the target.
    pred.requires_grad_(True)
    landmark_loss(pred, target).backward()
    assert pred.grad[0, 30, 0] > 0 and pred.grad[0, 31].abs().sum() == 0


def test_photometric_loss_masked_mean_distance():
    target = torch.zeros(1, 4, 4, 3)
    rendered = target.clone()
    rendered[0, 0, 0] = torch.tensor([3.0, 4.0, 0.0])  # distance 5 at one pixel
    mask = torch.zeros(1, 4, 4)
    mask[0, 0, 0] = 1.0
    mask[0, 1, 1] = 1.0
    assert torch.allclose(photometric_loss(rendered, target, mask), torch.tensor(2.5), atol=1e-4)
    # Pixels outside the mask never count; an empty mask gives 0, not NaN.
    rendered[0, 3, 3] = 100.0
    assert torch.allclose(photometric_loss(rendered, target, mask), torch.tensor(2.5), atol=1e-4)
    assert photometric_loss(rendered, target, torch.zeros(1, 4, 4)) == 0
    rendered.requires_grad_(True)
    photometric_loss(rendered, target, mask).backward()
    assert torch.isfinite(rendered.grad).all() and rendered.grad[0, 3, 3].abs().sum() == 0


def test_coefficient_l2_and_smoothness():
    c = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    assert torch.allclose(coefficient_l2(c), torch.tensor((5.0 + 1.0) / 2))
    assert torch.allclose(coefficient_l2(c, torch.tensor([0.0, 1.0])), torch.tensor((4.0 + 1.0) / 2))
    alb = torch.ones(1, 2, 3)
    assert torch.allclose(albedo_smoothness(alb, torch.tensor([0.0, 2.0])), torch.tensor(6.0))


def test_albedo_symmetry():
    albedo = torch.tensor([[[0.5, 0.4, 0.3], [0.5, 0.4, 0.3], [0.9, 0.4, 0.3]]])
    mirror = torch.tensor([1, 0, 0])
    assert albedo_symmetry(albedo, mirror, torch.tensor([0, 1])) == 0
    assert torch.allclose(albedo_symmetry(albedo, mirror, torch.tensor([2])), torch.tensor(0.16))


def test_albedo_skin_prior():
    skin = torch.tensor([0, 1])
    good = torch.tensor([[[0.6, 0.45, 0.35], [0.2, 0.12, 0.08]]])  # light and dark skin
    assert albedo_skin_prior(good, skin) == 0
    blue = torch.tensor([[[0.3, 0.4, 0.6], [0.3, 0.4, 0.6]]])
    assert albedo_skin_prior(blue, skin) > 0.04
    white = torch.full((1, 2, 3), 1.2)
    assert albedo_skin_prior(white, None) > 0


def test_light_chroma():
    sh = torch.zeros(1, 9, 3)
    sh[:, 0] = 1.0
    assert light_chroma(sh) == 0
    sh[0, 0, 2] = 2.0  # blue light
    assert light_chroma(sh) > 0
