"""The training objective (faceclip.train.objective): each term on cases with a known answer.

Ground truth comes from two synthetic faces (64 px crops): their parameters, landmarks and
skin masks are computed by the data generator independently of the objective.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from faceclip.train.data import SyntheticFaceDataset, collate
from faceclip.train.objective import LossWeights, TrainingObjective, _with_crop

S = 64  # crop and render side


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these tiny networks and renders run several times faster so on a
    shared, loaded machine (threads wait for each other)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def batch(ict_head):
    ds = SyntheticFaceDataset(ict_head, n=2, seed=5, image_px=S)
    return collate([ds[0], ds[1]])


@pytest.fixture(scope="module")
def objective(ict_head) -> TrainingObjective:
    return TrainingObjective(ict_head, LossWeights(param=1.0), render_px=S)


def _n_albedo(objective) -> int:
    return objective.fitter.albedo_model.n_coeffs


def _gt(batch, objective, requires_grad: bool = False):
    """The batch's ground truth, with (zero) albedo coefficients of the objective's albedo model."""
    p = batch.params
    p = replace(p, albedo=torch.zeros(p.identity.shape[0], _n_albedo(objective), 3))
    if requires_grad:
        p = replace(p, **{k: v.clone().requires_grad_(True) for k, v in p.tensors().items()})
    return p


def _run(objective, params, batch, **kw):
    args = {"images": batch.image, "landmarks_px": batch.landmarks_px, "skin_mask": batch.skin_mask,
            "target_params": batch.params}
    args.update(kw)
    return objective(params, **args)


# ------------------------------------------------------------------ weights


def test_loss_weights_defaults_are_the_papers_and_unknown_names_fail():
    w = LossWeights()
    assert (w.photometric, w.identity, w.landmark, w.regularization, w.clip) == (1.0, 2.0, 1.7e-3, 1e-4, 2.0)
    assert w.param == 0.0  # the supervised term is opt-in (synthetic data only)
    assert LossWeights.from_dict({"param": "1"}).param == 1.0
    with pytest.raises(ValueError, match="photometirc"):
        LossWeights.from_dict({"photometirc": 1.0})


def test_active_terms_follow_weights_and_modules(ict_head):
    obj = TrainingObjective(ict_head, LossWeights(landmark=0.0), render_px=S)
    assert obj.active_terms == ["photometric", "regularization", "albedo_priors", "expression_range"]
    obj = TrainingObjective(ict_head, LossWeights(param=1.0), identity_loss=nn.Identity(), render_px=S)
    assert "identity" in obj.active_terms and "param" in obj.active_terms and "clip" not in obj.active_terms


# ------------------------------------------------------------------ terms at the ground truth


def test_param_and_landmark_terms_vanish_at_the_ground_truth(objective, batch):
    gt = _gt(batch, objective)
    total, terms, vis = _run(objective, gt, batch)
    assert terms["param"].item() == pytest.approx(0.0, abs=1e-6)
    # The generator's 68 landmarks (its own projection, sliding jaw contour) are the objective's.
    assert terms["landmark"].item() < 1e-3, terms["landmark"]  # squared px at 224
    assert (vis["landmarks_px"] - batch.landmarks_px).abs().max() < 0.05
    assert torch.isfinite(total)
    # The render is where the face is: the generator's skin mask lies inside its coverage.
    skin = batch.skin_mask.bool()
    assert (vis["coverage"] & skin).sum() >= 0.97 * skin.sum()
    # A head moved sideways by 3 mm keeps its shape: the term is the image shift of its vertices
    # in 224-crop pixels / 10 (hand computation with the 64 px cameras).
    moved = replace(gt, translation_mm=gt.translation_mm + torch.tensor([3.0, 0.0, 0.0]))
    _, terms2, _ = _run(objective, moved, batch)
    v = objective.fitter.subset_vertices(gt)
    shift_224 = (moved.camera().project(v) - gt.camera().project(v)).norm(dim=-1).mean() * (224 / S)
    assert shift_224 > 1.0
    assert terms2["param"].item() == pytest.approx(shift_224.item() / 10, rel=1e-4)
    assert terms2["landmark"].item() > 1.0
    # Another shape, same pose: the canonical vertices differ.
    _, terms3, _ = _run(objective, replace(gt, identity=gt.identity + 0.5), batch)
    assert terms3["param"].item() > 0.05


def test_ground_truth_expressed_for_another_crop_size_gives_the_same_terms(objective, batch):
    gt = _gt(batch, objective)
    at224 = replace(gt, focal_px=gt.focal_px * (224 / S), image_size=(224, 224))
    back = _with_crop(at224, S)
    assert back.image_size == (S, S) and torch.allclose(back.focal_px, gt.focal_px)
    _, t1, _ = _run(objective, gt, batch)
    _, t2, _ = _run(objective, at224, batch)
    for k in ("param", "landmark", "photometric"):
        assert t2[k].item() == pytest.approx(t1[k].item(), rel=1e-4, abs=1e-6), k


def test_photometric_term_is_zero_when_the_target_is_the_render(objective, batch):
    gt = _gt(batch, objective)
    _, terms, vis = _run(objective, gt, batch)
    assert terms["photometric"].item() > 0.02  # the synthetic photo is not our render
    rendered = vis["rendered"].detach().permute(0, 3, 1, 2).contiguous()
    ones = torch.ones(rendered.shape[0], S, S)
    _, terms2, _ = _run(objective, gt, batch, images=rendered, skin_mask=ones)
    assert terms2["photometric"].item() < 2e-4  # sqrt(eps) of the loss's smooth norm


def test_regularization_equals_the_hand_computation(ict_head, batch):
    weights = LossWeights(expression_reg=0.5, albedo_reg=2.0)
    obj = TrainingObjective(ict_head, weights, render_px=S)
    g = torch.Generator().manual_seed(0)
    gt = _gt(batch, obj)
    B = gt.identity.shape[0]
    p = replace(gt, identity=0.5 * torch.randn(gt.identity.shape, generator=g),
                expression=torch.rand(gt.expression.shape, generator=g),
                albedo=0.1 * torch.randn(B, _n_albedo(obj), 3, generator=g))
    _, terms, _ = _run(obj, p, batch)
    eig = obj.fitter.albedo_model.eigenvalues
    hand = ((p.identity**2).sum(1).mean() + 0.5 * (p.expression**2).sum(1).mean()
            + 2.0 * (eig * (p.albedo**2).sum(-1)).sum(-1).mean())
    assert terms["regularization"].item() == pytest.approx(hand.item(), rel=1e-5)


def test_expression_range_is_zero_inside_the_unit_interval(objective, batch):
    gt = _gt(batch, objective)
    e = torch.full_like(gt.expression, 0.5)
    e[:, 0], e[:, 1] = 0.0, 1.0
    _, terms, _ = _run(objective, replace(gt, expression=e), batch)
    assert terms["expression_range"].item() == 0.0
    e2 = e.clone()
    e2[0, 2], e2[0, 3], e2[1, 4] = 1.3, -0.2, 1.5
    _, terms2, _ = _run(objective, replace(gt, expression=e2), batch)
    expected = ((0.3**2 + 0.2**2) + 0.5**2) / 2  # squared excess, summed per face, batch mean
    assert terms2["expression_range"].item() == pytest.approx(expected, rel=1e-5)


def _row(params, i):
    return replace(params, **{k: v[i:i + 1] for k, v in params.tensors().items()})


def test_every_term_is_the_mean_of_the_per_face_terms(objective, batch):
    """The batch of two faces gives the mean of each face's terms alone (not their sum, and no
    statistic pooled over the batch such as one photometric ratio over both skin masks)."""
    gt = _gt(batch, objective)
    g = torch.Generator().manual_seed(2)
    e = gt.expression.clone()
    e[0, 2], e[1, 4], e[1, 5] = 1.4, -0.3, 1.2  # expression_range: a different excess per face
    p = replace(gt, identity=gt.identity + 0.4 * torch.randn(gt.identity.shape, generator=g), expression=e,
                translation_mm=gt.translation_mm + torch.tensor([[2.0, 0.0, 0.0], [0.0, -4.0, 8.0]]),
                albedo=0.05 * torch.randn(gt.albedo.shape, generator=g),
                sh=gt.sh + 0.05 * torch.randn(gt.sh.shape, generator=g))
    with torch.no_grad():
        total, terms, _ = _run(objective, p, batch)
        singles = []
        for i in range(2):
            rows = {"images": batch.image[i:i + 1], "landmarks_px": batch.landmarks_px[i:i + 1],
                    "skin_mask": batch.skin_mask[i:i + 1], "target_params": _row(batch.params, i)}
            singles.append(_run(objective, _row(p, i), batch, **rows))
    assert set(terms) == {"photometric", "landmark", "regularization", "albedo_priors", "expression_range", "param"}
    for k, v in terms.items():
        a, b = (float(s[1][k]) for s in singles)
        assert min(a, b) > 0, (k, a, b)
        assert float(v) == pytest.approx((a + b) / 2, rel=1e-4), (k, float(v), a, b)
    assert float(total) == pytest.approx((float(singles[0][0]) + float(singles[1][0])) / 2, rel=1e-4)


# ------------------------------------------------------------------ gradients


def test_gradients_reach_the_face_params(objective, batch):
    p = _gt(batch, objective, requires_grad=True)
    # Off the ground truth (zero albedo and a moved head), so every term has a gradient.
    p2 = replace(p, translation_mm=p.translation_mm + torch.tensor([2.0, -1.0, 10.0]), albedo=p.albedo + 0.05)
    total, _, _ = _run(objective, p2, batch)
    total.backward()
    for name in ("identity", "expression", "angles_rad", "translation_mm", "sh", "albedo"):
        grad = getattr(p, name).grad
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().max() > 0, name


def test_gradients_reach_the_regressor(ict_head, objective, batch):
    from faceclip.nets.regressor import FaceRegressor, config_for_model

    torch.manual_seed(0)
    net = FaceRegressor(config_for_model(ict_head, n_albedo=_n_albedo(objective), prm_dim=32, crop_px=S),
                        pretrained=False)
    with torch.no_grad():  # heads start at zero (the mean face); make them non-zero
        for lin in net.heads.heads.values():
            lin.weight.normal_(0.0, 1e-3)
    total, _, _ = _run(objective, net(batch.image), batch)
    total.backward()
    for name, lin in net.heads.heads.items():
        assert lin.weight.grad is not None and lin.weight.grad.abs().max() > 0, name
    trunk = [p for n, p in net.backbone.named_parameters() if p.requires_grad]
    assert trunk[0].grad is not None and trunk[0].grad.abs().max() > 0  # the first convolution
    refine = [p.grad for p in net.refine.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in refine)


# ------------------------------------------------------------------ optional terms


class _StandInIdentity(nn.Module):
    """1 - cos of mean colours: a differentiable stand-in for the face-recognition loss."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, target, rendered):
        self.calls += 1
        a, b = target.mean((2, 3)), rendered.mean((2, 3))
        return (1 - nn.functional.cosine_similarity(a + 0.1, b + 0.1, dim=1)).mean() + 0.25


class _StandInClip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.masks = []

    def forward(self, target, rendered, mask):
        self.masks.append(mask)
        total = ((target - rendered) ** 2 * mask).mean() + 0.5
        return SimpleNamespace(total=total, geometric=total, semantic=total * 0)


def test_identity_and_clip_terms_only_with_their_modules(ict_head, batch, objective):
    gt = _gt(batch, objective)
    _, base, _ = _run(objective, gt, batch)
    assert "identity" not in base and "clip" not in base

    ident, clip = _StandInIdentity(), _StandInClip()
    w = LossWeights(param=1.0, identity=2.0, clip=3.0)
    obj = TrainingObjective(ict_head, w, identity_loss=ident, clip_loss=clip, render_px=S)
    p = replace(gt, sh=gt.sh.clone().requires_grad_(True))
    total, terms, _ = _run(obj, p, batch)
    assert ident.calls == 1 and len(clip.masks) == 1
    assert clip.masks[0].shape == (2, 1, S, S) and clip.masks[0].sum() > 0  # the rendered face area
    assert terms["identity"].item() >= 0.25 and terms["clip"].item() >= 0.5
    expected = sum(getattr(w, k) * v for k, v in terms.items())
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert total.item() == pytest.approx(sum(getattr(w, k) * v.item() for k, v in base.items())
                                         + 2.0 * terms["identity"].item() + 3.0 * terms["clip"].item(), rel=1e-5)
    # The render pasted over the crop reaches both stand-ins: the lighting gets a gradient from them.
    (2.0 * terms["identity"] + 3.0 * terms["clip"]).backward()
    assert p.sh.grad is not None and p.sh.grad.abs().max() > 0

    # A zero weight switches a term off even when its module is given.
    obj0 = TrainingObjective(ict_head, LossWeights(identity=0.0, clip=0.0), identity_loss=ident, clip_loss=clip,
                             render_px=S)
    _, terms0, _ = _run(obj0, gt, batch)
    assert "identity" not in terms0 and "clip" not in terms0 and ident.calls == 1


def test_param_term_needs_ground_truth(objective, batch):
    gt = _gt(batch, objective)
    _, terms, _ = _run(objective, gt, batch, target_params=None)
    assert "param" not in terms
