"""The reconstruction's stages and its typed record (faceclip.reconstruction)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

EXAMPLE = REPO / "examples" / "astronaut.png"


def test_one_method_vocabulary():
    """The CLI's reconstruct and benchmark flags, the API and the options use the same names."""
    from faceclip.cli import build_parser
    from faceclip.reconstruction import METHODS

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    rec = next(a for a in sub.choices["reconstruct"]._actions if a.dest == "method")
    assert list(rec.choices) == list(METHODS)
    bench = sub.choices["benchmark"]
    bench_sub = next(a for a in bench._actions if a.__class__.__name__ == "_SubParsersAction")
    syn = next(a for a in bench_sub.choices["synthetic"]._actions if a.dest == "method")
    assert list(syn.choices) == ["mean", *METHODS]


def test_resolve_method():
    from faceclip.errors import FaceClipError
    from faceclip.reconstruction import ReconstructOptions, resolve_method

    o = resolve_method(ReconstructOptions(method="fit_regressor"))
    assert (o.method, o.init) == ("fit", "regressor")
    o = resolve_method(ReconstructOptions(method="fit_net"))
    assert (o.method, o.front_end.landmarks) == ("fit", "net")
    o = resolve_method(ReconstructOptions(method="fit_net", landmark_net="x.pt"))  # as the API passes it
    assert (o.front_end.landmarks, o.front_end.landmark_net) == ("net", "x.pt")
    assert resolve_method(ReconstructOptions(method="fit_mean")) == ReconstructOptions(method="fit", init="mean")
    assert resolve_method(ReconstructOptions(method="regress")).method == "regress"
    for bad in (dict(method="fit_mean", init="regressor"), dict(method="fit_regressor", no_regressor=True),
                dict(method="fit_net", landmarks="dlib68"), dict(method="nonsense")):
        with pytest.raises(FaceClipError):
            resolve_method(ReconstructOptions(**bad))


def test_options_are_frozen_and_not_changed_by_the_reconstructor(ict_cache):
    from faceclip.reconstruction import ReconstructOptions, Reconstructor

    o = ReconstructOptions(fast=True, method="regress")
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.fast = False
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.outputs.texture_px = 64
    rec = Reconstructor(o)
    assert o.outputs.texture_px is None and rec.texture_px == 512  # --fast's default texture, options untouched
    assert Reconstructor(ReconstructOptions(method="regress", texture_px=128)).texture_px == 128


@pytest.fixture(scope="module")
def records(ict_cache):
    from faceclip.reconstruction import ReconstructOptions, Reconstructor

    rec = Reconstructor(ReconstructOptions(fast=True, texture_px=64))
    rgb = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    return rec, rgb, rec.reconstruct_faces(rgb, "astronaut")


def test_record_is_typed_frozen_and_complete(records):
    from faceclip.reconstruction import FaceReconstruction

    rec, rgb, faces = records
    assert len(faces) == 1
    r = faces[0]
    assert isinstance(r, FaceReconstruction)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.face_index = 3
    assert r.source.size_hw == rgb.shape[:2] and r.source.work_scale == 1.0
    assert r.vertices_mm.shape == (rec.model.n_vertices, 3) and r.params is r.fit.params
    assert r.texture.shape == (64, 64, 3) and r.texture.dtype == np.uint8
    assert r.overlay.shape == rgb.shape
    assert r.landmarks68_px.shape == (68, 2) and r.detected68_px.shape == (68, 2)
    # the fitted landmarks are close to the detected ones, inside the photo
    assert 0 < r.landmark_nme < 0.1
    assert r.provenance.method == "fit (fast)" and "face_model" in r.provenance.weights
    assert {"load", "detect", "fit", "texture_overlay"} <= set(r.seconds)


def test_describe_is_what_is_written(records, tmp_path):
    from faceclip.reconstruction import describe, write_reconstruction

    rec, _, (r,) = records
    files = write_reconstruction(r, tmp_path / "astronaut")
    written = json.loads((tmp_path / "astronaut" / "params.json").read_text())
    assert written == json.loads(json.dumps(describe(r)))
    assert {p.name for p in files} >= {"mesh.obj", "mesh.glb", "mesh.ply", "overlay.png", "params.json"}
    assert written["texture"]["size_px"] == 64 and written["face_index"] == 0


def test_fit_only_record_and_the_api_share_the_stages(records):
    from faceclip import api
    from faceclip.reconstruction import write_reconstruction

    rec, rgb, (r,) = records
    (bare,) = rec.reconstruct_faces(rgb, "astronaut", texture=False)
    assert bare.texture is None and bare.overlay is None and "texture_overlay" not in bare.seconds
    np.testing.assert_array_equal(bare.vertices_mm.numpy(), r.vertices_mm.numpy())  # deterministic stages
    with pytest.raises(ValueError):
        write_reconstruction(bare, REPO / "never-written")
    assert not (REPO / "never-written").exists()
    out = api.reconstruct_array(rgb, fast=True)
    assert out["record"].face_index == 0
    np.testing.assert_array_equal(out["vertices_mm"].numpy(), r.vertices_mm.numpy())
    np.testing.assert_allclose(out["landmarks68_px"], r.landmarks68_px)


def test_one_face_selection_rule_for_reconstruction_and_training(ict_cache, monkeypatch, tmp_path):
    """`faceclip reconstruct` and the training photo caches choose faces through the same
    function (faceclip.detect.frontend.faces_by_policy), with the same policy."""
    import faceclip.detect.frontend as frontend
    from faceclip.detect import FacePolicy
    from faceclip.reconstruction import ReconstructOptions, Reconstructor
    from faceclip.train.data import preprocess_folder

    rgb = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    calls = []
    real = frontend.faces_by_policy

    def spy(image, policy, *args, **kwargs):
        calls.append((policy, args[:2] if args else (kwargs.get("detector"), kwargs.get("landmarks"))))
        return real(image, policy, *args, **kwargs)

    monkeypatch.setattr(frontend, "faces_by_policy", spy)
    rec = Reconstructor(ReconstructOptions(method="regress", min_face_px=40.0))
    (face,) = rec.detect(rgb, "astronaut")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(rgb).save(photos / "a.png")
    preprocess_folder(photos, tmp_path / "cache", min_face_px=40.0)
    assert len(calls) == 2 and calls[0] == calls[1]
    assert calls[0][0] == FacePolicy(all_faces=False, min_face_px=40.0, min_score=0.3)
    assert face.size_px >= 40.0


def test_no_face_error_says_why():
    from faceclip.detect import FacePolicy, NoFaceError, select_faces
    from faceclip.detect.types import Face

    with pytest.raises(NoFaceError) as none:
        select_faces([], FacePolicy())
    small = Face(np.array([0.0, 0.0, 20.0, 20.0]), 1.0, np.zeros((68, 2)), "hog")
    with pytest.raises(NoFaceError) as too_small:
        select_faces([small], FacePolicy(min_face_px=32.0))
    assert (none.value.reason, too_small.value.reason) == ("no_face", "too_small")


def test_batch_signature_is_the_resolved_options():
    """Equivalent spellings of the same run resume each other; the default's signature is the
    one earlier versions recorded (texture 1024)."""
    from faceclip.batch import options_signature
    from faceclip.reconstruction import ReconstructOptions as R

    assert options_signature(R()) == options_signature(R(texture_px=1024))
    assert options_signature(R(method="fit_regressor")) == options_signature(R(init="regressor"))
    assert options_signature(R(fast=True))["texture_px"] == 512
    assert options_signature(R()) != options_signature(R(all_faces=True))
    assert "overwrite" not in options_signature(R(overwrite=True))
