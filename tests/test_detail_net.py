"""The trainable detail branch: faceclip.nets.detail, faceclip.losses.detail and `model.detail` in training.

The losses are checked on the ICT head rendered with a known displacement map over its UV
window (:func:`faceclip.evaluate.synthetic_detail.render_with_detail`, an independent renderer);
the training runs are tiny (64-128 px, batch 2, a few steps, random or shipped backbone).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from faceclip.errors import InputError, ModelNotInstalledError
from faceclip.nets.detail import (
    DetailNet,
    DetailNetConfig,
    RegressorWithDetail,
    load_detail_net,
    save_detail_net,
)

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke_cpu.yaml"
S = 96  # render side of the loss tests
R = 32  # map side

#: Tiny joint runs (regressor + detail network) on top of configs/smoke_cpu.yaml.
TINY = {"data.image_px": 64, "data.render_px": 64, "render_px": 64, "model.prm_dim": 32, "model.pretrained": False,
        "identity_encoder": "none", "loss.clip": 0.0, "data.n_train": 4, "data.n_val": 0, "batch_size": 2,
        "steps": 4, "log_every": 1, "ckpt_every": 2, "grid_every": 0, "val_every": 0,
        "model.detail": True, "model.detail_map_px": 32, "optim.lr": 1e-3}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: tiny networks and renders run faster so on the shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------ a face with known detail


@pytest.fixture(scope="module")
def scene(ict_head):
    """The mean ICT head, frontal, under a directional light, rendered with a known window map
    (a 2 mm peak-to-peak egg-crate of 8-texel period, placed on the 512 px atlas)."""
    from faceclip.evaluate.synthetic_detail import render_with_detail
    from faceclip.facemodel.albedo import make_albedo_model
    from faceclip.fit.detail import face_uv_window
    from faceclip.render import PerspectiveCamera
    from faceclip.render.shading import sh_directional
    from faceclip.train.objective import detail_surface

    m = ict_head
    window, _ = face_uv_window(m)
    verts = m.vertices()[0]
    albedo = make_albedo_model(m).mean
    sh = sh_directional((0.4, 0.3, 1.0), ambient=0.5, diffuse=0.7, batch_size=1)[0]
    centre = tuple(verts[m.landmarks68].mean(0).tolist())
    cam = PerspectiveCamera.frontal(distance_mm=1000.0, focal_px=450.0, image_size=(S, S), center_mm=centre)
    yy, xx = np.meshgrid(np.arange(R), np.arange(R), indexing="ij")
    true = (np.sin(2 * np.pi * xx / 8) * np.sin(2 * np.pi * yy / 8)).astype(np.float32)
    atlas = torch.from_numpy(window.to_atlas(true, 512))[None, None]
    img, cover = render_with_detail(m, verts, albedo, sh, cam, atlas)
    smooth, _ = render_with_detail(m, verts, albedo, sh, cam, None)
    return {"surface": detail_surface(m), "verts": verts, "albedo": albedo, "sh": sh, "camera": cam,
            "true": torch.from_numpy(true)[None, None], "target": torch.from_numpy(img).float()[None],
            "smooth": torch.from_numpy(smooth).float(), "mask": torch.from_numpy(cover)[None]}


def _photo_loss(scene, disp, target=None):
    from faceclip.losses.detail import detail_photometric_loss

    return detail_photometric_loss(scene["surface"], disp, scene["verts"][None], scene["albedo"][None],
                                   scene["sh"][None], scene["camera"], scene["target"] if target is None else target,
                                   scene["mask"])


# ------------------------------------------------------------------ the network


def _config(**kw) -> DetailNetConfig:
    return DetailNetConfig(**{"in_features": 16, "n_expression": 5, "map_px": R, "code_dim": 8, "base_channels": 32,
                              **kw})


def test_detail_net_shapes_flat_start_and_bound():
    torch.manual_seed(0)
    net = DetailNet(_config(max_mm=1.5))
    feats, expr = torch.randn(3, 16), torch.rand(3, 5)
    out = net(feats, expr).detach()
    assert out.shape == (3, 1, R, R)
    assert float(out.abs().max()) == 0.0  # zero last layer: an untrained network adds no detail
    with torch.no_grad():
        torch.nn.init.normal_(net.out.weight, std=10.0)
        out = net(feats, expr)
        assert 1.0 < float(out.abs().max()) <= 1.5 and float((out[0] - out[1]).abs().max()) > 0
        assert not torch.equal(out, net(feats, torch.rand(3, 5)))  # the expression is an input
    with pytest.raises(ValueError, match="features"):
        net(torch.randn(3, 15), expr)
    for bad in (24, 4, 2048):
        with pytest.raises(InputError, match="power of two"):
            _config(map_px=bad)
    assert DetailNet(_config(map_px=8))(feats, expr).shape == (3, 1, 8, 8)


@pytest.mark.parametrize("backbone,refine", [("mobilenet_v2", "prm"), ("mobilenet_v2", "msma"), ("resnet50", "none")])
def test_regressor_with_detail_on_every_backbone(ict_head, backbone, refine):
    """The detail network reads any regressor's features; its loss never reaches the regressor."""
    from faceclip.nets.regressor import FaceRegressor, config_for_model

    torch.manual_seed(0)
    reg = FaceRegressor(config_for_model(ict_head, n_albedo=4, backbone=backbone, refine=refine, prm_dim=32,
                                         msma_dim=32, msma_attribute_dim=16, crop_px=64), pretrained=False)
    det = DetailNet(DetailNetConfig(in_features=reg.refine.out_features, n_expression=ict_head.n_expression,
                                    map_px=16, code_dim=8, base_channels=16))
    torch.nn.init.normal_(det.out.weight, std=0.1)
    both = RegressorWithDetail(reg, det).train()
    params, disp = both(torch.rand(2, 3, 64, 64))
    assert disp.shape == (2, 1, 16, 16) and params.expression.shape == (2, ict_head.n_expression)
    disp.square().sum().backward()
    assert all(p.grad is None for p in reg.parameters())
    assert all(p.grad is not None for p in det.parameters())


def test_frozen_regressor_stays_in_eval_mode(ict_head):
    from faceclip.nets.regressor import FaceRegressor, config_for_model

    reg = FaceRegressor(config_for_model(ict_head, n_albedo=4, prm_dim=32, crop_px=64), pretrained=False)
    both = RegressorWithDetail(reg, DetailNet(_config(in_features=reg.refine.out_features,
                                                      n_expression=ict_head.n_expression)), freeze_regressor=True)
    both.train()
    assert both.detail.training and not reg.training
    assert not any(p.requires_grad for p in reg.parameters())
    params, disp = both(torch.rand(1, 3, 64, 64))
    assert not params.identity.requires_grad and disp.requires_grad


def test_detail_net_file_round_trip_and_errors(tmp_path):
    torch.manual_seed(1)
    net = DetailNet(_config(window=(0.1, 0.2, 0.4), mirror_u=0.3))
    torch.nn.init.normal_(net.out.weight, std=0.1)
    path = save_detail_net(net, tmp_path / "detail.pt", meta={"steps": 3})
    back = load_detail_net(path)
    assert back.config == net.config and back.config.window == (0.1, 0.2, 0.4)
    x, e = torch.randn(2, 16), torch.rand(2, 5)
    assert torch.equal(back(x, e), net.eval()(x, e))
    torch.save({"format": "faceclip-regressor"}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="no FaceCLIP detail network"):
        load_detail_net(tmp_path / "other.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="cannot read"):
        load_detail_net(tmp_path / "cut.pt")
    with pytest.raises(ModelNotInstalledError):
        load_detail_net(tmp_path / "missing.pt")


# ------------------------------------------------------------------ the photometric term


def test_zero_map_shades_like_the_smooth_surface(scene):
    from faceclip.losses.detail import shade_pixels

    args = (scene["verts"], scene["albedo"], scene["sh"], scene["camera"])
    pix, smooth = shade_pixels(scene["surface"], None, *args)
    pix0, flat = shade_pixels(scene["surface"], torch.zeros(1, 1, R, R), *args)
    assert torch.equal(pix, pix0) and len(pix) > 2000
    assert float((smooth - flat).abs().max()) < 1e-5
    # ... and like the independent renderer without a map (vertex normals there use every triangle)
    ref = scene["smooth"].reshape(-1, 3)[pix]
    assert float((flat - ref).abs().mean()) < 2e-3


def test_the_true_map_explains_the_photo_better_than_none(scene):
    true = scene["true"]
    at_true, at_zero, at_neg = (float(_photo_loss(scene, d)) for d in (true, torch.zeros_like(true), -true))
    assert at_true < 0.25 * at_zero, (at_true, at_zero)
    assert at_neg > at_zero  # the opposite relief shades the other way
    # A photo without detail: the flat map is best.
    flat_photo = scene["smooth"][None]
    assert float(_photo_loss(scene, torch.zeros_like(true), flat_photo)) < float(_photo_loss(scene, true, flat_photo))


def test_gradients_reach_the_map_and_not_the_coarse_face(scene):
    from faceclip.losses.detail import detail_photometric_loss

    disp = torch.zeros(1, 1, R, R, requires_grad=True)
    verts = scene["verts"][None].clone().requires_grad_(True)
    sh = scene["sh"][None].clone().requires_grad_(True)
    loss = detail_photometric_loss(scene["surface"], disp, verts, scene["albedo"][None], sh, scene["camera"],
                                   scene["target"], scene["mask"])
    loss.backward()
    assert disp.grad is not None and float(disp.grad.abs().sum()) > 0
    assert verts.grad is None and sh.grad is None
    # A face with no skin pixel in the mask contributes zero.
    empty = detail_photometric_loss(scene["surface"], disp, scene["verts"][None], scene["albedo"][None],
                                    scene["sh"][None], scene["camera"], scene["target"], torch.zeros_like(scene["mask"]))
    assert float(empty.detach()) == 0.0


def test_a_detail_network_learns_the_map_from_the_photo(scene):
    """Real learning: from fixed features, Adam on the photometric term recovers the relief."""
    from faceclip.losses.detail import detail_priors

    torch.manual_seed(0)
    net = DetailNet(_config(n_expression=53, code_dim=32, base_channels=64))
    feats, expr = torch.randn(1, 16), torch.zeros(1, 53)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        disp = net(feats, expr)
        loss = _photo_loss(scene, disp)
        pr = detail_priors(disp, scene["surface"].mirror_u)
        opt.zero_grad()
        (loss + 1e-3 * (pr["smooth"] + pr["magnitude"])).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 3, losses
    got = net(feats, expr).detach().numpy().ravel()
    corr = np.corrcoef(got, scene["true"].numpy().ravel())[0, 1]
    assert corr > 0.6, corr


# ------------------------------------------------------------------ priors


def test_laplacian_smoothness_matches_scipy():
    from scipy.ndimage import laplace

    from faceclip.losses.detail import laplacian_smoothness

    assert float(laplacian_smoothness(torch.full((2, 1, 8, 8), 3.0))) == 0.0
    d = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    ref = np.mean([np.mean(laplace(x[0].numpy().astype(np.float64), mode="nearest") ** 2) for x in d])
    assert float(laplacian_smoothness(d)) == pytest.approx(ref, rel=1e-5)


def test_magnitude_prior():
    from faceclip.losses.detail import magnitude_prior

    assert float(magnitude_prior(torch.full((1, 1, 4, 4), -0.5))) == pytest.approx(0.25)


@pytest.mark.parametrize("axis", [0.5, 0.42])
def test_symmetry_prior_is_zero_for_a_mirror_symmetric_map(axis):
    from faceclip.losses.detail import symmetry_prior

    n = 64
    u = (torch.arange(n) + 0.5) / n
    v = u.view(n, 1)
    sym = (torch.cos((u - axis) * 6.0) * v).view(1, 1, n, n)  # even in u - axis
    odd = (torch.sin((u - axis) * 6.0) * v).view(1, 1, n, n)  # odd in u - axis
    assert float(symmetry_prior(sym, axis)) < 1e-4
    assert float(symmetry_prior(odd, axis)) > 0.1
    assert float(symmetry_prior(sym, axis - 0.1)) > 10 * float(symmetry_prior(sym, axis))


def test_priors_reach_the_map():
    from faceclip.losses.detail import detail_priors

    d = torch.randn(1, 1, 16, 16, requires_grad=True)
    terms = detail_priors(d, 0.45)
    assert set(terms) == {"smooth", "magnitude", "symmetry"}
    for v in terms.values():
        (g,) = torch.autograd.grad(v, d)
        assert float(g.abs().sum()) > 0


# ------------------------------------------------------------------ objective and config


@pytest.fixture(scope="module")
def batch(ict_head):
    from faceclip.train.data import SyntheticFaceDataset, collate

    ds = SyntheticFaceDataset(ict_head, n=2, seed=5, image_px=64)
    return collate([ds[0], ds[1]])


def test_objective_detail_terms_and_zero_map_matches_the_coarse_photo_term(ict_head, batch):
    from dataclasses import replace

    from faceclip.train.objective import DETAIL_TERMS, LossWeights, TrainingObjective

    obj = TrainingObjective(ict_head, LossWeights(), render_px=64, detail=True)
    p = replace(batch.params, albedo=torch.zeros(2, obj.fitter.albedo_model.n_coeffs, 3))
    assert obj.active_terms[-4:] == list(DETAIL_TERMS)
    zero = torch.zeros(2, 1, 16, 16)
    total, terms, _ = obj(p, batch.image, batch.landmarks_px, batch.skin_mask, detail_map=zero)
    # Per-pixel shading of the flat map against the coarse (per-vertex) shading: the same picture.
    assert float(terms["detail_photometric"]) == pytest.approx(float(terms["photometric"]), rel=0.05)
    assert float(total) == pytest.approx(sum(getattr(obj.weights, k) * float(v) for k, v in terms.items()), rel=1e-6)
    _, no_map, _ = obj(p, batch.image, batch.landmarks_px, batch.skin_mask)
    assert not set(DETAIL_TERMS) & set(no_map)
    alone = TrainingObjective(ict_head, LossWeights(), render_px=64, detail=True, coarse=False)
    assert alone.active_terms == list(DETAIL_TERMS)
    d = torch.zeros(2, 1, 16, 16, requires_grad=True)
    total, terms, vis = alone(p, batch.image, batch.landmarks_px, batch.skin_mask, detail_map=d)
    assert set(terms) == set(DETAIL_TERMS) and "landmarks_px" in vis
    total.backward()
    assert float(d.grad.abs().sum()) > 0


def test_config_switch_is_checked():
    from faceclip.train.config import config_from_dict

    cfg = config_from_dict({"model": {"detail": True, "detail_map_px": 128}, "loss": {"detail_smooth": 0.1}})
    assert cfg.model.detail and cfg.model.detail_map_px == 128
    with pytest.raises(InputError, match="detail_only needs"):
        config_from_dict({"model": {"detail_only": True}})
    with pytest.raises(InputError, match="power of two"):
        config_from_dict({"model": {"detail": True, "detail_map_px": 100}})
    with pytest.raises(InputError, match="task: regressor"):
        config_from_dict({"task": "landmarks", "model": {"detail": True}})
    with pytest.raises(InputError, match="detial_smooth"):
        config_from_dict({"loss": {"detial_smooth": 1.0}})


# ------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def cache(tmp_path_factory, ict_cache) -> Path:
    return tmp_path_factory.mktemp("synth_cache_detail")


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("loss")]


def test_joint_training_writes_and_resumes_the_detail_network(cache, tmp_path, ict_head):
    from faceclip.fit.detail import face_uv_window
    from faceclip.train.config import load_config
    from faceclip.train.loop import CHECKPOINT_NAME, load_checkpoint, train

    straight = load_config(SMOKE, {**TINY, "out_dir": str(tmp_path / "a"), "data.path": str(cache)})
    full = train(straight, progress=False)
    assert full.detail_path == tmp_path / "a" / "detail.pt" and full.regressor_path.is_file()
    net = load_detail_net(full.detail_path)
    window, mirror_u = face_uv_window(ict_head)
    assert net.config.map_px == 32 and net.config.window == pytest.approx((window.u0, window.v0, window.side))
    rows = _rows(tmp_path / "a")
    assert len(rows) == 4 and all(f"loss_{k}" in rows[0] for k in ("detail_photometric", "detail_smooth",
                                                                   "detail_magnitude", "detail_symmetry"))
    assert all(float(r["loss_detail_photometric"]) > 0 for r in rows)
    # Stop after 2 steps, resume: the detail network continues exactly.
    split = load_config(SMOKE, {**TINY, "out_dir": str(tmp_path / "b"), "data.path": str(cache)})
    first = train(split, stop_after=2, progress=False)
    assert first.detail_path is None and "detail" in load_checkpoint(tmp_path / "b" / "checkpoints" / CHECKPOINT_NAME)
    train(split, resume=True, progress=False)
    a, b = load_detail_net(tmp_path / "a" / "detail.pt"), load_detail_net(tmp_path / "b" / "detail.pt")
    assert any(float(v.abs().max()) > 0 for k, v in a.state_dict().items() if k.startswith("out."))  # it trained
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert float((va - vb).abs().max()) <= 1e-6, k
    # A run without the detail network cannot be resumed with it.
    plain = load_config(SMOKE, {**TINY, "model.detail": False, "steps": 2, "out_dir": str(tmp_path / "c"),
                                "data.path": str(cache)})
    train(plain, progress=False)
    with pytest.raises(InputError, match="holds no detail network"):
        train(load_config(SMOKE, {**TINY, "out_dir": str(tmp_path / "c"), "data.path": str(cache)}), resume=True,
              progress=False)


def test_detail_only_learns_on_a_fixed_batch_and_keeps_the_regressor(tmp_path):
    """Stage 2 on top of the shipped regressor: one fixed batch (2 faces, no augmentation); the
    detail photometric term goes down step after step, the regressor does not move."""
    from faceclip.nets.regressor import SHIPPED_CHECKPOINT, load_regressor
    from faceclip.train.config import load_config
    from faceclip.train.loop import train

    cfg = load_config(SMOKE, {**TINY, "model.init_checkpoint": str(SHIPPED_CHECKPOINT), "model.detail_only": True,
                              "data.image_px": 128, "data.render_px": 128, "data.n_train": 2, "data.augment": False,
                              "steps": 8, "optim.lr": 1e-3, "out_dir": str(tmp_path / "run"),
                              "data.path": str(tmp_path / "cache")})
    res = train(cfg, progress=False)
    rows = _rows(tmp_path / "run")
    assert "loss_photometric" not in rows[0]  # the coarse terms are not computed
    photo = [float(r["loss_detail_photometric"]) for r in rows]
    print("detail photometric per step:", " ".join(f"{x:.5f}" for x in photo))
    assert photo[-1] < 0.995 * photo[0], photo
    assert sum(b < a for a, b in zip(photo, photo[1:])) >= 5, photo
    shipped, after = load_regressor(SHIPPED_CHECKPOINT).state_dict(), load_regressor(res.regressor_path).state_dict()
    assert all(torch.equal(shipped[k], after[k]) for k in shipped)
    assert res.detail_path.is_file()
