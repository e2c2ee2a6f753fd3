"""The fitting stages as functions (faceclip.fit.stages) and the Fitter facade over them."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import pytest
import torch

from faceclip.facemodel.params import FaceParams


@pytest.fixture(scope="module")
def model(ict_cache):
    from faceclip.facemodel import load_face_model

    return load_face_model("ict", geometry="head_eyes")


@pytest.fixture(scope="module")
def config():
    from faceclip.fit.stages import FitConfig

    # Short stages at a low render size: every term runs, the tests stay quick.
    return FitConfig().with_overrides(landmark_steps=10, photo_steps=4, render_px=96)


@pytest.fixture(scope="module")
def forward(model, config):
    from faceclip.fit.stages import FaceForward

    return FaceForward.build(model, config)


def _face(forward, seed: int, yaw_deg: float):
    """A known face rendered into a 224 crop: crop (224, 224, 3), landmarks (68, 2), skin (224, 224)."""
    from faceclip.render.shading import sh_directional

    g = torch.Generator().manual_seed(seed)
    m, c = forward.model, forward.config
    p = FaceParams.initial(1, m.n_identity, m.n_expression, forward.albedo_model.n_coeffs,
                           (224, 224), c.focal_px, distance_mm=1500.0)
    p.identity = torch.randn(1, m.n_identity, generator=g) * 0.7
    p.expression[0, m.expression_index("jawOpen")] = 0.2
    p.expression[0, m.expression_index("mouthSmile_L")] = 0.3
    p.angles_rad = torch.tensor([[math.radians(4.0), math.radians(yaw_deg), math.radians(-2.0)]])
    p.translation_mm = torch.tensor([[2.0, -6.0, 1500.0]])
    p.sh = sh_directional((0.3, 0.4, 1.0), ambient=0.55, diffuse=0.4)
    with torch.no_grad():
        verts = m.vertices(p.identity, p.expression)
        img, cover, skin = forward.render(p, verts, forward.albedo_model(p.albedo), size_px=224)
        lm = p.camera().project(verts[:, m.landmarks68])[0]
    crop = torch.where(cover[0, ..., None], img[0], torch.tensor([0.2, 0.3, 0.5]))
    return crop, lm, skin[0]


def _landmark_error(forward, params, target):
    with torch.no_grad():
        verts = forward.model.vertices(params.identity, params.expression)
        return float((forward.project_landmarks(params, verts)[0, 17:] - target[17:]).norm(dim=1).mean())


def test_forward_model_matches_the_fitter(model, config, forward):
    from faceclip.fit.fitter import Fitter

    fitter = Fitter(model, config)
    assert fitter.config is fitter.forward.config
    g = torch.Generator().manual_seed(0)
    p = FaceParams.initial(2, model.n_identity, model.n_expression, forward.albedo_model.n_coeffs,
                           (224, 224), config.focal_px, distance_mm=1500.0)
    p.identity = torch.randn(2, model.n_identity, generator=g) * 0.5
    p.angles_rad = torch.tensor([[0.05, 0.3, 0.0], [-0.05, -0.5, 0.1]])
    with torch.no_grad():
        verts = model.vertices(p.identity, p.expression)
        assert torch.equal(forward.project_landmarks(p, verts), fitter.project_landmarks(p, verts))
        # The photo subset's rows are the model's vertices at the subset's ids; its landmarks
        # (sliding contour evaluated on the subset) are the full model's.
        sub = forward.subset_vertices(p)
        assert torch.equal(sub, fitter.subset_vertices(p))
        assert torch.allclose(sub, verts[:, forward.photo_subset.vids], atol=1e-4)
        out = forward.forward_subset(p)
        assert torch.allclose(out.landmarks_px, forward.project_landmarks(p, verts), atol=1e-3)
        ref = fitter.forward_subset(p)
        for name in ("vertices_mm", "albedo", "rendered", "coverage", "skin", "landmarks_px"):
            assert torch.equal(getattr(out, name), getattr(ref, name)), name
        assert out.rendered.shape == (2, config.render_px, config.render_px, 3)
        assert out.coverage.any() and out.skin.any()
    with pytest.raises(FrozenInstanceError):
        forward.dense = None


def test_initial_params_and_landmark_stage_lower_the_landmark_error(forward, config):
    from faceclip.fit.stages import FitProblem, initial_params, landmark_stage

    crop, lm, skin = _face(forward, seed=3, yaw_deg=20.0)
    problem = FitProblem.from_inputs(forward, crop, lm, skin)
    assert problem.crop.shape == (1, 224, 224, 3) and problem.landmarks.shape == (1, 68, 2)
    assert problem.skin.dtype == torch.bool and problem.dense is None
    p = initial_params(forward, config, problem.landmarks)
    assert p.identity.abs().max() == 0 and p.batch_size == 1
    start = _landmark_error(forward, p, lm)
    problem = problem.with_priors(p)
    assert torch.equal(problem.prior_identity, torch.zeros_like(p.identity))
    before = p.identity.clone()
    result = landmark_stage(forward, config, p, problem, steps=10)
    after = _landmark_error(forward, p, lm)
    assert after < 0.5 * start and after < 1.5, (start, after)
    assert not torch.equal(before, p.identity)  # params are updated in place
    assert set(result.losses) == {"landmark", "identity_reg", "expression_reg"}
    assert result.landmark_weights.shape == (1, 68) and result.dense_weights is None
    assert bool((result.landmark_weights > 0).all())


def test_landmark_weights_and_scale_decide_how_much_the_landmarks_count(forward, config):
    """A low weight on a corrupted landmark keeps it from pulling the face; a small landmark scale
    lets the prior win (the fit stays nearer the mean face)."""
    from faceclip.fit.stages import FitProblem, initial_params, landmark_stage

    crop, lm, skin = _face(forward, seed=8, yaw_deg=10.0)
    bad = lm.clone()
    bad[36:42] += torch.tensor([0.0, 12.0])  # the right eye dragged down

    def fit(**kw):
        problem = FitProblem.from_inputs(forward, crop, bad, skin, **kw)
        p = initial_params(forward, config, problem.landmarks)
        landmark_stage(forward, config, p, problem.with_priors(p), steps=10)
        return p

    even = fit()
    w = torch.ones(68)
    w[36:42] = 0.05
    wary = fit(landmark_weights=w)
    err_even = _landmark_error(forward, even, lm)
    err_wary = _landmark_error(forward, wary, lm)
    assert err_wary < 0.8 * err_even, (err_even, err_wary)
    loose = fit(landmark_scale=0.02)
    assert loose.identity.norm() < 0.7 * even.identity.norm(), (loose.identity.norm(), even.identity.norm())


def test_landmark_scale_reaches_the_photometric_stage(forward, config):
    from dataclasses import replace

    from faceclip.fit.stages import FitProblem, initial_params, landmark_stage, photo_stage

    crop, lm, skin = _face(forward, seed=9, yaw_deg=30.0)
    problem = FitProblem.from_inputs(forward, crop, lm + 3.0, skin)  # off by 3 px: a landmark loss to see
    p = initial_params(forward, config, problem.landmarks)
    problem = problem.with_priors(p)
    lms = landmark_stage(forward, config, p, problem, steps=5)
    losses = {}
    for k in (1.0, 0.5):
        q = FaceParams(**{n: t.clone() for n, t in p.tensors().items()}, image_size=p.image_size)
        # one step: the terms are those of the same parameters, before the update
        losses[k], _ = photo_stage(forward, config, q, replace(problem, landmark_scale=k), lms.landmark_weights,
                                   lms.dense_weights, steps=1)
    assert losses[0.5]["landmark"] == pytest.approx(0.5 * losses[1.0]["landmark"], rel=1e-5)
    assert losses[0.5]["photometric"] == pytest.approx(losses[1.0]["photometric"], rel=1e-6)


def test_closed_form_light_and_photo_stage(forward, config):
    from faceclip.fit.stages import (FitProblem, closed_form_light, initial_params, landmark_stage,
                                     photo_stage)

    crop, lm, skin = _face(forward, seed=4, yaw_deg=-10.0)
    problem = FitProblem.from_inputs(forward, crop, lm, skin)
    p = initial_params(forward, config, problem.landmarks)
    problem = problem.with_priors(p)
    lms = landmark_stage(forward, config, p, problem, steps=10)
    sh0 = p.sh.clone()
    rmse = closed_form_light(forward, config, p, problem.crop, problem.skin)
    assert 0.0 <= rmse < 0.05 and not torch.equal(sh0, p.sh)
    losses, albedo = photo_stage(forward, config, p, problem, lms.landmark_weights, lms.dense_weights, steps=3)
    assert {"landmark", "photometric", "albedo_symmetry"} <= set(losses)
    assert albedo.shape == (1, forward.model.n_vertices, 3) and not albedo.requires_grad
    assert all(math.isfinite(v) for v in losses.values())


def test_fit_keeps_no_per_call_state(model, config):
    """Two fits in a row on one fitter equal fits by fresh fitters, and leave its attributes alone."""
    from faceclip.detect.calibration import load_calibration
    from faceclip.fit.fitter import Fitter

    dp = load_calibration().dense_points(model.triangles.numpy())
    fitter = Fitter(model, config)
    fitter.set_dense_points(dp)
    attrs = dict(vars(fitter))
    faces = [_face(fitter.forward, seed=5, yaw_deg=15.0), _face(fitter.forward, seed=6, yaw_deg=-25.0)]
    sigma = torch.linspace(0.5, 4.0, 68)

    def dense_px(face_lm):  # any positions: the check is about state, not accuracy
        return face_lm.mean(0) + torch.randn(dp.bary.shape[0], 2, generator=torch.Generator().manual_seed(1)) * 20

    kwargs = [dict(dense_px=dense_px(faces[0][1]), landmark_sigma_px=sigma), {}]
    reused = [fitter.fit(*f, **kw) for f, kw in zip(faces, kwargs)]
    assert dict(vars(fitter)) == attrs
    for f, kw, r in zip(faces, kwargs, reused):
        fresh = Fitter(model, config)
        fresh.set_dense_points(dp)
        ref = fresh.fit(*f, **kw)
        assert torch.equal(r.vertices_mm, ref.vertices_mm) and torch.equal(r.albedo, ref.albedo)
        assert torch.equal(r.params.angles_rad, ref.params.angles_rad)
        assert r.losses == ref.losses
    assert reused[0].dense_crop_px is not None and reused[1].dense_crop_px is None
    assert "dense_landmark" in reused[0].losses and "dense_landmark" not in reused[1].losses


def test_fit_problem_validation(forward):
    from faceclip.fit.stages import FitProblem

    crop, lm, skin = torch.rand(224, 224, 3), torch.full((68, 2), 100.0), torch.ones(224, 224, dtype=torch.bool)
    with pytest.raises(ValueError, match="NaN"):
        FitProblem.from_inputs(forward, crop, lm.clone().fill_(math.nan), skin)
    with pytest.raises(ValueError, match="no dense points"):
        FitProblem.from_inputs(forward, crop, lm, skin, dense_px=torch.zeros(10, 2))
    with pytest.raises(ValueError, match="landmark_sigma_px"):
        FitProblem.from_inputs(forward, crop, lm, skin, landmark_sigma_px=-torch.ones(68))
    with pytest.raises(ValueError, match="landmark_weights"):
        FitProblem.from_inputs(forward, crop, lm, skin, landmark_weights=torch.ones(67))
    with pytest.raises(ValueError, match="landmark_weights"):
        FitProblem.from_inputs(forward, crop, lm, skin, landmark_weights=torch.zeros(68))
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="landmark_scale"):
            FitProblem.from_inputs(forward, crop, lm, skin, landmark_scale=bad)
    dense = forward.with_dense_vertices([0, 1, 2])
    assert forward.dense is None and dense.dense.n_points == 3  # a new forward model; the old one unchanged
    with pytest.raises(ValueError, match="without dense_px"):
        FitProblem.from_inputs(dense, crop, lm, skin, dense_sigma_px=torch.ones(3))
    prob = FitProblem.from_inputs(dense, crop, lm, skin, dense_px=torch.zeros(3, 2), dense_sigma_px=torch.ones(3))
    assert prob.dense.shape == (1, 3, 2) and prob.dense_sigma_px.shape == (3,)


def test_adam_is_torch_adam_bit_for_bit():
    """faceclip.fit.adam.Adam performs torch.optim.Adam's CPU update exactly (groups with their
    own learning rates, a tensor without a gradient skipped)."""
    from faceclip.fit.adam import Adam

    g = torch.Generator().manual_seed(0)
    target = torch.randn(5, 3, generator=g)
    runs = []
    for make in (lambda groups: torch.optim.Adam(groups), lambda groups: Adam(groups)):
        a = torch.zeros(5, 3, requires_grad=True)
        b = torch.ones(4, requires_grad=True)
        unused = torch.ones(2, requires_grad=True)
        opt = make([{"params": [a], "lr": 0.05}, {"params": [b, unused], "lr": 0.3}])
        for _ in range(25):
            opt.zero_grad()
            loss = ((a - target) ** 2).sum() + (b ** 3).sum() * 0.1
            loss.backward()
            opt.step()
        runs.append((a.detach().clone(), b.detach().clone(), unused.detach().clone()))
    for x, y in zip(*runs):
        assert torch.equal(x, y)
    assert not torch.equal(runs[0][0], torch.zeros(5, 3))  # it did move


def test_a_fit_does_not_import_dynamo(ict_cache):
    """The first photo of a process does not pay for torch._dynamo (~2 s): torch.optim is not used."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from faceclip.facemodel import load_face_model\n"
            "from faceclip.fit.fitter import FitConfig, Fitter\n"
            "m = load_face_model('ict', geometry='head_eyes')\n"
            "f = Fitter(m, FitConfig().with_overrides(landmark_steps=2, photo_steps=2, render_px=64))\n"
            "lm = f.project_landmarks(f.initial_params(torch.zeros(1, 68, 2) + 112), m.mean_mm[None])[0]\n"
            "r = f.fit(torch.rand(224, 224, 3), lm, torch.ones(224, 224, dtype=torch.bool))\n"
            "assert r.losses and 'photometric' in r.losses\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
