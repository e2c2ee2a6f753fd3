"""ArcFace iresnet loading on random stand-in weights (no ArcFace weights can be obtained here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceclip.detect.align import FIVE_POINT_TEMPLATE
from faceclip.errors import ModelNotInstalledError
from faceclip.losses.identity import IdentityLoss
from faceclip.nets.arcface import (
    ARCFACE_ALIGNED_BOX,
    IResNet,
    _layers_from_keys,
    iresnet50,
    iresnet100,
    load_arcface,
)

#: insightface's 112 x 112 ArcFace template (eyes, nose tip, mouth corners), pixels.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def _small() -> IResNet:
    torch.manual_seed(0)
    model = IResNet((1, 1, 1, 1)).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so loading them matters
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_iresnet_depths_and_sizes_match_insightface():
    with torch.device("meta"):
        r50, r100 = iresnet50(), iresnet100()
    assert _layers_from_keys(list(r100.state_dict())) == (3, 13, 30, 3)
    assert _layers_from_keys(list(r50.state_dict())) == (3, 4, 14, 3)
    # published sizes: iresnet50 43.6 M, iresnet100 65.2 M parameters
    assert abs(sum(p.numel() for p in r50.parameters()) / 1e6 - 43.6) < 0.1
    assert abs(sum(p.numel() for p in r100.parameters()) / 1e6 - 65.2) < 0.1
    x = torch.rand(2, 3, 112, 112)
    assert _small()(x * 2 - 1).shape == (2, 512)


def test_load_arcface_roundtrip_prefix_and_fp16(tmp_path):
    ref = _small()
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        expected = ref.embed(x)
    state = ref.state_dict()
    torch.save(state, tmp_path / "plain.pth")
    # one file with every quirk: DataParallel prefix, fp16, wrapped, no num_batches_tracked
    torch.save({"state_dict": {f"module.{k}": v.half() for k, v in state.items() if "num_batches_tracked" not in k}},
               tmp_path / "dp_fp16.pth")
    plain = load_arcface(tmp_path / "plain.pth")
    assert plain.layers_config == (1, 1, 1, 1) and not plain.training
    assert all(not p.requires_grad for p in plain.parameters())
    with torch.no_grad():
        assert torch.allclose(plain.embed(x), expected, atol=1e-6)
        assert torch.allclose(load_arcface(tmp_path / "dp_fp16.pth").embed(x), expected, atol=2e-2)
    # 224 aligned crops go through IdentityLoss via the ArcFace box; gradient reaches the render
    loss = IdentityLoss(plain)
    render = torch.rand(1, 3, 224, 224, requires_grad=True)
    loss.train()(torch.rand(1, 3, 224, 224), render).backward()
    assert not loss.encoder.training and render.grad.abs().sum() > 0


def test_load_arcface_wrong_files_give_clear_errors(tmp_path):
    with pytest.raises(ModelNotInstalledError, match="not found"):
        load_arcface(tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(ModelNotInstalledError, match="cannot read ArcFace weights .*garbage.pth"):
        load_arcface(tmp_path / "garbage.pth")
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(ModelNotInstalledError, match="does not hold iresnet weights"):
        load_arcface(tmp_path / "linear.pth")
    state = _small().state_dict()
    state["fc.weight"] = torch.zeros(512, 10)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ModelNotInstalledError, match="does not match iresnet"):
        load_arcface(tmp_path / "shape.pth")
    del state["fc.weight"], state["bn2.weight"]
    state["fc.weight"] = torch.zeros(512, 512 * 49)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ModelNotInstalledError, match="missing"):
        load_arcface(tmp_path / "partial.pth")


def test_arcface_box_is_the_arcface_crop_of_the_aligned_template():
    """The symmetrised ArcFace template, placed in the box, is FaceCLIP's five-point template."""
    t = ARCFACE_TEMPLATE_112 / 112.0
    mirrored = t[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]
    sym = (t + mirrored) / 2
    x0, y0, x1, y1 = ARCFACE_ALIGNED_BOX
    placed = sym * [x1 - x0, y1 - y0] + [x0, y0]
    assert np.abs(placed - FIVE_POINT_TEMPLATE).max() < 1e-3
