"""The regressor shipped with the package: present, small, loads, trained, used when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceclip.nets.regressor import SHIPPED_CHECKPOINT, FaceRegressor, load_regressor


@pytest.fixture(scope="module")
def head_eyes(ict_cache):
    from faceclip.facemodel import load_face_model
    from faceclip.reconstruction import RECONSTRUCTION_GEOMETRY

    return load_face_model("ict", geometry=RECONSTRUCTION_GEOMETRY)


def test_shipped_checkpoint_is_small_and_loads(head_eyes):
    assert SHIPPED_CHECKPOINT.is_file(), "the shipped regressor is missing from the package"
    assert SHIPPED_CHECKPOINT.stat().st_size < 30 * 2**20
    net = load_regressor(SHIPPED_CHECKPOINT, face_model=head_eyes)
    assert net.config.backbone == "mobilenet_v2" and net.config.prm
    assert not net.training


#: Measured on the 6 held-out faces below (seed 777), CPU: face-region shape error after a
#: similarity alignment (mm) and mean |yaw error| (rad). The mean face's values depend only on
#: the data and the error measure (its heads start at zero), so they are pinned to 1%. The
#: shipped checkpoint's may only improve: its shape error must stay within 0.03 mm of the
#: measured 3.1828 mm (headroom for float differences between machines) and keep at least
#: 0.18 mm of the measured 0.219 mm margin over the mean face; its yaw error must stay under
#: 1.5 x the measured 0.0223 rad (the mean face's: 0.727). A retrained checkpoint that is
#: better passes; one that is worse, loaded wrongly or fed differently preprocessed images fails
#: (measured: identity head output halved 3.232 mm, identity ignored 3.352 mm).
MEAN_FACE_SHAPE_MM = 3.40183
MEAN_FACE_YAW_RAD = 0.72724
SHIPPED_SHAPE_MM = 3.18282
SHIPPED_YAW_RAD = 0.02229


def test_shipped_regressor_beats_the_mean_face_on_held_out_synthetic_faces(head_eyes):
    """Faces of a seed used neither for training (1), validation (10001) nor the benchmark (0)."""
    from faceclip.train.data import SyntheticFaceDataset, collate
    from faceclip.train.loop import resize_sample
    from faceclip.train.validate import _similarity_error_mm

    net = load_regressor(SHIPPED_CHECKPOINT, face_model=head_eyes)
    untrained = FaceRegressor(net.config, pretrained=False).eval()
    ds = SyntheticFaceDataset(head_eyes, n=6, seed=777)
    batch = collate([resize_sample(ds[i], net.config.crop_px) for i in range(len(ds))])
    face = head_eyes.region_mask("face").numpy()
    errors = {}
    with torch.no_grad():
        for name, model in (("trained", net), ("mean", untrained)):
            p = model(batch.image, clamp=True)
            pred = head_eyes.vertices(p.identity, p.expression).numpy()
            gt = head_eyes.vertices(batch.params.identity, batch.params.expression).numpy()
            shape = np.mean([_similarity_error_mm(pred[b][face], gt[b][face]) for b in range(len(pred))])
            yaw = (p.angles_rad[:, 1] - batch.params.angles_rad[:, 1]).abs().mean().item()
            errors[name] = (shape, yaw)
    assert errors["mean"][0] == pytest.approx(MEAN_FACE_SHAPE_MM, rel=0.01), errors
    assert errors["mean"][1] == pytest.approx(MEAN_FACE_YAW_RAD, rel=0.01), errors
    assert errors["trained"][0] <= SHIPPED_SHAPE_MM + 0.03, errors
    assert errors["mean"][0] - errors["trained"][0] >= 0.18, errors  # measured margin 0.219 mm
    assert errors["trained"][1] <= 1.5 * SHIPPED_YAW_RAD, errors  # head pose is learnt


def test_reconstruct_uses_the_shipped_regressor_when_asked(ict_cache):
    from faceclip.reconstruction import ReconstructOptions, Reconstructor

    rec = Reconstructor(ReconstructOptions(fast=True, init="regressor"))
    assert rec.regressor is not None and rec.regressor_path == SHIPPED_CHECKPOINT
    assert Reconstructor(ReconstructOptions(method="regress")).regressor_path == SHIPPED_CHECKPOINT
    # fitting starts from the mean face by default
    assert Reconstructor(ReconstructOptions(fast=True)).regressor is None
    assert Reconstructor(ReconstructOptions(fast=True, no_regressor=True)).regressor is None
