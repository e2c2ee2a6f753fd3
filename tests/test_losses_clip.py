"""CLIP feature-consistency loss: values on constructed features, gradients through the
frozen encoders (randomly initialised RN50x4 / ViT-B/32), and the no-weights path."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import faceclip.losses.clip as clip_losses
from faceclip.errors import ModelNotInstalledError
from faceclip.losses.clip import (
    ClipConsistencyLoss,
    ClipLossOutput,
    ClipWeightsMissingWarning,
    clip_geometric_loss,
    clip_semantic_loss,
    make_clip_loss,
)
from faceclip.nets.clip import RN50X4, VITB32, ClipEncoders

SIZE = 64


@pytest.fixture(scope="session")
def clip_loss() -> ClipConsistencyLoss:
    return ClipConsistencyLoss(ClipEncoders.random(seed=0))


@pytest.fixture(scope="session")
def scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, 3, 64, 64) photo in [0, 1] and its (1, 64, 64) face mask."""
    g = torch.Generator().manual_seed(3)
    photo = torch.rand(1, 3, SIZE, SIZE, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    mask = ((xx / 0.7) ** 2 + (yy / 0.9) ** 2 <= 1).float()[None]
    return photo, mask


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path / "fc_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", RN50X4.env_var, VITB32.env_var):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


# --------------------------------------------------------------------------- functional terms


def test_geometric_loss_value_and_gradient():
    f2_in, f3_in = torch.zeros(2, 4, 3, 3), torch.zeros(2, 8, 2, 2)
    f2_r = torch.full((2, 4, 3, 3), 2.0, requires_grad=True)  # RMS difference 2 in both samples
    f3 = torch.zeros(2, 8, 2, 2)
    f3[0] = 1.0  # RMS 1 in sample 0, 0 in sample 1: batch mean 0.5
    f3_r = f3.requires_grad_(True)
    loss = clip_geometric_loss((f2_in, f3_in), (f2_r, f3_r))
    assert torch.allclose(loss, torch.tensor(1.0 * 2.0 + 0.5 * 0.5))
    assert torch.allclose(clip_geometric_loss((f2_in, f3_in), (f2_r, f3_r), weights=(0.0, 1.0)), torch.tensor(0.5))
    # resolution-free: the same per-element difference on a 4x larger map gives the same value
    big = clip_geometric_loss((torch.zeros(2, 4, 6, 6),), (torch.full((2, 4, 6, 6), 2.0),), weights=(1.0,))
    assert torch.allclose(big, torch.tensor(2.0))
    loss.backward()
    # d/dx of w * ||d|| / sqrt(N) / B = w * d / ||d|| / sqrt(N) / B = w / N / B for a constant d
    assert torch.allclose(f2_r.grad, torch.full_like(f2_r, 1.0 / 36 / 2))
    assert torch.allclose(f3_r.grad[0], torch.full_like(f3_r[0], 0.5 / 32 / 2))
    assert torch.equal(f3_r.grad[1], torch.zeros_like(f3_r[1]))  # zero difference: zero subgradient, no NaN


def test_geometric_loss_zero_and_errors():
    f = (torch.randn(1, 4, 3, 3), torch.randn(1, 8, 2, 2))
    assert clip_geometric_loss(f, f) == 0
    with pytest.raises(ValueError, match="layers"):
        clip_geometric_loss(f, f, weights=(1.0,))
    with pytest.raises(ValueError, match="shapes differ"):
        clip_geometric_loss(f, (f[0], f[1][:, :4]))


def test_semantic_loss_values_and_gradient():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 3.0], [-2.0, 0.0], [0.0, 5.0]], requires_grad=True)  # cos 0, -1, 1
    loss = clip_semantic_loss(a, b)
    assert torch.allclose(loss, torch.tensor((1.0 + 2.0 + 0.0) / 3))
    assert torch.allclose(clip_semantic_loss(a, 7 * a), torch.tensor(0.0), atol=1e-7)  # scale-free
    loss.backward()
    # orthogonal case: moving b towards +a lowers the loss
    assert b.grad[0, 0] < 0 and torch.isfinite(b.grad).all()


# --------------------------------------------------------------------------- module with encoders


def test_identical_images_give_zero(clip_loss, scene):
    photo, mask = scene
    with torch.no_grad():
        out = clip_loss(photo, photo.clone(), mask)
    assert isinstance(out, ClipLossOutput)
    assert out.geometric == 0 and abs(out.semantic.item()) < 1e-6 and abs(out.total.item()) < 1e-6


def test_gradient_reaches_render_and_upstream_parameter(clip_loss, scene):
    photo, mask = scene
    colour = torch.tensor([0.8, 0.5, 0.4], requires_grad=True)  # a parameter producing the render
    shading = torch.linspace(0.6, 1.0, SIZE).view(1, 1, 1, SIZE)
    render = colour.view(1, 3, 1, 1) * shading.expand(1, 3, SIZE, SIZE)
    render.retain_grad()
    target = clip_loss.encode_target(photo, mask)  # no gradient, reused below
    out = clip_loss(photo, render, mask, target=target)
    assert out.geometric > 0 and out.semantic > 0
    assert math.isclose(out.total.item(), out.geometric.item() + out.semantic.item(), rel_tol=1e-6)
    out.total.backward()
    assert colour.grad is not None and torch.isfinite(colour.grad).all() and colour.grad.abs().sum() > 0
    assert render.grad.abs().sum() > 0 and render.grad[0][:, mask[0] == 0].abs().max() == 0
    assert all(p.grad is None for p in clip_loss.parameters())
    # a small step against the gradient lowers the loss
    with torch.no_grad():
        stepped = (colour - 1e-2 * colour.grad / colour.grad.norm()).view(1, 3, 1, 1) * shading.expand(1, 3, SIZE, SIZE)
        assert clip_loss(None, stepped, mask, target=target).total < out.total


def test_layouts_cached_target_weights_and_train_mode(clip_loss, scene):
    photo, mask = scene
    render = photo.flip(-1)
    with torch.no_grad():
        target = clip_loss.encode_target(photo, mask)
        cached = clip_loss(None, render, mask, target=target)
        full = clip_loss(photo, render, mask)
        # the renderer's channels-last layout and (B, 1, H, W) masks give the same features
        nhwc = clip_loss.encode_target(photo.permute(0, 2, 3, 1), mask[:, None])
        weighted = ClipConsistencyLoss(clip_loss.encoders, layer_weights=(0.0, 0.0), semantic_weight=2.0)
        w = weighted(None, render, mask, target=target)
    assert torch.allclose(cached.total, full.total, rtol=1e-5)
    assert torch.equal(nhwc.semantic, target.semantic) and torch.equal(nhwc.geometric[1], target.geometric[1])
    assert w.geometric == 0 and torch.allclose(w.total, 2 * full.semantic, rtol=1e-5)
    parent = nn.ModuleDict({"loss": clip_loss, "net": nn.Linear(1, 1)})
    parent.train()
    assert parent["net"].training and not clip_loss.encoders.training
    assert not any(m.training for m in clip_loss.encoders.modules())


# --------------------------------------------------------------------------- construction for users


def test_make_clip_loss_without_weights_warns_and_disables(no_weights):
    with pytest.warns(ClipWeightsMissingWarning, match="CLIP weights not found; CLIP consistency loss disabled"):
        assert make_clip_loss() is None
    with pytest.raises(ModelNotInstalledError, match="CLIP weights not found"):
        make_clip_loss(required=True)


def test_make_clip_loss_with_weights_and_unusable_file(no_weights, monkeypatch, clip_loss):
    rn, vit = no_weights / "RN50x4.pt", no_weights / "ViT-B-32.pt"
    rn.write_bytes(b"garbage")
    vit.write_bytes(b"garbage")
    # a present but unusable file is an error naming it, not a silent fallback
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClipWeightsMissingWarning)
        with pytest.raises(ModelNotInstalledError, match=r"RN50x4\.pt is not a readable CLIP checkpoint"):
            make_clip_loss(rn50x4=rn, vitb32=vit)
    seen = {}

    def fake_load(weights, device=None):
        seen["weights"] = weights
        return clip_loss.encoders

    monkeypatch.setattr(clip_losses, "load_clip_encoders", fake_load)
    loss = make_clip_loss(rn50x4=rn, vitb32=vit, semantic_weight=0.5)
    assert isinstance(loss, ClipConsistencyLoss) and loss.semantic_weight == 0.5
    assert seen["weights"].rn50x4 == rn and seen["weights"].vitb32 == vit
