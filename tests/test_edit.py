"""Expression editing: named expressions, transfer, text (offline parser and the CLIP mapper), outputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from conftest import FACES_DIR, REPO
from faceclip.cli import main
from faceclip.edit.expressions import (
    MODIFIERS,
    NAMED_FACS,
    ExpressionEdit,
    apply_expression,
    named_expressions,
    parse_facs,
)
from faceclip.edit.prompt import parse_prompt
from faceclip.errors import FaceClipError

EXAMPLE = REPO / "examples" / "astronaut.png"
OTHER = FACES_DIR / "2008_001009.jpg"


@pytest.fixture(scope="module")
def results(ict_cache, tmp_path_factory):
    """Two reconstructions: the astronaut and another person."""
    out = tmp_path_factory.mktemp("edit_rec")
    assert main(["reconstruct", str(EXAMPLE), str(OTHER), "--out", str(out), "--fast", "--quiet"]) == 0
    return out / "astronaut", out / OTHER.stem


def _params(folder):
    return json.loads((folder / "params.json").read_text())


def _expr(folder, names):
    e = _params(folder)["expression"]
    return np.array([e[n] for n in names])


# --------------------------------------------------------------------------- the table


def test_every_named_expression_uses_real_ict_blendshapes_and_the_subjects_side(ict_head):
    names = ict_head.expression_names
    table = named_expressions(names)
    assert set(table) == set(NAMED_FACS)
    for name, e in table.items():
        assert set(e.weights) <= set(names), name
        assert all(0.0 <= w <= 1.0 for w in e.weights.values())
        if name in MODIFIERS:  # modifiers list only their own action units
            assert set(e.weights) == set(parse_facs(e.facs))
        else:  # emotions: everything but the gaze
            assert set(e.weights) == {n for n in names if not n.startswith("eyeLook")} or name == "neutral"
    assert set(table["neutral"].weights) == set(names) and not any(table["neutral"].weights.values())
    # one-sided codes pick one side; _L is the subject's left = the model's +X side
    assert parse_facs("R12C+R14C") == {"mouthSmile_R": 0.6, "mouthDimple_R": 0.6}
    assert parse_facs("L46E") == {"eyeBlink_L": 1.0}
    blink = ict_head.expression_basis_mm[names.index("eyeBlink_L")]
    moved = blink.norm(dim=1) > 1.0
    assert float(ict_head.mean_mm[moved, 0].min()) > 0
    with pytest.raises(ValueError):
        parse_facs("99C")


def test_named_expressions_move_their_blendshapes_and_only_those(ict_head):
    names = ict_head.expression_names
    rng = np.random.default_rng(0)
    start = rng.uniform(0, 1, len(names)).tolist()
    for name, e in named_expressions(names).items():
        out = np.array(apply_expression(start, names, ExpressionEdit(name)))
        listed = np.array([n in e.weights for n in names])
        assert np.array_equal(out[~listed], np.array(start)[~listed]), name
        assert np.allclose(out[listed], [e.weights[n] for n in np.array(names)[listed]]), name
        half = np.array(apply_expression(start, names, ExpressionEdit(name, 0.5)))
        assert np.allclose(half, (np.array(start) + out) / 2), name
    # a blendshape name sets that weight; aliases and case work; unknown names say what is close
    out = apply_expression(start, names, ExpressionEdit("jawOpen", 0.3))
    assert out[names.index("jawOpen")] == 0.3 and sum(a != b for a, b in zip(out, start)) == 1
    assert apply_expression(start, names, ExpressionEdit("Smile")) == apply_expression(start, names,
                                                                                      ExpressionEdit("happy"))
    # Apple's ARKit names: one side, both of ICT's sides, or a clear refusal
    out = apply_expression(start, names, ExpressionEdit("eyeBlinkLeft", 0.7))
    assert out[names.index("eyeBlink_L")] == 0.7 and sum(a != b for a, b in zip(out, start)) == 1
    out = apply_expression(start, names, ExpressionEdit("browInnerUp"))
    assert out[names.index("browInnerUp_L")] == out[names.index("browInnerUp_R")] == 1.0
    assert sum(a != b for a, b in zip(out, start)) == 2
    with pytest.raises(FaceClipError, match="no counterpart"):
        apply_expression(start, names, ExpressionEdit("tongueOut"))
    with pytest.raises(FaceClipError, match="did you mean happy"):
        apply_expression(start, names, ExpressionEdit("hapy"))


@pytest.mark.parametrize("text", ["happy", "happy:0.5", " jawOpen : 0.25 "])
def test_expression_argument_parses(text):
    e = ExpressionEdit.parse(text)
    assert e.name == text.split(":")[0].strip() and 0 < e.strength <= 1


@pytest.mark.parametrize("text", ["happy:5", "happy:x", ":0.5", "happy:-1"])
def test_bad_expression_argument_is_refused(text):
    with pytest.raises(FaceClipError):
        ExpressionEdit.parse(text)


# --------------------------------------------------------------------------- the offline parser


@pytest.mark.parametrize("prompt, expected", [
    ("a very surprised face", [("surprise", 1.0)]),
    ("slightly smiling", [("happy", 0.35)]),
    ("She looks angry.", [("anger", 0.75)]),
    ("winking with the right eye", [("wink_right", 0.75)]),
    ("a wink", [("wink_left", 0.75)]),
    ("smirking to the left", [("contempt_left", 0.75)]),
    ("not angry but extremely happy", [("happy", 1.0)]),
    ("a scared person with an open mouth", [("fear", 0.75), ("jaw_open", 0.75)]),
    ("a man without glasses, smiling", [("happy", 0.75)]),
    ("very calm, then a big laugh", [("neutral", 1.0), ("happy", 1.0)]),
])
def test_offline_parser(prompt, expected):
    assert [(e.name, e.strength) for e in parse_prompt(prompt)] == expected


def test_offline_parser_refuses_prompts_without_an_expression():
    with pytest.raises(FaceClipError, match="names no expression"):
        parse_prompt("a photo of a cat")


# --------------------------------------------------------------------------- the command


def test_edit_named_expression_keeps_identity_pose_light_and_texture(results, ict_head, tmp_path, capsys):
    src, _ = results
    out = tmp_path / "happy"
    assert main(["edit", str(src), "--out", str(out), "--expression", "sad", "--quiet"]) == 0
    names = ict_head.expression_names
    a, b = _params(src), _params(out)
    for key in ("identity", "rotation", "translation_mm", "camera", "lighting", "albedo", "image", "crop"):
        assert a[key] == b[key], key
    expected = apply_expression(_expr(src, names).tolist(), names, ExpressionEdit("sad"))
    assert np.allclose(_expr(out, names), expected, atol=1e-6)
    assert b["edit"]["steps"] == [{"expressions": [{"name": "sad", "strength": 1.0}]}]
    arkit = b["arkit_blendshapes"]  # Apple's 52 names: one side each, or the mean of ICT's two
    assert len(arkit) == 52 and arkit["tongueOut"] == 0.0
    assert arkit["mouthFrownLeft"] == b["expression"]["mouthFrown_L"]
    assert arkit["browInnerUp"] == pytest.approx((b["expression"]["browInnerUp_L"] + b["expression"]["browInnerUp_R"]) / 2,
                                                 abs=2e-6)
    assert "mouthFrown_L" in b["edit"]["changed"]
    # texture unchanged; the mesh is the model with the edited coefficients
    assert np.array_equal(np.asarray(Image.open(src / "mesh_texture.png")), np.asarray(Image.open(out / "mesh_texture.png")))
    ply = trimesh.load(out / "mesh.ply", process=False)
    verts = ict_head.vertices(torch.tensor([b["identity"]]), torch.tensor([expected]))[0].numpy()
    assert np.abs(ply.vertices - verts).max() < 1e-3
    before = trimesh.load(src / "mesh.ply", process=False)
    assert np.abs(ply.vertices - before.vertices).max() > 1.0  # the mouth moved (mm)
    # the overlay is the photo away from the face; the before/after image has three panels
    ov_a, ov_b = np.asarray(Image.open(src / "overlay.png")), np.asarray(Image.open(out / "overlay.png"))
    assert ov_a.shape == ov_b.shape
    assert np.abs(ov_a[:20].astype(int) - ov_b[:20]).max() <= 1
    ba = Image.open(out / "before_after.png")
    assert ba.size == (3 * 384, 384)
    panels = np.asarray(ba).reshape(384, 3, 384, 3).astype(int)
    assert np.abs(panels[:, 1] - panels[:, 2]).mean() > 0.5  # before != after
    assert sorted(p.name for p in out.iterdir()) == [
        ".faceclip-result.json", "before_after.png", "mesh.glb", "mesh.mtl", "mesh.obj", "mesh.ply",
        "mesh_texture.png", "overlay.png", "params.json"]


def test_transfer_reproduces_the_source_expression_exactly(results, ict_head, tmp_path):
    a, b = results
    out = tmp_path / "transfer"
    assert main(["edit", str(a), "--out", str(out), "--from", str(b), "--quiet"]) == 0
    names = ict_head.expression_names
    assert np.array_equal(_expr(out, names), _expr(b, names))
    assert _params(out)["identity"] == _params(a)["identity"]
    assert _params(out)["rotation"] == _params(a)["rotation"]
    # half strength: half way from this face's expression to the other's
    assert main(["edit", str(a), "--out", str(tmp_path / "half"), "--from", str(b), "--strength", "0.5",
                 "--quiet"]) == 0
    assert np.allclose(_expr(tmp_path / "half", names), (_expr(a, names) + _expr(b, names)) / 2, atol=2e-6)


def test_animation_gif_and_glb_with_blendshape_morph_targets(results, ict_head, tmp_path):
    from faceclip.io.gltf import read_morph_glb

    src, _ = results
    out = tmp_path / "anim"
    assert main(["edit", str(src), "--out", str(out), "--expression", "jaw_open", "--animate", "5", "--quiet"]) == 0
    names = ict_head.expression_names
    gif = Image.open(out / "animation.gif")
    assert gif.n_frames == 5
    glb = read_morph_glb(out / "animation.glb")
    assert glb.target_names == names
    assert glb.frame_weights.shape == (5, len(names)) and np.allclose(glb.times_s, np.arange(5) / 12.0)
    assert np.allclose(glb.frame_weights[0], _expr(src, names), atol=1e-6)
    assert np.allclose(glb.frame_weights[-1], _expr(out, names), atol=1e-6)
    assert np.allclose(glb.weights, _expr(out, names), atol=1e-6)
    # the morph targets reproduce the edited mesh (GLB vertices are the PLY's, split along UV seams)
    ply = trimesh.load(out / "mesh.ply", process=False)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(ply.vertices).query(glb.at(glb.weights))
    assert d.max() < 1e-3
    assert len(trimesh.load(out / "animation.glb").geometry) == 1  # an ordinary loader opens it


def test_text_without_clip_says_so_and_uses_the_parser(results, ict_head, tmp_path, monkeypatch, capsys):
    from faceclip.nets.clip import VITB32
    from faceclip.nets.clip_weights import installed_path

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", VITB32.env_var):
        monkeypatch.delenv(var, raising=False)
    assert installed_path(VITB32) is None
    src, _ = results
    out = tmp_path / "text"
    assert main(["edit", str(src), "--out", str(out), "--text", "a very surprised face", "--quiet"]) == 0
    err = capsys.readouterr().err
    note = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "offline prompt parser" in note[0] and "surprise:1.00" in note[0]
    names = ict_head.expression_names
    expected = apply_expression(_expr(src, names).tolist(), names, ExpressionEdit("surprise"))
    assert np.allclose(_expr(out, names), expected, atol=1e-6)
    assert _params(out)["edit"]["steps"][0]["method"] == "offline_parser"


def test_bad_edits_fail_clearly(results, tmp_path, capsys):
    src, other = results
    cases = [
        ([str(src), "--out", str(tmp_path / "a")], "nothing to edit"),
        ([str(src), "--out", str(tmp_path / "b"), "--expression", "grumpy"], "unknown expression"),
        ([str(src), "--out", str(src), "--expression", "happy"], "would replace"),
        ([str(tmp_path / "none"), "--out", str(tmp_path / "c"), "--expression", "happy"], "no such result"),
        ([str(src), "--out", str(tmp_path / "d"), "--expression", "happy", "--animate", "1"], "--animate"),
        ([str(src), "--out", str(tmp_path / "e"), "--text", "a cat", "--offline"], "names no expression"),
        ([str(src), "--out", str(tmp_path / "h"), "--expression", "happy", "--formats", "stl"], "--formats"),
        ([str(src), "--out", str(tmp_path / "i"), "--expression", "happy", "--offline"], "--text only"),
        ([str(src), "--out", str(other), "--from", str(other)], "which this edit reads"),
        ([str(src), "--out", str(other.parent), "--from", str(other)], "which this edit reads"),
    ]
    for args, message in cases:
        assert main(["edit", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
    # a damaged params.json: NaN coefficients, then not JSON
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    p = _params(bad)
    p["identity"][0] = float("nan")
    (bad / "params.json").write_text(json.dumps(p))
    assert main(["edit", str(bad), "--out", str(tmp_path / "f"), "--expression", "happy"]) == 2
    assert "identity: not finite" in capsys.readouterr().err
    (bad / "params.json").write_text("{")
    assert main(["edit", str(bad), "--out", str(tmp_path / "g"), "--expression", "happy"]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert not (tmp_path / "f").exists() and not (tmp_path / "g").exists()


def test_expressions_command_lists_names_and_blendshapes(ict_cache, capsys):
    assert main(["expressions"]) == 0
    out = capsys.readouterr().out
    for name in NAMED_FACS:
        assert f"  {name} " in out
    assert "ICT blendshapes (53" in out and "mouthSmile_L" in out


# --------------------------------------------------------------------------- the CLIP-guided mapper


@pytest.fixture(scope="module")
def small_clip():
    from faceclip.nets.clip import ClipImageText

    return ClipImageText.small_random(seed=0)


def test_mapper_starts_as_the_identity_and_has_three_blocks():
    from faceclip.edit.mapper import ExpressionMapper

    m = ExpressionMapper(53)
    w = torch.rand(2, 53)
    assert torch.equal(m(w), w)
    assert len(m.blocks.layers) == 3


def test_mapper_optimisation_lowers_the_clip_loss_with_gradients_reaching_the_mapper(results, small_clip):
    from faceclip.edit.mapper import TextEditConfig, TextEditObjective, optimise_mapper
    from faceclip.edit.render import FaceRenderer
    from faceclip.edit.result import load_result

    face = load_result(results[0])
    cfg = TextEditConfig(steps=8)
    objective = TextEditObjective(FaceRenderer(face), small_clip, "a very surprised face", cfg)
    result = optimise_mapper(objective)
    first, last = result.clip_loss_first_last
    assert last < first - 5e-4, (first, last)
    clip_per_step = [r["clip"] for r in result.losses]
    assert clip_per_step[-1] < clip_per_step[0]
    assert result.expression.shape == face.expression.shape
    assert float(result.expression.min()) >= 0 and float(result.expression.max()) <= 1
    assert not torch.allclose(result.expression, face.expression)
    # after the zero-initialised output layer has moved, every mapper parameter gets a gradient
    total, _ = objective(result.mapper(face.expression))
    result.mapper.zero_grad()
    total.backward()
    for name, p in result.mapper.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    # the CLIP encoders stay frozen
    assert all(p.grad is None for p in small_clip.parameters())


def test_plan_edit_with_a_clip_encoder_records_the_mapper(results, small_clip):
    from faceclip.edit import EditRequest, load_result, plan_edit
    from faceclip.edit.mapper import TextEditConfig

    face = load_result(results[0])
    steps = []
    outcome = plan_edit(face, EditRequest(text="a happy face", text_config=TextEditConfig(steps=3, lr=1e-2)),
                        clip=small_clip, progress=lambda s, losses: steps.append(s))
    assert steps == [1, 2, 3]
    rec = outcome.record["steps"][0]
    assert rec["method"] == "clip_mapper" and rec["config"]["steps"] == 3 and not outcome.notes


def test_clip_missing_error_names_the_install_command(tmp_path, monkeypatch):
    from faceclip.errors import ModelNotInstalledError
    from faceclip.nets.clip import VITB32
    from faceclip.nets.clip_weights import load_clip_image_text

    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path / "fc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", VITB32.env_var):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ModelNotInstalledError) as exc:
        load_clip_image_text()
    assert "faceclip models install clip-vitb32" in str(exc.value)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelNotInstalledError, match="bad.pt"):
        load_clip_image_text(bad)


# --------------------------------------------------------------------------- the GLB writer


def test_morph_glb_round_trip_and_structure(tmp_path):
    from faceclip.io.gltf import read_glb_json, read_morph_glb, write_morph_glb

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], float)
    f = np.array([[0, 1, 2], [1, 3, 2]])
    uv = np.array([[[0, 0], [1, 0], [0, 1]], [[1, 0], [1, 1], [0, 1]]], float)
    targets = np.zeros((2, 4, 3))
    targets[0, 3, 2] = 5.0
    targets[1, 0, 0] = -1.0
    tex = np.full((8, 8, 3), 200, np.uint8)
    path = write_morph_glb(tmp_path / "m.glb", v, f, uv, tex, targets, ["up", "left"], weights=[0.5, 0.0],
                           times_s=[0.0, 0.5, 1.0], frame_weights=[[0, 0], [0.5, 0], [1, 1]])
    gltf, binary = read_glb_json(path)
    prim = gltf["meshes"][0]["primitives"][0]
    assert len(prim["targets"]) == 2 and gltf["meshes"][0]["extras"]["targetNames"] == ["up", "left"]
    for t in prim["targets"]:  # glTF requires bounds on morph-target positions
        acc = gltf["accessors"][t["POSITION"]]
        assert "min" in acc and "max" in acc
    assert all(view["byteOffset"] % 4 == 0 for view in gltf["bufferViews"])
    assert gltf["animations"][0]["channels"][0]["target"] == {"node": 0, "path": "weights"}
    m = read_morph_glb(path)
    assert np.allclose(m.at([1.0, 1.0]), [[-1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 5]])
    assert np.allclose(m.uv, [[0, 1], [1, 1], [0, 0], [1, 0]])  # glTF's v points down: 1 - v
    assert m.frame_weights.tolist() == [[0, 0], [0.5, 0], [1, 1]]
    bad_targets = targets.copy()
    bad_targets[0, 0, 0] = np.nan
    for kwargs in ({"times_s": [0, 0], "frame_weights": [[0, 0], [1, 1]]},   # times not increasing
                   {"times_s": [-1, 0], "frame_weights": [[0, 0], [1, 1]]},  # negative time
                   {"weights": [1.0]},                                       # one weight for two targets
                   {"targets_mm": bad_targets},                              # NaN
                   {"targets_mm": targets[:0], "target_names": []}):        # no target
        args = {"targets_mm": targets, "target_names": ["up", "left"], **kwargs}
        with pytest.raises(ValueError):
            write_morph_glb(tmp_path / "x.glb", v, f, uv, tex, **args)
    assert not (tmp_path / "x.glb").exists()


def test_a_result_whose_photo_moved_is_edited_on_a_grey_canvas(results, tmp_path, capsys):
    src, _ = results
    moved = tmp_path / "moved"
    shutil.copytree(src, moved)
    p = _params(moved)
    p["image"] = str(tmp_path / "gone.png")
    (moved / "params.json").write_text(json.dumps(p))
    assert main(["edit", str(moved), "--out", str(tmp_path / "e"), "--expression", "happy", "--quiet"]) == 0
    assert "grey canvas" in capsys.readouterr().err
    photo_panel = np.asarray(Image.open(tmp_path / "e" / "before_after.png"))[40:, :384]
    assert (photo_panel == 128).all()


def test_several_results_each_get_a_folder_and_one_failure_spares_the_others(results, ict_head, tmp_path, capsys):
    a, b = results
    out = tmp_path / "many"
    code = main(["edit", str(a), str(tmp_path / "missing"), str(b), "--out", str(out), "--expression", "happy",
                 "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing: no such result folder" in err and "2/3 results edited; 1 failed" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == sorted([a.name, b.name])
    names = ict_head.expression_names
    for src in (a, b):
        expected = apply_expression(_expr(src, names).tolist(), names, ExpressionEdit("happy"))
        assert np.allclose(_expr(out / src.name, names), expected, atol=1e-6)
        assert _params(out / src.name)["identity"] == _params(src)["identity"]
