"""``faceclip evaluate``: single pairs, each benchmark's folder layout, files written, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from faceclip.cli import main
from faceclip.evaluate.keypoints import SEVEN_KEYPOINTS_68, realy_regions_for_model
from faceclip.evaluate.mesh import Mesh
from faceclip.io.mesh import write_obj


@pytest.fixture(scope="module")
def face(ict_cache):
    from faceclip.facemodel import load_face_model

    model = load_face_model("ict", geometry="face")
    g = torch.Generator().manual_seed(11)
    gt = model(identity=torch.randn(1, model.n_identity, generator=g)).vertices_mm[0].double().numpy()
    return model, gt, model.mean_mm.double().numpy(), model.triangles.numpy(), model.landmarks68.numpy()


def _last_json(path) -> dict:
    return json.loads(path.read_text())


def test_realy_pair_and_realy_folder_layout_agree(face, tmp_path, capsys):
    from faceclip.evaluate.realy import realy_evaluate, realy_ground_truth_from_mesh

    model, gt, mean, tri, lm = face
    regions = realy_regions_for_model(model)
    expected = realy_evaluate(Mesh(mean, tri), mean[lm], realy_ground_truth_from_mesh(Mesh(gt, tri), regions, gt[lm]))
    # REALY's own layout, with scans stored in a 9 mm unit and metrical_scale.txt = 9
    data = tmp_path / "REALY" / "data"
    (data / "REALY_HIFI3D_keypoints").mkdir(parents=True)
    (data / "REALY_HIFI3D_keypoints" / "1.obj").write_text("".join(f"v {x} {y} {z}\n" for x, y, z in gt[lm] / 9.0))
    for name, idx in regions.items():
        sub, _ = Mesh(gt / 9.0, tri).submesh(idx)
        write_obj(data / "REALY_scan_region" / "1" / f"{name}.obj", sub.vertices, sub.triangles)
    (data / "metrical_scale.txt").write_text("9.0\n")
    preds = tmp_path / "preds"
    write_obj(preds / "1_frontal.obj", mean, tri)
    out = tmp_path / "out"
    assert main(["evaluate", "--protocol", "realy", "--pred", str(preds), "--gt", str(data), "--out", str(out), "--quiet"]) == 0
    res = _last_json(out / "realy.json")
    assert res["items"][0]["name"] == "1_frontal"
    assert res["summary"]["nmse_all_mm"] == pytest.approx(expected.all_mm, rel=1e-4)
    for r in ("nose", "mouth", "forehead", "cheek"):
        assert res["items"][0][f"nmse_{r}_mm"] == pytest.approx(expected.nmse_mm[r], rel=1e-4)
    assert (out / "realy.csv").read_text().splitlines()[0].startswith("name,nmse_nose_mm")
    text = capsys.readouterr().out
    assert "realy summary:" in text and "1_frontal" in text
    # single pair: region folder + keypoint file + vertex-index keypoints for the prediction
    np.savetxt(tmp_path / "gt_kp.txt", gt[lm])
    np.savetxt(tmp_path / "idx.txt", lm, fmt="%d")
    region_dir = tmp_path / "regions_mm"
    for name, idx in regions.items():
        sub, _ = Mesh(gt, tri).submesh(idx)
        write_obj(region_dir / f"{name}.obj", sub.vertices, sub.triangles)
    assert main(["evaluate", "--protocol", "realy", "--pred", str(preds / "1_frontal.obj"), "--gt", str(region_dir),
                 "--gt-keypoints", str(tmp_path / "gt_kp.txt"), "--pred-keypoints", str(tmp_path / "idx.txt"),
                 "--json", str(tmp_path / "pair.json"), "--quiet"]) == 0
    assert _last_json(tmp_path / "pair.json")["summary"]["nmse_all_mm"] == pytest.approx(expected.all_mm, rel=1e-4)


def test_now_folder_layout(face, tmp_path):
    model, gt, mean, tri, lm = face
    root = tmp_path / "NoW"
    subject, challenge, image = "FaMoS_180424_03335_TA", "multiview_neutral", "IMG_0101"
    (root / "scans" / subject).mkdir(parents=True)
    write_obj(root / "scans" / subject / "natural_head_rotation.000001.obj", gt, tri)
    (root / "scans_lmks_onlypp" / subject).mkdir(parents=True)
    pts = "".join(f' <point x="{x}" y="{y}" z="{z}" name="{i}"/>\n' for i, (x, y, z) in enumerate(gt[lm][list(SEVEN_KEYPOINTS_68)]))
    (root / "scans_lmks_onlypp" / subject / "natural_head_rotation.000001_picked_points.pp").write_text(
        f"<!DOCTYPE PickedPoints>\n<PickedPoints>\n{pts}</PickedPoints>\n")
    (root / "imagepathsvalidation.txt").write_text(f"{subject}/{challenge}/{image}.jpg\n")
    pred_dir = tmp_path / "pred" / subject / challenge
    moved = Mesh(gt, tri).transformed(1.2, np.eye(3), np.array([5.0, 0.0, -3.0]))
    write_obj(pred_dir / f"{image}.obj", moved.vertices, tri)
    np.save(pred_dir / f"{image}.npy", moved.vertices[lm][list(SEVEN_KEYPOINTS_68)])
    assert main(["evaluate", "--protocol", "now", "--pred", str(tmp_path / "pred"), "--gt", str(root),
                 "--json", str(tmp_path / "now.json"), "--quiet"]) == 0
    res = _last_json(tmp_path / "now.json")
    assert res["summary"]["n_images"] == 1 and res["summary"]["mean_mm"] < 1e-4
    assert res["items"][0]["name"] == f"{subject}/{challenge}/{image}"


def test_micc_and_facescape_folder_layouts(face, tmp_path):
    model, gt, mean, tri, lm = face
    gt_dir, pred_dir = tmp_path / "micc_gt", tmp_path / "micc_pred"
    write_obj(gt_dir / "subject_01.obj", gt, tri)
    np.savetxt(gt_dir / "subject_01.txt", gt[lm[30]][None])  # the nose tip
    write_obj(pred_dir / "subject_01_frontal.obj", gt + np.array([1.0, 2.0, -1.0]), tri)
    assert main(["evaluate", "--protocol", "micc", "--pred", str(pred_dir), "--gt", str(gt_dir),
                 "--json", str(tmp_path / "micc.json"), "--quiet"]) == 0
    res = _last_json(tmp_path / "micc.json")
    assert res["items"][0]["name"] == "subject_01_frontal" and res["summary"]["symmetric_mm_mean"] < 1e-3

    bench = tmp_path / "facescape" / "benchmark"
    write_obj(bench / "data" / "wild_gt_mesh" / "000.obj", gt / 100.0, tri)  # normalised units
    predef = bench / "code" / "predef"
    predef.mkdir(parents=True)
    np.save(predef / "wild_pupil_scales.npy", np.array([100.0]))
    np.save(predef / "wild_head_centers.npy", gt.mean(0, keepdims=True) / 100.0)
    np.save(predef / "wild_rotations.npy", np.eye(3)[None])
    fs_pred = tmp_path / "fs_pred"
    write_obj(fs_pred / "000.obj", gt / 100.0 + np.array([0.0, 0.0, 0.2]), tri)  # wrong depth only
    assert main(["evaluate", "--protocol", "facescape", "--pred", str(fs_pred), "--gt", str(bench),
                 "--out", str(tmp_path / "fs"), "--quiet"]) == 0
    res = _last_json(tmp_path / "fs" / "facescape.json")
    assert res["summary"]["cd_mm"] < 1e-3 and res["summary"]["cr"] == pytest.approx(1.0)
    assert res["items"][0]["depth_shift_mm"] == pytest.approx(20.0, abs=1e-3)


def test_evaluate_errors_are_one_line_exit_2(face, tmp_path, capsys):
    model, gt, mean, tri, lm = face
    write_obj(tmp_path / "gt.obj", gt, tri)
    (tmp_path / "broken.obj").write_text("this is not a mesh\n")
    np.savetxt(tmp_path / "five.txt", gt[lm[:5]])
    cases = [
        ["--protocol", "now", "--pred", str(tmp_path / "broken.obj"), "--gt", str(tmp_path / "gt.obj"),
         "--pred-keypoints", str(tmp_path / "five.txt"), "--gt-keypoints", str(tmp_path / "five.txt")],
        ["--protocol", "realy", "--pred", str(tmp_path / "gt.obj"), "--gt", str(tmp_path / "gt.obj")],
        ["--protocol", "facescape", "--pred", str(tmp_path), "--gt", str(tmp_path)],
        ["--protocol", "micc", "--pred", str(tmp_path / "missing.obj"), "--gt", str(tmp_path / "gt.obj")],
    ]
    for args in cases:
        assert main(["evaluate", *args, "--quiet"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "Traceback" not in err
    # a keypoint file with the wrong count for NoW's 7 landmarks is reported per item
    write_obj(tmp_path / "pred.obj", gt, tri)
    assert main(["evaluate", "--protocol", "now", "--pred", str(tmp_path / "pred.obj"), "--gt", str(tmp_path / "gt.obj"),
                 "--pred-keypoints", str(tmp_path / "five.txt"), "--gt-keypoints", str(tmp_path / "five.txt"), "--quiet"]) != 0
