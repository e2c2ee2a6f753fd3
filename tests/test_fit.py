"""Fitting: rotations, sliding contour, albedo model, image camera, and recovery of a known face."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from faceclip.facemodel.params import FaceParams, euler_to_matrix, matrix_to_euler


def test_euler_round_trip_and_orthonormal():
    torch.manual_seed(0)
    a = (torch.rand(50, 3) - 0.5) * torch.tensor([1.2, 2.4, 1.0])
    R = euler_to_matrix(a)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(50, 3, 3), atol=1e-5)
    assert torch.allclose(torch.det(R), torch.ones(50), atol=1e-5)
    assert torch.allclose(matrix_to_euler(R), a, atol=1e-4)


def test_zero_pose_camera_is_frontal_and_yaw_moves_nose_right():
    p = FaceParams.initial(1, 3, 2, 1, (224, 224), focal_px=1000.0, distance_mm=1000.0)
    nose = torch.tensor([[0.0, 0.0, 100.0]])
    centre = p.camera().project(torch.zeros(1, 3))[0, 0]
    assert torch.allclose(centre, torch.tensor([112.0, 112.0]))
    up = p.camera().project(torch.tensor([[0.0, 50.0, 0.0]]))[0, 0]
    assert up[1] < 112  # +Y (up) is up in the image
    p.angles_rad = torch.tensor([[0.0, 0.3, 0.0]])
    assert p.camera().project(nose)[0, 0, 0] > 112  # positive yaw: nose to the image right
    p.angles_rad = torch.tensor([[0.3, 0.0, 0.0]])
    assert p.camera().project(nose)[0, 0, 1] > 112  # positive pitch: nose down


@pytest.fixture(scope="module")
def fitter(ict_cache):
    from faceclip.facemodel import load_face_model
    from faceclip.fit.fitter import FitConfig, Fitter

    model = load_face_model("ict", geometry="head_eyes")
    # A short photometric stage at low resolution: every term runs, the test stays quick.
    return Fitter(model, FitConfig().with_overrides(landmark_steps=10, photo_steps=8, render_px=160))


def _synthetic_face(fitter, seed: int, yaw_deg: float):
    """Render a known face into a 224 crop; return crop, landmarks, skin mask, GT vertices."""
    g = torch.Generator().manual_seed(seed)
    m = fitter.model
    c = fitter.config
    p = FaceParams.initial(1, m.n_identity, m.n_expression, fitter.albedo_model.n_coeffs,
                           (224, 224), c.focal_px, distance_mm=1500.0)
    p.identity = torch.randn(1, m.n_identity, generator=g) * 0.7
    p.expression[0, m.expression_index("jawOpen")] = 0.25
    p.expression[0, m.expression_index("mouthSmile_L")] = 0.4
    p.expression[0, m.expression_index("mouthSmile_R")] = 0.4
    p.angles_rad = torch.tensor([[math.radians(5.0), math.radians(yaw_deg), math.radians(-3.0)]])
    p.translation_mm = torch.tensor([[3.0, -8.0, 1500.0]])
    from faceclip.render.shading import sh_directional

    p.sh = sh_directional((0.3, 0.4, 1.0), ambient=0.55, diffuse=0.4)
    with torch.no_grad():
        verts = m.vertices(p.identity, p.expression)
        albedo = fitter.albedo_model(p.albedo)
        img, cover, skin = fitter.render(p, verts, albedo, size_px=224)
        lm = p.camera().project(verts[:, m.landmarks68])[0]
    bg = torch.tensor([0.2, 0.3, 0.5])
    crop = torch.where(cover[0, ..., None], img[0], bg)
    return crop, lm, skin[0], verts[0], p


@pytest.mark.parametrize("yaw_deg", [0.0, 25.0])
def test_fit_recovers_known_face(fitter, yaw_deg):
    crop, lm, skin, gt_verts, gt = _synthetic_face(fitter, seed=3, yaw_deg=yaw_deg)
    result = fitter.fit(crop, lm, skin)
    m = fitter.model
    # Landmarks: within ~1 px on a 224 crop (jaw slides, so compare the inner 51).
    err_px = (result.landmarks_crop_px[17:] - lm[17:]).norm(dim=1).mean()
    assert err_px < 1.5, err_px
    # Pose recovered to a few degrees.
    assert abs(math.degrees(float(result.params.angles_rad[0, 1] - gt.angles_rad[0, 1]))) < 4.0
    # Shape: the fit is much closer to the truth than the mean face is (same topology,
    # canonical frame, skin region).
    skin_ids = m.regions["skin"]
    fit_err = (result.vertices_mm[skin_ids] - gt_verts[skin_ids]).norm(dim=1).mean()
    mean_err = (m.mean_mm[skin_ids] - gt_verts[skin_ids]).norm(dim=1).mean()
    assert fit_err < 0.75 * mean_err, (float(fit_err), float(mean_err))
    # Expression: the smile is found, blendshape weights stay in [0, 1].
    smile = result.params.expression[0, m.expression_index("mouthSmile_L")]
    assert smile > 0.1  # ground truth 0.4; the neutral start is 0
    assert float(result.params.expression.min()) >= 0.0 and float(result.params.expression.max()) <= 1.0
    assert set(result.active_terms) >= {"landmark", "photometric", "identity_reg", "albedo_symmetry"}


def test_fast_mode_closed_form_light(ict_cache, fitter):
    """Fast mode (landmarks + closed-form light, no photometric iterations) recovers the light."""
    from faceclip.fit.fitter import FitConfig, Fitter

    fast = Fitter(fitter.model, FitConfig.fast())
    crop, lm, skin, _, gt = _synthetic_face(fast, seed=4, yaw_deg=10.0)
    result = fast.fit(crop, lm, skin)
    assert "photometric" not in result.losses and result.losses["light_fit_rmse"] < 0.03
    # Rendering the fit reproduces the photo on the skin (closed-form light x uniform albedo).
    with torch.no_grad():
        img, cover, skin_r = fast.render(result.params, result.vertices_mm[None], result.albedo[None], size_px=224)
    m = (cover & skin_r & skin)[0]
    assert float((img[0][m] - crop[m]).abs().mean()) < 0.04


def test_fit_is_deterministic(fitter):
    crop, lm, skin, _, _ = _synthetic_face(fitter, seed=5, yaw_deg=10.0)
    a = fitter.fit(crop, lm, skin)
    b = fitter.fit(crop, lm, skin)
    assert torch.equal(a.params.identity, b.params.identity)
    assert torch.equal(a.vertices_mm, b.vertices_mm)


def test_fit_rejects_nan_input(fitter):
    crop = torch.full((224, 224, 3), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        fitter.fit(crop, torch.zeros(68, 2), torch.ones(224, 224, dtype=torch.bool))


def test_contour_slides_inward_on_the_far_side(fitter):
    """Turning the head to its left, the subject's-left contour moves onto the cheek."""
    from faceclip.fit.contour import landmark_vertex_ids

    m = fitter.model
    p = FaceParams.initial(1, m.n_identity, m.n_expression, 1, (224, 224), 1015.0, 1500.0)
    verts = m.mean_mm.unsqueeze(0)
    front = landmark_vertex_ids(m, fitter.bands, verts, p.camera())[0]
    p.angles_rad = torch.tensor([[0.0, math.radians(40.0), 0.0]])
    turned = landmark_vertex_ids(m, fitter.bands, verts, p.camera())[0]
    x = m.mean_mm[:, 0]
    # Landmarks 11-16 (subject's left side, turned away): the chosen vertices move inward (|x| smaller).
    assert float(x[turned[11:17]].abs().mean()) < float(x[front[11:17]].abs().mean()) - 5.0
    # The chin and inner landmarks never slide.
    assert torch.equal(turned[6:11], m.landmarks68[6:11]) and torch.equal(turned[17:], m.landmarks68[17:])
    # Frontal: chosen vertices stay within a few mm of the model's own jaw landmarks.
    d = (m.mean_mm[front[:17]] - m.mean_mm[m.landmarks68[:17]]).norm(dim=1)
    assert float(d.max()) < 12.0


def test_albedo_model_harmonics_and_mirror(fitter):
    am = fitter.albedo_model
    m = fitter.model
    assert am.kind == "harmonic" and am.basis.shape[1] == m.n_vertices
    # The mirror map pairs x with -x.
    v = m.mean_mm
    assert float((v[am.mirror] * torch.tensor([-1.0, 1.0, 1.0]) - v).norm(dim=1).median()) < 0.5
    # Zero coefficients give the base albedo; a unit coefficient changes it by at most ~0.1.
    zero = am(torch.zeros(1, am.n_coeffs, 3))
    assert torch.allclose(zero[0], am.mean)
    c = torch.zeros(1, am.n_coeffs, 3)
    c[0, 5] = 1.0
    assert 0.05 < float((am(c) - zero).abs().max()) <= 0.1001
    # Eyes painted: the front of each eyeball (iris) is darker than the rest (sclera).
    eye = torch.cat([m.regions["sclera"], m.regions["iris"]])
    brightness = am.mean[eye].mean(1)
    assert float(brightness.min()) < 0.15 and float(brightness.max()) > 0.5


def test_mirror_map_is_cached_and_a_bad_file_is_recomputed(tmp_path, monkeypatch):
    from faceclip.facemodel import albedo
    from faceclip.paths import models_dir

    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path / "home"))
    g = np.random.default_rng(0)
    half = g.normal(size=(50, 3)) * 30 + np.array([40.0, 0.0, 0.0])
    v = np.concatenate([half, half * np.array([-1.0, 1.0, 1.0])])  # symmetric: i <-> i + 50
    want = np.concatenate([np.arange(50, 100), np.arange(50)])
    first = albedo.cached_mirror_map("toy", v)
    files = list(models_dir().glob("mirror_toy_*.npy"))
    assert np.array_equal(first, want) and len(files) == 1
    short, archive = io.BytesIO(), io.BytesIO()
    np.save(short, np.zeros(3, dtype=np.int64))  # a map that does not fit
    np.savez(archive, a=want)  # not an array file
    for bad in (short.getvalue(), b"\x93NUMPY\x01", archive.getvalue()):  # ..., a truncated file, ...
        files[0].write_bytes(bad)
        assert np.array_equal(albedo.cached_mirror_map("toy", v), want)  # recomputed
    assert np.array_equal(np.load(files[0]), want)
    calls = []
    monkeypatch.setattr(albedo, "mirror_map", lambda x: calls.append(1) or want)
    assert np.array_equal(albedo.cached_mirror_map("toy", v), want) and not calls  # read, not computed
    other = v + np.array([0.0, 1.0, 0.0])  # other vertices: another file
    albedo.cached_mirror_map("toy", other)
    assert calls and len(list(models_dir().glob("mirror_toy_*.npy"))) == 2


def test_image_camera_matches_crop_mapping(fitter):
    """Projecting with the photo camera equals projecting in the crop and mapping back."""
    from faceclip.detect.align import SimilarityTransform
    from faceclip.fit.texture import image_camera

    _, _, _, verts, p = _synthetic_face(fitter, seed=1, yaw_deg=15.0)
    T = SimilarityTransform.from_params(0.37, 0.3, (-40.0, 25.0))  # image -> crop
    cam = image_camera(p, T.inverse_matrix, (900, 700))
    in_crop = p.camera().project(verts[fitter.model.landmarks68])[0].double().numpy()
    expected = T.crop_to_image(in_crop)
    got = cam.project(verts[fitter.model.landmarks68])[0].double().numpy()
    assert np.abs(got - expected).max() < 1e-2


def test_extra_loss_terms_plug_in(ict_cache, fitter):
    """A pluggable term (as identity / CLIP losses will be) is evaluated and moves the fit."""
    from faceclip.fit.fitter import FitConfig, Fitter, LossTerm

    m = fitter.model
    k = m.expression_index("eyeBlink_L")
    calls = []

    def close_left_eye(ctx):
        calls.append(sorted(ctx))
        return (1.0 - ctx["params"].expression[:, k]).pow(2).mean()

    crop, lm, skin, _, _ = _synthetic_face(fitter, seed=7, yaw_deg=0.0)
    cfg = FitConfig().with_overrides(landmark_steps=6, photo_steps=8, render_px=160)
    plain = Fitter(m, cfg).fit(crop, lm, skin)
    pulled = Fitter(m, cfg, extra_terms=[LossTerm("blink", 50.0, close_left_eye)]).fit(crop, lm, skin)
    assert len(calls) == 8 and {"params", "rendered", "target", "vertices_mm", "camera"} <= set(calls[0])
    assert "blink" in pulled.active_terms and "blink" not in plain.active_terms
    assert float(pulled.params.expression[0, k]) > float(plain.params.expression[0, k]) + 0.05


def test_pose_from_landmarks_recovers_a_known_pose(ict_head):
    """The one PnP of the package: a posed mean face's projected landmarks give back its pose;
    degenerate landmarks give the frontal start and ok=False."""
    from faceclip.facemodel.params import MODEL_TO_OPENCV, euler_matrix_np, pose_from_landmarks

    obj = ict_head.mean_mm[ict_head.landmarks68].double().numpy()
    R = MODEL_TO_OPENCV @ euler_matrix_np(0.1, -0.4, 0.05)
    t = np.array([12.0, -8.0, 600.0])
    K = np.array([[900.0, 0, 320], [0, 900.0, 240], [0, 0, 1]])
    cam = (obj @ R.T + t) @ K.T
    img = cam[:, :2] / cam[:, 2:]
    R2, t2, ok = pose_from_landmarks(obj, img, K)
    assert ok
    np.testing.assert_allclose(R2, R, atol=1e-6)
    np.testing.assert_allclose(t2, t, atol=1e-3)
    bad = img.copy()
    bad[:] = np.nan  # a broken detector
    _, t3, ok3 = pose_from_landmarks(obj, bad, K, distance_mm=500.0)
    assert not ok3 and np.isfinite(t3).all()


@pytest.mark.parametrize("threads", [1, 0])
def test_fit_runs_on_the_configured_threads_and_restores_them(ict_cache, fitter, threads):
    """A CPU fit runs PyTorch on ``config.threads`` threads (0: the caller's setting), and the
    caller's setting is back afterwards, also when the fit raises."""
    from faceclip.fit.fitter import FitConfig, Fitter, LossTerm

    seen = []

    def record(ctx):
        seen.append(torch.get_num_threads())
        return ctx["params"].expression.sum() * 0.0

    crop, lm, skin, _, _ = _synthetic_face(fitter, seed=3, yaw_deg=0.0)
    cfg = FitConfig().with_overrides(landmark_steps=2, photo_steps=2, render_px=64, threads=threads)
    fit = Fitter(fitter.model, cfg, extra_terms=[LossTerm("record", 1.0, record)])
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        fit.fit(crop, lm, skin)
        assert seen == [1, 1] if threads == 1 else seen == [3, 3]
        assert torch.get_num_threads() == 3
        with pytest.raises(ValueError, match="NaN"):
            fit.fit(torch.full((224, 224, 3), float("nan")), lm, skin)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_overlapping_fit_thread_settings_restore_the_callers_count_at_the_end():
    """Fits that overlap (several threads of one process) share one setting: the first one's
    count holds until the last one ends, then the caller's is back."""
    from faceclip.fit.fitter import FitConfig, fit_threads

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with fit_threads(FitConfig(threads=1)):
            assert torch.get_num_threads() == 1
            with fit_threads(FitConfig(threads=2)):
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
        with fit_threads(FitConfig(threads=0)):
            assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
