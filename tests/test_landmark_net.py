"""The dense landmark network: surface points, network and files, realistic synthetic faces,
training (task: landmarks), the fitter's per-point sigmas and the pipeline's ``--landmarks net``.

Networks here are random (no weights are shipped to tests beyond what the package holds) and
tiny (64 px crops); what is checked is behaviour, not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from faceclip.errors import FaceClipError, InputError, ModelNotInstalledError

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "faces"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------ surface points


def test_farthest_point_order_spreads_points():
    from faceclip.facemodel.surface_points import farthest_point_order

    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, (500, 2))
    idx = farthest_point_order(pts, 20)
    assert len(set(idx.tolist())) == 20
    chosen = pts[idx]
    d = np.linalg.norm(chosen[:, None] - chosen[None], axis=-1) + np.eye(20) * 9
    rand = pts[:20]
    d_rand = np.linalg.norm(rand[:, None] - rand[None], axis=-1) + np.eye(20) * 9
    assert d.min() > 2 * d_rand.min()  # far better spread than arbitrary points
    start = np.array([[0.5, 0.5]])
    idx2 = farthest_point_order(pts, 1, start=start)
    assert np.linalg.norm(pts[idx2[0]] - start[0]) > 0.5  # the first pick keeps away from `start`


def test_dense_vertex_ids(ict_head):
    from faceclip.facemodel.surface_points import dense_vertex_ids

    ids = dense_vertex_ids(ict_head, 120)
    assert ids.shape == (120,) and len(np.unique(ids)) == 120
    assert np.array_equal(ids, dense_vertex_ids(ict_head, 120))  # deterministic
    assert not set(ids.tolist()) & set(ict_head.landmarks68.tolist())
    assert set(ids.tolist()) <= set(ict_head.regions["face_narrow"].tolist())
    v = ict_head.mean_mm.numpy()[ids]
    d = np.linalg.norm(v[:, None] - v[None], axis=-1) + np.eye(120) * 1e9
    assert d.min() > 4.0  # mm: spread over the face, no clusters


# ------------------------------------------------------------------ network and files


def _config(ict_head, n=12, crop=64, head="fc"):
    from faceclip.facemodel.surface_points import dense_vertex_ids
    from faceclip.nets.landmarks import LandmarkNetConfig

    return LandmarkNetConfig(vertex_ids=dense_vertex_ids(ict_head, n).tolist(), crop_px=crop, face_model="ict",
                             geometry="head_eyes", n_vertices=ict_head.n_vertices, hidden=32, reduce_channels=8,
                             head=head)


def test_integral_head_is_a_soft_argmax(ict_head):
    from faceclip.nets.landmarks import DenseLandmarkNet

    net = DenseLandmarkNet(_config(ict_head, head="integral"), pretrained=False).eval()
    K = 80
    with torch.no_grad():
        net.maps.weight.zero_()  # uniform heatmaps: every point at the crop centre
        mu, log_sigma = net(torch.rand(2, 3, 64, 64))
        assert mu.shape == (2, K, 2) and torch.allclose(mu, torch.full_like(mu, 32.0), atol=1e-4)
        assert torch.allclose(net.sigma_px(log_sigma), torch.full((2, K), 0.02 * 64), rtol=1e-4)
        # one hot cell per point: the point sits at that cell's centre (stride 8 on a 64 px crop)
        net.maps.bias[:K] = 0.0
        net.maps.bias[0] = 0.0
        grid = 64 // 8
        logits = torch.full((grid, grid), -30.0)
        logits[2, 5] = 30.0  # row 2, column 5 -> (x, y) = (5.5 * 8, 2.5 * 8)
        orig = net.maps.forward
        net.maps.forward = lambda x: torch.cat([logits.expand(x.shape[0], K, grid, grid),
                                                torch.full((x.shape[0], K, grid, grid), -3.0)], 1)
        mu, log_sigma = net(torch.rand(1, 3, 64, 64))
        net.maps.forward = orig
    assert torch.allclose(mu[0, 0], torch.tensor([44.0, 20.0]), atol=1e-3)
    assert torch.allclose(log_sigma, torch.full_like(log_sigma, -3.0))
    # gradients reach the backbone
    torch.nn.init.normal_(net.maps.weight, std=0.01)
    net.train()
    mu, log_sigma = net(torch.rand(2, 3, 64, 64))
    (mu.sum() + log_sigma.sum()).backward()
    assert net.backbone.trunk[0][0].weight.grad.abs().sum() > 0
    from faceclip.nets.landmarks import LandmarkNetConfig

    with pytest.raises(InputError, match="head"):
        DenseLandmarkNet(LandmarkNetConfig(vertex_ids=[1], head="transformer"), pretrained=False)


def test_untrained_network_outputs_its_template(ict_head):
    from faceclip.nets.landmarks import DenseLandmarkNet

    cfg = _config(ict_head)
    template = torch.rand(cfg.n_points, 2) * 64
    net = DenseLandmarkNet(cfg, pretrained=False, template_px=template).eval()
    mu, log_sigma = net(torch.rand(3, 3, 64, 64))
    assert mu.shape == (3, 80, 2) and log_sigma.shape == (3, 80)
    assert torch.allclose(mu, template.expand(3, -1, -1), atol=1e-4)
    assert torch.allclose(net.sigma_px(log_sigma), torch.full((3, 80), 0.02 * 64), rtol=1e-4)
    with pytest.raises(ValueError, match="64 x 64"):
        net(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match="expected"):
        net(torch.rand(3, 64, 64))


def test_gaussian_nll_is_minimal_at_the_right_sigma():
    from faceclip.nets.landmarks import gaussian_nll

    mu = torch.zeros(1, 1, 2)
    target = torch.tensor([[[3.0, 4.0]]])  # |d| = 5 px in a 100 px crop: 0.05
    ls = torch.linspace(-6, -1, 2001).view(-1, 1)
    nll = torch.stack([gaussian_nll(mu, s.view(1, 1), target, 100) for s in ls])
    best = float(torch.exp(ls[nll.argmin()]))
    assert best == pytest.approx(0.05 / np.sqrt(2), rel=0.01)  # sigma^2 = |d|^2 / 2 (two coordinates)
    # a zero weight drops a point
    w = torch.tensor([[0.0, 1.0]])
    two_mu = torch.zeros(1, 2, 2)
    two_t = torch.tensor([[[50.0, 0.0], [0.0, 0.0]]])
    assert gaussian_nll(two_mu, torch.full((1, 2), -3.0), two_t, 100, w) == pytest.approx(-6.0)


def test_save_load_roundtrip_and_clear_errors(ict_head, tmp_path):
    from faceclip.nets.landmarks import DenseLandmarkNet, load_landmark_net, save_landmark_net

    net = DenseLandmarkNet(_config(ict_head), pretrained=False, template_px=torch.rand(80, 2) * 64).eval()
    x = torch.rand(2, 3, 64, 64)
    path = save_landmark_net(net, tmp_path / "lm.pt", meta={"note": "test"})
    back = load_landmark_net(path, face_model=ict_head)
    a, b = net(x), back(x)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
    half = load_landmark_net(save_landmark_net(net, tmp_path / "half.pt", half=True))
    assert torch.allclose(half(x)[0], a[0], atol=0.05)
    with pytest.raises(ModelNotInstalledError, match="not found"):
        load_landmark_net(tmp_path / "missing.pt")
    from faceclip.nets.landmarks import SHIPPED_LANDMARK_NET

    if not SHIPPED_LANDMARK_NET.is_file():
        with pytest.raises(ModelNotInstalledError, match="no dense landmark network ships") as info:
            load_landmark_net(SHIPPED_LANDMARK_NET)
        assert "--landmark-net" in info.value.hint
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_landmark_net(tmp_path / "junk.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a FaceCLIP landmark network"):
        load_landmark_net(tmp_path / "other.pt")
    from faceclip.facemodel import load_face_model

    with pytest.raises(InputError, match="vertices"):
        load_landmark_net(path, face_model=load_face_model("ict"))  # the full head: other vertex count


# ------------------------------------------------------------------ realistic synthetic faces


def test_vertex_colours_from_texture():
    from faceclip.train.realism import vertex_colours_from_texture

    tex = np.zeros((8, 8, 3), np.float32)
    tex[:4] = [1.0, 0.0, 0.0]  # top half (v > 0.5) red
    tex[4:] = [0.0, 0.0, 1.0]  # bottom half blue
    uv = np.array([[[0.2, 0.9], [0.3, 0.9], [0.2, 0.8]], [[0.5, 0.1], [0.6, 0.1], [0.5, 0.2]]])
    tri = np.array([[0, 1, 2], [3, 4, 5]])
    c = vertex_colours_from_texture(uv, tri, tex, 7)
    assert np.allclose(c[:3], [1, 0, 0]) and np.allclose(c[3:6], [0, 0, 1])
    assert c.shape == (7, 3) and np.all(np.isfinite(c[6]))  # a vertex on no triangle: median colour


def test_camera_effects_and_clutter_are_images():
    from faceclip.train.realism import RealismConfig, camera_effects, clutter_background

    rng = np.random.default_rng(1)
    bg = clutter_background(rng, 64)
    assert bg.shape == (64, 64, 3) and bg.min() >= 0 and bg.max() <= 1 and bg.std() > 0.01
    cfg = RealismConfig(blur=1.0, noise=1.0, jpeg=1.0)
    out = camera_effects(np.full((64, 64, 3), 0.5), rng, cfg)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3) and out.std() > 0  # noise added


@pytest.fixture(scope="module")
def realism_sources(tmp_path_factory):
    """A background folder (dogs.jpg: no faces) and a texture folder (one made-up texture)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("realism")
    (root / "bg").mkdir()
    (root / "bg" / "dogs.jpg").write_bytes((FACES / "dogs.jpg").read_bytes())
    (root / "tex" / "face0").mkdir(parents=True)
    rng = np.random.default_rng(0)
    tex = (np.clip(rng.normal(0.6, 0.05, (64, 64, 3)), 0, 1) * [255, 200, 170]).astype(np.uint8)
    Image.fromarray(tex).save(root / "tex" / "face0" / "mesh_texture.png")
    return root


def test_realistic_synthetic_faces(ict_head, realism_sources):
    from faceclip.train.data import SyntheticFaceDataset
    from faceclip.train.realism import RealismConfig

    rc = RealismConfig(backgrounds=str(realism_sources / "bg"), textures=str(realism_sources / "tex"),
                       texture=1.0, photo_background=1.0, occluder=0.0)
    real = SyntheticFaceDataset(ict_head, n=4, seed=3, image_px=64, realism=rc)
    plain = SyntheticFaceDataset(ict_head, n=4, seed=3, image_px=64)
    a, b, p = real.render(1), real.render(1), plain.render(1)
    assert torch.equal(a.image, b.image)  # deterministic per (seed, index)
    assert not torch.equal(a.image, p.image)
    # the geometry stays exact: the ground-truth parameters reproduce the 68 landmarks
    from faceclip.fit.contour import build_contour_bands, landmark_vertex_ids

    verts = ict_head.vertices(a.params.identity, a.params.expression)
    ids = landmark_vertex_ids(ict_head, build_contour_bands(ict_head), verts, a.params.camera())[0]
    assert torch.allclose(a.params.camera().project(verts[:, ids])[0], a.landmarks_px, atol=1e-3)
    assert real.realism.describe()["backgrounds"] == ["dogs.jpg"]
    with pytest.raises(InputError, match="no UV textures"):
        SyntheticFaceDataset(ict_head, n=1, seed=0, image_px=64,
                             realism=RealismConfig(textures=str(realism_sources / "bg")))


def test_full_expression_space_draws_many_shapes(ict_head):
    from faceclip.train.realism import Realism, RealismConfig

    r = Realism(RealismConfig(full_expression=1.0), ict_head)
    counts = [len(r.expression(np.random.default_rng(i), {})) for i in range(20)]
    assert np.mean(counts) > 8  # dense draws, not the benchmark's 0-3 paired groups
    kept = Realism(RealismConfig(full_expression=0.0), ict_head).expression(np.random.default_rng(0), {"jawOpen": 0.5})
    assert kept == {"jawOpen": 0.5}


# ------------------------------------------------------------------ training targets and the loop


def test_targets_are_the_projected_vertices(ict_head):
    from faceclip.train.data import SyntheticFaceDataset, collate
    from faceclip.train.landmark_task import targets_px

    ds = SyntheticFaceDataset(ict_head, n=2, seed=4, image_px=64)
    batch = collate([ds.render(0), ds.render(1)])
    ids = torch.tensor([100, 2000, 5000])
    tgt, w = targets_px(ict_head, ids, batch.landmarks_px, batch.params, batch.params_valid)
    verts = ict_head.vertices(batch.params.identity, batch.params.expression)
    assert torch.allclose(tgt[:, :68], batch.landmarks_px)
    assert torch.allclose(tgt[:, 68:], batch.params.camera().project(verts[:, ids]), atol=1e-3)
    assert torch.equal(w, torch.ones(2, 71))
    tgt2, w2 = targets_px(ict_head, ids, batch.landmarks_px, None, torch.zeros(2, dtype=torch.bool))
    assert w2[:, 68:].sum() == 0 and w2[:, :68].sum() == 136  # photos: the 68 landmarks only


def test_train_landmarks_task_and_resume(ict_head, tmp_path, realism_sources):
    from faceclip.nets.landmarks import load_landmark_net
    from faceclip.train.config import load_config
    from faceclip.train.loop import load_checkpoint, train

    over = {"out_dir": str(tmp_path / "run"), "steps": 4, "batch_size": 2, "log_every": 1, "ckpt_every": 2,
            "grid_every": 4, "val_every": 4, "data.n_train": 6, "data.n_val": 2, "data.render_px": 64,
            "data.image_px": 64, "data.path": str(tmp_path / "cache"), "model.pretrained": False,
            "model.dense_points": 10, "model.landmark_head": "integral", "data.realism.backgrounds": str(realism_sources / "bg"),
            "data.realism.textures": str(realism_sources / "tex")}
    cfg = load_config(REPO / "configs" / "landmarks_cpu.yaml", over)
    assert cfg.task == "landmarks"
    first = train(cfg, progress=False, stop_after=2)
    assert first.steps_done == 2 and first.regressor_path is None
    done = train(cfg, resume=True, progress=False)
    assert done.steps_done == 4
    assert {"nme68", "nme_dense", "z2", "loss"} <= set(done.validation)
    assert all(np.isfinite(v) for v in done.validation.values())
    net = load_landmark_net(done.regressor_path, face_model=ict_head)
    assert net.config.n_points == 78 and net.config.crop_px == 64
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]["format"] == "faceclip-landmark-net"
    assert (tmp_path / "run" / "grids" / "step0000004.png").is_file()
    meta = torch.load(done.regressor_path, weights_only=True)["meta"]
    assert meta["realism"]["backgrounds"] == ["dogs.jpg"]


def test_config_rejects_unknown_task_and_realism_keys():
    from faceclip.train.config import config_from_dict

    with pytest.raises(InputError, match="task"):
        config_from_dict({"task": "segmentation"})
    with pytest.raises(InputError, match="realism"):
        config_from_dict({"data": {"realism": {"backgrounds": "x", "colour": 3}}})
    with pytest.raises(InputError, match="probability"):
        config_from_dict({"data": {"realism": {"occluder": 1.5}}})
    with pytest.raises(InputError, match="synthetic faces only"):
        config_from_dict({"data": {"kind": "folder", "path": "x", "realism": {}}})
    with pytest.raises(InputError, match="dense_points"):
        config_from_dict({"task": "landmarks", "model": {"dense_points": 0}})
    with pytest.raises(InputError, match="landmark_head"):
        config_from_dict({"task": "landmarks", "model": {"landmark_head": "transformer"}})


# ------------------------------------------------------------------ fitting with per-point sigmas


def test_fitter_uses_dense_vertices_with_sigmas(ict_head):
    from faceclip.evaluate.synthetic import SyntheticFaceGenerator
    from faceclip.facemodel.surface_points import dense_vertex_ids
    from faceclip.fit.fitter import FitConfig, Fitter
    from faceclip.train.data import SyntheticFaceDataset

    ds = SyntheticFaceDataset(ict_head, n=1, seed=9, image_px=224)
    s = ds.render(0)
    ids = dense_vertex_ids(ict_head, 200)
    verts = ict_head.vertices(s.params.identity, s.params.expression)
    dense = s.params.camera().project(verts[:, ids])[0]
    crop = s.image.permute(1, 2, 0)
    fitter = Fitter(ict_head, FitConfig().with_overrides(photo_steps=0))
    fitter.set_dense_vertices(ids)
    face = ict_head.region_mask("face")
    gt = verts[0][face].numpy()

    def err(result):
        from faceclip.evaluate.geometry import fit_similarity

        pred = result.vertices_mm[face].numpy()
        return float(np.linalg.norm(fit_similarity(pred, gt).apply(pred) - gt, axis=1).mean())

    exact = fitter.fit(crop, s.landmarks_px, s.skin_mask > 0, dense_px=dense, dense_sigma_px=torch.full((200,), 0.5))
    rng = np.random.default_rng(0)
    noisy = dense + torch.from_numpy(rng.normal(0, 8.0, dense.shape)).float()
    bad = fitter.fit(crop, s.landmarks_px, s.skin_mask > 0, dense_px=noisy, dense_sigma_px=torch.full((200,), 0.5))
    trusted_less = fitter.fit(crop, s.landmarks_px, s.skin_mask > 0, dense_px=noisy,
                              dense_sigma_px=torch.full((200,), 8.0))
    assert exact.dense_crop_px is not None and (exact.dense_crop_px - dense).norm(dim=1).mean() < 1.5
    assert err(exact) < err(bad)
    assert err(trusted_less) < err(bad)  # a large sigma lets the landmarks and priors win
    with pytest.raises(ValueError, match="dense_sigma_px"):
        fitter.fit(crop, s.landmarks_px, s.skin_mask > 0, dense_px=dense, dense_sigma_px=torch.zeros(200))
    with pytest.raises(ValueError, match="without dense_px"):
        fitter.fit(crop, s.landmarks_px, s.skin_mask > 0, dense_sigma_px=torch.ones(200))
    with pytest.raises(ValueError, match="landmark_sigma_px"):
        fitter.fit(crop, s.landmarks_px, s.skin_mask > 0, landmark_sigma_px=torch.ones(10))


def test_landmark_sigmas_downweight_uncertain_landmarks(ict_head):
    from faceclip.fit.fitter import FitConfig, Fitter
    from faceclip.train.data import SyntheticFaceDataset

    s = SyntheticFaceDataset(ict_head, n=1, seed=9, image_px=224).render(0)
    crop, mask = s.image.permute(1, 2, 0), s.skin_mask > 0
    bad = s.landmarks_px.clone()
    bad[36:42] += torch.tensor([0.0, 14.0])  # one eye detected 14 px too low
    sigma = torch.full((68,), 1.0)
    sigma[36:42] = 10.0  # ... and the detector says it is unsure there
    fitter = Fitter(ict_head, FitConfig().with_overrides(photo_steps=0))
    plain = fitter.fit(crop, bad, mask)
    weighted = fitter.fit(crop, bad, mask, landmark_sigma_px=sigma)
    err = lambda r: float((r.landmarks_crop_px[36:42] - s.landmarks_px[36:42]).norm(dim=1).mean())  # noqa: E731
    assert err(weighted) < 0.7 * err(plain)
    fitter.config = fitter.config.with_overrides(landmark_sigma_weighting=False)
    assert err(fitter.fit(crop, bad, mask, landmark_sigma_px=sigma)) == pytest.approx(err(plain), rel=1e-4)


# ------------------------------------------------------------------ photos: DenseLandmarker and --landmarks net


@pytest.fixture(scope="module")
def random_net_file(ict_head, tmp_path_factory):
    from faceclip.nets.landmarks import DenseLandmarkNet, save_landmark_net
    from faceclip.train.data import SyntheticFaceDataset

    s = SyntheticFaceDataset(ict_head, n=1, seed=2, image_px=64).render(0)
    cfg = _config(ict_head)
    template = torch.cat([s.landmarks_px, torch.full((12, 2), 32.0)])
    net = DenseLandmarkNet(cfg, pretrained=False, template_px=template)
    return save_landmark_net(net, tmp_path_factory.mktemp("lmnet") / "net.pt")


def test_dense_landmarker_maps_back_to_the_image(random_net_file):
    from faceclip.detect.align import align_face
    from faceclip.detect.landmark_net import DenseLandmarker
    from faceclip.io.images import load_image

    rgb = load_image(FACES / "astronaut.png")
    from faceclip.detect.frontend import detect_and_landmark

    face = detect_and_landmark(rgb, "mediapipe", "mediapipe")[0]
    one = DenseLandmarker(random_net_file, passes=1).predict(rgb, face.landmarks)
    assert one.points_px.shape == (80, 2) and one.sigma_px.shape == (80,) and one.vertex_ids.shape == (12,)
    # an untrained network returns its template: mapped back through the crop's inverse
    aligned = align_face(rgb, face.landmarks, size_px=64)
    assert np.allclose(aligned.transform.image_to_crop(one.landmarks68), DenseLandmarker(random_net_file).net.template[:68].numpy() * 64, atol=1e-3)
    assert np.allclose(one.sigma_px, 0.02 * 64 / aligned.transform.scale, rtol=1e-3)


def test_reconstruct_with_landmark_network(ict_head, random_net_file, tmp_path):
    from faceclip.cli import main

    out = tmp_path / "out"
    rc = main(["reconstruct", str(FACES / "astronaut.png"), "--out", str(out), "--fast", "--landmarks", "net",
               "--landmark-net", str(random_net_file), "--formats", "obj", "--quiet"])
    assert rc == 0
    params = json.loads(next(out.rglob("params.json")).read_text())
    assert params["front_end"]["landmarks"] == "net" and params["front_end"]["dense_points"] == 12
    assert params["weights"]["landmark_network"]["file"] == str(random_net_file)
    assert len(params["network_points"]["points_2d"]) == 80 and len(params["network_points"]["vertex_ids"]) == 12
    assert params["detected_landmarks68_2d"] == params["network_points"]["points_2d"][:68]


def test_landmark_network_option_errors(tmp_path, capsys):
    from faceclip.cli import main
    from faceclip.reconstruction import ReconstructOptions, check_options

    with pytest.raises(FaceClipError, match="--landmarks mediapipe"):
        check_options(ReconstructOptions(landmarks="net", dense=True))
    with pytest.raises(FaceClipError, match="--landmark-net needs"):
        check_options(ReconstructOptions(landmark_net="x.pt"))
    rc = main(["reconstruct", str(FACES / "astronaut.png"), "--out", str(tmp_path / "o"), "--landmarks", "net",
               "--landmark-net", str(tmp_path / "missing.pt")])
    err = capsys.readouterr().err
    assert rc != 0 and "landmark network not found" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(name):
    from faceclip.train.config import load_config

    cfg = load_config(REPO / "configs" / name)
    assert cfg.steps >= 1 and cfg.task in ("regressor", "landmarks")


def test_landmarks_command_with_the_network(random_net_file, tmp_path, capsys):
    from faceclip.cli import main

    out = tmp_path / "lm.json"
    assert main(["landmarks", str(FACES / "astronaut.png"), "--json", str(out), "--landmarks", "net",
                 "--landmark-net", str(random_net_file), "--largest"]) == 0
    face = json.loads(out.read_text())["faces"][0]
    net = face["network_points"]
    assert len(net["points"]) == 80 and len(net["sigma_px"]) == 80 and len(net["vertex_ids"]) == 12
    assert face["landmarks68"] == net["points"][:68] and "landmarks478" in face
    assert main(["landmarks", str(FACES / "astronaut.png"), "--landmark-net", str(random_net_file)]) == 2
    assert "--landmark-net needs --landmarks net" in capsys.readouterr().err
    assert main(["landmarks", str(FACES / "astronaut.png"), "--landmarks", "net", "--landmark-net",
                 str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert "landmark network not found" in err and "Traceback" not in err
