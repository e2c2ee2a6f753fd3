"""Synthetic faces and the synthetic benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faceclip.evaluate.synthetic import SKIN_PALETTE, SyntheticConfig, SyntheticFaceGenerator, pose_bin, write_sample


@pytest.fixture(scope="module")
def gen(ict_cache):
    return SyntheticFaceGenerator(seed=3, config=SyntheticConfig(sizes_px=(224,)))


def test_samples_are_deterministic_by_seed_and_index(gen, ict_cache):
    a, b = gen.sample(5), gen.sample(5)
    assert a.params == b.params
    np.testing.assert_array_equal(a.images[224], b.images[224])
    np.testing.assert_array_equal(a.vertices_mm, b.vertices_mm)
    other = SyntheticFaceGenerator(gen.model, seed=3, config=gen.config).sample(5)  # a fresh generator
    np.testing.assert_array_equal(other.images[224], a.images[224])
    c = gen.sample(6)
    assert c.params.identity != a.params.identity
    assert not np.array_equal(c.images[224], a.images[224])


def test_parameter_ranges_cover_poses_skin_tones_and_expressions(gen):
    params = [gen.draw_params(i) for i in range(300)]
    yaw = np.array([p.angles_deg[1] for p in params])
    pitch = np.array([p.angles_deg[0] for p in params])
    assert np.abs(yaw).max() <= 60 and yaw.min() < -50 and yaw.max() > 50
    assert np.abs(pitch).max() <= 30
    tones = np.array([p.skin_tone for p in params])
    assert tones.min() < 0.05 and tones.max() > 0.95
    darkest = min(params, key=lambda p: p.skin_tone)
    lightest = max(params, key=lambda p: p.skin_tone)
    assert np.mean(darkest.skin_rgb) > np.mean(lightest.skin_rgb)  # tone 0 = light ... 1 = dark
    assert np.mean(lightest.skin_rgb) < 0.35 and np.mean(SKIN_PALETTE[-1]) < 0.2
    n_neutral = sum(not p.expression for p in params)
    assert 0.15 * len(params) < n_neutral < 0.45 * len(params)
    assert all(0.0 <= w <= 1.0 for p in params for w in p.expression.values())
    assert {p.background["kind"] for p in params} == {"uniform", "gradient", "noise"}
    assert {pose_bin(y) for y in yaw} == {"0-20", "20-40", "40-60"}


def test_render_face_landmarks_and_mask_agree(gen):
    s = gen.sample(2)
    img, mask, lm = s.images[224], s.masks[224], s.landmarks68_px[224]
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    assert 0.15 < (mask > 0.5).mean() < 0.9  # a face, not an empty or full frame
    # inner landmarks (brows, nose, eyes, mouth) lie on the rendered face
    inner = lm[17:]
    assert ((inner >= 0) & (inner < 224)).all()
    on_face = mask[inner[:, 1].astype(int), inner[:, 0].astype(int)] > 0.5
    assert on_face.mean() > 0.9
    # the face differs from the background: pixels inside the mask vary with shading
    assert img[mask > 0.99].std() > 5


def test_sizes_render_the_same_view(ict_cache):
    g = SyntheticFaceGenerator(seed=1, config=SyntheticConfig(sizes_px=(224, 512)))
    s = g.sample(0)
    np.testing.assert_allclose(s.landmarks68_px[512], s.landmarks68_px[224] * 512 / 224, atol=1e-3)
    m224, m512 = s.masks[224], s.masks[512]
    assert abs((m224 > 0.5).mean() - (m512 > 0.5).mean()) < 0.01


def test_write_sample_and_batch(gen, tmp_path):
    from faceclip.evaluate.mesh import load_mesh

    s = gen.sample(1)
    files = write_sample(s, tmp_path, triangles=gen.model.triangles.numpy())
    names = {f.name for f in files}
    stem = "synth_3_000001"
    assert {f"{stem}_224.png", f"{stem}.ply", f"{stem}.obj", f"{stem}.json"} <= names
    mesh = load_mesh(tmp_path / f"{stem}.ply")
    np.testing.assert_allclose(mesh.vertices, s.vertices_mm, atol=1e-4)
    meta = json.loads((tmp_path / f"{stem}.json").read_text())
    assert meta["params"]["index"] == 1 and len(meta["landmarks68_px"]["224"]) == 68
    assert "pixel centres at +0.5" in meta["conventions"]["pixels"]
    batch = gen.batch([0, 1], size=224)
    assert batch["image"].shape == (2, 3, 224, 224) and batch["image"].max() <= 1.0
    assert batch["vertices_mm"].shape == (2, gen.model.n_vertices, 3)
    assert batch["landmarks68_px"].shape == (2, 68, 2) and batch["expression"].shape == (2, gen.model.n_expression)


# ----------------------------------------------------------------------------- benchmark

#: The mean face's REALY NMSE ("all", mm) on synthetic sample 0 of seed 4 (per region: nose 1.6652,
#: mouth 1.5122, forehead 2.3939, cheek 1.5439) and on sample 0 of seed 0, measured at commit
#: 39c4797 (deterministic: the generator is seeded, the protocol has no randomness). A wrong
#: distance (halved, doubled, in the wrong unit) or a skipped protocol step moves them far beyond
#: the 1% allowed.
MEAN_FACE_SEED4_ALL_MM = 1.77878
MEAN_FACE_SEED4_REGIONS_MM = {"nose": 1.66518, "mouth": 1.51223, "forehead": 2.39386, "cheek": 1.54385}
MEAN_FACE_SEED0_ALL_MM = 2.55272


def test_benchmark_perfect_method_scores_zero_and_mean_face_does_not(ict_cache):
    from faceclip.evaluate.benchmark import METHODS, MethodOutput, register_method, run_synthetic_benchmark

    truth = {}

    @register_method("_oracle_test")
    def oracle(image, model):  # returns the ground truth it was given, in another pose and scale
        v = truth["v"] * 1.1 + np.array([3.0, 2.0, 1.0])
        return MethodOutput(v, model.triangles.numpy(), v[model.landmarks68.numpy()], truth["lm"])

    from faceclip.evaluate import synthetic

    orig = synthetic.SyntheticFaceGenerator.sample

    def spy(self, index):
        s = orig(self, index)
        truth["v"] = s.vertices_mm.astype(np.float64)
        truth["lm"] = s.landmarks68_px[224]
        return s

    try:
        synthetic.SyntheticFaceGenerator.sample = spy
        rep = run_synthetic_benchmark(1, seed=4, method="_oracle_test")
    finally:
        synthetic.SyntheticFaceGenerator.sample = orig
        METHODS.pop("_oracle_test", None)
    assert rep.nmse_all_mm < 0.01
    assert rep.summary()["all"]["nme_inter_ocular"] == pytest.approx(0.0, abs=1e-9)
    mean = run_synthetic_benchmark(1, seed=4, method="mean")
    assert mean.nmse_all_mm == pytest.approx(MEAN_FACE_SEED4_ALL_MM, rel=0.01)
    for region, expected in MEAN_FACE_SEED4_REGIONS_MM.items():
        assert mean.summary()["all"][f"nmse_{region}_mm"] == pytest.approx(expected, rel=0.01), region
    assert mean.summary()["all"]["n"] == 1


def test_benchmark_cli_prints_table_and_headline_last(ict_cache, capsys, tmp_path):
    from faceclip.cli import main

    assert main(["benchmark", "synthetic", "--n", "1", "--seed", "0", "--method", "mean", "--quiet",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("synthetic_nmse_all_mm: ")
    assert float(out[-1].split(":")[1]) == pytest.approx(MEAN_FACE_SEED0_ALL_MM, rel=0.01)
    assert any(line.startswith("40-60") for line in out) and any(line.startswith("all") for line in out)
    data = json.loads((tmp_path / "synthetic.json").read_text())
    assert len(data["samples"]) == 1 and data["method"] == "mean"
    assert (tmp_path / "synthetic.csv").read_text().count("\n") == 2


def test_benchmark_unavailable_method_is_one_clear_error(ict_cache, capsys, monkeypatch):
    import faceclip.api
    from faceclip.cli import main

    monkeypatch.delattr(faceclip.api, "reconstruct_array", raising=False)
    assert main(["benchmark", "synthetic", "--n", "1", "--method", "fit", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not available" in err and "reconstruct_array" in err


def test_benchmark_regress_without_a_checkpoint_is_one_clear_error(ict_cache, capsys, tmp_path):
    from faceclip.cli import main

    missing = tmp_path / "no_such_regressor.pt"
    assert main(["benchmark", "synthetic", "--n", "1", "--method", "regress", "--quiet",
                 "--checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "not available" in err and "no_such_regressor.pt" in err and "Traceback" not in err


def test_benchmark_regress_runs_with_the_shipped_regressor(ict_cache, capsys, monkeypatch):
    from faceclip.cli import main

    monkeypatch.delenv("FACECLIP_REGRESSOR", raising=False)
    assert main(["benchmark", "synthetic", "--n", "1", "--method", "regress", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "method=regress" in out and out.strip().splitlines()[-1].startswith("synthetic_nmse_all_mm: ")


def test_benchmark_counts_failures_and_scores_them_as_the_mean_face(ict_cache):
    from faceclip.detect.select import NoFaceError
    from faceclip.evaluate.benchmark import METHODS, register_method, run_synthetic_benchmark

    @register_method("_always_fails_test")
    def fails(image, model):
        raise NoFaceError("no face found in image")

    try:
        rep = run_synthetic_benchmark(1, seed=4, method="_always_fails_test")
    finally:
        METHODS.pop("_always_fails_test", None)
    s = rep.summary()["all"]
    assert s["method_failed"] == 1 and s["landmarks_found"] == 0
    assert rep.nmse_all_mm == pytest.approx(MEAN_FACE_SEED4_ALL_MM, rel=0.01)  # the mean face's score
