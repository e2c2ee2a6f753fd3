"""MSMA refinement: large-kernel attention, multi-scale fusion, attribute branches, the regressor switch."""

from __future__ import annotations

import pytest
import torch

from faceclip.errors import InputError
from faceclip.nets.msma import ATTRIBUTE_GROUPS, LargeKernelAttention, LKABlock, MSMARefinement, MultiScaleFusion
from faceclip.nets.regressor import FaceRegressor, RegressorConfig, load_regressor, save_regressor


def _config(refine: str, **kw) -> RegressorConfig:
    return RegressorConfig(n_identity=10, n_expression=7, n_albedo=4, rest_translation_mm=(0.0, 0.0, 500.0),
                           refine=refine, crop_px=128, **kw)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_large_kernel_attention_sees_a_distant_pixel_but_not_beyond_its_window():
    torch.manual_seed(0)
    lka = LargeKernelAttention(4, kernel=21, dilation=3)
    assert lka.receptive_field == 23
    _randomise(lka)
    x = torch.randn(1, 4, 32, 32)
    base = lka(x)[0, :, 16, 16]
    for offset, seen in ((9, True), (11, True), (12, False)):
        y = x.clone()
        y[0, :, 16, 16 + offset] += 5.0
        changed = (lka(y)[0, :, 16, 16] - base).abs().max() > 1e-5
        assert bool(changed) == seen, offset
    # a 3x3 depthwise conv would not see 9 pixels away: the large kernel is what does


def test_large_kernel_attention_is_position_sensitive_and_gates_the_input():
    lka = LargeKernelAttention(3)
    _randomise(lka, 1)
    x = torch.randn(1, 3, 20, 20)
    out = lka(x)
    # the response at a pixel depends on where the context is, not only on what it is
    a, b = x.clone(), x.clone()
    a[0, :, 10, 13] += 3.0
    b[0, :, 10, 7] += 3.0
    assert not torch.allclose(lka(a)[0, :, 10, 10], lka(b)[0, :, 10, 10], atol=1e-4)
    assert out.shape == x.shape


def test_fusion_and_refinement_shapes_and_gradients():
    feats = [torch.randn(2, 32, 16, 16, requires_grad=True), torch.randn(2, 96, 8, 8, requires_grad=True),
             torch.randn(2, 1280, 4, 4, requires_grad=True)]
    fused = MultiScaleFusion((32, 96, 1280), 24)(feats)
    assert fused.shape == (2, 24, 8, 8)
    assert LKABlock(24)(fused).shape == fused.shape
    ref = MSMARefinement((32, 96, 1280), dim=24, attribute_dim=8)
    out = ref(feats)
    assert out.shape == (2, 8 * len(ATTRIBUTE_GROUPS)) and ref.out_features == out.shape[1]
    out.square().sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)  # every scale is used
    assert all(p.grad is not None for p in ref.parameters())
    slices = ref.group_slices()
    assert set(slices) == {"identity", "expression", "albedo", "pose", "camera", "light"}
    assert slices["pose"] == slices["camera"]


def test_each_head_reads_only_its_attribute():
    torch.manual_seed(0)
    net = FaceRegressor(_config("msma", msma_dim=16, msma_attribute_dim=8), pretrained=False).eval()
    _randomise(net.heads)
    feats = torch.randn(1, net.refine.out_features)
    raw = net.heads(feats)
    sl = net.refine.slices["expression"]
    bumped = feats.clone()
    bumped[:, sl] += 1.0
    raw2 = net.heads(bumped)
    assert not torch.allclose(raw["expression"], raw2["expression"])
    for group in ("identity", "albedo", "pose", "camera", "light"):
        assert torch.equal(raw[group], raw2[group]), group


@pytest.mark.parametrize("refine", ["none", "prm", "msma"])
def test_regressor_variants_forward_backward_and_round_trip(refine, tmp_path):
    torch.manual_seed(0)
    net = FaceRegressor(_config(refine, prm_dim=32, msma_dim=16, msma_attribute_dim=8), pretrained=False)
    _randomise(net.heads)
    images = torch.rand(2, 3, 128, 128)
    params = net(images)
    assert params.identity.shape == (2, 10) and params.expression.shape == (2, 7)
    loss = sum(v.square().mean() for v in net.raw(images).values())
    loss.backward()
    assert all(p.grad is not None for p in net.refine.parameters())
    net.eval()
    path = save_regressor(net, tmp_path / "r.pt")
    stored = torch.load(path, map_location="cpu", weights_only=False)["config"]
    # PRM and pooled files are stored as before the choice existed (older versions read them)
    assert ("refine" in stored) == (refine == "msma") and stored["prm"] == (refine == "prm")
    back = load_regressor(path)
    assert back.config.refine_kind == refine
    with torch.no_grad():
        a, b = net(images), back(images)
    assert torch.allclose(a.identity, b.identity, atol=1e-6) and torch.allclose(a.expression, b.expression, atol=1e-6)


def test_old_configs_without_refine_keep_their_meaning_and_bad_names_fail():
    assert _config("", prm=True).refine_kind == "prm"
    assert _config("", prm=False).refine_kind == "none"
    with pytest.raises(InputError, match="unknown refinement"):
        _config("transformer")


def test_training_config_accepts_refine(tmp_path):
    from faceclip.train.config import load_config

    cfg = load_config(_write(tmp_path, "model: {refine: msma}\n"))
    assert cfg.model.refine == "msma"
    with pytest.raises(InputError, match="model.refine 'big'"):
        load_config(_write(tmp_path, "model: {refine: big}\n"))


def _write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p
