"""The test-time detail fit (faceclip.fit.detail), `reconstruct --detail` and the detail benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from faceclip.errors import FaceClipError


@pytest.fixture(scope="module")
def head(ict_head):
    return ict_head


def _scene(model, scale: float, size: int = 320, light=(0.0, 0.8, 0.6), index: int = 0):
    """A frontal-ish synthetic face with procedural wrinkles x ``scale``, lit from above."""
    from faceclip.evaluate.synthetic import SyntheticFaceGenerator
    from faceclip.evaluate.synthetic_detail import procedural_detail, render_with_detail
    from faceclip.render.shading import sh_directional

    gen = SyntheticFaceGenerator(model, seed=11)
    p = gen.draw_params(index)
    p.angles_deg = [5.0, 10.0, 0.0]
    verts = torch.from_numpy(gen.vertices(p)).float()
    albedo = torch.from_numpy(gen.albedo(p, np.random.default_rng(0))).float()
    gt = procedural_detail(model, np.random.default_rng(1), size_px=1024, scale=scale)
    cam = gen.camera(p, size)
    sh = sh_directional(light, ambient=0.5, diffuse=0.7)[0]
    img, _ = render_with_detail(model, verts, albedo, sh, cam, gt, np.full((size, size, 3), 0.3))
    img = img + np.random.default_rng(2).normal(0, 1.0 / 255, img.shape)
    rgb = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return verts, albedo, sh, cam, gt, rgb


def _normal_errors(model, verts, cam, gt, fitted_atlas):
    from faceclip.evaluate.synthetic_detail import angular_error_deg, detail_normals_image
    from faceclip.fit.detail import skin_triangle_mask

    skin = skin_triangle_mask(model)
    gt_n, cover = detail_normals_image(model, verts, cam, gt, skin)
    smooth_n, _ = detail_normals_image(model, verts, cam, None, skin)
    fit_n, _ = detail_normals_image(model, verts, cam, torch.from_numpy(fitted_atlas)[None, None], skin)
    wrinkled = cover & (angular_error_deg(gt_n, smooth_n) > 2.0)
    if not wrinkled.any():  # a face without detail
        return float("nan"), float("nan"), angular_error_deg(fit_n[cover], smooth_n[cover]).mean()
    return (angular_error_deg(gt_n[wrinkled], smooth_n[wrinkled]).mean(),
            angular_error_deg(gt_n[wrinkled], fit_n[wrinkled]).mean(),
            angular_error_deg(fit_n[cover], smooth_n[cover]).mean())


def test_recovers_wrinkles_from_shading(head):
    """With the exact coarse shape, albedo and light, the fitted map brings the normals of the
    wrinkled skin closer to the truth, and its slopes have the right sign (an inverted map would
    make them worse than no map)."""
    from faceclip.fit.detail import fit_detail

    verts, albedo, sh, cam, gt, rgb = _scene(head, 1.0)
    det = fit_detail(head, verts, albedo, sh, cam, rgb)
    atlas = det.atlas(1024)
    before, after, _ = _normal_errors(head, verts, cam, gt, atlas)
    print(f"wrinkled skin: {before:.2f} deg without the map, {after:.2f} deg with it")
    assert after < 0.85 * before, (before, after)
    _, inverted, _ = _normal_errors(head, verts, cam, gt, -atlas)
    assert inverted > before
    assert det.map_mm.shape == (256, 256) and det.seen.any()
    assert np.abs(det.map_mm).max() <= 2.0 + 1e-6


def test_smooth_skin_stays_smooth(head):
    """A face without detail gets a map near zero: no invented structure."""
    from faceclip.fit.detail import fit_detail

    verts, albedo, sh, cam, gt, rgb = _scene(head, 0.0)
    det = fit_detail(head, verts, albedo, sh, cam, rgb)
    assert float(np.abs(det.map_mm[det.seen]).mean()) < 0.03
    _, _, tilt = _normal_errors(head, verts, cam, gt, det.atlas(1024))
    assert tilt < 0.8  # degrees the map tilts the smooth normals, on average


def test_bad_inputs_are_refused(head):
    from faceclip.fit.detail import fit_detail

    verts, albedo, sh, cam, _, rgb = _scene(head, 1.0, size=128)
    bad = verts.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(FaceClipError, match="not finite"):
        fit_detail(head, bad, albedo, sh, cam, rgb)
    with pytest.raises(FaceClipError, match="skin"):  # a face turned away: no skin in view
        from faceclip.facemodel.params import MODEL_TO_OPENCV, euler_matrix_np
        from faceclip.render import PerspectiveCamera

        R = torch.tensor(MODEL_TO_OPENCV @ euler_matrix_np(0.0, np.pi, 0.0), dtype=torch.float32)
        away = PerspectiveCamera.create(R, cam.t[0], float(cam.fx[0]), cam.image_size,
                                        principal_point_px=(float(cam.cx[0]), float(cam.cy[0])))
        fit_detail(head, verts, albedo, sh, away, rgb)


def test_window_and_atlas_round_trip(head):
    """The map's UV window covers the skin, its mirror axis is the face's middle, and a map
    placed on the atlas samples back to itself at the window's texel centres."""
    from faceclip.fit.detail import UVWindow, face_uv_window, skin_triangle_mask, vertex_displacement

    window, mirror_u = face_uv_window(head)
    uv = head.uv[skin_triangle_mask(head)].reshape(-1, 2).numpy()
    assert window.u0 < uv[:, 0].min() and uv[:, 0].max() < window.u0 + window.side
    assert window.v0 < uv[:, 1].min() and uv[:, 1].max() < window.v0 + window.side
    assert abs(mirror_u - (uv[:, 0].min() + uv[:, 0].max()) / 2) < 0.01
    w = UVWindow(0.25, 0.5, 0.25)
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))
    atlas = w.to_atlas(ramp, 256)  # the window is exactly 64 atlas texels
    np.testing.assert_allclose(atlas[64:128, 64:128], ramp, atol=1e-5)
    assert atlas[:64].max() == 0 and atlas[:, :64].max() == 0
    d = vertex_displacement(head, np.full((128, 128), 0.5, np.float32))
    assert d.shape == (head.n_vertices,) and np.allclose(d, 0.5)


def test_reconstruct_with_detail_writes_the_files(head, tmp_path):
    """`Reconstructor` with detail=True: maps and meshes next to the coarse files; the 16-bit
    map decodes (params.json's scale and offset) to what was fitted."""
    from PIL import Image

    from faceclip.reconstruction import ReconstructOptions, Reconstructor
    from faceclip.io.detail import read_displacement_png

    *_, rgb = _scene(head, 1.0, size=400)
    photo = tmp_path / "wrinkles.png"
    Image.fromarray(rgb).save(photo)
    rec = Reconstructor(ReconstructOptions(fast=True, detail=True, texture_px=512, formats=("obj", "glb")))
    [out] = rec.reconstruct_image(photo, tmp_path / "out")
    names = {p.name for p in out.folder.iterdir()}
    assert {"displacement.png", "normal_map.png", "mesh_detail.obj", "mesh_detail.glb", "mesh.obj"} <= names
    params = json.loads((out.folder / "params.json").read_text())
    d = params["detail"]
    atlas = read_displacement_png(out.folder / "displacement.png", d["scale_mm"], d["offset_mm"])
    assert atlas.shape == (512, 512)
    assert np.abs(atlas).max() > 0.01 and np.abs(atlas).max() <= 2.0 + 1e-3
    assert abs(float(np.abs(atlas).max()) - d["fit"]["max_abs_mm"]) < 2 * d["scale_mm"] / 65535 + 1e-4
    assert "detail" in out.seconds
    nmap = np.asarray(Image.open(out.folder / "normal_map.png"))
    assert nmap.shape == (512, 512, 3) and (nmap != [128, 128, 255]).any(-1).sum() > 1000


def test_cli_detail_benchmark_prints_ratio_last(capsys, ict_cache):
    from faceclip.cli import main

    assert main(["benchmark", "synthetic", "--detail", "--n", "1", "--seed", "5", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    name, value = lines[-1].split(": ")
    assert name == "detail_normal_err_ratio" and 0.5 < float(value) < 1.5


def test_dynamic_split_scales_wrinkles_with_the_expression(head):
    """The map at the photo's expression is the fitted one; raising the brows deepens the
    forehead by the model's factor and leaves the cheeks alone; at rest it is the static part."""
    from faceclip.evaluate.synthetic_detail import procedural_detail
    from faceclip.fit.dynamic_detail import DEFAULT_GAIN, activations, dynamic_regions, split_detail

    e0 = {"browInnerUp_L": 0.5, "browInnerUp_R": 0.5, "mouthSmile_L": 0.2}
    assert activations(e0) == {"forehead_L": 0.5, "forehead_R": 0.5, "nasolabial_L": 0.2, "nasolabial_R": 0.0,
                               "crows_feet_L": 0.2, "crows_feet_R": 0.0}
    atlas = procedural_detail(head, np.random.default_rng(0), size_px=256)[0, 0].numpy()
    split = split_detail(head, atlas, e0)
    np.testing.assert_allclose(split.at(e0), atlas, atol=1e-5)
    regions = dynamic_regions(head, 256)
    core = regions["forehead_L"] + regions["forehead_R"] > 0.999
    outside = np.maximum.reduce(list(regions.values())) < 1e-6
    assert core.sum() > 100 and outside.sum() > 1000
    raised = split.at({**e0, "browInnerUp_L": 1.0, "browInnerUp_R": 1.0})
    r = DEFAULT_GAIN["forehead"]
    np.testing.assert_allclose(raised[core], atlas[core] * (1 + r) / (1 + 0.5 * r), rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(raised[outside], atlas[outside], atol=1e-6)
    np.testing.assert_allclose(split.at({}), split.static_mm, atol=1e-6)
    # A one-sided smile deepens that side's fold only.
    left = split.at({**e0, "mouthSmile_L": 1.0})
    fold_l, fold_r = regions["nasolabial_L"] > 0.99, regions["nasolabial_R"] > 0.99
    assert fold_l.sum() > 20 and fold_r.sum() > 20
    assert np.abs(left[fold_l]).sum() > 1.2 * np.abs(atlas[fold_l]).sum()
    np.testing.assert_allclose(left[fold_r], atlas[fold_r], atol=1e-6)
    assert np.abs(split.static_mm[core]).sum() < np.abs(atlas[core]).sum()


def test_edit_carries_the_detail_to_the_new_expression(head, tmp_path):
    """`faceclip edit` of a result with detail writes the detail files for the edited face, the
    forehead's wrinkles deeper with raised brows."""
    from PIL import Image

    from faceclip.edit import EditRequest, ExpressionEdit, edit_result
    from faceclip.fit.dynamic_detail import dynamic_regions
    from faceclip.reconstruction import ReconstructOptions, Reconstructor
    from faceclip.io.detail import read_displacement_png

    *_, rgb = _scene(head, 1.0, size=400)
    photo = tmp_path / "wrinkles.png"
    Image.fromarray(rgb).save(photo)
    rec = Reconstructor(ReconstructOptions(fast=True, detail=True, texture_px=256, formats=("obj", "glb")))
    [out] = rec.reconstruct_image(photo, tmp_path / "out")
    request = EditRequest(expressions=(ExpressionEdit.parse("browInnerUp_L:1"), ExpressionEdit.parse("browInnerUp_R:1")),
                          formats=("glb",))
    edit_result(out.folder, tmp_path / "edited", request, clip=None)
    names = {p.name for p in (tmp_path / "edited").iterdir()}
    assert {"displacement.png", "normal_map.png", "mesh_detail.glb"} <= names
    read = lambda folder: read_displacement_png(  # noqa: E731
        folder / "displacement.png", **{k: json.loads((folder / "params.json").read_text())["detail"][k]
                                        for k in ("scale_mm", "offset_mm")})
    before, after = read(out.folder), read(tmp_path / "edited")
    regions = dynamic_regions(head, before.shape[0])
    forehead = regions["forehead_L"] + regions["forehead_R"] > 0.99
    assert np.abs(after[forehead]).mean() > 1.2 * np.abs(before[forehead]).mean()


def test_detail_failure_keeps_the_coarse_result(head, tmp_path):
    """A face the detail fit cannot use (here: no pixel faces the camera closely enough) still
    gets its coarse files; params.json says why there is no detail."""
    from PIL import Image

    from faceclip.fit.detail import DetailConfig
    from faceclip.reconstruction import ReconstructOptions, Reconstructor

    *_, rgb = _scene(head, 1.0, size=300)
    photo = tmp_path / "face.png"
    Image.fromarray(rgb).save(photo)
    rec = Reconstructor(ReconstructOptions(fast=True, detail=True, texture_px=256, formats=("glb",),
                                           detail_config=DetailConfig(min_view_cos=0.999999)))
    [out] = rec.reconstruct_image(photo, tmp_path / "out")
    names = {p.name for p in out.folder.iterdir()}
    assert "mesh.glb" in names and "displacement.png" not in names
    assert "skin" in json.loads((out.folder / "params.json").read_text())["detail"]["error"]


@pytest.mark.parametrize("bad", [{"map_px": 4}, {"gain_cells": 1}, {"lowpass_px": 0}, {"iterations": 0}])
def test_detail_settings_are_checked(bad):
    from faceclip.fit.detail import DetailConfig

    with pytest.raises(FaceClipError, match="detail settings"):
        DetailConfig(**bad)


def test_reconstruct_with_a_trained_detail_network(head, tmp_path):
    """--detail-net: the map comes from the network (on the shipped regressor's features), is
    written like the fitted one, and params.json names the network file."""
    from PIL import Image

    from faceclip.fit.detail import face_uv_window
    from faceclip.reconstruction import ReconstructOptions, Reconstructor
    from faceclip.io.detail import read_displacement_png
    from faceclip.nets.detail import DetailNet, DetailNetConfig, save_detail_net
    from faceclip.nets.regressor import default_checkpoint_path, load_regressor

    reg = load_regressor(default_checkpoint_path(), face_model=head)
    window, mirror_u = face_uv_window(head)
    torch.manual_seed(0)
    net = DetailNet(DetailNetConfig(in_features=reg.refine.out_features, n_expression=head.n_expression, map_px=32,
                                    window=(window.u0, window.v0, window.side), mirror_u=mirror_u))
    torch.nn.init.normal_(net.out.weight, std=0.5)  # an untrained network's map is flat: give it some
    path = save_detail_net(net, tmp_path / "detail.pt")
    *_, rgb = _scene(head, 1.0, size=300)
    photo = tmp_path / "face.png"
    Image.fromarray(rgb).save(photo)
    rec = Reconstructor(ReconstructOptions(fast=True, detail=True, detail_net=str(path), texture_px=256,
                                           formats=("glb",)))
    [out] = rec.reconstruct_image(photo, tmp_path / "out")
    d = json.loads((out.folder / "params.json").read_text())["detail"]
    assert d["fit"]["network"]["file"] == str(path) and d["fit"]["map_px"] == 32
    assert d["fit"]["network"]["features_from"]["file"] == str(default_checkpoint_path())
    atlas = read_displacement_png(out.folder / "displacement.png", d["scale_mm"], d["offset_mm"])
    assert np.abs(atlas).max() > 0.01
    with pytest.raises(FaceClipError, match="not found"):
        Reconstructor(ReconstructOptions(fast=True, detail_net=str(tmp_path / "missing.pt")))
